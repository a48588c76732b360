"""A hostile tenant gains nothing from the platform's privileged sessions in its database, nor from the host
its Odoo runs on.

A tenant owns its database and its `public` schema: it can plant functions that shadow the built-ins a
superuser session calls (an exact-type match in `public` beats `pg_catalog`'s, CVE-2018-1058), a cast from its
table's row type to text, settings of its database (`search_path`, `role`, read-only), and CHECK constraints and
ENABLE ALWAYS triggers on its tables that run whenever a row is copied in and first try `RESET ROLE` (which
undoes a superuser's `SET ROLE`). Each hook tries to make the tenant's role SUPERUSER and to create a superuser of
its own, and reports to the server log who it ran as. Its plan is upgraded (a logical move to a dedicated server,
refused before anything is placed while its code would run in the apply, rolled back at the switch when it plants
that code again during the copy, then done once it removed it) and downgraded (a dump move back to a shared pool,
which runs the CHECK function).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ansible_runner
import psycopg
import pytest
from tenant_web import opener as tenant_web_opener
from tenant_web import tenant_url

from ansible_collections.saasodoo.platform.plugins.filter.tenants import tenant_os_user
from ansible_collections.saasodoo.platform.plugins.module_utils.migration import FAILPOINT_ENV
from ansible_collections.saasodoo.platform.plugins.module_utils.move_servers import Server
from ansible_collections.saasodoo.platform.plugins.module_utils.placement import kept_copy_name
from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import stable_scram_sha_256_verifier
from webhook_runner.execution import job_environment

from .conftest import (
    LOCAL_STATE,
    VENV_BIN,
    LocalPlatform,
    PlaybookRun,
    alive,
    ansible_env,
    ansible_playbook,
    assert_nothing_changed,
    odoo_url,
    remove_tenants,
    run_playbook,
    superuser,
)
from conftest import REPO, load_yaml

TENANT = "hostile"
DB = "t_hostile"
RUNTIME_NONE = ("-e", "saasodoo_runtime_backend=none")
HOOK_LINE = re.compile(r"saasodoo-hostile-hook (?P<hook>\w+) ran as (?P<role>\S+) superuser=(?P<super>\w+)")

# Each hook tries both escalations and swallows the refusal, so a move it fails to hijack carries on.
HOSTILE_SQL = """
CREATE FUNCTION public.hostile_hook(hook text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  BEGIN RESET ROLE; EXCEPTION WHEN OTHERS THEN NULL; END;  -- back to whoever logged in
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
CREATE TABLE public.hostile_rows (
  id serial PRIMARY KEY, v int CONSTRAINT hostile_check CHECK (public.hostile_hook('check')));
INSERT INTO public.hostile_rows (v) SELECT g FROM pg_catalog.generate_series(1, 20) g;
CREATE FUNCTION public.hostile_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_hook('trigger'); RETURN NEW; END $$;
CREATE TRIGGER hostile BEFORE INSERT OR UPDATE ON public.hostile_rows
  FOR EACH ROW EXECUTE FUNCTION public.hostile_trigger();
ALTER TABLE public.hostile_rows ENABLE ALWAYS TRIGGER hostile;
-- A verification that casts a row to text would run this.
CREATE FUNCTION public.hostile_cast(public.hostile_rows) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_hook('cast'); RETURN 'x'; END $$;
CREATE CAST (public.hostile_rows AS text) WITH FUNCTION public.hostile_cast(public.hostile_rows);
-- Set back: the next value handed out is 1000, and a move must keep it so.
CREATE SEQUENCE public.hostile_numbers;
SELECT pg_catalog.setval('public.hostile_numbers', 1000, false);
-- Every privileged session opened in this database without its own search_path finds the shadows first.
ALTER DATABASE t_hostile SET search_path = public, pg_catalog;
"""


def log_files() -> list[Path]:
    """Each server's PostgreSQL log: a single server's own file, under Patroni each member's (its Patroni's output,
    which supervisord keeps)."""
    servers = LOCAL_STATE / "pg"
    return [*servers.glob("*/log/postgresql.log"), *servers.glob("*/logs/patroni-*-stdout*.log")]


def server_logs() -> dict[Path, int]:
    """Where each server's log ends now: the hooks' lines are read from there on."""
    return {log: log.stat().st_size for log in log_files()}


def hook_lines(since: dict[Path, int]) -> list[dict]:
    found = []
    for log in log_files():
        with log.open("rb") as f:
            # A log supervisord rotated meanwhile is read from its start (what the rotated part held is not).
            f.seek(since.get(log, 0) if log.stat().st_size >= since.get(log, 0) else 0)
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


def tenant_server(platform: LocalPlatform) -> tuple[str, int]:
    name, _, port, _ = platform.tenant_server(TENANT)
    return name, port


def as_tenant(platform: LocalPlatform, *statements: str) -> None:
    password = platform.password(f"tenant:{TENANT}:v1")
    with platform.connect(tenant_server(platform)[1], DB, password, DB) as conn:
        for statement in statements:
            conn.execute(statement)


def change_plan(platform: LocalPlatform, plan: str, method: str):
    """The playbook's run, the last move's (method, phase, tenant's db_type) and the hooks that ran meanwhile."""
    since = server_logs()
    run = run_playbook(
        "tenant_change_plan.yml",
        *("-e", f"tenant_id={TENANT}", "-e", f"plan={plan}", "-e", f"migration_method={method}"),
        *RUNTIME_NONE,
    )
    with platform.registry() as registry:
        moved = registry.execute(
            "SELECT m.method, m.phase, t.db_type FROM registry.migrations m JOIN registry.tenants t USING (tenant_id)"
            " WHERE m.tenant_id = %s ORDER BY m.id DESC LIMIT 1",
            (TENANT,),
        ).fetchone()
    return run, moved, hook_lines(since)


def assert_nothing_ran_as_a_superuser(platform: LocalPlatform, hooks: list[dict]) -> None:
    assert all(not roles for roles in escalations(platform).values()), escalations(platform)
    ran_as_superuser = [h for h in hooks if h["super"] != "f"]
    assert ran_as_superuser == [], ran_as_superuser


@pytest.fixture(scope="module")
def hostile(local_platform: LocalPlatform):
    provisioned = run_playbook(
        "tenant_provision.yml",
        *("-e", f"tenant_id={TENANT}", "-e", "plan=basic-monthly", "-e", "customer_id=acct-hostile"),
        *RUNTIME_NONE,
    )
    assert provisioned.returncode == 0, provisioned.output[-4000:]
    as_tenant(local_platform, HOSTILE_SQL)
    yield local_platform
    assert remove_tenants([TENANT])


def test_a_privileged_session_ignores_the_settings_the_tenant_gave_its_database(hostile: LocalPlatform):
    """ALTER DATABASE ... SET role (or read-only, or a timeout) would make a superuser's session the tenant's."""
    as_tenant(
        hostile,
        "ALTER DATABASE t_hostile SET role = 't_hostile'; ALTER DATABASE t_hostile SET statement_timeout = '1min';"
        " ALTER DATABASE t_hostile SET default_transaction_read_only = on",
    )
    try:
        name, port = tenant_server(hostile)
        socket_dir = str((LOCAL_STATE / "pg" / name / "run").resolve())
        server = Server(name=name, host="127.0.0.1", port=port, admin={"login_unix_socket": socket_dir})
        with server.connect(DB) as conn:
            pinned = conn.execute(
                "SELECT current_user, current_setting('search_path'), current_setting('statement_timeout'),"
                " current_setting('transaction_read_only')"
            ).fetchone()
        assert pinned == ("postgres", "pg_catalog,pg_temp", "0", "off")
        with superuser(name, port, DB) as unpinned:  # the settings do bite a session that does not pin them
            assert unpinned.execute("SELECT current_user").fetchone()[0] == DB
    finally:
        as_tenant(
            hostile,
            "SET default_transaction_read_only = off",
            "ALTER DATABASE t_hostile RESET role; ALTER DATABASE t_hostile RESET statement_timeout;"
            " ALTER DATABASE t_hostile RESET default_transaction_read_only",
        )


def test_a_privileged_session_reads_no_view_the_tenant_swapped_in_for_a_table(hostile: LocalPlatform):
    """A verification lists the tenant's tables, then reads each by name: a tenant that turns one into a view calling
    its function in between would run it as the superuser. Every platform session refuses the tenant's views (the
    server's release has restrict_nonsystem_relation_kind: postgres_server checks it)."""
    as_tenant(
        hostile,
        "CREATE TABLE public.swapped (id int)",
        "ALTER TABLE public.swapped RENAME TO swapped_aside",
        "CREATE VIEW public.swapped AS SELECT 1 AS id WHERE public.hostile_hook('view')",
    )
    try:
        since = server_logs()
        name, port = tenant_server(hostile)
        socket_dir = str((LOCAL_STATE / "pg" / name / "run").resolve())
        server = Server(name=name, host="127.0.0.1", port=port, admin={"login_unix_socket": socket_dir})
        with (
            server.connect(DB) as conn,
            pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="non-system view"),
        ):
            conn.execute('SELECT count(*) FROM public."swapped"')
        assert [h for h in hook_lines(since) if h["hook"] == "view"] == []
        assert_nothing_ran_as_a_superuser(hostile, hook_lines(since))
    finally:
        as_tenant(hostile, "DROP VIEW public.swapped", "DROP TABLE public.swapped_aside")


