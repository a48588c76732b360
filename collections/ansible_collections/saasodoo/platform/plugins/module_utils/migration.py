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

import contextlib
import functools
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import record_audit
from ansible_collections.saasodoo.platform.plugins.module_utils.placement import kept_copy_name
from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import scram_sha_256_verifier

try:
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row
except ImportError:  # reported by the module with missing_required_lib
    psycopg = sql = dict_row = None

# Phases (registry.migrations.phase, checked there): placed, copying, catching_up, cutover, then repointed and
# verified (logical) or verified and repointed (dump), done; or switching_back and rolled_back.
MARKER_SCHEMA = "saasodoo_move"  # a marker table the cutover writes through replication, dropped after
MOVERS_GROUP = "saasodoo_movers"  # pg_hba lets its members (one per move, dropped after) reach any database
# Fault injection for the tests, comma-separated: "<point>:<file>" makes a run write <file> and hold at that point
# until killed; "pause-<point>:<file>" holds it until <file> is removed.
FAILPOINT_ENV = "SAASODOO_DB_MIGRATE_FAILPOINT"
# How long a logical move's copy waits for a lock on the tenant's tables (held or queued by the tenant's own DDL).
LOCK_TABLES_TIMEOUT_MS = 60_000
STREAM_STOP_SECONDS = 30  # how long a cancelled copy stream gets to stop
# Every tenant is hostile: it owns its database and can plant functions, operators, casts and per-database
# settings (ALTER DATABASE ... SET search_path, role, default_transaction_read_only) there. Every session this
# module opens, a superuser's inside the tenant's database above all, pins those settings (a startup option
# outranks the database's settings), resolves names in pg_catalog only and calls functions by their qualified
# names on top of that (CVE-2018-1058). It reads no view or foreign table of the tenant's either: a session that
# lists the tenant's tables and then reads each by name would run the tenant's function if the tenant swapped a table
# for a view in between (restrict_nonsystem_relation_kind, PostgreSQL 15.8 and later: postgres_server refuses an
# older server). The tenant_database module, roles/odoo_template and the backup/restore playbooks pin the same
# (tests/unit/test_migration.py keeps them equal).
PINNED_SESSION = (
    "-c search_path=pg_catalog,pg_temp -c role=none -c default_transaction_read_only=off"
    " -c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0"
    " -c restrict_nonsystem_relation_kind=view,foreign-table"
)
# For a session about to send a statement that holds a secret: none of it reaches the server's log.
QUIET_STATEMENT_LOGGING = (
    "SET log_statement = 'none'; SET log_min_duration_statement = -1; SET log_min_error_statement = panic"
)


# How a verification session prints values (record_out): the same on both sides whatever the servers' defaults.
VERIFICATION_SETTINGS = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres';"
    " SET extra_float_digits = 1; SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET client_encoding = 'UTF8'"
)


# What the apply of a logical move would run of the tenant's own making: triggers set to fire in
# replication (ENABLE ALWAYS / REPLICA), row-level security forced on the owner, and functions or operators
# written by a non-superuser in CHECK and domain constraints, defaults (a domain's too) and generated columns, index
# expressions, and types (a range's subtype_diff, which a GiST index on it calls for every row) (pg_depend names
# them). Also built-ins that run SQL given as text or read a relation, which may be the
# tenant's view (query_to_xml('SELECT its_function()', ...), ts_stat, table_to_xml of a view): pg_depend records no
# dependency on a built-in, so the expressions' stored trees are searched for them, called or behind an operator.
# PostgreSQL 15 runs all of it as the subscription's owner, which may ALTER its subscription (its connection, its
# slot): a logical move refuses them, and method dump (its restore runs as an unprivileged role) moves such a
# database.
TENANT_CODE_IN_APPLY = """
SELECT pg_catalog.format('trigger %s on %s', t.tgname, t.tgrelid::pg_catalog.regclass)
  FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal AND t.tgenabled IN ('A', 'R')
UNION
SELECT pg_catalog.format('row-level security forced on %s', c.oid::pg_catalog.regclass)
  FROM pg_catalog.pg_class c WHERE c.relforcerowsecurity
UNION
SELECT pg_catalog.format('function %s', p.oid::pg_catalog.regprocedure)
  FROM pg_catalog.pg_depend d
  LEFT JOIN pg_catalog.pg_operator o
         ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND o.oid = d.refobjid
  JOIN pg_catalog.pg_proc p
    ON p.oid = CASE WHEN d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN d.refobjid
                    ELSE o.oprcode::pg_catalog.oid END
  JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
 WHERE d.classid IN ('pg_catalog.pg_constraint'::pg_catalog.regclass, 'pg_catalog.pg_attrdef'::pg_catalog.regclass,
                     'pg_catalog.pg_class'::pg_catalog.regclass, 'pg_catalog.pg_type'::pg_catalog.regclass)
   AND NOT r.rolsuper
UNION
SELECT pg_catalog.format('function %s in %s', p.oid::pg_catalog.regprocedure, e.what)
  FROM (SELECT pg_catalog.format('constraint %s', c.conname), c.conbin::pg_catalog.text
          FROM pg_catalog.pg_constraint c WHERE c.conbin IS NOT NULL
        UNION ALL
        SELECT pg_catalog.format('the default of %s column %s', a.adrelid::pg_catalog.regclass, a.adnum),
               a.adbin::pg_catalog.text
          FROM pg_catalog.pg_attrdef a
        UNION ALL
        SELECT pg_catalog.format('the default of domain %s', t.oid::pg_catalog.regtype),
               t.typdefaultbin::pg_catalog.text
          FROM pg_catalog.pg_type t WHERE t.typdefaultbin IS NOT NULL
        UNION ALL
        SELECT pg_catalog.format('index %s', i.indexrelid::pg_catalog.regclass),
               pg_catalog.concat(i.indexprs::pg_catalog.text, ' ', i.indpred::pg_catalog.text)
          FROM pg_catalog.pg_index i WHERE i.indexprs IS NOT NULL OR i.indpred IS NOT NULL) AS e (what, tree)
  JOIN pg_catalog.pg_proc p ON p.proname OPERATOR(pg_catalog.=) ANY ('{query_to_xml, query_to_xmlschema,
         query_to_xml_and_xmlschema, cursor_to_xml, cursor_to_xmlschema, table_to_xml, table_to_xmlschema,
         table_to_xml_and_xmlschema, schema_to_xml, schema_to_xmlschema, schema_to_xml_and_xmlschema, database_to_xml,
         database_to_xmlschema, database_to_xml_and_xmlschema, ts_stat, ts_rewrite}'::pg_catalog.name[])
 WHERE e.tree OPERATOR(pg_catalog.~) pg_catalog.format(':funcid %s ', p.oid)
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_operator o WHERE o.oprcode OPERATOR(pg_catalog.=) p.oid
                  AND e.tree OPERATOR(pg_catalog.~) pg_catalog.format(':opno %s ', o.oid))
ORDER BY 1
"""


