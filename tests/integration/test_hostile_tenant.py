"""A hostile tenant gains nothing from the platform's privileged sessions in its database, nor from the host
its Odoo runs on.

A tenant owns its database and its `public` schema: it can plant functions that shadow the built-ins a
superuser session calls (an exact-type match in `public` beats `pg_catalog`'s, CVE-2018-1058), set its
database's `search_path`, and hang CHECK constraints and ENABLE ALWAYS triggers on its tables that run
whenever a row is copied in. This tenant plants all of them, each trying to make its role SUPERUSER and to
create a superuser of its own, then has its plan upgraded (a logical move to a dedicated server) and
downgraded (a dump move back to a shared pool). Every hook reports to the server log who it ran as.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from ansible_collections.saasodoo.platform.plugins.filter.tenants import tenant_os_user

from .conftest import LOCAL_STATE, LocalPlatform, remove_tenants, run_playbook, superuser

TENANT = "hostile"
DB = "t_hostile"
RUNTIME_NONE = ("-e", "saasodoo_runtime_backend=none")
HOOK_LINE = re.compile(r"saasodoo-hostile-hook (?P<hook>\w+) ran as (?P<role>\S+) superuser=(?P<super>\w+)")

# Each hook tries both escalations and swallows the refusal, so a move it fails to hijack carries on.
HOSTILE_SQL = """
CREATE FUNCTION public.hostile_hook(hook text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  RAISE WARNING 'saasodoo-hostile-hook % ran as % superuser=%', hook, current_user,
    (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user);
  BEGIN EXECUTE 'ALTER ROLE t_hostile SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
  BEGIN EXECUTE pg_catalog.format('CREATE ROLE %I LOGIN SUPERUSER', 'pwned_' || hook);
  EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN true;
END $$;
-- Shadows for what a verification or a sequence sync calls (argument types as a client binds them).
CREATE FUNCTION public.hashtextextended(text, integer) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_hook('hashtextextended'); RETURN pg_catalog.hashtextextended($1, $2::bigint); END $$;
CREATE FUNCTION public.format(text, name, name) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_hook('format'); RETURN pg_catalog.format($1, $2, $3); END $$;
CREATE FUNCTION public.setval(regclass, smallint, boolean) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_hook('setval'); RETURN pg_catalog.setval($1, $2::bigint, $3); END $$;
CREATE FUNCTION public.setval(regclass, integer, boolean) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_hook('setval'); RETURN pg_catalog.setval($1, $2::bigint, $3); END $$;
-- Runs for every row copied in, by whoever copies it.
CREATE TABLE public.hostile_rows (id serial PRIMARY KEY, v int CHECK (public.hostile_hook('check')));
INSERT INTO public.hostile_rows (v) SELECT g FROM pg_catalog.generate_series(1, 20) g;
CREATE FUNCTION public.hostile_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_hook('trigger'); RETURN NEW; END $$;
CREATE TRIGGER hostile BEFORE INSERT OR UPDATE ON public.hostile_rows
  FOR EACH ROW EXECUTE FUNCTION public.hostile_trigger();
ALTER TABLE public.hostile_rows ENABLE ALWAYS TRIGGER hostile;
-- Every privileged session opened in this database without its own search_path finds the shadows first.
ALTER DATABASE t_hostile SET search_path = public, pg_catalog;
"""


def server_logs() -> dict[Path, int]:
    """Where each server's log ends now: the hooks' lines are read from there on."""
    return {log: log.stat().st_size for log in (LOCAL_STATE / "pg").glob("*/log/postgresql.log")}


def hook_lines(since: dict[Path, int]) -> list[dict]:
    found = []
    for log in (LOCAL_STATE / "pg").glob("*/log/postgresql.log"):
        with log.open("rb") as f:
            f.seek(since.get(log, 0))
            text = f.read().decode(errors="replace")
        found += [m.groupdict() for m in HOOK_LINE.finditer(text)]
    return found


def escalations(platform: LocalPlatform) -> dict[str, list]:
    """Per running server: the tenant's role if it is a superuser, and any role a hook made."""
    found = {}
    with platform.registry() as registry:
        servers = registry.execute("SELECT name, port FROM registry.db_servers").fetchall()
    for name, port in servers:
        try:
            conn = superuser(name, port)
        except psycopg.OperationalError:
            continue  # recorded, never brought up
        with conn:
            found[name] = [
                r[0]
                for r in conn.execute(
                    "SELECT rolname FROM pg_roles WHERE (rolname = %s AND rolsuper) OR rolname LIKE 'pwned%%'", (DB,)
                )
            ]
    return found


@pytest.fixture(scope="module")
def hostile(local_platform: LocalPlatform):
    provisioned = run_playbook(
        "tenant_provision.yml",
        *("-e", f"tenant_id={TENANT}", "-e", "plan=basic-monthly", "-e", "customer_id=acct-hostile"),
        *RUNTIME_NONE,
    )
    assert provisioned.returncode == 0, provisioned.output[-4000:]
    with local_platform.registry() as registry:
        port = registry.execute(
            "SELECT s.port FROM registry.tenants t JOIN registry.db_servers s ON s.name = t.db_server"
            " WHERE t.tenant_id = %s",
            (TENANT,),
        ).fetchone()[0]
    password = local_platform.password(f"tenant:{TENANT}:v1")
    with local_platform.connect(port, DB, password, DB) as conn:
        conn.execute(HOSTILE_SQL)
    yield local_platform
    assert remove_tenants([TENANT])


@pytest.mark.parametrize(
    ("plan", "method", "kind"),
    [("premium-monthly", "logical", "dedicated"), ("basic-monthly", "dump", "shared")],
)
def test_a_move_runs_none_of_the_tenants_code_as_a_superuser(hostile: LocalPlatform, plan, method, kind):
    since = server_logs()
    run = run_playbook(
        "tenant_change_plan.yml",
        *("-e", f"tenant_id={TENANT}", "-e", f"plan={plan}", "-e", f"migration_method={method}"),
        *RUNTIME_NONE,
    )
    assert run.returncode == 0, run.output[-5000:]
    with hostile.registry() as registry:
        moved = registry.execute(
            "SELECT m.method, m.phase, t.db_type FROM registry.migrations m JOIN registry.tenants t USING (tenant_id)"
            " WHERE m.tenant_id = %s ORDER BY m.id DESC LIMIT 1",
            (TENANT,),
        ).fetchone()
    assert moved == (method, "done", kind)

    assert all(not roles for roles in escalations(hostile).values()), escalations(hostile)
    hooks = hook_lines(since)
    ran_as_superuser = [h for h in hooks if h["super"] != "f"]
    assert ran_as_superuser == [], ran_as_superuser
    # The copy did run the tenant's CHECK function (so this test exercised it): as the tenant, or as the
    # subscription's unprivileged apply role.
    checks = {h["role"] for h in hooks if h["hook"] == "check"}
    assert checks, f"the tenant's CHECK function never ran: {hooks}"
    assert all(role == DB or re.fullmatch(r"saasodoo_move_\d+_apply", role) for role in checks), hooks


ISOLATED = ("iso-a", "iso-b")


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def two_process_tenants(local_platform: LocalPlatform):
    for tenant in ISOLATED:
        run = run_playbook(
            "tenant_provision.yml", "-e", f"tenant_id={tenant}", "-e", "plan=basic-monthly",
            "-e", f"customer_id=acct-{tenant}",
        )  # fmt: skip
        assert run.returncode == 0, run.output[-4000:]
    yield local_platform
    for tenant in ISOLATED:  # with their runtime, so their programs and OS users go too
        for playbook, *extra in (("tenant_terminate.yml",), ("tenant_purge.yml", "-e", "force=true")):
            run = run_playbook(playbook, "-e", f"tenant_id={tenant}", *extra)
            assert run.returncode == 0, run.output[-4000:]
    assert all(as_user(tenant_os_user(t), "true").returncode != 0 for t in ISOLATED), "an OS user outlived its tenant"


def test_a_tenants_odoo_runs_as_its_own_user_and_reads_nothing_of_another_tenant(two_process_tenants):
    runtime, storage = LOCAL_STATE / "runtime", LOCAL_STATE / "storage/odoo_instances"
    a, b = (tenant_os_user(t) for t in ISOLATED)
    pid = subprocess.run(
        ["supervisorctl", "-c", str(runtime / "supervisor/supervisord.conf"), "pid", "odoo-iso-a"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert subprocess.run(["ps", "-o", "user=", "-p", pid], capture_output=True, text=True).stdout.strip() == a

    own = as_user(a, "cat", str(runtime / "tenants/iso-a/odoo.conf"))
    assert own.returncode == 0 and "db_password" in own.stdout  # the user works: it reads its own config
    assert as_user(a, "ls", str(storage / "odoo_data_t_iso_a_iso-a/filestore")).returncode == 0
    others = {
        "B's odoo.conf": ["cat", str(runtime / "tenants/iso-b/odoo.conf")],
        "B's runtime directory": ["ls", str(runtime / "tenants/iso-b")],
        "B's files": ["ls", str(storage / "odoo_data_t_iso_b_iso-b")],
        "B's filestore": ["find", str(storage / "odoo_data_t_iso_b_iso-b/filestore")],
        "B's log": ["cat", str(runtime / "logs/odoo-iso-b.log")],
        "the logs": ["ls", str(runtime / "logs")],
        "supervisord's socket and programs": ["ls", str(runtime / "supervisor")],
        "the list of tenants' directories": ["ls", str(storage)],
    }
    readable = [what for what, argv in others.items() if as_user(a, *argv).returncode == 0]
    assert readable == [], f"{a} can read {readable}"
    assert b != a and as_user(b, "cat", str(runtime / "tenants/iso-a/odoo.conf")).returncode != 0


def test_a_rotated_credential_opens_the_tenants_database_and_the_old_one_nothing(local_platform: LocalPlatform):
    tenant, db = "rotor", "t_rotor"
    common = ("-e", f"tenant_id={tenant}", *RUNTIME_NONE)
    provisioned = run_playbook("tenant_provision.yml", *common, "-e", "plan=basic-monthly", "-e", "customer_id=a-r")
    assert provisioned.returncode == 0, provisioned.output[-4000:]
    try:
        with local_platform.registry() as registry:
            ports = registry.execute(
                "SELECT s.port, s.pgbouncer_port FROM registry.tenants t"
                " JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id = %s",
                (tenant,),
            ).fetchone()
        old, new = (local_platform.password(f"tenant:{tenant}:v{n}") for n in (1, 2))

        rotated = run_playbook("tenant_rotate_credentials.yml", *common, "-e", "credential_version=2")
        assert rotated.returncode == 0, rotated.output[-4000:]
        assert old not in rotated.output and new not in rotated.output
        for port in ports:  # the server and its PgBouncer
            with local_platform.connect(port, db, new, db) as conn:
                assert conn.execute("SELECT current_user").fetchone()[0] == db
            with pytest.raises(psycopg.OperationalError):
                local_platform.connect(port, db, old, db).close()

        again = run_playbook("tenant_rotate_credentials.yml", *common, "-e", "credential_version=2")
        assert again.returncode == 0 and all(c["changed"] == 0 for c in again.recap.values()), again.output[-4000:]
        back = run_playbook("tenant_rotate_credentials.yml", *common, "-e", "credential_version=1")
        assert back.returncode != 0 and "never goes back" in back.output
    finally:
        assert remove_tenants([tenant])


def test_the_platform_role_may_only_append_to_the_audit_chain_which_verifies_end_to_end(local_platform):
    port = local_platform.servers["platform-db"].port
    app_password = local_platform.password("registry-app@saasodoo_registry")
    with local_platform.connect(port, "saasodoo_registry_app", app_password, "saasodoo_registry") as app:
        app.execute(
            "INSERT INTO registry.audit (actor, kind, subject) VALUES ('test_hostile_tenant', 'test', 'append')"
        )
        for tampering in (
            "UPDATE registry.audit SET actor = 'tampered'",
            "DELETE FROM registry.audit",
            "TRUNCATE registry.audit",
            "ALTER TABLE registry.audit DISABLE TRIGGER audit_append_only",
            "DROP TRIGGER audit_chain ON registry.audit",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(tampering)

    verified = run_playbook("registry_audit_verify.yml")
    assert verified.returncode == 0, verified.output[-3000:]
    head = re.search(r"The audit chain is intact: \d+ rows; head #\d+\s+sha256 ([0-9a-f]{64})", verified.output)
    assert head, verified.output[-3000:]
    assert run_playbook("registry_audit_verify.yml", "-e", f"expect_head={head[1]}").returncode == 0
    rewritten = run_playbook("registry_audit_verify.yml", "-e", f"expect_head={'0' * 64}")
    assert rewritten.returncode != 0 and "was rewritten" in rewritten.output