def test_a_new_sign_in_link_runs_the_tenants_triggers_as_the_tenant_only(hostile: LocalPlatform):
    """The link writes the admin's partner row, which the tenant owns: its trigger there runs, with a RESET ROLE."""
    as_tenant(
        hostile,
        "CREATE FUNCTION public.partner_trigger() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN PERFORM public.hostile_hook('partner'); RETURN NEW; END $$",
        "CREATE TRIGGER hostile_partner BEFORE UPDATE ON public.res_partner"
        " FOR EACH ROW EXECUTE FUNCTION public.partner_trigger()",
        "UPDATE public.res_partner SET signup_type = NULL",  # so that the link has something to write
    )
    since = server_logs()
    run = run_playbook("tenant_admin_link.yml", "-e", f"tenant_id={TENANT}", *RUNTIME_NONE)
    assert run.returncode == 0, run.output[-3000:]
    assert "/web/reset_password?db=t_hostile&token=" in run.output
    hooks = hook_lines(since)
    assert [h["hook"] for h in hooks] == ["partner"]  # the trigger did run
    assert_nothing_ran_as_a_superuser(hostile, hooks)


# What the tenant runs in a logical move's apply, taken out (the refused moves put it in).
TAKE_CODE_OUT = (
    "ALTER TABLE public.hostile_rows DROP CONSTRAINT IF EXISTS hostile_check;"
    " ALTER TABLE public.hostile_rows ENABLE TRIGGER hostile"
)


def moves_and_db_type(platform: LocalPlatform) -> tuple[int, str]:
    """How many moves the registry has recorded for the tenant, and its db_type."""
    with platform.registry() as registry:
        return registry.execute(
            "SELECT (SELECT count(*) FROM registry.migrations WHERE tenant_id = %(t)s),"
            " (SELECT db_type FROM registry.tenants WHERE tenant_id = %(t)s)",
            {"t": TENANT},
        ).fetchone()


def test_a_logical_move_refuses_to_run_the_tenants_code_as_the_subscriptions_owner(hostile: LocalPlatform):
    moves_before, _ = moves_and_db_type(hostile)
    run, _, hooks = change_plan(hostile, "premium-monthly", "logical")
    assert run.returncode != 0
    for named in ("trigger hostile on public.hostile_rows", "function public.hostile_hook(text)", "Nothing was placed"):
        assert named in run.output, run.output[-4000:]
    # Refused before a server was chosen: no move recorded, the tenant where it was.
    assert moves_and_db_type(hostile) == (moves_before, "shared")
    assert_nothing_ran_as_a_superuser(hostile, hooks)


def assert_a_logical_move_refuses(
    platform: LocalPlatform, planted: tuple[str, ...], named: str, taken_out: tuple[str, ...]
):
    """The tenant plants code (`planted`, its other code taken out first): a logical move to premium is refused
    before anything is placed, naming `named`, and nothing ran as a superuser; then `taken_out` undoes it."""
    as_tenant(platform, TAKE_CODE_OUT, *planted)
    try:
        moves_before, _ = moves_and_db_type(platform)
        run, _, hooks = change_plan(platform, "premium-monthly", "logical")
        assert run.returncode != 0
        assert named in run.output, run.output[-4000:]
        assert moves_and_db_type(platform) == (moves_before, "shared")
        assert_nothing_ran_as_a_superuser(platform, hooks)
    finally:
        as_tenant(platform, *taken_out)


def test_a_logical_move_refuses_a_builtin_that_runs_the_tenants_sql_text(hostile: LocalPlatform):
    """A CHECK may call the tenant's function through a superuser's built-in that runs SQL given as text
    (query_to_xml): no dependency names the tenant's function, so the built-in itself is refused (before, the
    move's apply ran it as the subscription's owner, which may rewrite its subscription)."""
    assert_a_logical_move_refuses(
        hostile,
        ("ALTER TABLE public.hostile_rows ADD CONSTRAINT hostile_xml CHECK (pg_catalog.query_to_xml("
         "'SELECT public.hostile_hook(''query_to_xml'')', false, false, '') IS NOT NULL)",),
        "function query_to_xml(text,boolean,boolean,text)",
        ("ALTER TABLE public.hostile_rows DROP CONSTRAINT IF EXISTS hostile_xml",),
    )  # fmt: skip