# The tables a logical move copies (those FOR ALL TABLES publishes, less the marker), the largest first by the
# catalog's estimate (no function that would wait on a tenant's lock), each with its columns by name (COPY goes by
# position, and pg_dump can order an inheritance child's columns differently on the target) and whether every
# column's type, or its element type, is one whose binary form means the same on any server (see Move._copy_rows).
TABLES_TO_COPY = """
SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname),
       (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
       NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                      AND CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE t.oid END <> ALL (ARRAY[
                          'boolean', 'smallint', 'integer', 'bigint', 'real', 'double precision', 'numeric',
                          'money', 'text', 'character varying', 'character', '"char"', 'name', 'bytea', 'uuid',
                          'json', 'jsonb', 'date', 'time', 'time with time zone', 'timestamp',
                          'timestamp with time zone', 'interval', 'inet', 'cidr', 'macaddr'
                      ]::pg_catalog.regtype[]::pg_catalog.oid[]))
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_class toast ON toast.oid = c.reltoastrelid
 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', %s)
   AND n.nspname NOT LIKE 'pg\\_%%'
 ORDER BY c.relpages + coalesce(toast.relpages, 0) DESC, 1
"""


class MoveError(Exception):
    """The move cannot go on; the message says why and what was done about it."""


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
class Server:
    """A database server as the registry records it, with how to reach it as its superuser."""

    name: str
    host: str
    port: int
    # login_user, login_password, login_unix_socket / login_host, login_port, sslmode, sslrootcert; pgbouncer_admin_*
    admin: dict = field(repr=False)
    pgbouncer_host: str | None = None
    pgbouncer_port: int | None = None
    # While keeping() (a switch): the connections opened, by database, reused by connect() and closed at its end.
    _kept: dict | None = field(default=None, init=False, repr=False, compare=False)

    @contextlib.contextmanager
    def keeping(self):
        """connect() opens one connection per database and reuses it until this ends (`with` leaves it open):
        each new one is a TLS handshake and a SCRAM exchange, while the tenant waits during a switch."""
        self._kept = {}
        try:
            yield
        finally:
            kept, self._kept = self._kept, None
            for conn in kept.values():
                conn.close()

    def connect(self, dbname: str = "postgres", fresh: bool = False):
        """An autocommit superuser session in `dbname`; a kept one while keeping(), unless `fresh`."""
        if self._kept is None or fresh:
            return self._open(dbname)
        conn = self._kept.get(dbname)
        if conn is None or conn.closed:
            conn = self._kept[dbname] = self._open(dbname)
            if conn.info.server_version >= 140000:  # idle between steps: the tenant's database may set a timeout
                conn.execute("SET idle_session_timeout = 0")
        return contextlib.nullcontext(conn)

    def _open(self, dbname: str) -> psycopg.Connection:
        a = self.admin
        return psycopg.connect(
            host=a.get("login_unix_socket") or a.get("login_host") or self.host,
            port=a.get("login_port") or self.port,
            user=a.get("login_user") or "postgres",
            password=a.get("login_password") or None,
            **self.tls(),
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
            prepare_threshold=None,
            options=PINNED_SESSION,
        )

    def tls(self) -> dict:
        """How the move's own roles reach this server over TCP: with the TLS checks of its admin login."""
        return {"sslmode": self.admin.get("sslmode") or "prefer", "sslrootcert": self.admin.get("sslrootcert") or None}

    def close_pgbouncer_door(self, dbname: str) -> None:
        """This server's PgBouncer rejects new clients of the database and drops the ones it has (console DISABLE,
        KILL, RESUME).

        A client that logged in to PgBouncer after the tenant's role was refused would wait there for a server
        connection, retried every server_login_retry; rejected at once, it tries again and finds where the
        tenant's database is now. On a move's target it is closed from the block until the switch lets the role in:
        a client that comes early (the tenant's runtime follows the move from its block) is turned away by PgBouncer
        itself, where a login the server refused would be held against the tenant's pool for server_login_retry
        (15 s). DISABLE registers a database PgBouncer has not seen yet. A move rolled back leaves it closed there,
        on a database dropped there: a later move's switch to that server opens it.
        """
        self._pgbouncer_console(dbname, "DISABLE", "KILL", "RESUME")

    def open_pgbouncer_door(self, dbname: str) -> None:
        """This server's PgBouncer takes the database's clients again (console ENABLE): a move may bring it back."""
        self._pgbouncer_console(dbname, "ENABLE")

    def _pgbouncer_console(self, dbname: str, *commands: str) -> None:
        if not self.pgbouncer_port or not self.admin.get("pgbouncer_admin_password"):
            return
        with psycopg.connect(
            host=self.pgbouncer_host or self.host, port=self.pgbouncer_port, dbname="pgbouncer",
            user=self.admin.get("pgbouncer_admin_user") or "saasodoo_pgbouncer_admin",
            password=self.admin["pgbouncer_admin_password"], autocommit=True, connect_timeout=10,
            prepare_threshold=None,
        ) as console:  # fmt: skip
            # The console takes no parameters; the name is quoted as an identifier.
            name = sql.Identifier(dbname).as_string(console)
            for command in commands:
                try:
                    console.execute(f"{command} {name}")
                except psycopg.Error as e:
                    # PgBouncer knows a database (from its `*` entry) only while clients use it: none to act on.
                    if "no such database" not in str(e):
                        raise
                    return

    def libpq_args(self) -> tuple[list[str], dict]:
        """pg_dump / pg_restore connection arguments and environment (the password never on argv)."""
        a = self.admin
        args = [
            "-h",
            a.get("login_unix_socket") or a.get("login_host") or self.host,
            "-p",
            str(a.get("login_port") or self.port),
            "-U",
            a.get("login_user") or "postgres",
        ]
        env = {**os.environ, "PGCONNECT_TIMEOUT": "10", "PGOPTIONS": PINNED_SESSION}
        libpq_variables = {"login_password": "PGPASSWORD", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT"}
        for key, variable in libpq_variables.items():
            if a.get(key):
                env[variable] = a[key]
        return args, env


@dataclass(frozen=True)
class Replication:
    """One way the tenant's rows flow during a move: a publication, its slot and a subscription."""

    publisher: Server
    subscriber: Server
    name: str  # the publication, subscription and slot, and the replication role that reads the slot
    password: str = field(repr=False)  # the replication role's: lives as long as the role

    @property
    def apply_role(self) -> str:
        """The role the subscription applies the tenant's rows as, on the subscriber (see Move._subscribe)."""
        return f"{self.name}_apply"


@dataclass
class Move:
    """One attempt at moving a tenant's database: a row of registry.migrations."""

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

    # -- the registry record ----------------------------------------------------------------------

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

    def audit(self, kind: str, detail: dict) -> None:
        record_audit(
            self.registry,
            actor="db_migrate",
            tenant_id=self.tenant["tenant_id"],
            kind=kind,
            subject=f"migration:{self.id}",
            detail=detail,
        )

    # -- the move ---------------------------------------------------------------------------------

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

    def _current_row(self) -> dict:
        with self.registry.cursor(row_factory=dict_row) as cur:
            return cur.execute("SELECT * FROM registry.migrations WHERE id = %s", (self.id,)).fetchone()

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

    def _copy_logical(self) -> None:
        self.enter("copying")
        copy_started = time.monotonic()
        jobs = str(self.options.jobs)
        self._check_replicable()
        with tempfile.TemporaryDirectory(prefix="db_migrate-") as scratch:
            schema = os.path.join(scratch, "schema.dump")
            self._pg("pg_dump", self.source, "--schema-only", "-Fc", "-f", schema, self.db_name)
            tables_and_keys, rest = self._split_post_data(schema, scratch)
            self._make_restorer()
            self._restore("--section=pre-data", schema)
            self._prepare_marker()
            self._publish(self.forward)
            self._copy_rows()
            # Keys are built once the rows are in (pgcopydb's way), before the apply needs them to find rows.
            self._restore("-L", tables_and_keys, "-j", jobs, schema)
            self._subscribe(self.forward, copy_data=False, create_slot=False, enable=False)
            self.enter("catching_up")
            self._failpoint("catching_up")
            self._restore("-L", rest, "-j", jobs, schema)
            # The apply runs the target's schema, whole now: the tenant may have changed the source's since the
            # check as the copy started, and the dump took that in.
            self._refuse_tenant_code(self.target)
            with self.target.connect(self.db_name) as conn:
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(sql.Identifier(self.forward.name)))
        self._prepare_way_back()
        self._record(copy_ms=round((time.monotonic() - copy_started) * 1000))

    def _copy_rows(self) -> None:
        """Every table's rows as of the forward slot's snapshot, in options.jobs streams, the largest tables first.

        The slot is made with its snapshot exported and every stream imports it: the copy holds exactly what
        precedes the slot's changes, and the subscription made afterwards on that slot (copy_data = false)
        applies the rest. The first stream then takes ACCESS SHARE on every table, as pg_dump does, so that no
        table is rewritten under the snapshot from then on: the tenant's ALTER TABLE waits for the copy, its later
        queries on that table queue behind the ALTER, and a stream that has that table still to copy fails the
        move after LOCK_TABLES_TIMEOUT_MS (rolled back). The target has no index yet (keys are built after, once,
        not row by row) and no trigger (post-data). Rows are read as the move's replication role and written as
        its restore role, neither a superuser. Binary where every column's type is a plain built-in one; text
        otherwise: a binary array or record carries its element type's oid, and a reg* value is an oid, both of
        which differ between servers.
        """
        streams: list[tuple[psycopg.Connection, psycopg.Connection]] = []
        tables: list[tuple[str, str, bool]] = []
        started = time.monotonic()
        try:
            # The exported snapshot lives while the session that made the slot stays idle: every stream imports
            # it before that session ends.
            with self._connect_as_replicator(replication="database") as slot_session:
                snapshot = slot_session.execute(
                    sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')").format(
                        sql.Identifier(self.forward.name)
                    )
                ).fetchone()[2]
                for _ in range(max(1, self.options.jobs)):
                    reader = self._connect_as_replicator()
                    try:
                        writer = self._connect_as_restorer()
                    except BaseException:
                        reader.close()
                        raise
                    streams.append((reader, writer))
                    for conn in (reader, writer):
                        conn.execute(VERIFICATION_SETTINGS)  # how text values print and parse, the same both sides
                    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                    # Bounded: a tenant's ALTER TABLE queued behind the first stream's locks would hold this
                    # stream's COPY behind it, and the first stream waits for the whole copy.
                    reader.execute(f"SET LOCAL lock_timeout = {LOCK_TABLES_TIMEOUT_MS}")
            self._failpoint("copying")
            first = streams[0][0]
            tables = first.execute(TABLES_TO_COPY, (MARKER_SCHEMA,)).fetchall()
            if tables:
                try:
                    first.execute(
                        sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                            sql.SQL(", ").join(sql.SQL(table) for table, _, _ in tables)
                        )
                    )
                except psycopg.errors.LockNotAvailable as e:
                    raise MoveError(
                        f"the tenant's tables stayed locked against reading for {LOCK_TABLES_TIMEOUT_MS / 1000:.0f} s"
                        f" ({e.diag.message_primary}); nothing was moved, try again later"
                    ) from None
            copied = self._stream_tables(streams, tables)
        finally:
            for reader, writer in streams:
                reader.close()
                writer.close()
        binary = sum(1 for *_, is_binary in tables if is_binary)
        self.executed.append(
            f"copied {len(tables)} tables ({binary} binary), {copied / 2**20:.0f} MB in"
            f" {time.monotonic() - started:.1f} s over {len(streams)} streams"
        )

    def _stream_tables(
        self, streams: list[tuple[psycopg.Connection, psycopg.Connection]], tables: list[tuple[str, str, bool]]
    ) -> int:
        """COPY each table out of its reader into its writer, a thread per stream; bytes copied.

        The calling thread watches meanwhile: a copy whose run is gone, or that outlasts options.sync_timeout, or
        whose other stream failed, is stopped, its statements cancelled (a stream waiting on a lock never reads
        a chunk to stop at).
        """
        deadline = time.monotonic() + self.options.sync_timeout
        pending = list(reversed(tables))  # popped from the end: the largest first
        lock, stop = threading.Lock(), threading.Event()
        failures: list[str] = []
        copied = [0] * len(streams)

        def stream(index: int, reader: psycopg.Connection, writer: psycopg.Connection) -> None:
            table = None
            try:
                while not stop.is_set():
                    with lock:
                        if not pending:
                            return
                        table, columns, is_binary = pending.pop()
                    form = sql.SQL("binary" if is_binary else "text")
                    # A table without columns (or only generated ones) has its rows still: COPY it whole.
                    target = sql.SQL("{} ({})").format(sql.SQL(table), sql.SQL(columns)) if columns else sql.SQL(table)
                    with (
                        writer.transaction(),
                        reader.cursor().copy(sql.SQL("COPY {} TO STDOUT (FORMAT {})").format(target, form)) as rows,
                        writer.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT {})").format(target, form)) as sink,
                    ):
                        for chunk in rows:
                            if stop.is_set():
                                raise MoveError("stopped")
                            sink.write(chunk)
                            copied[index] += len(chunk)
            except Exception as e:  # reported by the calling thread
                # The primary message only: a COPY error's context quotes the tenant's row.
                message = e.diag.message_primary if isinstance(e, psycopg.Error) and e.diag.message_primary else e
                with lock:
                    failures.append(f"copying {table}: {type(e).__name__}: {message}")
                stop.set()

        threads = [
            threading.Thread(target=stream, args=(i, reader, writer), daemon=True)
            for i, (reader, writer) in enumerate(streams)
        ]
        for thread in threads:
            thread.start()
        try:
            while running := [thread for thread in threads if thread.is_alive()]:
                running[0].join(0.2)
                if stop.is_set():
                    break
                if time.monotonic() > deadline:
                    raise MoveError(f"the copy of the rows is not done after {self.options.sync_timeout:.0f} s")
                self.stop_if_run_is_gone()  # a long copy whose run died is rolled back now, not at its end
        finally:
            if any(thread.is_alive() for thread in threads):
                stop.set()
                for conn in (conn for pair in streams for conn in pair):
                    with contextlib.suppress(psycopg.Error):  # a server that is gone: its stream fails on its own
                        conn.cancel_safe(timeout=STREAM_STOP_SECONDS)
            for thread in threads:
                thread.join(STREAM_STOP_SECONDS)
            # A stream still blocked (a peer gone without a word) keeps its connections: closing them under it
            # would free what libpq is using. The module's process ends soon after, taking them along.
            stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
            for i in reversed(stuck):
                del streams[i]
        if stuck:
            raise MoveError(f"{len(stuck)} copy streams did not stop within {STREAM_STOP_SECONDS} s of being cancelled")
        if failures:
            raise MoveError(failures[0])
        return sum(copied)

    def _copy_dump(self) -> None:
        self.enter("copying")
        copy_started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="db_migrate-") as scratch:
            dump = os.path.join(scratch, "tenant")
            jobs = str(self.options.jobs)
            self._pg("pg_dump", self.source, "-Fd", "-j", jobs, "-f", dump, self.db_name)
            self._make_restorer()
            self._restore("-j", jobs, dump)
        self._record(copy_ms=round((time.monotonic() - copy_started) * 1000))

    def _make_restorer(self) -> None:
        """The role pg_restore logs in as: no superuser, only a member of the tenant's role.

        pg_restore replays the tenant's DDL and data, firing its CHECK and domain functions, index expressions
        and triggers. `--role` alone would not contain them: a function run under SET ROLE from a superuser's
        session can RESET ROLE back to the superuser. Logged in as this role, RESET ROLE leads nowhere; it
        reaches the target over TCP as a member of saasodoo_movers (pg_hba.conf), with a password this run
        made, and is dropped with the move's other roles.
        """
        role, movers = sql.Identifier(self.restore_role), sql.Identifier(MOVERS_GROUP)
        verifier = sql.Literal(scram_sha_256_verifier(self.restore_password))
        with self.target.connect() as conn:
            _ensure_movers_group(conn)
            if conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (self.restore_role,)).fetchone():
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, verifier))  # a rerun's new password
            else:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER BYPASSRLS IN ROLE {}, {} PASSWORD {}").format(
                        role, sql.Identifier(self.tenant["db_role"]), movers, verifier
                    )
                )

    def _restore(self, *args: str) -> None:
        """pg_restore into the target database as the restore role, every object created as the tenant's role."""
        conn_args = ["-h", self.target.host, "-p", str(self.target.port), "-U", self.restore_role]
        env = {
            **os.environ,
            "PGCONNECT_TIMEOUT": "10",
            "PGOPTIONS": PINNED_SESSION,
            "PGPASSWORD": self.restore_password,
            **{f"PG{key.upper()}": value for key, value in self.target.tls().items() if value},
        }
        as_tenant = ["--role", self.tenant["db_role"], "--exit-on-error", "-d", self.db_name]
        self._run_tool("pg_restore", conn_args, [*as_tenant, *args], env)

    def _check_replicable(self) -> None:
        """What logical replication cannot carry, checked as the copy starts (a plan change's place step checked it
        before anything was placed, a drain's did not, and the tenant may have changed its database since), and an
        empty target."""
        with self.source.connect(self.db_name) as conn:
            problems = replication_problems(conn)
        with self.target.connect(self.db_name) as target:
            tables = target.execute(
                "SELECT pg_catalog.count(*) FROM pg_catalog.pg_class c"
                " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            ).fetchone()[0]
        if tables:
            problems.append(f"the target database on {self.target.name} already holds {tables} tables")
        if problems:
            raise MoveError("; ".join(problems) + " (method dump moves such a database)")

    def _split_post_data(self, schema: str, scratch: str) -> tuple[str, str]:
        """Two restore lists: primary keys and unique constraints (the apply needs them), then the rest."""
        keys, rest = split_post_data(self._pg("pg_restore", None, "--section=post-data", "-l", schema))
        paths = []
        for name, lines in (("keys.list", keys), ("rest.list", rest)):
            path = os.path.join(scratch, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            paths.append(path)
        return paths[0], paths[1]

    def _prepare_marker(self) -> None:
        """The marker table on both sides: a row written on the publisher says when the subscriber caught up."""
        for server in (self.source, self.target):
            with server.connect(self.db_name) as conn:
                # Never IF NOT EXISTS: a schema the tenant made first would put its triggers in our INSERTs.
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(MARKER_SCHEMA)))
                conn.execute(
                    sql.SQL("CREATE TABLE {}.marker (token text PRIMARY KEY)").format(sql.Identifier(MARKER_SCHEMA))
                )

    def _publish(self, way: Replication) -> None:
        """On the publisher: the move's replication role (reaching it through +saasodoo_movers) and the publication."""
        role = sql.Identifier(way.name)
        with way.publisher.connect() as conn:
            _ensure_movers_group(conn)
            # A SCRAM verifier, not the password: no clear password in a statement the server may log.
            conn.execute(
                # BYPASSRLS: the initial copy reads the tenant's tables as this role, and a FORCEd row-level
                # security policy would run the tenant's code as it (and hide rows from the copy).
                sql.SQL("CREATE ROLE {} LOGIN REPLICATION BYPASSRLS IN ROLE {}, {} PASSWORD {}").format(
                    role,
                    sql.Identifier(MOVERS_GROUP),
                    sql.Identifier(self.tenant["db_role"]),
                    sql.Literal(scram_sha_256_verifier(way.password)),
                )
            )
        with way.publisher.connect(self.db_name) as conn:
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {0} TO {1}; GRANT SELECT ON {0}.marker TO {1}").format(
                    sql.Identifier(MARKER_SCHEMA), role
                )
            )
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(role))

    @staticmethod
    def _subscriber_ca(conn: psycopg.Connection) -> str:
        """The CA file the subscriber's apply worker verifies its publisher with: ca.crt beside the server's own
        certificate (roles/postgres_server, postgres_server_tls_ca_certificate), read on the subscriber's host."""
        ca = conn.execute(
            "SELECT f.path FROM (SELECT pg_catalog.regexp_replace(pg_catalog.current_setting('ssl_cert_file'),"
            " '[^/]*$', 'ca.crt') AS path) AS f WHERE (pg_catalog.pg_stat_file(f.path, true)).size > 0"
        ).fetchone()
        if ca is None:
            raise MoveError(
                f"{conn.info.host}:{conn.info.port} has no ca.crt beside its certificate to verify the other server"
                " with (postgres_server_tls_ca_certificate); nothing was moved"
            )
        return ca[0]

    def _subscribe(self, way: Replication, copy_data: bool, create_slot: bool = True, enable: bool = True) -> None:
        """Subscribe `way`'s subscriber, applying the tenant's rows as a role with the tenant's rights only.

        The apply runs as the subscription's owner and fires what the tenant put on its tables: CHECK and
        domain constraints, index expressions, ENABLE ALWAYS triggers. PostgreSQL 15 lets only a superuser
        create or own a subscription, but runs it as its owner after that owner lost SUPERUSER, with the
        owner's privilege checks. So the owner is a role made for this move, a member of the tenant's role
        (its tables' rights), superuser only inside the one transaction that hands it the subscription. It
        needs LOGIN (the apply worker starts as it) and has no password nor any pg_hba rule: nobody logs in
        as it. The subscription is created disabled and enabled (with `enable`) only once its owner is
        unprivileged.
        """
        name, apply_role = sql.Identifier(way.name), sql.Identifier(way.apply_role)
        verify = self.options.replication_sslmode.startswith("verify")
        with way.subscriber.connect(self.db_name) as conn:
            conninfo = psycopg.conninfo.make_conninfo(
                host=way.publisher.host,
                port=way.publisher.port,
                dbname=self.db_name,
                user=way.name,
                password=way.password,
                connect_timeout=10,
                sslmode=self.options.replication_sslmode,
                sslrootcert=self._subscriber_ca(conn) if verify else None,
            )
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER VALID UNTIL '-infinity' IN ROLE {}").format(
                    apply_role, sql.Identifier(self.tenant["db_role"])
                )
            )
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {0} TO {1}; GRANT SELECT, INSERT ON {0}.marker TO {1}").format(
                    sql.Identifier(MARKER_SCHEMA), apply_role
                )
            )
            # The statement holds the replication role's password: kept out of this server's logs (it cannot
            # run in a transaction block, so the session, ours alone, says so).
            conn.execute(QUIET_STATEMENT_LOGGING)
            conn.execute(
                sql.SQL(
                    "CREATE SUBSCRIPTION {0} CONNECTION {1} PUBLICATION {0}"
                    " WITH (slot_name = {2}, enabled = false, copy_data = {3}, create_slot = {4})"
                ).format(
                    name, sql.Literal(conninfo), sql.Literal(way.name), sql.Literal(copy_data), sql.Literal(create_slot)
                )
            )
            with conn.transaction():  # the superuser bit is never committed
                conn.execute(sql.SQL("ALTER ROLE {} SUPERUSER").format(apply_role))
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} OWNER TO {}").format(name, apply_role))
                conn.execute(sql.SQL("ALTER ROLE {} NOSUPERUSER").format(apply_role))
            if enable:
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(name))

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
            for _ in range(50):
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

    def _prepare_way_back(self) -> None:
        """The way back's publication and slot on the target and its subscription on the source (disabled), made
        before writes are blocked.

        Making a logical slot waits for every transaction running on the target's server (another tenant's long
        one included), and a subscription takes its own role and a connection to the publisher: done here, none
        of it is downtime. The slot sees the forward apply's writes too; the switch moves it past them before the
        subscription is enabled.
        """
        self._publish(self.backward)
        with self.target.connect(self.db_name) as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (self.backward.name,)
            ).fetchone():
                conn.execute(
                    "SELECT pg_catalog.pg_create_logical_replication_slot(%s, 'pgoutput')", (self.backward.name,)
                )
        self._subscribe(self.backward, copy_data=False, create_slot=False, enable=False)

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

    def _refuse_tenant_code(self, subscriber: Server) -> None:
        """Fails the move if the apply on `subscriber` would run code of the tenant's (TENANT_CODE_IN_APPLY)."""
        with subscriber.connect(self.db_name) as conn:
            tenant_code = [r[0] for r in conn.execute(TENANT_CODE_IN_APPLY)]
        if tenant_code:
            raise MoveError(
                f"the tenant's own code would run as the subscription's owner while rows are applied on"
                f" {subscriber.name}: " + ", ".join(tenant_code[:10]) + " (method dump moves such a database)"
            )

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

    def _connect_as_replicator(self, **kwargs) -> psycopg.Connection:
        """The forward way's replication role on the source, in the tenant's database: a member of the tenant's
        role with BYPASSRLS (no policy hides a row from the copy), never a superuser."""
        way = self.forward
        return psycopg.connect(
            host=way.publisher.host, port=way.publisher.port, dbname=self.db_name, user=way.name,
            password=way.password, autocommit=True, connect_timeout=10, prepare_threshold=None,
            options=PINNED_SESSION, **way.publisher.tls(), **kwargs,
        )  # fmt: skip

    def _connect_as_restorer(self) -> psycopg.Connection:
        return psycopg.connect(
            host=self.target.host, port=self.target.port, dbname=self.db_name, user=self.restore_role,
            password=self.restore_password, autocommit=True, connect_timeout=10, prepare_threshold=None,
            options=PINNED_SESSION, **self.target.tls(),
        )  # fmt: skip

    def _verify_after_switch(self, source: psycopg.Connection, target: psycopg.Connection) -> None:
        """The snapshots compared while the tenant works on the target; a mismatch switches back."""
        try:
            self._failpoint("verifying")
            self._verify(source, target)
        except Exception as e:
            reason = str(e) if isinstance(e, MoveError) else f"verification could not finish: {type(e).__name__}: {e}"
            self._switch_back_and_fail(reason)
        self.enter("verified")  # the way back is dropped by the clean-up, by this run or the next
        self.stop_if_run_is_gone(crash=True)
        self._failpoint("verified")

    def _verify(self, source: psycopg.Connection, target: psycopg.Connection) -> None:
        """Every table's row count and checksum on both sides, in parallel; the connections are closed after."""
        results: dict[str, dict] = {}

        def measure(side: str, conn: psycopg.Connection) -> None:
            try:
                with conn:
                    results[side] = table_fingerprints(conn)
            except Exception as e:  # reported below as a verification failure
                results[side] = {"error": str(e)}

        started = time.monotonic()
        threads = [threading.Thread(target=measure, args=s) for s in (("source", source), ("target", target))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for side in results.values():
            if "error" in side:
                raise MoveError(f"verification could not read: {side['error']}")
        source_tables, target_tables = results["source"], results["target"]
        differing = sorted(
            t for t in source_tables.keys() | target_tables.keys() if source_tables.get(t) != target_tables.get(t)
        )
        verification = {
            "tables": len(source_tables),
            "rows": sum(rows for rows, _ in source_tables.values()),
            "sequences": self.sequences_checked,
            "differing_tables": differing,
            "sequences_behind": [],  # checked when they were copied (_sync_sequences)
            "seconds": round(time.monotonic() - started, 3),
            "after_switch": self.row["method"] == "logical",
        }
        self._record(verification=json.dumps(verification))
        if differing:
            raise MoveError(f"verification failed: {len(differing)} tables differ ({', '.join(differing[:5])})")

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
            self.enter("done", finished_at=_now(self.registry))
            self.audit(
                "result",
                {
                    "action": "move",
                    "phase": "done",
                    "retained_db": retained,
                    "write_downtime_ms": self.row["write_downtime_ms"],
                },
            )

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
            self.enter("rolled_back", error=reason, **({"finished_at": _now(self.registry)} if finish else {}))
            self.audit("result", {"action": "move", "phase": "rolled_back", "reason": reason})

    def tenant_now(self) -> dict:
        with self.registry.cursor(row_factory=dict_row) as cur:
            return cur.execute(
                "SELECT * FROM registry.tenants WHERE tenant_id = %s", (self.tenant["tenant_id"],)
            ).fetchone()

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
            for _ in range(50):  # a walsender still exiting keeps its slot active for a moment
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

    # -- helpers ----------------------------------------------------------------------------------

    def _record(self, **fields) -> None:
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in fields
        )
        with self.registry.cursor(row_factory=dict_row) as cur:
            self.row = cur.execute(
                sql.SQL("UPDATE registry.migrations SET {} WHERE id = %(id)s RETURNING *").format(assignments),
                {**fields, "id": self.id},
            ).fetchone()

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


