"""PgBouncer's admin console (its `pgbouncer` database): commands on one of the databases it serves."""

from __future__ import annotations

try:
    import psycopg
    from psycopg import sql
except ImportError:  # reported by the module with missing_required_lib
    psycopg = sql = None


def console_commands(host: str, port: int, user: str, password: str, dbname: str, *commands: str) -> None:
    """Each command (DISABLE, KILL, RESUME, ENABLE, ...) on `dbname`, in order; none once PgBouncer does not know it.

    PgBouncer knows a database (from its `*` entry) only while clients use it: then there is nothing to act on.
    """
    with psycopg.connect(
        host=host, port=port, dbname="pgbouncer", user=user, password=password, autocommit=True, connect_timeout=10,
        prepare_threshold=None,
    ) as console:  # fmt: skip
        # The console takes no parameters; the name is quoted as an identifier.
        name = sql.Identifier(dbname).as_string(console)
        for command in commands:
            try:
                console.execute(f"{command} {name}")
            except psycopg.Error as e:
                if "no such database" not in str(e):
                    raise
                return
