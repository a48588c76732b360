"""A tenant the move tests move between servers (test_tenant_move.py, test_tenant_move_faults.py): an Odoo-shaped
database, a client committing every 100 ms through PgBouncer (following the registry, as Odoo follows its config),
and what the tests check after every move: the tenant on exactly one server, the registry pointing at it, every
committed row there, verification clean, nothing of the move left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from ansible_collections.saasodoo.platform.plugins.module_utils.migration import FAILPOINT_ENV
from bench.odoo_tenant import TenantWriter, WriterReport, generate
from webhook_runner.desired import database_name

from .conftest import (
    LOCAL_STATE,
    REPO,
    VENV_BIN,
    LocalPlatform,
    PlaybookRun,
    ansible_env,
    ansible_processes,
    run_playbook,
    superuser,
)

RUNTIME_NONE = ("-e", "saasodoo_runtime_backend=none")
PLANS = {"shared": ("premium-monthly", "dedicated"), "dedicated": ("basic-monthly", "shared")}  # the other db_type


@dataclass
class Mover:
    """A tenant moved back and forth by a test module, with what the tests read of it."""

    platform: LocalPlatform
    tenant: str
    tables: int  # in its Odoo-shaped database, as generated

    @property
    def db(self) -> str:
        return database_name(self.tenant)

    def registry(self) -> psycopg.Connection:
        conn = self.platform.registry()
        conn.row_factory = dict_row
        return conn

    def record(self) -> dict:
        with self.registry() as conn:
            return conn.execute(
                "SELECT t.*, s.kind, s.port, s.pgbouncer_port FROM registry.tenants t"
                " JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id = %s",
                (self.tenant,),
            ).fetchone()

    def servers(self) -> dict[str, int]:
        with self.registry() as conn:
            return {r["name"]: r["port"] for r in conn.execute("SELECT name, port FROM registry.db_servers")}

    def move_is_held(self) -> bool:
        """Whether a db_migrate process runs the tenant's move (its lock, registry.move_is_held)."""
        with self.registry() as conn:
            return conn.execute("SELECT registry.move_is_held(%s) AS held", (self.tenant,)).fetchone()["held"]

    def last_move(self) -> dict:
        with self.registry() as conn:
            return conn.execute(
                "SELECT * FROM registry.migrations WHERE tenant_id = %s ORDER BY id DESC LIMIT 1", (self.tenant,)
            ).fetchone()

    def password(self) -> str:
        return self.platform.password(f"tenant:{self.tenant}:v1")

    def locate(self) -> tuple[str, int]:
        record = self.record()
        return "127.0.0.1", record["pgbouncer_port"] or record["port"]

    def writer(self) -> TenantWriter:
        return TenantWriter(self.locate, self.db, self.db, self.password())

    def change_plan(self, plan: str) -> PlaybookRun:
        return run_playbook(
            "tenant_change_plan.yml", "-e", f"tenant_id={self.tenant}", "-e", f"plan={plan}", *RUNTIME_NONE
        )

    def admin(self, server: str, dbname: str = "postgres") -> psycopg.Connection:
        return superuser(server, self.servers()[server], dbname)

    def copies(self) -> dict[str, dict]:
        """Per server: the tenant's databases, its role's LOGIN, and what its moves could leave behind: replication
        slots and subscriptions in its databases (a table copy's own slots too), its moves' roles. Other tests move
        their own tenants meanwhile (make integration runs two streams at once)."""
        with self.registry() as conn:
            ids = conn.execute(
                "SELECT string_agg(id::text, '|') AS ids FROM registry.migrations WHERE tenant_id = %s", (self.tenant,)
            ).fetchone()["ids"]
        its_moves = rf"^saasodoo_move_({ids or 'none'})(_|$)"
        ours = rf"^{self.db}(_old\d+)?$"  # its database, and the copies a move kept, renamed
        found = {}
        for name in self.servers():
            try:
                conn = self.admin(name)
            except psycopg.OperationalError:
                continue  # a server recorded but never brought up
            with conn:
                found[name] = {
                    "live": bool(conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.db,)).fetchone()),
                    "can_login": conn.execute(
                        "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (self.db,)
                    ).fetchone(),
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
                    with self.admin(name, self.db) as db:
                        for key, query in (
                            ("publications", "SELECT pubname FROM pg_publication"),
                            ("event_triggers", "SELECT evtname FROM pg_event_trigger"),  # the DDL refusal
                        ):
                            found[name][key] = [r[0] for r in db.execute(query)]
        return found

    def as_tenant(self, server: str) -> psycopg.Connection:
        """The tenant's own session on `server`, straight to PostgreSQL."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.servers()[server],
            dbname=self.db,
            user=self.db,
            password=self.password(),
            autocommit=True,
        )

    def rows(self) -> set[int]:
        """The writer's rows, read with the tenant's own credentials where the registry says it is."""
        host, port = self.locate()
        with psycopg.connect(
            host=host, port=port, dbname=self.db, user=self.db, password=self.password(), prepare_threshold=None
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
            # And each server's PgBouncer knows it as it is (a site.yml would otherwise change the auth file).
            userlist = LOCAL_STATE / "pgbouncer" / name / "userlist.txt"
            if userlist.exists():
                listed = f'"{self.db}" ' in userlist.read_text()
                assert listed == bool(c["can_login"] and c["can_login"][0]), f"{name}'s PgBouncer auth file: {listed=}"
        move = self.last_move()
        assert move["phase"] == "done" and move["finished_at"] is not None, move
        assert move["verification"]["differing_tables"] == [] and move["verification"]["sequences_behind"] == []
        assert move["verification"]["tables"] >= self.tables
        missing = set(report.committed_ids) - self.rows()
        assert not missing, f"{len(missing)} committed rows lost"
        assert report.commits > 0

    def start_playbook(
        self, playbook: str, *args: str, failpoint: str = "", runtime: tuple[str, ...] = RUNTIME_NONE
    ) -> subprocess.Popen:
        """A playbook run for this tenant in the background, its output piped, in a process group of its own."""
        return subprocess.Popen(
            [str(VENV_BIN / "ansible-playbook"), "-i", "inventories/local", f"playbooks/{playbook}",
             "-e", f"tenant_id={self.tenant}", *args, *runtime],
            cwd=REPO, env={**ansible_env(), FAILPOINT_ENV: failpoint},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip

    def start_change_plan(self, plan: str, failpoint: str, runtime: tuple[str, ...] = RUNTIME_NONE) -> subprocess.Popen:
        return self.start_playbook("tenant_change_plan.yml", "-e", f"plan={plan}", failpoint=failpoint, runtime=runtime)

    def kill_at(self, point: str, signal_file: Path, plan: str) -> str:
        """Run the plan change until db_migrate holds at `point`, then SIGKILL the run's whole process group."""
        run = self.start_change_plan(plan, f"{point}:{signal_file}")
        wait_for_file(run, signal_file, point)
        # The held module's process group goes too, as in a crash (under Mitogen the module runs in the run's own
        # interpreter, in the run's group; Ansible's stock workers run in sessions of their own).
        module_pid = int(signal_file.read_text().split()[0])
        os.killpg(os.getpgid(module_pid), signal.SIGKILL)
        os.killpg(run.pid, signal.SIGKILL)
        output = run.communicate()[0]
        kill_the_rest(f"{FAILPOINT_ENV}={point}:{signal_file}")
        return output[-2000:]


