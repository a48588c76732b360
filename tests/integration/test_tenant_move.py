"""tenant_change_plan.yml across db_types on the local platform (docs/moves.md).

A tenant with an Odoo-shaped database and a client writing throughout (tests/integration/movers.py) is upgraded
basic -> premium (shared pool -> its dedicated server) and downgraded back; a suspend and a resume arrive while it
is being moved; a copy found different after the switch is switched back; its pool is drained. Every time: the
tenant on exactly one server, the registry pointing at it, every committed row there, verification clean (but where
it was spoiled on purpose), nothing of the move left behind. The kill points: test_tenant_move_faults.py.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.move_servers import Server
from ansible_collections.saasodoo.platform.plugins.modules.pgbouncer_userlist import auth_file_lock
from ansible_collections.saasodoo.platform.plugins.modules.registry_tenant import waiting_for_run

from .conftest import (
    LOCAL_STATE,
    LocalPlatform,
    assert_nothing_changed,
    odoo_url,
    run_ansible_tool,
    run_playbook,
    supervisor_pid,
)
from .movers import PLANS, RUNTIME_NONE, Mover, provision_mover, wait_for_file


@pytest.fixture(scope="module")
def mover(local_platform: LocalPlatform) -> Mover:
    return provision_mover(local_platform, "mover")


# What a tenant may make that a copy by column position or in binary would get wrong, and a verification printing
# each side's columns in its own order would take for a difference: an inheritance child whose parent got a column
# after it (pg_dump recreates it as (id, a, c, b)), and values whose binary form is an oid of the source's catalog.
# The test reads them back by name.
ODD_TABLES = """
CREATE TYPE mood AS ENUM ('calm', 'cross');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE odd_parent (id integer PRIMARY KEY, a text);
CREATE TABLE odd_child (b bigint) INHERITS (odd_parent);
ALTER TABLE odd_child ADD PRIMARY KEY (id);
ALTER TABLE odd_parent ADD COLUMN c double precision;
CREATE TABLE odd_types (id integer PRIMARY KEY, moods mood[], rel regclass, qty positive, types regtype[]);
INSERT INTO odd_child (id, a, b, c) VALUES (2, 'child', 7, 2.5);
INSERT INTO odd_types VALUES (1, '{calm,cross}', 'odd_parent', 3, '{integer,mood}');
"""
ODD_ROWS = "SELECT id, a, b, c FROM odd_child UNION ALL SELECT id, moods::text, qty, NULL FROM odd_types"
ODD_NAMES = "SELECT rel::text, types::text FROM odd_types"


def test_upgrade_moves_the_tenant_to_its_dedicated_server_and_downgrade_brings_it_back(mover: Mover):
    source = mover.record()["db_server"]
    with mover.as_tenant(source) as conn:
        conn.execute(ODD_TABLES)
        odd = conn.execute(ODD_ROWS).fetchall(), conn.execute(ODD_NAMES).fetchall()
    for plan, kind in (("premium-monthly", "dedicated"), ("basic-monthly", "shared")):
        writer = mover.writer()
        writer.start()
        run = mover.change_plan(plan)
        report = writer.stop()
        assert run.returncode == 0, run.output[-5000:]
        mover.assert_moved_cleanly(report, kind)
        with mover.as_tenant(mover.record()["db_server"]) as conn:
            assert (conn.execute(ODD_ROWS).fetchall(), conn.execute(ODD_NAMES).fetchall()) == odd
        move = mover.last_move()
        assert move["plan_name"] == plan and move["method"] == "logical"
        assert move["write_downtime_ms"] is not None and move["write_downtime_ms"] < 30_000
        assert "write downtime" in run.output
        assert_nothing_changed(mover.change_plan(plan))
    # Back on a shared pool; the old copies are kept, renamed, until their retention ends.
    with mover.admin(source) as conn:
        retained = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 't_mover_old%'")]
    assert retained, "the source copy was not kept"


def test_a_pool_pgbouncer_turns_an_early_client_away_itself_and_takes_it_once_the_switch_lets_it_in(mover: Mover):
    """A tenant's runtime follows a move from its block, so it may reach the new pool's PgBouncer while the role may
    not log in there yet. A login the server refused would be held against the tenant's pool for
    server_login_retry (15 s) after the role may log in; with its door closed from the block (as db_migrate does on
    the target), PgBouncer turns the client away itself, and takes it once the door opens."""
    record = mover.record()
    name, role = record["db_server"], mover.db
    assert record["pgbouncer_port"], f"{name} has no PgBouncer: the upgrade test brings the tenant back to a pool"
    admin = {
        "login_unix_socket": str((LOCAL_STATE / "pg" / name / "run").resolve()),
        "pgbouncer_admin_password": mover.platform.password(f"pgbouncer-admin@{name}"),
    }
    server = Server(name, "127.0.0.1", record["port"], admin, "127.0.0.1", record["pgbouncer_port"])
    through_pgbouncer = {
        "host": "127.0.0.1", "port": record["pgbouncer_port"], "dbname": mover.db, "user": role,
        "password": mover.password(), "prepare_threshold": None, "connect_timeout": 20,
    }  # fmt: skip
    # Held as pgbouncer_userlist holds it: the other stream's runs on this pool would rewrite the auth file without
    # the role while it may not log in, and no moving run writes it back here.
    with auth_file_lock(str(LOCAL_STATE / "pgbouncer" / name / "userlist.txt")):
        with mover.admin(name) as conn:
            conn.execute(f'ALTER ROLE "{role}" NOLOGIN')  # as the target's role until the switch
        try:
            server.close_pgbouncer_door(mover.db)
            with pytest.raises(psycopg.OperationalError, match="disabled"):
                psycopg.connect(**through_pgbouncer)  # the runtime that came early, turned away before the server
        finally:
            with mover.admin(name) as conn:
                conn.execute(f'ALTER ROLE "{role}" LOGIN')
            server.open_pgbouncer_door(mover.db)
    # At once: a login the server had refused would get "server login has been failing, try again later".
    with psycopg.connect(**through_pgbouncer) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    # On a move's target PgBouncer has never seen the database: closing its door registers it, closed.
    unseen = f"t_never_seen_{uuid.uuid4().hex[:8]}"
    server.close_pgbouncer_door(unseen)
    try:
        with pytest.raises(psycopg.OperationalError, match="disabled"):
            psycopg.connect(**{**through_pgbouncer, "dbname": unseen})
    finally:
        server.open_pgbouncer_door(unseen)


def test_db_migrate_logs_in_to_every_server_over_verified_tls_as_its_admin_login(mover: Mover, tmp_path: Path):
    """playbooks/vars/move.yml: db_migrate runs on the platform host and reaches each server at the address the
    registry records, never through a socket (on a host of its own, that would be the platform host's server), as
    the server's administrative login, over TLS with the platform CA; that login gets nowhere without TLS."""
    rendered = tmp_path / "logins.json"
    before = set(mover.servers()) - {"platform-db"}
    content = "{{ saasodoo_db_admin_logins | string }}"  # a JSON string already (playbooks/vars/move.yml)
    run_ansible_tool(
        "ansible", "platform", "-i", "inventories/local", "-e", "@playbooks/vars/move.yml",
        "-m", "ansible.builtin.copy", "-a", f"content={content} dest={rendered} mode=0600",
    )  # fmt: skip
    logins = json.loads(rendered.read_text())
    servers = mover.servers()
    # The pools', every one: tests beside this one may add a server between the two registry reads.
    assert before <= set(logins) <= set(servers) - {"platform-db"}, (before, logins.keys())
    for name, login in logins.items():
        assert "login_unix_socket" not in login and login["sslmode"] == "verify-full", (name, login.keys())
        address = {"host": "127.0.0.1", "port": servers[name], "dbname": "postgres", "user": login["login_user"]}
        try:
            conn = psycopg.connect(**address, password=login["login_password"], sslmode=login["sslmode"],
                                   sslrootcert=str(LOCAL_STATE / "secrets/tls/ca.crt"))  # fmt: skip
        except psycopg.OperationalError:
            # The other stream may be bringing a new server up (placement records it `provisioning` before its
            # cluster starts: the migration bench's dedicated server), or its servers_retire schedule may have
            # retired an idle one since the logins were rendered: only a server in service must answer.
            with mover.platform.registry() as registry:
                status = registry.execute("SELECT status FROM registry.db_servers WHERE name = %s", (name,)).fetchone()
            if status in (("provisioning",), ("retired",)):
                continue
            raise
        with conn:
            assert conn.execute(
                "SELECT s.ssl, r.rolsuper FROM pg_stat_ssl s, pg_roles r"
                " WHERE s.pid = pg_backend_pid() AND r.rolname = current_user"
            ).fetchone() == (True, True), name
        with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection"):
            psycopg.connect(**address, password=login["login_password"], sslmode="disable")


def test_a_suspend_and_a_resume_during_a_move_act_where_the_move_leaves_the_tenant(mover: Mover, tmp_path: Path):
    """One run per tenant at a time. A suspend, then a resume, started while a move is held after its switch (before
    the registry points at the target) wait for the whole plan change, move and resize, and act where it leaves the
    tenant: the source never lets the tenant in again (a resume acting at once re-opened it, and the writes made
    there were left in the copy the move then retired), the target's login is what the operation made it (the
    resize after the move, reading the status before the operation ran, undid it), and every committed write is
    on the target."""
    for action, status in (("tenant_suspend.yml", "suspended"), ("tenant_resume.yml", "active")):
        source = mover.record()["db_server"]
        held = tmp_path / f"turned-{status}"
        writer = mover.writer()
        writer.start()
        move = mover.start_change_plan(PLANS[mover.record()["db_type"]][0], f"pause-turned:{held}")
        try:
            wait_for_file(move, held, "turned")
            with mover.registry() as conn:  # held by its run: the runner's recovery pass leaves it alone
                assert conn.execute("SELECT registry.move_is_held(%s) AS held", (mover.tenant,)).fetchone()["held"]
            if status == "suspended":  # once is enough
                assert_replication_checks_certificates(mover, source, mover.last_move()["target_server"])
            operation = mover.start_playbook(action)
            wait_until_waiting(operation, mover)
        finally:
            held.unlink(missing_ok=True)  # the move goes on, to its end: the next test finds no open move
        moved, operated = move.communicate()[0], operation.communicate()[0]
        report = writer.stop()
        assert move.returncode == 0, moved[-5000:]
        assert operation.returncode == 0, operated[-5000:]
        record = mover.record()
        assert record["db_server"] != source and record["status"] == status, record
        for name, copy in mover.copies().items():
            if copy["can_login"] is not None:
                assert copy["can_login"][0] == (name == record["db_server"] and status == "active"), (name, copy)
        with mover.admin(record["db_server"], mover.db) as conn:  # the tenant's own login is refused while suspended
            kept = {r[0] for r in conn.execute("SELECT id FROM public.bench_writer")}
        missing = set(report.committed_ids) - kept
        assert not missing, f"{len(missing)} committed rows lost"


def test_a_process_tenants_odoo_follows_its_database_from_the_block_on(local_platform: LocalPlatform, tmp_path: Path):
    """The tenant's own PgBouncer is pointed at the new server once the move has blocked writes on the old one, before
    the switch has opened the new one or repointed the registry; the move then compares the two copies while Odoo
    answers from its database there, not restarted for it."""
    tenant = "mover-odoo"
    pgbouncer_dir = LOCAL_STATE / "runtime/pgbouncer" / tenant  # the tenant PgBouncer's files
    provisioned = run_playbook(
        "tenant_provision.yml", "-e", f"tenant_id={tenant}", "-e", "plan=basic-monthly", "-e", "customer_id=acct-odoo"
    )
    assert provisioned.returncode == 0, provisioned.output[-4000:]
    mover = Mover(local_platform, tenant, tables=0)
    try:
        pid = supervisor_pid(f"odoo-{tenant}")
        assert pid > 0
        source, turned, verifying = mover.record()["db_server"], tmp_path / "turned", tmp_path / "verifying"
        run = mover.start_change_plan(
            PLANS["shared"][0], f"pause-turned:{turned},pause-verifying:{verifying}", runtime=()
        )
        wait_for_file(run, turned, "turned")
        with local_platform.registry() as registry:
            port = registry.execute(
                "SELECT coalesce(s.pgbouncer_port, s.port) FROM registry.migrations m"
                " JOIN registry.db_servers s ON s.name = m.target_server WHERE m.tenant_id = %s ORDER BY m.id DESC",
                (tenant,),
            ).fetchone()[0]
        # Writes blocked and replication turned round, the module holding there: the target does not let the role in
        # yet, nor does the registry point there, but the runtime follows already, its PgBouncer pointed at the new
        # server's (or at the server, which has none) by the playbook's next tasks.
        deadline = time.monotonic() + 60
        while f"{mover.db} = host=127.0.0.1 port={port} " not in (pgbouncer_dir / "pgbouncer.ini").read_text():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the tenant's PgBouncer still points elsewhere:\n{(pgbouncer_dir / 'pgbouncer.ini').read_text()}"
                )
            time.sleep(0.1)  # the playbook is another process: poll the file it writes
        assert local_platform.tenant_server(tenant)[0] == source
        turned.unlink()
        wait_for_file(run, verifying, "verifying")
        target = local_platform.tenant_server(tenant)[0]
        assert target != source
        with urllib.request.urlopen(odoo_url(tenant, "/web/health?db_server_status=1"), timeout=10) as page:
            assert page.status == 200  # Odoo's query reached the database, on the new server
        assert supervisor_pid(f"odoo-{tenant}") == pid
        verifying.unlink()
        output = run.communicate()[0]  # then the new plan's odoo.conf (more workers) restarts it
        assert run.returncode == 0, output[-5000:]
        assert mover.last_move()["phase"] == "done"
    finally:
        for playbook, *extra in (("tenant_terminate.yml",), ("tenant_purge.yml", "-e", "force=true")):
            removed = run_playbook(playbook, "-e", f"tenant_id={tenant}", *extra)
            assert removed.returncode == 0, removed.output[-4000:]


