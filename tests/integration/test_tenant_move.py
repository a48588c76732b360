"""tenant_change_plan.yml across db_types on the local platform (README: Moving a tenant's database).

A tenant with an Odoo-shaped database and a client committing every 100 ms through PgBouncer (following the
registry, as Odoo follows its config) is upgraded basic -> premium (shared pool -> its dedicated server) and
downgraded back, then moved again with the run SIGKILLed at each point of FAULT_CASES and the playbook run again
(once per case in `make test`; `make soak` three times). Every time: the tenant on exactly one server, the
registry pointing at it, every committed row there, verification clean, nothing of the move left behind. A copy
found to differ after the switch is switched back, every write the tenant made on the target kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from bench.odoo_tenant import TenantWriter, WriterReport, generate

from .conftest import (
    REPO,
    VENV_BIN,
    LocalPlatform,
    PlaybookRun,
    ansible_env,
    assert_nothing_changed,
    run_playbook,
    superuser,
)

TENANT = "mover"
DB = "t_mover"
RUNTIME_NONE = ("-e", "saasodoo_runtime_backend=none")
# The points successive runs are SIGKILLed at, before one more runs through. A logical move switches first
# (turned: replication runs target -> source; repointed: the tenant works on the target) and verifies after.
FAULT_CASES = (
    ("copying",),
    ("catching_up",),
    ("cutover",),
    ("turned",),
    ("repointed",),
    ("verifying",),
    ("verified",),
    ("repointed", "switching_back"),  # and again while the next run switches back
)
FAILPOINT_ENV = "SAASODOO_DB_MIGRATE_FAILPOINT"
FAULT_ROUNDS = int(os.environ.get("FAULT_ROUNDS", "1"))  # kills per point


@dataclass
class Mover:
    platform: LocalPlatform

    def registry(self) -> psycopg.Connection:
        conn = self.platform.registry()
        conn.row_factory = dict_row
        return conn

    def record(self) -> dict:
        with self.registry() as conn:
            return conn.execute(
                "SELECT t.*, s.kind, s.port, s.pgbouncer_port FROM registry.tenants t"
                " JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id = %s",
                (TENANT,),
            ).fetchone()

    def servers(self) -> dict[str, int]:
        with self.registry() as conn:
            return {r["name"]: r["port"] for r in conn.execute("SELECT name, port FROM registry.db_servers")}

    def last_move(self) -> dict:
        with self.registry() as conn:
            return conn.execute(
                "SELECT * FROM registry.migrations WHERE tenant_id = %s ORDER BY id DESC LIMIT 1", (TENANT,)
            ).fetchone()

    def password(self) -> str:
        return self.platform.password(f"tenant:{TENANT}:v1")

    def locate(self) -> tuple[str, int]:
        record = self.record()
        return "127.0.0.1", record["pgbouncer_port"] or record["port"]

    def writer(self) -> TenantWriter:
        return TenantWriter(self.locate, DB, DB, self.password())

    def change_plan(self, plan: str) -> PlaybookRun:
        return run_playbook("tenant_change_plan.yml", "-e", f"tenant_id={TENANT}", "-e", f"plan={plan}", *RUNTIME_NONE)

    def admin(self, server: str, dbname: str = "postgres") -> psycopg.Connection:
        return superuser(server, self.servers()[server], dbname)

    def copies(self) -> dict[str, dict]:
        """Per server: the tenant's databases, its role's LOGIN, and what its moves could leave behind: replication
        slots and subscriptions in its databases (a table copy's own slots too), its moves' roles. Other tests move
        their own tenants meanwhile (make integration runs two streams at once)."""
        with self.registry() as conn:
            ids = conn.execute(
                "SELECT string_agg(id::text, '|') AS ids FROM registry.migrations WHERE tenant_id = %s", (TENANT,)
            ).fetchone()["ids"]
        its_moves = rf"^saasodoo_move_({ids or 'none'})(_|$)"
        ours = rf"^{DB}(_old\d+)?$"  # its database, and the copies a move kept, renamed
        found = {}
        for name in self.servers():
            try:
                conn = self.admin(name)
            except psycopg.OperationalError:
                continue  # a server recorded but never brought up
            with conn:
                found[name] = {
                    "live": bool(conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone()),
                    "can_login": conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (DB,)).fetchone(),
                    "slots": [
                        r[0]
                        for r in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database ~ %s", (ours,))
                    ],
                    "move_roles": [
                        r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname ~ %s", (its_moves,))
                    ],
                    "subscriptions": [
                        r[0]
                        for r in conn.execute(
                            "SELECT s.subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid"
                            " WHERE d.datname ~ %s",
                            (ours,),
                        )
                    ],
                }
                if found[name]["live"]:
                    with self.admin(name, DB) as db:
                        for key, query in (
                            ("publications", "SELECT pubname FROM pg_publication"),
                            ("event_triggers", "SELECT evtname FROM pg_event_trigger"),  # the DDL refusal
                        ):
                            found[name][key] = [r[0] for r in db.execute(query)]
        return found

    def as_tenant(self, server: str) -> psycopg.Connection:
        """The tenant's own session on `server`, straight to PostgreSQL."""
        return psycopg.connect(
            host="127.0.0.1", port=self.servers()[server], dbname=DB, user=DB, password=self.password(), autocommit=True
        )

    def rows(self) -> set[int]:
        """The writer's rows, read with the tenant's own credentials where the registry says it is."""
        host, port = self.locate()
        with psycopg.connect(
            host=host, port=port, dbname=DB, user=DB, password=self.password(), prepare_threshold=None
        ) as conn:
            return {r[0] for r in conn.execute("SELECT id FROM bench_writer")}

    def assert_moved_cleanly(self, report: WriterReport, kind: str) -> None:
        record = self.record()
        assert record["kind"] == kind and record["db_type"] == kind
        copies = self.copies()
        live = [name for name, c in copies.items() if c["live"]]
        assert live == [record["db_server"]], f"the tenant's database is live on {live}"
        for name, c in copies.items():
            leftovers = {k: c[k] for k in ("slots", "move_roles", "subscriptions")} | {
                k: c.get(k, []) for k in ("publications", "event_triggers")
            }
            assert all(not v for v in leftovers.values()), f"{name} keeps {leftovers}"
            # Never two writable copies: only the tenant's current server lets its role log in.
            if c["can_login"] is not None:
                assert c["can_login"][0] == (name == record["db_server"]), (name, c)
        move = self.last_move()
        assert move["phase"] == "done" and move["finished_at"] is not None, move
        assert move["verification"]["differing_tables"] == [] and move["verification"]["sequences_behind"] == []
        assert move["verification"]["tables"] > 300
        missing = set(report.committed_ids) - self.rows()
        assert not missing, f"{len(missing)} committed rows lost"
        assert report.commits > 0


@pytest.fixture(scope="module")
def mover(local_platform: LocalPlatform) -> Mover:
    provisioned = run_playbook(
        "tenant_provision.yml",
        *("-e", f"tenant_id={TENANT}", "-e", "plan=basic-monthly", "-e", "customer_id=acct-mover"),
        *RUNTIME_NONE,
    )
    assert provisioned.returncode == 0, provisioned.output[-4000:]
    mover = Mover(local_platform)
    record = mover.record()
    with mover.as_tenant(record["db_server"]) as conn:
        generate(conn, 40)
    mover.writer().prepare()
    return mover


def test_upgrade_moves_the_tenant_to_its_dedicated_server_and_downgrade_brings_it_back(mover: Mover):
    source = mover.record()["db_server"]
    for plan, kind in (("premium-monthly", "dedicated"), ("basic-monthly", "shared")):
        writer = mover.writer()
        writer.start()
        run = mover.change_plan(plan)
        report = writer.stop()
        assert run.returncode == 0, run.output[-5000:]
        mover.assert_moved_cleanly(report, kind)
        move = mover.last_move()
        assert move["plan_name"] == plan and move["method"] == "logical"
        assert move["write_downtime_ms"] is not None and move["write_downtime_ms"] < 30_000
        assert "write downtime" in run.output
        assert_nothing_changed(mover.change_plan(plan))
    # Back on a shared pool; the old copies are kept, renamed, until their retention ends.
    with mover.admin(source) as conn:
        retained = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 't_mover_old%'")]
    assert retained, "the source copy was not kept"


def test_a_move_killed_at_any_point_is_finished_or_rolled_back_by_the_next_run(mover: Mover, tmp_path: Path):
    plans = {"shared": ("premium-monthly", "dedicated"), "dedicated": ("basic-monthly", "shared")}
    for attempt in range(FAULT_ROUNDS):
        for points in FAULT_CASES:
            plan, kind = plans[mover.record()["db_type"]]
            writer = mover.writer()
            writer.start()
            killed = [kill_at(point, tmp_path / f"{point}-{attempt}-{len(points)}", plan) for point in points]
            rerun = mover.change_plan(plan)
            report = writer.stop()
            assert rerun.returncode == 0, f"after kills at {points}:\n{killed}\n{rerun.output[-5000:]}"
            mover.assert_moved_cleanly(report, kind)


def test_a_copy_found_different_after_the_switch_is_switched_back_with_every_write(mover: Mover, tmp_path: Path):
    """The verification after the switch finds the copies differ: the tenant goes back to the source, nothing lost.

    The run is paused once replication is turned round and both copies are frozen, and the source is spoiled
    behind the move's back (a table that only it has), as a faulty copy would differ.
    """
    plan = "premium-monthly" if mover.record()["db_type"] == "shared" else "basic-monthly"
    source = mover.record()["db_server"]
    turned, verifying = tmp_path / "turned", tmp_path / "verifying"
    writer = mover.writer()
    writer.start()
    run = start_change_plan(plan, f"pause-turned:{turned},pause-verifying:{verifying}")
    wait_for_file(run, turned, "turned")
    with mover.admin(source, DB) as conn:
        conn.execute("CREATE TABLE public.spoiled_by_the_test (id integer PRIMARY KEY)")
        conn.execute("INSERT INTO public.spoiled_by_the_test VALUES (1)")
        frozen = {r[0] for r in conn.execute("SELECT id FROM bench_writer")}  # every write before the switch
    turned.unlink()
    wait_for_file(run, verifying, "verifying")
    target = mover.record()["db_server"]  # switched: the tenant works there while the copies are compared
    assert target != source
    deadline = time.monotonic() + 60
    with mover.admin(target, DB) as conn:
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
        with mover.admin(source, DB) as conn:
            conn.execute("DROP TABLE IF EXISTS public.spoiled_by_the_test")


def start_change_plan(plan: str, failpoint: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "ansible-playbook"), "-i", "inventories/local", "playbooks/tenant_change_plan.yml",
         "-e", f"tenant_id={TENANT}", "-e", f"plan={plan}", *RUNTIME_NONE],
        cwd=REPO, env={**ansible_env(), FAILPOINT_ENV: failpoint},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def wait_for_file(run: subprocess.Popen, signal_file: Path, point: str) -> None:
    deadline = time.monotonic() + 300
    while not signal_file.exists():
        if run.poll() is not None:
            pytest.fail(f"the run ended before reaching {point}:\n{run.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(run.pid, signal.SIGKILL)
            pytest.fail(f"the run did not reach {point} within 300 s")
        time.sleep(0.05)  # polling for the file the held run writes


def kill_at(point: str, signal_file: Path, plan: str) -> str:
    """Run the plan change until db_migrate holds at `point`, then SIGKILL the run's whole process group."""
    run = start_change_plan(plan, f"{point}:{signal_file}")
    wait_for_file(run, signal_file, point)
    # The held module's process group goes too, as in a crash (under Mitogen the module runs in the run's own
    # interpreter, in the run's group; Ansible's stock workers run in sessions of their own).
    module_pid = int(signal_file.read_text().split()[0])
    os.killpg(os.getpgid(module_pid), signal.SIGKILL)
    os.killpg(run.pid, signal.SIGKILL)
    output = run.communicate()[0]
    return output[-2000:]


def test_draining_a_pool_moves_its_tenants_to_other_pools(mover: Mover):
    if mover.record()["db_type"] != "shared":
        assert mover.change_plan("basic-monthly").returncode == 0
    pool = mover.record()["db_server"]
    writer = mover.writer()
    writer.start()
    run = run_playbook("pool_drain.yml", "-e", f"server={pool}", *RUNTIME_NONE)
    report = writer.stop()
    assert run.returncode == 0, run.output[-5000:]
    assert mover.record()["db_server"] != pool
    mover.assert_moved_cleanly(report, "shared")
    assert mover.last_move()["plan_name"] == "basic-monthly"
    with mover.registry() as conn:
        status = conn.execute("SELECT status FROM registry.db_servers WHERE name = %s", (pool,)).fetchone()["status"]
    assert status == "draining"  # placement no longer picks it
    assert_nothing_changed(run_playbook("pool_drain.yml", "-e", f"server={pool}", *RUNTIME_NONE))
    unknown = run_playbook("pool_drain.yml", "-e", "server=no-such-pool", *RUNTIME_NONE)
    assert unknown.returncode != 0 and "not a server the registry knows" in unknown.output
    with mover.registry() as conn:
        dedicated = conn.execute("SELECT name FROM registry.db_servers WHERE kind = 'dedicated' LIMIT 1").fetchone()
    if dedicated:  # the premium tenants of other tests made one
        refused = run_playbook("pool_drain.yml", "-e", f"server={dedicated['name']}", *RUNTIME_NONE)
        assert refused.returncode != 0 and "its tenant moves with its plan" in refused.output
