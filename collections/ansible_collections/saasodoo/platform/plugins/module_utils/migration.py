"""Moving a tenant's database to another PostgreSQL server (docs/moves.md), every phase recorded.

Methods: `logical` copies the schema (pg_dump --schema-only: bare tables first), the rows from the snapshot of
the move's slot in parallel COPY streams, the keys, then subscribes on that slot, builds the other indexes and
constraints, checks that the apply would run none of the tenant's code, and starts it, while the tenant keeps
writing; writes are blocked only until the target has caught up. Then the
switch: replication is turned round (target -> source), both copies are frozen in a snapshot, the target opens
and the registry points at it, in one transaction that records the phase `repointed`. The two snapshots are
verified after that, while the tenant works on the target and the source receives every write it makes: a
mismatch, or a run killed before `verified`, switches back (target blocked, its last writes applied on the
source, the registry pointed back), nothing lost either way.
`dump` blocks writes, copies with parallel directory-format pg_dump / pg_restore and verifies before the switch.

Only one copy at a time lets the tenant's role log in. A run that finds a move nobody is running (killed,
crashed) rolls back what it finds before the switch, switches back what it finds switched but unverified, and
finishes the rest.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import record_audit
from ansible_collections.saasodoo.platform.plugins.module_utils.move_copy import CopyPhase
from ansible_collections.saasodoo.platform.plugins.module_utils.move_rollback import RollbackPhase
from ansible_collections.saasodoo.platform.plugins.module_utils.move_servers import (
    VERIFICATION_SETTINGS,
    MoveError,
    Replication,
    Server,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.move_switch import SwitchPhase
from ansible_collections.saasodoo.platform.plugins.module_utils.move_verify import VerifyPhase
from ansible_collections.saasodoo.platform.plugins.module_utils.placement import kept_copy_name

try:
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row
except ImportError:  # reported by the module with missing_required_lib
    psycopg = sql = dict_row = None

# Fault injection for the tests, comma-separated: "<point>:<file>" makes a run write <file> and hold at that point
# until killed; "pause-<point>:<file>" holds it until <file> is removed.
FAILPOINT_ENV = "SAASODOO_DB_MIGRATE_FAILPOINT"


@dataclass
class MoveOptions:
    pg_bin_dir: str = "/usr/lib/postgresql/15/bin"
    jobs: int = 2
    sync_timeout: float = 3600.0
    catchup_timeout: float = 60.0
    retain_days: int = 7
    replication_sslmode: str = "prefer"
    # Run as an async task (tasks/move_database.yml), the move outlives a killed playbook run unless it stops too:
    # with the run's id (its audit run, whose holder session holds the tenant), it stops once that run is gone (see
    # Move.stop_if_run_is_gone).
    run_id: str = ""


@dataclass
class Move(CopyPhase, SwitchPhase, VerifyPhase, RollbackPhase):
    """One attempt at moving a tenant's database: a row of registry.migrations; its phases from the mixins beside
    (move_copy.py, move_switch.py, move_verify.py, move_rollback.py)."""

    registry: psycopg.Connection
    row: dict
    tenant: dict
    source: Server
    target: Server
    options: MoveOptions
    executed: list[str] = field(default_factory=list)
    sequences_checked: int = 0  # how many sequences the last copy of them set and read back equal
    # The password of the move's unprivileged role on the target (restores, and a logical move's snapshot there).
    restore_password: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    watched_run: bool = False  # run() sets it: the run in options.run_id had the tenant (stop_if_run_is_gone)

    @property
    def id(self) -> int:
        return self.row["id"]

    @property
    def db_name(self) -> str:
        return self.tenant["db_name"]

    @functools.cached_property
    def forward(self) -> Replication:
        """Source to target: the copy and its catching up, until the switch."""
        return Replication(self.source, self.target, f"saasodoo_move_{self.id}", secrets.token_urlsafe(32))

    @functools.cached_property
    def backward(self) -> Replication:
        """Target to source, from the switch until the copies are verified: the way back loses nothing."""
        return Replication(self.target, self.source, f"saasodoo_move_{self.id}_back", secrets.token_urlsafe(32))

    @property
    def restore_role(self) -> str:
        """The move's unprivileged role on the target: pg_restore's, the writer of a logical move's rows and the reader
        of its snapshot after the switch (_make_restorer)."""
        return f"saasodoo_move_{self.id}_restore"

    def run(self) -> None:
        """Take the move from where it is to done (see the module's docstring)."""
        self.watched_run = bool(self.options.run_id) and self.run_holds_the_tenant()
        if not self.switched():
            try:
                snapshots = self._switch()
            except Exception as e:  # every failure before the switch is rolled back
                if self.switched():
                    raise  # after it (a registry error once repointed): the next run switches back
                self.row = self._current_row()  # the phase as committed (a failed commit's is not)
                failed_in = self.row["phase"]
                reason = str(e) if isinstance(e, MoveError) else f"{type(e).__name__}: {e}"
                self.roll_back(f"failed in {failed_in}: {reason}", finish=self._finish_when_undone(failed_in))
                raise MoveError(
                    f"moving tenant {self.tenant['tenant_id']} to {self.target.name} failed in {failed_in}: "
                    f"{reason}. Rolled back: the tenant is served from {self.source.name} as before; "
                    "fix the cause and run the playbook again"
                ) from None
            if snapshots:
                self._verify_after_switch(*snapshots)
        elif not self.finishable():
            self._switch_back_and_fail(f"interrupted in {self.row['phase']}, before the copies were verified")
        self._clean_up()

    def _switch(self) -> tuple[psycopg.Connection, psycopg.Connection] | None:
        """From the copy to the registry pointing at the target.

        Logical: returns the two copies' snapshots, taken while both were frozen and equal, for the verification
        after the switch. Dump: verifies before the switch, and returns None.
        """
        laps: dict[str, int] = {}  # each step of the held window, ms since the block (registry: held_timeline)

        def lap(step: str) -> None:
            laps[step] = round((time.monotonic() - downtime_started) * 1000)

        if self.row["method"] == "dump":
            downtime_started = self._block_writes()
            lap("sessions ended")
            self._copy_dump()
            lap("copied")
            self._sync_sequences(self.source, self.target)
            lap("sequences copied")
            with self.source.connect(self.db_name) as source, self.target.connect(self.db_name) as target:
                for conn in (source, target):
                    conn.execute(VERIFICATION_SETTINGS)
                self._verify(source, target)
            lap("verified")
            self.enter("verified")
            self._failpoint("verified")
            self.stop_if_run_is_gone()  # not switched yet: rolled back and reopened
            self._repoint(downtime_started, laps)
            return None
        self._copy_logical()

        with self.source.keeping(), self.target.keeping():  # one admin session per server and database
            downtime_started = self._block_writes()
            lap("sessions ended")
            self._wait_for_marker(self.forward)
            lap("caught up")
            self._sync_sequences(self.source, self.target)
            lap("sequences copied")
            self._turn_replication_round()
            lap("replication turned round")
            self._failpoint("turned")
            snapshots = self._snapshots()
            lap("snapshots taken")
            try:
                self._repoint(downtime_started, laps)
            except BaseException:
                for conn in snapshots:
                    conn.close()
                raise
        return snapshots

    def _clean_up(self) -> None:
        self._allow_login(self.target)  # already open, unless a playbook run since closed it
        self._drop_replication()
        retained = kept_copy_name(self.db_name, self.id)
        with self.source.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (self.db_name,)).fetchone()
            if exists:
                conn.execute(
                    "SELECT pg_catalog.pg_terminate_backend(pid, 1000) FROM pg_catalog.pg_stat_activity"
                    " WHERE datname = %s",
                    (self.db_name,),
                )
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(self.db_name), sql.Identifier(retained)
                    )
                )
        with self.registry.transaction():
            self._record(retained_db=retained)
            # From the placement on, whichever runs it took.
            self.registry.execute(
                "UPDATE registry.migrations SET retain_until = now() + make_interval(days => %s),"
                " total_ms = round(extract(epoch FROM clock_timestamp() - started_at) * 1000) WHERE id = %s",
                (self.options.retain_days, self.id),
            )
            self.enter("done", finished_at=self._now())
            self.audit(
                "result",
                {
                    "action": "move",
                    "phase": "done",
                    "retained_db": retained,
                    "write_downtime_ms": self.row["write_downtime_ms"],
                },
            )

    def _finish_when_undone(self, phase: str) -> bool:
        """Whether a move undone in `phase` (rolled back, or switched back) is finished.

        Not a logical move undone from its block on once the run that watched it is gone: the tenant's runtime
        follows such a move from its block, and that run's rescue would have pointed it back. Left open, the move is
        taken up at once by the recovery pass (webhook_runner's stuck_moves), whose run's place step finishes it and
        points the runtime back.
        """
        after_block = phase not in ("placed", "copying", "catching_up")
        return not (
            self.watched_run and self.row["method"] == "logical" and after_block and not self.run_holds_the_tenant()
        )

    def switched(self) -> bool:
        """The registry points at the target: the tenant works there."""
        return self.tenant_now()["db_server"] == self.target.name

    def finishable(self) -> bool:
        """Switched, and verified (a logical move verifies after the switch, a dump move before it)."""
        # A logical move repointed before this release (switched_from unset) was verified before its repoint.
        unverified = (
            self.row["method"] == "logical"
            and self.row["phase"] in ("repointed", "switching_back")
            and self.row["switched_from"] is not None
        )
        return self.switched() and not unverified

    def tenant_now(self) -> dict:
        with self.registry.cursor(row_factory=dict_row) as cur:
            return cur.execute(
                "SELECT * FROM registry.tenants WHERE tenant_id = %s", (self.tenant["tenant_id"],)
            ).fetchone()

    def run_holds_the_tenant(self) -> bool:
        """Whether the move's playbook run (options.run_id) lives and has the tenant (registry.tenant_runs)."""
        (alive,) = self.registry.execute(
            "SELECT pg_catalog.count(*) > 0 FROM registry.tenant_runs"
            " WHERE tenant_id = %s AND run_id = %s AND registry.run_is_alive(holder_pid, run_id)",
            (self.tenant["tenant_id"], self.options.run_id),
        ).fetchone()
        return alive

    def stop_if_run_is_gone(self, crash: bool = False) -> None:
        """Once the run that watches this move is gone (watched_run: it had the tenant when the move began; a run
        without the audit callback's holder has none and is not watched): a MoveError (before the switch: rolled
        back, reopened if it was blocked) or, with `crash`, an exit as a crash's (switched and verified: the
        recovery pass's run finishes the move and points the runtime at it). A move its playbook no longer watches
        never leaves the tenant's runtime on the old server by itself, nor on a target it undid the move from
        (_finish_when_undone: left open for the recovery pass)."""
        if not self.watched_run or self.run_holds_the_tenant():
            return
        if crash:
            os._exit(3)  # as if killed: the registry keeps the phase, the lock goes with the session
        raise MoveError("the playbook run that started the move is gone")

    def enter(self, phase: str, **fields) -> None:
        """Record the phase (and fields) before doing its work; a killed run is judged by it."""
        detail = {k: v for k, v in fields.items() if k in ("error",)}
        assignments = [sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in fields]
        query = sql.SQL(
            "UPDATE registry.migrations SET phase = %(phase)s,"
            " phase_history = phase_history || jsonb_build_array(jsonb_build_object("
            "   'phase', %(phase)s::text, 'at', clock_timestamp()) || %(detail)s::jsonb){}"
            " WHERE id = %(id)s RETURNING *"
        ).format(sql.SQL("").join(sql.SQL(", ") + a for a in assignments))
        with self.registry.cursor(row_factory=dict_row) as cur:
            self.row = cur.execute(
                query, {"phase": phase, "detail": json.dumps(detail), "id": self.id, **fields}
            ).fetchone()
        self.executed.append(f"phase {phase}")

    def _record(self, **fields) -> None:
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in fields
        )
        with self.registry.cursor(row_factory=dict_row) as cur:
            self.row = cur.execute(
                sql.SQL("UPDATE registry.migrations SET {} WHERE id = %(id)s RETURNING *").format(assignments),
                {**fields, "id": self.id},
            ).fetchone()

    def _current_row(self) -> dict:
        with self.registry.cursor(row_factory=dict_row) as cur:
            return cur.execute("SELECT * FROM registry.migrations WHERE id = %s", (self.id,)).fetchone()

    def audit(self, kind: str, detail: dict) -> None:
        record_audit(
            self.registry,
            actor="db_migrate",
            tenant_id=self.tenant["tenant_id"],
            kind=kind,
            subject=f"migration:{self.id}",
            detail=detail,
        )

    def _failpoint(self, point: str) -> None:
        held = dict(entry.partition(":")[::2] for entry in os.environ.get(FAILPOINT_ENV, "").split(",") if entry)
        name = point if point in held else f"pause-{point}"
        signal_file = held.get(name)
        if signal_file is None:
            return
        with open(signal_file + ".tmp", "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(signal_file + ".tmp", signal_file)  # whole, once it exists
        if name == point:
            threading.Event().wait()  # held until killed
        while os.path.exists(signal_file):  # pause-<point>: held until the test removes the file
            time.sleep(0.05)

    def _pg(self, tool: str, server: Server | None, *args: str) -> str:
        """Run pg_dump / pg_restore against a server as its superuser; its output, or MoveError with stderr."""
        conn_args, env = server.libpq_args() if server else ([], dict(os.environ))
        return self._run_tool(tool, conn_args, args, env)

    def _run_tool(self, tool: str, conn_args: list[str], args: tuple[str, ...] | list[str], env: dict) -> str:
        binary = os.path.join(self.options.pg_bin_dir, tool)
        if not os.path.exists(binary):
            binary = shutil.which(tool) or binary
        run = subprocess.run([binary, *conn_args, *args], env=env, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise MoveError(f"{tool} failed ({run.returncode}): {run.stderr.strip()[-1500:]}")
        self.executed.append(f"{tool} {' '.join(a for a in args if not a.startswith('/'))}")
        return run.stdout

    def _now(self) -> object:
        return self.registry.execute("SELECT pg_catalog.now()").fetchone()[0]