def replication_problems(conn: psycopg.Connection) -> list[str]:
    """What in the tenant's database (conn: a superuser session in it) logical replication cannot carry, or must
    not run: large objects, tables without a key, unlogged tables, the tenant's own code in the apply."""
    objects = conn.execute("SELECT pg_catalog.count(*) FROM pg_catalog.pg_largeobject_metadata").fetchone()[0]
    keyless = [
        r[0]
        for r in conn.execute(
            """SELECT c.oid::pg_catalog.regclass::pg_catalog.text
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND (c.relreplident = 'n' OR c.relreplident = 'd' AND NOT EXISTS (
                    SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
            ORDER BY 1"""
        )
    ]
    tenant_code = [r[0] for r in conn.execute(TENANT_CODE_IN_APPLY)]
    unlogged = [
        r[0]
        for r in conn.execute(
            "SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class c"
            " WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'u' ORDER BY 1"
        )
    ]
    problems = []
    if objects:
        problems.append(f"{objects} large objects (logical replication does not carry them)")
    if keyless:
        problems.append(f"tables without a primary key or replica identity: {', '.join(keyless[:10])}")
    if unlogged:
        problems.append(f"unlogged tables (logical replication does not carry them): {', '.join(unlogged[:10])}")
    if tenant_code:
        problems.append(
            "the tenant's own code would run as the subscription's owner while rows are applied: "
            + ", ".join(tenant_code[:10])
        )
    return problems


