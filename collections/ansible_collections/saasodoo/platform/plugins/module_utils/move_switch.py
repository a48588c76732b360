"""A move's switch: the tenant's writes blocked, the target caught up, replication turned round, both copies
frozen in a snapshot, the registry repointed and the target let in."""

from __future__ import annotations

import json
import secrets
import time

from ansible_collections.saasodoo.platform.plugins.module_utils.move_servers import (
    MARKER_SCHEMA,
    VERIFICATION_SETTINGS,
    MoveError,
    Replication,
    Server,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.move_verify import sequence_states

try:
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row
except ImportError:  # reported by the module with missing_required_lib
    psycopg = sql = dict_row = None


class SwitchPhase:
    """Move's switch (self is a Move: module_utils/migration.py)."""

    def _block_writes(self) -> float:
        """No session of the tenant's role on the source from here on; returns when it started."""
        self.stop_if_run_is_gone()
        with self.source.connect() as conn:
            could_login = conn.execute(
                "SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = %s", (self.tenant["db_role"],)
            ).fetchone()[0]
        # The target's PgBouncer turns the tenant's clients away until the switch lets the role in (before the phase
        # that sends the tenant's runtime there: close_pgbouncer_door).
        self.target.close_pgbouncer_door(self.db_name)
        # Recorded first: whoever rolls this move back opens the source again only if it was open.
        self.enter("cutover", source_could_login=could_login)
        started = time.monotonic()
        self._end_sessions(self.source)
        self._failpoint("cutover")
        return started

    def _end_sessions(self, server: Server) -> None:
        """The tenant's PgBouncer clients on `server` turned away, its role refused there, its sessions ended and
        waited for.

        PgBouncer's door closes first. A client it still had once the role was refused would make it ask the server
        for a login: refused, and held against the tenant's pool there for server_login_retry (15 s), which a move
        back within that time would find (its let-in stalled until then).
        """
        role = self.tenant["db_role"]
        server.close_pgbouncer_door(self.db_name)
        with server.connect() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
            # Wait for each session to be gone: a commit still in flight must land before the marker.
            sessions = "SELECT pid FROM pg_catalog.pg_stat_activity WHERE usename = %s"
            for _attempt in range(50):
                pids = [pid for (pid,) in conn.execute(sessions, (role,))]
                if not pids:
                    return
                for pid in pids:
                    conn.execute("SELECT pg_catalog.pg_terminate_backend(%s, 1000)", (pid,))
        raise MoveError(f"sessions of {role} on {server.name} would not end")

    def _wait_for_marker(self, way: Replication) -> None:
        """Every commit on the publisher before the marker is applied on the subscriber once the marker is."""
        token = f"{self.id}:{secrets.token_hex(8)}"
        with way.publisher.connect(self.db_name) as conn:
            conn.execute(
                sql.SQL("INSERT INTO {}.marker (token) VALUES (%s)").format(sql.Identifier(MARKER_SCHEMA)), (token,)
            )
        deadline = time.monotonic() + self.options.catchup_timeout
        query = sql.SQL("SELECT 1 FROM {}.marker WHERE token = %s").format(sql.Identifier(MARKER_SCHEMA))
        with way.subscriber.connect(self.db_name) as conn:
            while not conn.execute(query, (token,)).fetchone():
                if time.monotonic() > deadline:
                    raise MoveError(
                        f"{way.subscriber.name} did not catch up with {way.publisher.name} within "
                        f"{self.options.catchup_timeout:.0f} s"
                    )
                time.sleep(0.01)

    def _sync_sequences(self, origin: Server, copy: Server) -> None:
        """Every sequence's state copied whole, then read back: logical replication does not carry them.

        A sequence set back with is_called = false hands out last_value next. Read back at once, while both sides
        are frozen: after the switch the tenant moves them on.
        """
        with origin.connect(self.db_name) as conn:
            values = sequence_states(conn)
        with copy.connect(self.db_name) as conn:
            with conn.transaction():
                for name, (value, is_called) in values.items():
                    conn.execute(
                        "SELECT pg_catalog.setval(%s::pg_catalog.regclass, %s::pg_catalog.int8, %s::pg_catalog.bool)",
                        (name, value, is_called),
                    )
            copied = sequence_states(conn)
        behind = sorted(s for s, v in values.items() if copied.get(s) != v)
        if behind:
            raise MoveError(f"{len(behind)} sequences differ on {copy.name} after the copy: {', '.join(behind[:5])}")
        self.sequences_checked = len(values)
        self.executed.append(f"synced {len(values)} sequences to {copy.name}")

    def _turn_replication_round(self) -> None:
        """Replication from the target back to the source, ready before the target opens.

        The forward subscription goes first: PostgreSQL 15 has no origin filter, and both ways at once would send
        every row round in a loop (its slot, publication and roles go with the move's other leftovers, after the
        switch). The way back's slot is then moved past everything the forward apply wrote, and the tenant cannot
        write on the target yet: the source receives every write made after the switch, and only those. The apply
        on the source runs the source's code, which the tenant could change until the block: it is checked again
        before the way back's subscription, made beforehand, is enabled. Schema changes on the target are refused
        until the copies are verified: the way back carries rows, not DDL.
        """
        self._drop_subscription(self.forward)
        self._refuse_tenant_code(self.source)
        with self.target.connect(self.db_name) as conn:
            conn.execute(
                "SELECT pg_catalog.pg_replication_slot_advance(%s, pg_catalog.pg_current_wal_lsn())",
                (self.backward.name,),
            )
            schema = sql.Identifier(MARKER_SCHEMA)
            conn.execute(
                sql.SQL(
                    "CREATE FUNCTION {}.refuse_ddl() RETURNS event_trigger LANGUAGE plpgsql"
                    " SET search_path = pg_catalog, pg_temp AS $$ BEGIN"
                    " IF NOT pg_catalog.current_setting('is_superuser')::pg_catalog.bool THEN"
                    " RAISE EXCEPTION 'this database is being moved: schema changes wait until the move is verified';"
                    " END IF; END $$"
                ).format(schema)
            )
            conn.execute(
                sql.SQL("CREATE EVENT TRIGGER {} ON ddl_command_start EXECUTE FUNCTION {}.refuse_ddl()").format(
                    sql.Identifier(f"{MARKER_SCHEMA}_refuse_ddl"), schema
                )
            )
        with self.source.connect(self.db_name) as conn:
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(sql.Identifier(self.backward.name)))

    def _snapshots(self) -> tuple[psycopg.Connection, psycopg.Connection]:
        """A REPEATABLE READ transaction on each copy, its snapshot taken while both are frozen and equal.

        The target's is read while the tenant works there and owns its catalog (it could put a view of its own
        in a table's place): it is the move's unprivileged role's, a member of the tenant's role (BYPASSRLS, so
        no policy hides a row), never a superuser's.
        """
        opened: list[psycopg.Connection] = []
        try:
            for conn in (self.source.connect(self.db_name, fresh=True), self._connect_as_restorer()):
                opened.append(conn)
                conn.execute(VERIFICATION_SETTINGS)
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                conn.execute("SELECT pg_catalog.txid_current_snapshot()")  # the snapshot is taken by a first query
        except BaseException:
            for conn in opened:
                conn.close()
            raise
        return opened[0], opened[1]

    def _repoint(self, downtime_started: float, laps: dict[str, int]) -> None:
        """The registry points at the target from here on: one transaction, with the phase and the plan; then the
        target lets the tenant in.

        `laps` is the held window's steps so far (ms since the block): the repoint's are added, and the whole is
        recorded with how long the tenant was held.

        Its role may log in, and its PgBouncer's door (closed since the block) opens, only once the registry says so:
        the tenant's runtime may have followed the move there since its block, and a write it made there before a
        failed commit would be lost to a roll back. A client that came early was turned away without a login the
        server refused (close_pgbouncer_door), and gets in at its next try. A failure between the commit and the
        login leaves the move switched, as a run killed there does: the next run switches it back (logical) or
        finishes it (dump, verified before).
        """
        with self.registry.transaction(), self.registry.cursor(row_factory=dict_row) as cur:
            before = cur.execute(
                "SELECT db_server, db_type, plan_name, plan_version, quotas, extra_modules FROM registry.tenants"
                " WHERE tenant_id = %s FOR UPDATE",
                (self.tenant["tenant_id"],),
            ).fetchone()
            self._record(switched_from=json.dumps(before))
            plan = cur.execute(
                "SELECT name, version, db_type, entitlements FROM registry.plans WHERE name = %s"
                " ORDER BY version DESC LIMIT 1",
                (self.row["plan_name"],),
            ).fetchone()
            cur.execute(  # the right side reads the row as it was: extra_modules from the plan it leaves
                "UPDATE registry.tenants SET db_server = %(server)s, db_type = %(db_type)s, plan_name = %(name)s,"
                " plan_version = %(version)s, quotas = %(quotas)s, extra_modules = registry.extra_modules_after("
                "plan_name, plan_version, extra_modules, %(name)s, %(version)s) WHERE tenant_id = %(tenant)s",
                {
                    "server": self.target.name,
                    "db_type": plan["db_type"],
                    "name": plan["name"],
                    "version": plan["version"],
                    "quotas": json.dumps(plan["entitlements"]),
                    "tenant": self.tenant["tenant_id"],
                },
            )
            self.enter("repointed")
            laps["repointed"] = round((time.monotonic() - downtime_started) * 1000)
            self.audit(
                "result",
                {
                    "action": "move",
                    "phase": "repointed",
                    "from": self.source.name,
                    "to": self.target.name,
                    "plan": plan["name"],
                    "db_type": plan["db_type"],
                },
            )
        for attempt in range(3):  # a moment's trouble on the target would leave the tenant out until the next run
            try:
                self._allow_login(self.target)
                break
            except psycopg.OperationalError:
                if attempt == 2:
                    raise
                time.sleep(0.2)  # another session, a moment later
        held_ms = round((time.monotonic() - downtime_started) * 1000)
        laps["let in"] = held_ms
        self.executed.append(f"held window, ms after writes were blocked: {json.dumps(laps)}")
        if self.tenant["status"] == "active":
            self._record(write_downtime_ms=held_ms, held_timeline=json.dumps(laps))
        else:  # a suspended tenant writes nothing, and is not held: the steps are kept all the same
            self._record(held_timeline=json.dumps(laps))
        self._failpoint("repointed")

    def _allow_login(self, server: Server) -> None:
        """The role may log in on `server` (an active tenant's), and its PgBouncer takes the database's clients.

        PgBouncer's door opens for a suspended tenant too: its role is what keeps it out, and a resume opens only that.
        """
        if self.tenant["status"] == "active":
            with server.connect() as conn:
                conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(self.tenant["db_role"])))
        server.open_pgbouncer_door(self.db_name)