def kill_the_rest(marker: str) -> None:
    """SIGKILL what of a killed run's Ansible escaped its process group (Mitogen's multiplexer). `marker` names the
    run's signal file."""
    for pid in ansible_processes(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def provision_mover(platform: LocalPlatform, tenant: str, custom_models: bool = True) -> Mover:
    """The tenant provisioned on a shared pool (runtime none), its database Odoo-shaped (300 model tables, or
    Odoo's own 133 without `custom_models`), the writer's table made."""
    provisioned = run_playbook(
        "tenant_provision.yml",
        *("-e", f"tenant_id={tenant}", "-e", "plan=basic-monthly", "-e", f"customer_id=acct-{tenant}"),
        *RUNTIME_NONE,
    )
    assert provisioned.returncode == 0, provisioned.output[-4000:]
    mover = Mover(platform, tenant, tables=0)
    with mover.as_tenant(mover.record()["db_server"]) as conn:
        mover.tables = generate(conn, 40, custom_models=custom_models)["tables"]
    mover.writer().prepare()
    return mover


def wait_for_file(run: subprocess.Popen, signal_file: Path, point: str) -> None:
    deadline = time.monotonic() + 300
    while not signal_file.exists():
        if run.poll() is not None:
            pytest.fail(f"the run ended before reaching {point}:\n{run.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(run.pid, signal.SIGKILL)
            pytest.fail(f"the run did not reach {point} within 300 s")
        time.sleep(0.05)  # polling for the file the held run writes