def split_post_data(listing: str) -> tuple[list[str], list[str]]:
    """A `pg_restore -l` listing of post-data: (primary key and unique constraints, everything else)."""
    keys, rest = [], []
    for line in listing.splitlines():
        if line.startswith(";") or not line.strip():
            continue
        # "<id>; <catalog oid> <oid> CONSTRAINT public res_partner res_partner_pkey owner"
        desc = line.split(";", 1)[1].split(None, 2)[2]
        (keys if desc.startswith("CONSTRAINT ") else rest).append(line)
    return keys, rest


def sequence_states(conn: psycopg.Connection) -> dict[str, tuple[int, bool]]:
    """Every sequence of the tenant's: (last_value, is_called), read from the sequences themselves, at once."""
    names = conn.execute(
        "SELECT pg_catalog.format('%%I.%%I', schemaname, sequencename), schemaname, sequencename"
        " FROM pg_catalog.pg_sequences WHERE schemaname <> %s ORDER BY 1",
        (MARKER_SCHEMA,),
    ).fetchall()
    if not names:
        return {}
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {}::pg_catalog.text, last_value, is_called FROM {}").format(
            sql.Literal(qualified), sql.Identifier(schema, name)
        )
        for qualified, schema, name in names
    )
    return {qualified: (value, is_called) for qualified, value, is_called in conn.execute(query)}


