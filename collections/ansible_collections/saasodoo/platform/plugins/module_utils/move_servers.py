"""The two servers of a move as the registry records them, how a move reaches them, and the names its objects take
there (module_utils/migration.py runs the move)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from ansible_collections.saasodoo.platform.plugins.module_utils.pgbouncer_console import console_commands
from ansible_collections.saasodoo.platform.plugins.module_utils.pinned_session import PINNED_SESSION

try:
    import psycopg
    from psycopg import sql
except ImportError:  # reported by the module with missing_required_lib
    psycopg = sql = None

MARKER_SCHEMA = "saasodoo_move"  # a marker table the cutover writes through replication, dropped after
MOVERS_GROUP = "saasodoo_movers"  # pg_hba lets its members (one per move, dropped after) reach any database
# How a verification session prints values (record_out): the same on both sides whatever the servers' defaults.
VERIFICATION_SETTINGS = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres';"
    " SET extra_float_digits = 1; SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET client_encoding = 'UTF8'"
)


class MoveError(Exception):
    """The move cannot go on; the message says why and what was done about it."""


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
        if self.pgbouncer_port and self.admin.get("pgbouncer_admin_password"):
            console_commands(
                self.pgbouncer_host or self.host,
                self.pgbouncer_port,
                self.admin.get("pgbouncer_admin_user") or "saasodoo_pgbouncer_admin",
                self.admin["pgbouncer_admin_password"],
                dbname,
                *commands,
            )

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


def ensure_movers_group(conn: psycopg.Connection) -> None:
    """The group every move's roles join. Two moves making it at once: the second CREATE waits for the first and
    fails on the unique index (unique_violation), not on the catalog check (duplicate_object)."""
    conn.execute(
        sql.SQL(
            "DO $$ BEGIN CREATE ROLE {} NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ).format(sql.Identifier(MOVERS_GROUP))
    )