def test_a_logical_move_refuses_a_range_types_function_that_its_index_calls(hostile: LocalPlatform):
    """A range type's subtype_diff, which a GiST index on that type calls for every row the apply writes, is the
    tenant's code in the apply too: refused (pg_depend records it under the type, which the check did not read)."""
    assert_a_logical_move_refuses(
        hostile,
        ("CREATE FUNCTION public.hostile_diff(a int, b int) RETURNS float8 IMMUTABLE LANGUAGE plpgsql AS"
         " $$ BEGIN PERFORM public.hostile_hook('subtype_diff'); RETURN b - a; END $$",
         "CREATE TYPE public.hostile_range AS RANGE (subtype = int4, subtype_diff = public.hostile_diff)",
         "CREATE TABLE public.hostile_ranges (id int PRIMARY KEY, span public.hostile_range)",
         "CREATE INDEX ON public.hostile_ranges USING gist (span)"),
        "function public.hostile_diff(integer,integer)",
        ("DROP TABLE IF EXISTS public.hostile_ranges", "DROP TYPE IF EXISTS public.hostile_range",
         "DROP FUNCTION IF EXISTS public.hostile_diff(integer, integer)"),
    )  # fmt: skip


def test_code_the_tenant_plants_during_the_copy_stops_the_switch_and_the_tenant_stays(
    hostile: LocalPlatform, tmp_path: Path
):
    """The place step found nothing to refuse; the tenant plants its code again while the copy catches up. The
    switch looks at the source again before the way back's apply would run it there: rolled back, the tenant where
    it was and able to log in there, and none of its code ran as a superuser."""
    as_tenant(hostile, TAKE_CODE_OUT)
    moves_before, _ = moves_and_db_type(hostile)
    since, held, blocked = server_logs(), tmp_path / "catching_up", tmp_path / "cutover"
    odoo_conf = LOCAL_STATE / "runtime/tenants" / TENANT / "odoo.conf"
    with ThreadPoolExecutor(max_workers=1) as background:
        running = background.submit(
            ansible_playbook,
            "playbooks/tenant_change_plan.yml",
            *("-e", f"tenant_id={TENANT}", "-e", "plan=premium-monthly", "-e", "migration_method=logical"),
            *RUNTIME_NONE,
            env={FAILPOINT_ENV: f"pause-catching_up:{held},pause-cutover:{blocked}"},
        )
        wait_while_running(running, held.exists, "the move did not reach catching_up")  # about to block
        as_tenant(
            hostile,
            "ALTER TABLE public.hostile_rows ADD CONSTRAINT hostile_check CHECK (public.hostile_hook('check'));"
            " ALTER TABLE public.hostile_rows ENABLE ALWAYS TRIGGER hostile",
        )
        held.unlink()
        wait_while_running(running, blocked.exists, "the move did not block the tenant's writes")
        with hostile.registry() as registry:
            (target_port,) = registry.execute(
                "SELECT coalesce(s.pgbouncer_port, s.port) FROM registry.migrations m JOIN registry.db_servers s"
                " ON s.name = m.target_server WHERE m.tenant_id = %s ORDER BY m.id DESC LIMIT 1",
                (TENANT,),
            ).fetchone()
        # Writes blocked: its runtime follows the move (runtime none: its odoo.conf names the target).
        wait_while_running(running, lambda: f"db_port = {target_port}\n" in odoo_conf.read_text(), "no follow")
        blocked.unlink()
        run = running.result()
    assert run.returncode != 0
    with hostile.registry() as registry:
        phase, error = registry.execute(
            "SELECT phase, error FROM registry.migrations WHERE tenant_id = %s ORDER BY id DESC LIMIT 1", (TENANT,)
        ).fetchone()
    assert phase == "rolled_back", (phase, error, run.output[-4000:])
    assert "the tenant's own code would run as the subscription's owner" in error, error
    assert "trigger hostile on public.hostile_rows" in error, error
    assert moves_and_db_type(hostile) == (moves_before + 1, "shared")
    as_tenant(hostile, "SELECT 1")  # open again where it stays
    # Its runtime, which followed the move from the block, was pointed back by the playbook's rescue.
    _, _, port, pgbouncer_port = hostile.tenant_server(TENANT)
    assert f"db_port = {pgbouncer_port or port}\n" in odoo_conf.read_text(), odoo_conf.read_text()
    assert_nothing_ran_as_a_superuser(hostile, hook_lines(since))


def wait_while_running(running, condition, failure: str) -> None:
    """Until `condition()` holds, while the playbook run in the background goes on (300 s at most)."""
    deadline = time.monotonic() + 300
    while not condition():
        assert not running.done(), running.result().output[-4000:]
        assert time.monotonic() < deadline, f"{failure} within 300 s"
        time.sleep(0.05)  # the playbook and its move are other processes: poll what they write


def test_a_logical_move_runs_none_of_the_tenants_code_as_a_superuser(hostile: LocalPlatform):
    # The tenant takes its code out of the apply's way, keeping its shadows, its cast and its sequence.
    as_tenant(hostile, TAKE_CODE_OUT)
    run, moved, hooks = change_plan(hostile, "premium-monthly", "logical")
    assert run.returncode == 0, run.output[-5000:]
    assert moved == ("logical", "done", "dedicated")
    assert_nothing_ran_as_a_superuser(hostile, hooks)
    assert hooks == [], hooks  # no shadow, cast, trigger or check of its ran at all
    name, port = tenant_server(hostile)
    with superuser(name, port, DB) as conn:  # the sequence hands out 1000 next, as it would have on the source
        assert conn.execute("SELECT last_value, is_called FROM public.hostile_numbers").fetchone() == (1000, False)


def test_a_dump_move_runs_the_tenants_code_as_no_more_than_the_tenant(hostile: LocalPlatform):
    as_tenant(
        hostile,
        "ALTER TABLE public.hostile_rows ADD CONSTRAINT hostile_check CHECK (public.hostile_hook('check'));"
        " ALTER TABLE public.hostile_rows ENABLE ALWAYS TRIGGER hostile",
    )
    run, moved, hooks = change_plan(hostile, "basic-monthly", "dump")
    assert run.returncode == 0, run.output[-5000:]
    assert moved == ("dump", "done", "shared")
    assert_nothing_ran_as_a_superuser(hostile, hooks)
    # The copy did run the tenant's CHECK function, and its RESET ROLE led back to the restore's own role.
    checks = {h["role"] for h in hooks if h["hook"] == "check"}
    assert checks, f"the tenant's CHECK function never ran: {hooks}"
    assert all(re.fullmatch(r"saasodoo_move_\d+_restore", role) for role in checks), hooks
    with hostile.registry() as registry:
        assert (
            escalations(hostile)
            and not registry.execute(
                "SELECT 1 FROM registry.tenants WHERE tenant_id = %s AND db_server LIKE 'pool-dedicated%%'", (TENANT,)
            ).fetchone()
        )