def test_a_copy_found_different_after_the_switch_is_switched_back_with_every_write(mover: Mover, tmp_path: Path):
    """The verification after the switch finds the copies differ: the tenant goes back to the source, nothing lost.

    The run is paused once replication is turned round and both copies are frozen, and the source is spoiled
    behind the move's back (a table that only it has), as a faulty copy would differ.
    """
    plan = PLANS[mover.record()["db_type"]][0]
    source = mover.record()["db_server"]
    turned, verifying = tmp_path / "turned", tmp_path / "verifying"
    writer = mover.writer()
    writer.start()
    run = mover.start_change_plan(plan, f"pause-turned:{turned},pause-verifying:{verifying}")
    wait_for_file(run, turned, "turned")
    with mover.admin(source, mover.db) as conn:
        conn.execute("CREATE TABLE public.spoiled_by_the_test (id integer PRIMARY KEY)")
        conn.execute("INSERT INTO public.spoiled_by_the_test VALUES (1)")
        frozen = {r[0] for r in conn.execute("SELECT id FROM bench_writer")}  # every write before the switch
    turned.unlink()
    wait_for_file(run, verifying, "verifying")
    target = mover.record()["db_server"]  # switched: the tenant works there while the copies are compared
    assert target != source
    deadline = time.monotonic() + 60
    with mover.admin(target, mover.db) as conn:
        while not conn.execute("SELECT 1 FROM bench_writer WHERE id > %s", (max(frozen),)).fetchone():
            if time.monotonic() > deadline:
                pytest.fail(f"the writer wrote nothing on {target} in 60 s: {writer.error_count} errors")
            time.sleep(0.1)  # the writer commits every 100 ms: poll for one of its rows on the target
    # The tenant owns the target's catalog by now, but may not change it until the copies are verified: the way
    # back carries rows, not DDL, and the verification must read the tables it listed.
    refused = pytest.raises(psycopg.errors.RaiseException, match="schema changes wait until the move is verified")
    with mover.as_tenant(target) as conn, refused:
        conn.execute("ALTER TABLE bench_writer RENAME TO bench_writer_elsewhere")
    verifying.unlink()
    output = run.communicate()[0]
    report = writer.stop()
    try:
        assert run.returncode != 0 and "Switched back" in output, output[-5000:]
        assert mover.record()["db_server"] == source
        move = mover.last_move()
        assert move["phase"] == "rolled_back" and "verification failed" in move["error"], move
        assert move["verification"]["differing_tables"] == ["public.spoiled_by_the_test"]
        assert [p["phase"] for p in move["phase_history"]][-3:] == ["repointed", "switching_back", "rolled_back"]
        missing = set(report.committed_ids) - mover.rows()
        assert not missing, f"{len(missing)} committed rows lost"
        assert set(report.committed_ids) - frozen, "the writer committed nothing on the target"
        copies = mover.copies()
        assert [name for name, c in copies.items() if c["live"]] == [source]
        for name, c in copies.items():
            assert not (c["slots"] or c["move_roles"] or c["subscriptions"] or c.get("publications")), (name, c)
            assert not c.get("event_triggers"), (name, c)
            if c["can_login"] is not None:
                assert c["can_login"][0] == (name == source), (name, c)
    finally:
        with mover.admin(source, mover.db) as conn:
            conn.execute("DROP TABLE IF EXISTS public.spoiled_by_the_test")


