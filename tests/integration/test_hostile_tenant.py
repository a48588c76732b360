"""A hostile tenant gains nothing from the platform's privileged sessions in its database.

A tenant owns its database and its `public` schema: it can plant functions that shadow the built-ins a
superuser session calls (an exact-type match in `public` beats `pg_catalog`'s, CVE-2018-1058), set its
database's `search_path`, and hang CHECK constraints and ENABLE ALWAYS triggers on its tables that run
whenever a row is copied in. This tenant plants all of them, each trying to make its role SUPERUSER and to
create a superuser of its own, then has its plan upgraded (a logical move to a dedicated server) and
downgraded (a dump move back to a shared pool). Every hook reports to the server log who it ran as.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

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