ISOLATED = ("iso-a", "iso-b")


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def two_process_tenants(local_platform: LocalPlatform):
    def provision(tenant: str) -> PlaybookRun:
        return run_playbook(
            "tenant_provision.yml", "-e", f"tenant_id={tenant}", "-e", "plan=basic-monthly",
            "-e", f"customer_id=acct-{tenant}",
        )  # fmt: skip

    def remove(tenant: str) -> list[PlaybookRun]:  # with its runtime, so its program and OS user go too
        steps = (("tenant_terminate.yml",), ("tenant_purge.yml", "-e", "force=true"))
        return [run_playbook(playbook, "-e", f"tenant_id={tenant}", *extra) for playbook, *extra in steps]

    with ThreadPoolExecutor(max_workers=len(ISOLATED)) as pool:  # the tenants' runs at once
        provisioned = list(pool.map(provision, ISOLATED))
    for run in provisioned:
        assert run.returncode == 0, run.output[-4000:]
    yield local_platform
    with ThreadPoolExecutor(max_workers=len(ISOLATED)) as pool:
        removed = [run for runs in pool.map(remove, ISOLATED) for run in runs]
    for run in removed:
        assert run.returncode == 0, run.output[-4000:]
    assert all(as_user(tenant_os_user(t), "true").returncode != 0 for t in ISOLATED), "an OS user outlived its tenant"