def table_fingerprints(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """Per table of the tenant's: row count and an order-free checksum of its rows, in `conn`'s snapshot.

    A row is printed with its columns in name order: the two copies may order them differently (pg_dump recreates
    an inheritance child with the columns its parent got after it last).
    """
    tables = conn.execute(
        """SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname),
                  (SELECT pg_catalog.string_agg('t.' || pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attname)
                     FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', %s)
              AND n.nspname NOT LIKE 'pg\\_%%' ORDER BY 1""",
        (MARKER_SCHEMA,),
    ).fetchall()
    found = {}
    for table, columns in tables:
        count, checksum = conn.execute(
            sql.SQL(
                # record_out, not a cast to text: a tenant may CREATE CAST (its_table AS text) WITH FUNCTION.
                "SELECT pg_catalog.count(*), coalesce(pg_catalog.sum(pg_catalog.hashtextextended("
                "pg_catalog.textin(pg_catalog.record_out(ROW({}))), 0::pg_catalog.int8)), 0)::pg_catalog.text"
                " FROM {} AS t"
            ).format(sql.SQL(columns or ""), sql.SQL(table))
        ).fetchone()
        found[table] = (count, checksum)
    return found


def _ensure_movers_group(conn: psycopg.Connection) -> None:
    """The group every move's roles join. Two moves making it at once: the second CREATE waits for the first and
    fails on the unique index (unique_violation), not on the catalog check (duplicate_object)."""
    conn.execute(
        sql.SQL(
            "DO $$ BEGIN CREATE ROLE {} NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ).format(sql.Identifier(MOVERS_GROUP))
    )


def _now(conn) -> object:
    return conn.execute("SELECT pg_catalog.now()").fetchone()[0]
