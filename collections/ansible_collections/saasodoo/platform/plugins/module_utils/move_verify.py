"""A move's verification: every table's row count and checksum, and every sequence, on both copies."""

from __future__ import annotations

import json
import threading
import time

from ansible_collections.saasodoo.platform.plugins.module_utils.move_servers import MARKER_SCHEMA, MoveError

try:
    import psycopg
    from psycopg import sql
except ImportError:  # reported by the module with missing_required_lib
    psycopg = sql = None


class VerifyPhase:
    """Move's verification (self is a Move: module_utils/migration.py)."""

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
            "rows": sum(rows for rows, _checksum in source_tables.values()),
            "sequences": self.sequences_checked,
            "differing_tables": differing,
            "sequences_behind": [],  # checked when they were copied (_sync_sequences)
            "seconds": round(time.monotonic() - started, 3),
            "after_switch": self.row["method"] == "logical",
        }
        self._record(verification=json.dumps(verification))
        if differing:
            raise MoveError(f"verification failed: {len(differing)} tables differ ({', '.join(differing[:5])})")


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