def assert_replication_checks_certificates(mover: Mover, source: str, target: str) -> None:
    """Replication turned round (the target publishes, the source subscribes): the source's subscription checks
    the target's certificate against the platform CA beside its own (replication_sslmode verify-full), and the
    target streams to it over TLS."""
    with mover.admin(source) as conn:
        subscriptions = [r[0] for r in conn.execute("SELECT subconninfo FROM pg_subscription")]
        ca = conn.execute("SELECT regexp_replace(current_setting('ssl_cert_file'), '[^/]*$', 'ca.crt')").fetchone()[0]
    ours = [info for info in subscriptions if f"dbname={mover.db}" in info]
    assert ours and all("sslmode=verify-full" in info and f"sslrootcert={ca}" in info for info in ours), ours
    streaming = (
        "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
        " WHERE a.backend_type = 'walsender' AND a.datname = %s"
    )
    deadline = time.monotonic() + 60
    with mover.admin(target) as conn:
        streams = conn.execute(streaming, (mover.db,)).fetchall()
        while not streams and time.monotonic() < deadline:  # the subscription's worker connects on its own
            time.sleep(0.2)  # another process's connection: poll the server
            streams = conn.execute(streaming, (mover.db,)).fetchall()
    assert streams and all(ssl for (ssl,) in streams), streams


