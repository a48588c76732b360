"""Undoing a move: a switch back to the source (nothing the tenant wrote on the target lost), a roll back before
the switch, and the replication objects and roles a move leaves, dropped."""

from __future__ import annotations

import json

from ansible_collections.saasodoo.platform.plugins.module_utils.move_servers import (
    MARKER_SCHEMA,
    MoveError,
    Replication,
    Server,
)

try:
    from psycopg import sql
except ImportError:  # reported by the module with missing_required_lib
    sql = None


class RollbackPhase:
    """Move's undoing (self is a Move: module_utils/migration.py)."""

    def _switch_back_and_fail(self, reason: str) -> None:
        self.switch_back(reason)
        raise MoveError(
            f"moving tenant {self.tenant['tenant_id']} to {self.target.name}: {reason}. Switched back: the tenant is"
            f" served from {self.source.name} again with every write it made meanwhile; fix the cause and run the"
            " playbook again"
        )

    def switch_back(self, reason: str) -> None:
        """Back to the source after the switch: the target blocked, its last writes applied on the source, the
        registry pointed back, then rolled back as before the switch (the source opens, the target goes).

        If the source cannot catch up (the way back broken), the tenant stays on the target, which holds every
        write: it is opened again and the move left open, for the next run or an operator.
        """
        self.enter("switching_back", error=reason)
        self._failpoint("switching_back")
        self._end_sessions(self.target)
        try:
            self._wait_for_marker(self.backward)
            self._sync_sequences(self.target, self.source)
        except Exception as e:
            self._allow_login(self.target)
            raise MoveError(
                f"{reason}; switching back to {self.source.name} failed ({e}): the tenant stays on"
                f" {self.target.name}, which holds every write, and migration {self.id} stays open"
            ) from None
        before = self.row["switched_from"]
        with self.registry.transaction():
            self.registry.execute(  # a move switched by an older release recorded no extra_modules: left as is
                "UPDATE registry.tenants SET db_server = %s, db_type = %s, plan_name = %s, plan_version = %s,"
                " quotas = %s, extra_modules = coalesce(%s, extra_modules) WHERE tenant_id = %s",
                (
                    self.source.name,
                    before["db_type"],
                    before["plan_name"],
                    before["plan_version"],
                    json.dumps(before["quotas"]),
                    before.get("extra_modules"),
                    self.tenant["tenant_id"],
                ),
            )
            self.audit(
                "result",
                {"action": "move", "phase": "switched_back", "from": self.target.name, "to": self.source.name},
            )
        if self.row["source_could_login"]:
            self._allow_login(self.source)  # at once: the clean-up below takes its time
        self.roll_back(f"switched back: {reason}", finish=self._finish_when_undone("switching_back"))

    def roll_back(self, reason: str, finish: bool) -> None:
        """Back to the source as it was: target database dropped, replication gone, the source open again."""
        if self.tenant_now()["db_server"] == self.target.name:
            raise MoveError(f"refusing to roll back migration {self.id}: the registry already points at the target")
        self._drop_replication()
        with self.target.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db_name)))
            owns = conn.execute(
                "SELECT pg_catalog.count(*) FROM pg_catalog.pg_database d"
                " JOIN pg_catalog.pg_roles r ON r.oid = d.datdba WHERE r.rolname = %s",
                (self.tenant["db_role"],),
            ).fetchone()[0]
            role = sql.Identifier(self.tenant["db_role"])
            if owns:  # it owns an old copy kept here: it stays, unable to log in
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
            else:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
        if self.row["source_could_login"]:
            with self.source.connect() as conn:
                conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(self.tenant["db_role"])))
        self.source.open_pgbouncer_door(self.db_name)
        with self.registry.transaction():
            self.enter("rolled_back", error=reason, **({"finished_at": self._now()} if finish else {}))
            self.audit("result", {"action": "move", "phase": "rolled_back", "reason": reason})

    def _drop_replication(self) -> None:
        """Both ways' subscriptions, publications, slots and roles, the marker schemas and the restore role."""
        for way in (self.forward, self.backward):
            self._drop_replication_way(way)
        for server in (self.source, self.target):
            if self._has_database(server):
                with server.connect(self.db_name) as conn:
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(MARKER_SCHEMA)))
        self._drop_roles(self.target, self.restore_role)

    def _drop_subscription(self, way: Replication) -> None:
        """One way's subscription, if there: detached from its slot first, so the drop never depends on reaching
        the publisher. Its apply worker has stopped once this returns."""
        if self._has_database(way.subscriber):
            with way.subscriber.connect(self.db_name) as conn:
                if conn.execute("SELECT 1 FROM pg_catalog.pg_subscription WHERE subname = %s", (way.name,)).fetchone():
                    conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(sql.Identifier(way.name)))
                    conn.execute(
                        sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(sql.Identifier(way.name))
                    )
                    conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(way.name)))

    def _drop_replication_way(self, way: Replication) -> None:
        """One way's subscription, its apply role, slot, publication and replication role: whichever exist."""
        self._drop_subscription(way)
        self._drop_roles(way.subscriber, way.apply_role)
        with way.publisher.connect() as conn:
            for _attempt in range(50):  # a walsender still exiting keeps its slot active for a moment
                active = conn.execute(
                    "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (way.name,)
                ).fetchone()
                if active is None:
                    break
                if active[0] is None:
                    conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (way.name,))
                    break
                conn.execute("SELECT pg_catalog.pg_terminate_backend(%s, 1000)", (active[0],))
            else:
                raise MoveError(f"replication slot {way.name} on {way.publisher.name} stays in use")
        if self._has_database(way.publisher):
            with way.publisher.connect(self.db_name) as conn:
                conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(way.name)))
        self._drop_roles(way.publisher, way.name)

    def _drop_roles(self, server: Server, role: str) -> None:
        """A move's role: what the tenant's code made as it goes to the tenant, its grants go, its sessions end."""
        with server.connect() as conn:
            if not conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone():
                return
            conn.execute(
                "SELECT pg_catalog.pg_terminate_backend(pid, 1000) FROM pg_catalog.pg_stat_activity WHERE usename = %s",
                (role,),
            )
        if self._has_database(server):
            with server.connect(self.db_name) as conn:
                conn.execute(
                    sql.SQL("REASSIGN OWNED BY {0} TO {1}; DROP OWNED BY {0}").format(
                        sql.Identifier(role), sql.Identifier(self.tenant["db_role"])
                    )
                )
        with server.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    def _has_database(self, server: Server) -> bool:
        with server.connect() as conn:
            return bool(
                conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (self.db_name,)).fetchone()
            )