def test_a_tenants_odoo_runs_as_its_own_user_and_reads_nothing_of_another_tenant(two_process_tenants):
    runtime, storage = LOCAL_STATE / "runtime", LOCAL_STATE / "storage/odoo_instances"
    a, b = (tenant_os_user(t) for t in ISOLATED)
    # Its Odoo as its own user; the PgBouncer its Odoo reaches its database by as one the tenant is not.
    for program, user in (("odoo-iso-a", a), ("pgbouncer-iso-a", "saasodoo_pgbouncer")):
        pid = subprocess.run(
            ["supervisorctl", "-c", str(runtime / "supervisor/supervisord.conf"), "pid", program],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert subprocess.run(["ps", "-o", "user=", "-p", pid], capture_output=True, text=True).stdout.strip() == user
        if program == "odoo-iso-a":  # its code cannot fork the host out of processes
            limits = Path(f"/proc/{pid}/limits").read_text()
            assert re.search(r"^Max processes\s+512\s+512\s", limits, re.MULTILINE), limits

    own = as_user(a, "cat", str(runtime / "tenants/iso-a/odoo.conf"))
    assert own.returncode == 0 and "db_password" in own.stdout  # the user works: it reads its own config
    assert as_user(a, "ls", str(storage / "odoo_data_t_iso_a_iso-a/filestore")).returncode == 0
    others = {
        "B's odoo.conf": ["cat", str(runtime / "tenants/iso-b/odoo.conf")],
        "B's runtime directory": ["ls", str(runtime / "tenants/iso-b")],
        "B's PgBouncer": [
            "python3",
            "-c",
            "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
            str(runtime / "pgbouncer/iso-b/run/.s.PGSQL.6432"),
        ],
        "B's files": ["ls", str(storage / "odoo_data_t_iso_b_iso-b")],
        "B's filestore": ["find", str(storage / "odoo_data_t_iso_b_iso-b/filestore")],
        "B's log": ["cat", str(runtime / "logs/odoo-iso-b.log")],
        "the logs": ["ls", str(runtime / "logs")],
        "supervisord's socket and programs": ["ls", str(runtime / "supervisor")],
        "the list of tenants' directories": ["ls", str(storage)],
    }
    assert (runtime / "pgbouncer/iso-b/run/.s.PGSQL.6432").is_socket()  # there, for root
    readable = [what for what, argv in others.items() if as_user(a, *argv).returncode == 0]
    assert readable == [], f"{a} can read {readable}"
    assert b != a and as_user(b, "cat", str(runtime / "tenants/iso-a/odoo.conf")).returncode != 0


def test_the_tenant_can_neither_change_nor_take_over_its_own_pgbouncer(two_process_tenants):
    """Its PgBouncer runs on the host's network, which the tenant's Odoo is kept out of: were it the tenant's (its
    files, its user), the tenant could rewrite its pgbouncer.ini to listen on any port of the host, or trace it and
    run its own code there. Its files are root's in root's directory, it runs as another user, and its socket's
    directory lets the tenant's group in and nothing more; a resume starts it again as it should be."""
    a, home = tenant_os_user("iso-a"), LOCAL_STATE / "runtime/pgbouncer/iso-a"
    supervisorctl = ["supervisorctl", "-c", str(LOCAL_STATE / "runtime/supervisor/supervisord.conf")]
    pid = subprocess.run([*supervisorctl, "pid", "pgbouncer-iso-a"], capture_output=True, text=True).stdout.strip()
    attempts = {
        "rewrite its pgbouncer.ini": ["sh", "-c", f"echo 'listen_addr = 127.0.0.1' >> {home}/pgbouncer.ini"],
        "put another pgbouncer.ini in its place": ["mv", "-f", f"{home}/pgbouncer-users.txt", f"{home}/pgbouncer.ini"],
        "plant a file beside it": ["touch", f"{home}/planted"],
        "plant a file where its socket goes": ["touch", f"{home}/run/planted"],
        "signal it": ["kill", "-STOP", pid],
        "trace it": ["cat", f"/proc/{pid}/environ"],
    }
    done = [what for what, argv in attempts.items() if as_user(a, *argv).returncode == 0]
    assert done == [], f"{a} could {done}"
    assert as_user(a, "test", "-w", f"{home}/run/.s.PGSQL.6432").returncode == 0  # its Odoo's way in stays open
    subprocess.run([*supervisorctl, "stop", "pgbouncer-iso-a"], capture_output=True, check=True)
    run = run_playbook("tenant_resume.yml", "-e", "tenant_id=iso-a")  # starts its PgBouncer again
    assert run.returncode == 0, run.output[-4000:]
    assert (home / "run/.s.PGSQL.6432").is_socket()
    assert ((home / "run").stat().st_mode & 0o7777, (home / "run").owner(), (home / "run").group()) == (
        0o750, "saasodoo_pgbouncer", a)  # fmt: skip
    with urllib.request.urlopen(odoo_url("iso-a"), timeout=10) as page:
        assert page.status == 200  # its Odoo reaches its database through the PgBouncer started anew


def root_directory(tmp_path: Path):
    """A directory of root's (0755) holding a t_iso_a/ with a file, where a link the tenant plants will point (what a
    followed filestore link would reach as <db>), and what tells whether anything changed there: every entry's path,
    mode, owner and content."""
    roots = tmp_path / "roots"
    (roots / "t_iso_a").mkdir(mode=0o755, parents=True)
    roots.chmod(0o755)
    (roots / "t_iso_a/precious").write_text("root's\n")

    def state() -> list:
        entries = sorted((str(p), p.stat().st_mode, p.owner(), p.is_file() and p.read_text()) for p in roots.rglob("*"))
        return [(roots.stat().st_mode & 0o7777, roots.owner()), *entries]

    return roots, state


@pytest.mark.parametrize("planted", ["filestore", "filestore/t_iso_a"])
def test_a_link_the_tenant_puts_in_its_tree_is_not_followed_by_a_backup_or_a_restore(
    two_process_tenants, tmp_path, planted
):
    """The tenant swaps a directory of its tree for a link to one of root's. Root's backup and restore change nothing
    where it points (owner, mode, content): before, the backup's `file` task made the directory the tenant's, mode
    0700. The backup refuses the link; the restore replaces a linked filestore/<db> with the backup's and the filestore
    works again."""
    a, tenant_dir = tenant_os_user("iso-a"), LOCAL_STATE / "storage/odoo_instances/odoo_data_t_iso_a_iso-a"
    clean = run_playbook("tenant_backup.yml", "-e", "tenant_id=iso-a")  # the restore's backup, taken before
    assert clean.returncode == 0, clean.output[-4000:]
    roots, roots_state = root_directory(tmp_path)
    before, linked, aside = roots_state(), tenant_dir / planted, tenant_dir / f"{planted}.aside"
    try:
        assert as_user(a, "mv", str(linked), str(aside)).returncode == 0
        assert (
            as_user(a, "ln", "-s", str(roots if planted == "filestore" else roots / "t_iso_a"), str(linked)).returncode
            == 0
        )
        backup = run_playbook("tenant_backup.yml", "-e", "tenant_id=iso-a")
        assert backup.returncode != 0 and "is a link, not followed" in backup.output, backup.output[-4000:]
        assert roots_state() == before
        restore = run_playbook("tenant_restore.yml", "-e", "tenant_id=iso-a", "-e", "force=true")
        assert roots_state() == before
        if planted == "filestore":
            assert restore.returncode != 0 and "is a link, not followed" in restore.output, restore.output[-4000:]
        else:  # the link is swapped out for the backup's filestore, the tenant's own
            assert restore.returncode == 0, restore.output[-4000:]
            assert linked.is_dir() and not linked.is_symlink() and linked.owner() == a
            assert {p.owner() for p in linked.rglob("*")} <= {a} and any(linked.rglob("*"))
    finally:
        subprocess.run(["rm", "-rf", "--", str(linked)], check=True)
        if aside.exists():
            subprocess.run(["mv", "--", str(aside), str(linked)], check=True)


def test_no_customer_takes_another_tenants_kept_copy_by_naming_its_tenant_after_it(local_platform: LocalPlatform):
    """A move keeps the source database as <db>_old<move id>, owned by the tenant's role. A newcomer whose tenant id
    names it is refused before anything is placed; and were it placed, tenant_database neither adopts nor drops a
    database another role owns (before, it re-owned the copy, and the failed provision's rescue dropped it)."""
    server = local_platform.servers["pool-shared-01"]
    kept = kept_copy_name("t_keeper", 9)
    refused = run_playbook("tenant_provision.yml", "-e", f"tenant_id={kept.removeprefix('t_')}", *RUNTIME_NONE,
                           "-e", "plan=basic-monthly", "-e", "customer_id=acct-squatter")  # fmt: skip
    assert refused.returncode != 0 and "the name the platform gives the copy another tenant's move keeps" in " ".join(
        refused.output.split()
    ), refused.output[-3000:]
    with superuser("pool-shared-01", server.port) as conn:
        conn.execute("CREATE ROLE t_keeper NOLOGIN")
        conn.execute(f"CREATE DATABASE {kept} OWNER t_keeper")
    try:
        socket_dir = (LOCAL_STATE / "pg/pool-shared-01/run").resolve()
        for state in ("present", "absent"):
            args = (
                f"name={kept} state={state} password=squatter login_unix_socket={socket_dir} login_port={server.port}"
            )
            result = subprocess.run(
                [str(VENV_BIN / "ansible"), "pool-shared-01", "-m", "saasodoo.platform.tenant_database", "-a", args],
                cwd=REPO, env=ansible_env(), capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert result.returncode != 0, result.stdout[-2000:]
            assert f"owned by t_keeper exists on the server on port {server.port}: it was not made for this tenant" in (
                " ".join(result.stdout.split())
            )
        with superuser("pool-shared-01", server.port) as conn:
            owner = conn.execute(
                "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = %s", (kept,)
            ).fetchone()
            squatter = conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (kept,)).fetchone()
        assert owner == ("t_keeper",) and squatter is None
    finally:
        with superuser("pool-shared-01", server.port) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {kept}")
            conn.execute(f"DROP ROLE IF EXISTS {kept}")
            conn.execute("DROP ROLE IF EXISTS t_keeper")


@pytest.mark.parametrize("planted", ["filestore", "filestore/t_iso_a", "sessions", "addons"])
def test_a_link_the_tenant_puts_in_its_tree_is_not_followed_by_a_plan_change(two_process_tenants, tmp_path, planted):
    """The plan change's storage step (tenant_storage, root) and the backups of every root-run playbook that touches
    the tree: whichever directory the tenant swapped for a link, the root-owned directory it points at keeps its owner,
    mode and content (the run may fail: the tenant broke its own tree)."""
    a, tenant_dir = tenant_os_user("iso-a"), LOCAL_STATE / "storage/odoo_instances/odoo_data_t_iso_a_iso-a"
    roots, roots_state = root_directory(tmp_path)
    before, linked, aside = roots_state(), tenant_dir / planted, tenant_dir / f"{planted}.aside"
    try:
        assert as_user(a, "mv", str(linked), str(aside)).returncode == 0
        assert as_user(a, "ln", "-s", str(roots), str(linked)).returncode == 0
        run = run_playbook("tenant_change_plan.yml", "-e", "tenant_id=iso-a", "-e", "plan=basic-monthly")
        assert roots_state() == before
        if planted == "filestore/t_iso_a":  # below what the storage step ensures: the run leaves it be
            assert run.returncode == 0, run.output[-4000:]
        else:
            assert run.returncode != 0 and "exists and is not a directory" in run.output, run.output[-4000:]
    finally:
        subprocess.run(["rm", "-f", "--", str(linked)], check=True)
        subprocess.run(["mv", "--", str(aside), str(linked)], check=True)


def test_a_process_tenants_job_leaves_none_of_its_secrets_in_the_runners_artifacts(two_process_tenants, tmp_path):
    """A job as the runner runs it (ansible-runner, the job's environment) on a process tenant, whose runtime writes
    its PgBouncer's auth file: nothing in the artifacts holds the tenant's password or its SCRAM verifier (before, the
    module's invocation in the job events carried the verifier)."""
    password = two_process_tenants.password("tenant:iso-b:v1")
    verifier = stable_scram_sha_256_verifier(password)
    assert verifier in (LOCAL_STATE / "runtime/pgbouncer/iso-b/pgbouncer-users.txt").read_text()  # what is looked for
    result = ansible_runner.run(
        private_data_dir=str(tmp_path), project_dir=str(REPO), playbook=str(REPO / "playbooks/tenant_resume.yml"),
        inventory=str(REPO / "inventories/local"), envvars=job_environment(REPO), extravars={"tenant_id": "iso-b"},
        suppress_env_files=True, quiet=True,
    )  # fmt: skip
    assert result.rc == 0 and result.status == "successful"
    actions = [event.get("event_data", {}).get("task_action", "") for event in result.events]
    assert "saasodoo.platform.odoo_process" in actions, "the job ran no odoo_process task: nothing was checked"
    secrets = {"password": password, "verifier": verifier, "its keys": verifier.split("$")[-1]}
    leaks = [(str(path.relative_to(tmp_path)), what) for path in tmp_path.rglob("*") if path.is_file()
             for what, secret in secrets.items() if secret.encode() in path.read_bytes()]  # fmt: skip
    assert leaks == []


# Run as tenant A's OS user: keeps trying to listen on the ports given on every address, and writes a line for each
# connection it takes (with the first bytes, a Cookie header among them).
SQUATTER = """
import socket, sys, time
ports, log = [int(p) for p in sys.argv[1:]], open(sys.stdout.fileno(), "w", buffering=1)
held = []
while True:
    for port in ports:
        for address in ("0.0.0.0", "127.0.0.1"):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port)); s.listen(); s.setblocking(False); held.append(s)
                log.write(f"holds {address}:{port}\\n")
            except OSError:
                s.close()
    for s in held:
        try:
            conn, _ = s.accept()
            log.write(f"took {conn.recv(200)!r}\\n"); conn.close()
        except BlockingIOError:
            pass
    time.sleep(0.05)
"""


def test_no_tenant_takes_another_tenants_ports_or_its_requests(two_process_tenants, tmp_path):
    """Tenant A's OS user keeps trying to listen on tenant B's HTTP and websocket ports, on the host and inside A's own
    network namespace, while B is suspended and resumed. B's Odoo listens in its own namespace again, and B's
    customers' requests (its login page, its websocket, with their session cookie) reach B and never A (before,
    A held B's websocket port on the shared loopback after the resume and read B's cookies)."""
    a = tenant_os_user("iso-a")
    conf = (LOCAL_STATE / "runtime/tenants/iso-b/odoo.conf").read_text()
    b_ports = [re.search(rf"^{key} = (\d+)$", conf, re.MULTILINE)[1] for key in ("http_port", "gevent_port")]
    a_namespace = re.search(r"--net=(\S+)", (LOCAL_STATE / "runtime/supervisor/programs/odoo-iso-a.conf").read_text())
    assert a_namespace, "tenant A's Odoo does not run in a network namespace of its own"
    log = tmp_path / "squatter.log"
    as_a = ["setpriv", f"--reuid={a}", f"--regid={a}", "--init-groups", "/usr/bin/python3", "-c", SQUATTER]
    with log.open("w") as out:  # written through the descriptor: the tenant's user cannot open tmp_path
        squatters = [
            subprocess.Popen([*as_a, *b_ports], stdout=out, stderr=out),  # on the host's network
            subprocess.Popen(["nsenter", a_namespace[0], "--", *as_a, *b_ports], stdout=out, stderr=out),  # A's own
        ]
    try:
        for playbook in ("tenant_suspend.yml", "tenant_resume.yml"):
            run = run_playbook(playbook, "-e", "tenant_id=iso-b")
            assert run.returncode == 0, run.output[-4000:]
        cookie = {"Cookie": "session_id=b-customers-session"}
        for path in ("/web/login", "/websocket"):
            request = urllib.request.Request(tenant_url("iso-b", path), headers=cookie)
            try:
                with tenant_web_opener().open(request, timeout=10) as page:
                    status, body = page.status, page.read()
            except urllib.error.HTTPError as error:
                status, body = error.code, error.read()
            assert status < 500, (path, status, body[:300])
        with urllib.request.urlopen(odoo_url("iso-b"), timeout=10) as page:
            assert page.status == 200
    finally:
        for squatter in squatters:
            squatter.kill()
            squatter.wait()
    lines = log.read_text().splitlines()
    assert not [line for line in lines if not line.startswith(("holds", "took"))], lines  # the squatter ran
    took = [line for line in lines if line.startswith("took")]
    assert took == [], took


# Run as the tenant's user inside its control group: tries to leave the group, then keeps two processes busy (more
# than the plan's one core, on a host of two) for 2 s, and prints the cores they got.
BURNER = """
import json, os, resource, sys, time
escape = []
for controller in ("cpu", "memory"):
    try:
        with open(f"/sys/fs/cgroup/{controller}/cgroup.procs", "w") as procs:
            procs.write(str(os.getpid()))
        escape.append(controller)
    except OSError:
        pass
start = time.monotonic()
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        while time.monotonic() - start < 2.0:
            pass
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
used = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"escaped": escape, "cores": (used.ru_utime + used.ru_stime) / (time.monotonic() - start)}))
"""


def test_a_tenants_odoo_runs_within_its_plans_cpu_and_memory_and_cannot_leave_them(two_process_tenants):
    """Everything the tenant's Odoo runs is in a control group with its plan's ceiling (basic: 1 core, 1024 MiB):
    code of the tenant's that keeps two cores busy gets one, the kernel throttling it, and cannot move itself out."""
    plan = load_yaml(REPO / "inventories/local/group_vars/all/plans.yml")["saasodoo_plans"]["basic-monthly"]
    supervisorctl = ["supervisorctl", "-c", str(LOCAL_STATE / "runtime/supervisor/supervisord.conf")]
    pid = subprocess.run([*supervisorctl, "pid", "odoo-iso-a"], capture_output=True, text=True).stdout.strip()
    groups = dict(line.split(":", 2)[1:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
    if "cpu" not in groups:  # the files read below are cgroup v1's, as on this machine
        pytest.skip(f"this host's cpu controller is not a cgroup v1 hierarchy: {groups}")
    group = groups["cpu"]
    assert group.startswith("/saasodoo/") and groups["memory"] == group, groups
    cpu, memory = Path("/sys/fs/cgroup/cpu", group.lstrip("/")), Path("/sys/fs/cgroup/memory", group.lstrip("/"))
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == plan["cpu"] * int((cpu / "cpu.cfs_period_us").read_text())
    assert int((memory / "memory.limit_in_bytes").read_text()) == plan["memory_mb"] * 1024 * 1024
    b = subprocess.run([*supervisorctl, "pid", "odoo-iso-b"], capture_output=True, text=True).stdout.strip()
    assert f"cpu:{group}\n" not in Path(f"/proc/{b}/cgroup").read_text()  # a group per tenant

    def throttled() -> int:
        return int(re.search(r"^nr_throttled (\d+)$", (cpu / "cpu.stat").read_text(), re.MULTILINE)[1])

    before = throttled()
    a = tenant_os_user("iso-a")
    burn = subprocess.run(
        ["cgexec", "-g", f"cpu,memory:{group}", "setpriv", f"--reuid={a}", f"--regid={a}", "--init-groups",
         "/usr/bin/python3", "-c", BURNER],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    result = json.loads(burn.stdout)
    assert result["escaped"] == [], result
    assert result["cores"] <= plan["cpu"] * 1.15, result  # two busy processes, one core between them
    assert throttled() > before


def odoo_pid(program: str) -> str:
    supervisorctl = ["supervisorctl", "-c", str(LOCAL_STATE / "runtime/supervisor/supervisord.conf")]
    return subprocess.run([*supervisorctl, "pid", program], capture_output=True, text=True, check=True).stdout.strip()


def as_tenant_in_its_mounts(pid: str, user: str, script: str) -> subprocess.CompletedProcess:
    """`script` run as `user` in the mount namespace of process `pid` (where that tenant's Odoo sees its files)."""
    return subprocess.run(
        ["nsenter", f"--target={pid}", "--mount", "--", "setpriv", f"--reuid={user}", f"--regid={user}",
         "--init-groups", "sh", "-c", script],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


# roles/odoo_runtime keeps the host's temporary directories for a runtime that lives in one of them (a checkout in
# /tmp): a tmpfs there would hide it.
RUNTIME_IN_HOST_TMP = str(LOCAL_STATE).startswith(("/tmp/", "/var/tmp/", "/dev/shm/"))  # noqa: S108


@pytest.mark.skipif(RUNTIME_IN_HOST_TMP, reason="this checkout lives in the host's temporary directories")
def test_a_tenants_temporary_files_are_its_own(two_process_tenants):
    """The tenant's Odoo sees /tmp, /var/tmp, /dev/shm and /run/lock on a tmpfs of its own (a quarter of its plan's
    memory, an inode per 4 KB of it): what its code writes there is in neither another tenant's nor the host's, where
    every user could read or plant it."""
    plan = load_yaml(REPO / "inventories/local/group_vars/all/plans.yml")["saasodoo_plans"]["basic-monthly"]
    a_pid, b_pid = odoo_pid("odoo-iso-a"), odoo_pid("odoo-iso-b")
    # /proc/<pid>/mountinfo: ... <mount point> <options> ... - <type> <source> <super options>
    lines = Path(f"/proc/{a_pid}/mountinfo").read_text().splitlines()
    mounts = {line.split()[4]: line.split(" - ")[1] for line in lines}
    host_tmp, host_shm = Path("/tmp"), Path("/dev/shm")  # noqa: S108 - the host's, where the tenant's must not be
    for point in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):  # noqa: S108
        assert mounts[point].startswith("tmpfs saasodoo-tmp "), mounts.get(point)
        options = mounts[point].split()[2].split(",")
        assert {f"size={plan['memory_mb'] // 4 * 1024}k", f"nr_inodes={plan['memory_mb'] // 4 * 256}"} <= set(options)
    a, b = tenant_os_user("iso-a"), tenant_os_user("iso-b")
    wrote = as_tenant_in_its_mounts(
        a_pid, a, "echo report > /tmp/iso-a-report && echo seg > /dev/shm/iso-a-segment && echo l > /run/lock/iso-a"
    )
    assert wrote.returncode == 0, wrote.stderr
    # One tmpfs, seen at four places.
    assert as_tenant_in_its_mounts(a_pid, a, "cat /var/tmp/iso-a-report /tmp/iso-a").stdout == "report\nl\n"
    assert not (host_tmp / "iso-a-report").exists() and not (host_shm / "iso-a-segment").exists()
    assert not Path("/run/lock/iso-a").exists()
    looked = as_tenant_in_its_mounts(b_pid, b, "ls -a /tmp /dev/shm")
    assert looked.returncode == 0 and "iso-a" not in looked.stdout, looked


def test_a_suspended_tenant_runs_nothing_not_even_what_it_detached_from_its_odoo(two_process_tenants):
    """Code of the tenant's starts a process of its own that leaves its Odoo's process group and session (setsid),
    which supervisord's stop does not reach. Suspended, the tenant runs nothing: that process is killed with its
    control group's contents, and its temporary files are gone; resumed, its Odoo serves again."""
    a = tenant_os_user("iso-a")
    private_tmp = not RUNTIME_IN_HOST_TMP  # a temporary file of its Odoo's goes with it too
    if private_tmp:
        left = as_tenant_in_its_mounts(odoo_pid("odoo-iso-a"), a, "echo mine > /tmp/left-before-suspension")
        assert left.returncode == 0, left.stderr
    program = (LOCAL_STATE / "runtime/supervisor/programs/odoo-iso-a.conf").read_text()
    group = re.search(r"cgexec -g cpu,memory:(\S+)", program)[1]
    detached = subprocess.Popen(
        ["cgexec", "-g", f"cpu,memory:{group}", "setpriv", f"--reuid={a}", f"--regid={a}", "--init-groups",
         "setsid", "sh", "-c", "echo in; exec sleep 600"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert detached.stdout.readline() == "in\n"
        for playbook in ("tenant_suspend.yml", "tenant_resume.yml"):
            run = run_playbook(playbook, "-e", "tenant_id=iso-a")
            assert run.returncode == 0, run.output[-4000:]
            if playbook == "tenant_suspend.yml":
                assert detached.wait(timeout=10) == -9, "the suspended tenant's process runs on"
        with urllib.request.urlopen(odoo_url("iso-a"), timeout=10) as page:
            assert page.status == 200
        if private_tmp:
            gone = as_tenant_in_its_mounts(odoo_pid("odoo-iso-a"), a, "test ! -e /tmp/left-before-suspension")
            assert gone.returncode == 0, "a file in the suspended tenant's /tmp outlived its programs"
    finally:
        detached.kill()
        detached.wait()


def test_no_tenant_takes_an_os_user_that_is_not_its_own(local_platform: LocalPlatform):
    """A user already has the name a newcomer's OS user would get (another tenant's, the host's own): the provision is
    refused before the user is touched, and the user keeps its uid, comment and home (before, useradd's `present`
    took it over, and the newcomer's Odoo ran as it). Once the name is free, the provision goes through, its user
    with the registry's uid, which a purge does not free for a later tenant."""
    newcomer = "squat-user"
    user = tenant_os_user(newcomer)
    provision = (
        "tenant_provision.yml", "-e", f"tenant_id={newcomer}", "-e", "plan=basic-monthly",
        "-e", "saasodoo_runtime_backend=process", "-e", "customer_id=acct-squat-user",
    )  # fmt: skip
    subprocess.run(["useradd", "--system", "--no-create-home", "--comment", "SaaSOdoo tenant someone-else",
                    "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", user], check=True)  # fmt: skip
    try:
        before = pwd.getpwnam(user)
        refused = run_playbook(*provision)
        assert refused.returncode != 0, refused.output[-3000:]
        assert f"The OS user {user} exists and is not tenant {newcomer}'s" in " ".join(refused.output.split())
        assert pwd.getpwnam(user) == before
    finally:
        subprocess.run(["userdel", user], check=False)
    provisioned = run_playbook(*provision)
    assert provisioned.returncode == 0, provisioned.output[-3000:]
    first = pwd.getpwnam(user)
    assert first.pw_gecos == f"SaaSOdoo tenant {newcomer}"
    # Its uid and gid are the registry's, and never given again: not even to the same id's next life after a purge.
    assert (first.pw_uid, first.pw_gid) == (os_id(local_platform, newcomer),) * 2
    assert remove_tenants([newcomer], runtime="process")
    again = run_playbook(*provision)
    assert again.returncode == 0, again.output[-3000:]
    second = pwd.getpwnam(user)
    assert (second.pw_uid, second.pw_gid) == (os_id(local_platform, newcomer),) * 2
    assert second.pw_uid > first.pw_uid
    assert remove_tenants([newcomer], runtime="process")


def os_id(platform: LocalPlatform, tenant: str) -> int:
    with platform.registry() as conn:
        return conn.execute("SELECT os_id FROM registry.tenants WHERE tenant_id = %s", (tenant,)).fetchone()[0]


def test_a_rotated_credential_opens_the_tenants_database_and_the_old_one_nothing(local_platform: LocalPlatform):
    tenant, db = "rotor", "t_rotor"
    common = ("-e", f"tenant_id={tenant}", *RUNTIME_NONE)
    provisioned = run_playbook("tenant_provision.yml", *common, "-e", "plan=basic-monthly", "-e", "customer_id=a-r")
    assert provisioned.returncode == 0, provisioned.output[-4000:]
    try:
        ports = local_platform.tenant_server(tenant)[2:]
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
        assert_nothing_changed(again)
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
            "SELECT pg_catalog.setval('registry.audit_id_seq', 1000000)",  # a gap in the ids, or an id again
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


def test_a_tenants_odoo_reaches_its_database_over_verified_tls(local_platform: LocalPlatform):
    """Odoo's own PgBouncer on server_tls_sslmode=verify-full, checking the pool PgBouncer's certificate against the
    platform CA; a client that expects another name is refused, so the check is real."""
    tenant, db = "tls-a", "t_tls_a"
    common = ("-e", f"tenant_id={tenant}")
    provisioned = run_playbook(
        "tenant_provision.yml", *common, "-e", "plan=basic-monthly", "-e", "customer_id=acct-tls",
        "-e", "saasodoo_db_sslmode=verify-full",
    )  # fmt: skip
    assert provisioned.returncode == 0, provisioned.output[-4000:]
    try:
        # Odoo reaches its own PgBouncer over a socket only its group may reach; that PgBouncer does the TLS.
        tenant_dir, pgbouncer_dir = (LOCAL_STATE / "runtime" / kind / tenant for kind in ("tenants", "pgbouncer"))
        assert f"db_host = {pgbouncer_dir}/run\n" in (tenant_dir / "odoo.conf").read_text()
        pgbouncer = (pgbouncer_dir / "pgbouncer.ini").read_text()
        assert "server_tls_sslmode = verify-full\n" in pgbouncer
        assert f"server_tls_ca_file = {pgbouncer_dir}/db-ca.crt\n" in pgbouncer
        server, _, _, pgbouncer_port = local_platform.tenant_server(tenant)
        # The login page needs the database: Odoo reached it, through two PgBouncers, the pool's certificate checked.
        with urllib.request.urlopen(odoo_url(tenant), timeout=10) as page:
            assert page.status == 200
        admin_password = local_platform.password(f"pgbouncer-admin@{server}")
        with local_platform.connect(pgbouncer_port, "saasodoo_pgbouncer_admin", admin_password, "pgbouncer") as console:
            clients = console.execute("SHOW CLIENTS").fetchall()
            columns = [c.name for c in console.execute("SHOW CLIENTS").description]
        tenant_clients = [dict(zip(columns, row, strict=True)) for row in clients if row[columns.index("user")] == db]
        assert tenant_clients and all(c["tls"] for c in tenant_clients), tenant_clients

        ca = str(LOCAL_STATE / "secrets/tls/ca.crt")
        password = local_platform.password(f"tenant:{tenant}:v1")
        verified = dict(port=pgbouncer_port, user=db, password=password, dbname=db, sslmode="verify-full",
                        sslrootcert=ca, prepare_threshold=None, connect_timeout=5)  # fmt: skip
        with psycopg.connect(host="127.0.0.1", **verified) as conn:
            assert conn.info.pgconn.ssl_in_use
        with pytest.raises(psycopg.OperationalError, match="does not match host name"):
            psycopg.connect(host="db.elsewhere.example", hostaddr="127.0.0.1", **verified).close()
    finally:
        for playbook, *extra in (("tenant_terminate.yml",), ("tenant_purge.yml", "-e", "force=true")):
            run = run_playbook(playbook, *common, *extra)
            assert run.returncode == 0, run.output[-4000:]


def test_make_down_acts_on_no_file_a_tenant_planted_in_its_tree(tmp_path: Path):
    """down.yml looks for the services' pid and configuration files under .state, where each tenant owns a tree.
    What a tenant plants there (as its own user, or a root-owned file it renamed inside its directory) is never
    acted on: no nginx reads its nginx.conf (whose pid directive names any process, and whose load_module would run
    the tenant's code as root), no pkill takes its pid file. The platform's own pid file still stops its process."""
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    platform_run = state / "local/pgbouncer/pool-x/run"
    platform_run.mkdir(parents=True)
    # A tenant's program as supervisord runs it, in a network namespace whose name down.yml reads from it.
    programs = state / "local/runtime/supervisor/programs"
    programs.mkdir(parents=True)
    (programs / "odoo-ours.conf").write_text("command=nsenter --net=/run/netns/saasodoo-0ff-1 -- odoo\n")
    tenant_tree = state / "local/storage/odoo_instances/odoo_data_t_x_x"
    tenant_tree.mkdir(parents=True)
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(4)]
    platform_pgbouncer, *victims = sleepers
    try:
        (platform_run / "pgbouncer.pid").write_text(f"{platform_pgbouncer.pid}\n")
        planted = {
            "a/pgbouncer.pid": f"{victims[0].pid}\n",
            "b/nginx.pid": "1\n",
            "b/victim.pid": f"{victims[1].pid}\n",
            "b/nginx.conf": f"pid {tenant_tree}/b/victim.pid;\nevents {{}}\n",
            "c/postmaster.pid": f"{victims[2].pid}\n",
            "local/runtime/supervisor/programs/odoo-planted.conf": "command=nsenter --net=/run/netns/saasodoo-0ff-2\n",
        }
        for relative, content in planted.items():
            (tenant_tree / relative).parent.mkdir(parents=True, exist_ok=True)
            (tenant_tree / relative).write_text(content)
        # A root-owned file the tenant renamed in its own directory is in its tree all the same.
        (tenant_tree / "renamed").mkdir()
        (tenant_tree / "renamed/pgbouncer.pid").write_text(f"{victims[0].pid}\n")
        for path in [tenant_tree, *tenant_tree.rglob("*")]:
            if path.name != "pgbouncer.pid" or path.parent.name != "renamed":
                os.chown(path, nobody.pw_uid, nobody.pw_gid)

        down = ansible_playbook("playbooks/down.yml", "-e", f"down_state_dir={state}", inventory="localhost,")
        assert down.returncode == 0, down.output[-3000:]
        assert platform_pgbouncer.wait(timeout=30) is not None  # SIGINT: the platform's own pid file was taken
        assert all(alive(victim.pid) for victim in victims), down.output[-3000:]
        assert "odoo-ours.conf" in down.output and "odoo-planted.conf" not in down.output, down.output[-3000:]
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