def wait_until_waiting(operation: subprocess.Popen, mover: Mover) -> None:
    """Until the operation's registry session says it waits for the run that has the tenant; it must not end
    first."""
    deadline = time.monotonic() + 120
    with mover.registry() as conn:
        while not conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (waiting_for_run(mover.tenant),)
        ).fetchone():
            if operation.poll() is not None:
                pytest.fail(f"it did not wait for the plan change:\n{operation.stdout.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("it was not waiting for the plan change after 120 s")
            time.sleep(0.1)  # the playbook is another process: poll the registry


# The drain runs in the alone pass, which `make test` runs before the streams on the same platform: a tenant of its
# own (Odoo's own tables: what a drain proves does not grow with them).
@pytest.fixture(scope="module")
def drained(local_platform: LocalPlatform) -> Mover:
    return provision_mover(local_platform, "mover-drained", custom_models=False)


def test_draining_a_pool_moves_its_tenants_to_other_pools(drained: Mover):
    pool = drained.record()["db_server"]
    writer = drained.writer()
    writer.start()
    run = run_playbook("pool_drain.yml", "-e", f"server={pool}", *RUNTIME_NONE)
    report = writer.stop()
    assert run.returncode == 0, run.output[-5000:]
    assert drained.record()["db_server"] != pool
    drained.assert_moved_cleanly(report, "shared")
    assert drained.last_move()["plan_name"] == "basic-monthly"
    with drained.registry() as conn:
        status = conn.execute("SELECT status FROM registry.db_servers WHERE name = %s", (pool,)).fetchone()["status"]
    assert status == "draining"  # placement no longer picks it
    assert_nothing_changed(run_playbook("pool_drain.yml", "-e", f"server={pool}", *RUNTIME_NONE))
    unknown = run_playbook("pool_drain.yml", "-e", "server=no-such-pool", *RUNTIME_NONE)
    assert unknown.returncode != 0 and "not a server the registry knows" in unknown.output
    with drained.registry() as conn:
        dedicated = conn.execute("SELECT name FROM registry.db_servers WHERE kind = 'dedicated' LIMIT 1").fetchone()
    if dedicated:  # the premium tenants of other tests made one
        refused = run_playbook("pool_drain.yml", "-e", f"server={dedicated['name']}", *RUNTIME_NONE)
        assert refused.returncode != 0 and "its tenant moves with its plan" in refused.output
