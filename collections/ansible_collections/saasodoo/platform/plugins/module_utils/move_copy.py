"""A move's copy: a logical move's schema, rows (parallel COPY streams from the slot's snapshot), keys and
subscription, or a dump move's pg_dump / pg_restore; the roles and publications both ways use."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time

from ansible_collections.saasodoo.platform.plugins.module_utils.move_replicable import (
    TENANT_CODE_IN_APPLY,
    replication_problems,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.move_servers import (
    MARKER_SCHEMA,
    MOVERS_GROUP,
    VERIFICATION_SETTINGS,
    MoveError,
    Replication,
    Server,
    ensure_movers_group,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.pinned_session import (
    PINNED_SESSION,
    QUIET_STATEMENT_LOGGING,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import scram_sha_256_verifier

try:
    import psycopg
    from psycopg import sql
except ImportError:  # reported by the module with missing_required_lib
    psycopg = sql = None

# How long a logical move's copy waits for a lock on the tenant's tables (held or queued by the tenant's own DDL).
LOCK_TABLES_TIMEOUT_MS = 60_000
STREAM_STOP_SECONDS = 30  # how long a cancelled copy stream gets to stop

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


class CopyPhase:
    """Move's copy phase (self is a Move: module_utils/migration.py)."""

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
                for _stream in range(max(1, self.options.jobs)):
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
                            sql.SQL(", ").join(sql.SQL(table) for table, _columns, _binary in tables)
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
        binary = sum(1 for *_table, is_binary in tables if is_binary)
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
            ensure_movers_group(conn)
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
            ensure_movers_group(conn)
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

    def _refuse_tenant_code(self, subscriber: Server) -> None:
        """Fails the move if the apply on `subscriber` would run code of the tenant's (TENANT_CODE_IN_APPLY)."""
        with subscriber.connect(self.db_name) as conn:
            tenant_code = [r[0] for r in conn.execute(TENANT_CODE_IN_APPLY)]
        if tenant_code:
            raise MoveError(
                f"the tenant's own code would run as the subscription's owner while rows are applied on"
                f" {subscriber.name}: " + ", ".join(tenant_code[:10]) + " (method dump moves such a database)"
            )

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
