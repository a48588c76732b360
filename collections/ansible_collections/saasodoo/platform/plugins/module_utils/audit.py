"""The registry's audit chain: append a row, read the runs, verify the chain.

registry.audit is append-only and hash-chained (migration 0003); its trigger sets id, time and hashes, and copies
the session's saasodoo.audit_run into detail.run (migration 0011), so callers write only what happened.
"""

from __future__ import annotations

import json
from typing import Any

RUN_KIND = "run"


def _cursor(conn):
    # Plain tuples whatever row factory the caller's connection uses.
    from psycopg.rows import tuple_row

    return conn.cursor(row_factory=tuple_row)


def run_subject(run_id: str) -> str:
    return f"run:{run_id}"


def record_audit(
    conn, *, actor: str, kind: str, subject: str, detail: dict[str, Any], tenant_id: str | None = None
) -> int:
    """Append one row to the chain; returns its id."""
    cur = _cursor(conn)
    cur.execute(
        "INSERT INTO registry.audit (actor, tenant_id, kind, subject, detail) VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (actor, tenant_id, kind, subject, json.dumps(detail, default=str)),
    )
    return cur.fetchone()[0]


def runs_since(conn, since: str) -> list[dict[str, Any]]:
    """The playbook runs recorded at or after `since` (a start or an end row), oldest first.

    Each run: its id, who ran what, the start and end rows merged (outcome 'unfinished' when it never ended:
    interrupted, or the registry was unreachable at its end), and the tenants whose rows name it.
    """
    cur = _cursor(conn)
    cur.execute(
        """
        WITH runs AS (
            SELECT a.detail ->> 'run' AS run_id, min(a.at) AS first_at,
                   jsonb_object_agg(a.detail ->> 'phase', a.detail || jsonb_build_object('at', a.at, 'actor', a.actor))
                       AS phases
            FROM registry.audit AS a
            WHERE a.kind = %(kind)s AND a.detail ? 'run' AND a.at >= %(since)s::timestamptz
            GROUP BY a.detail ->> 'run')
        SELECT r.run_id, r.first_at, r.phases,
               (SELECT coalesce(jsonb_agg(DISTINCT t.tenant_id), '[]')
                  FROM registry.audit AS t
                 WHERE t.detail ? 'run' AND t.detail ->> 'run' = r.run_id AND t.tenant_id IS NOT NULL) AS tenants
        FROM runs AS r ORDER BY r.first_at, r.run_id
        """,
        {"kind": RUN_KIND, "since": since},
    )
    runs = []
    for run_id, first_at, phases, tenants in cur.fetchall():
        start, end = phases.get("start", {}), phases.get("end", {})
        known = {**start, **end}
        runs.append(
            {
                "run": run_id,
                "started_at": start.get("at") or first_at.isoformat(),
                "actor": known.get("actor"),
                "job": known.get("job"),
                "playbook": known.get("playbook"),
                "inventory": known.get("inventory"),
                "limit": known.get("limit"),
                "check_mode": known.get("check_mode"),
                "extra_vars": known.get("extra_vars", []),
                "outcome": end.get("outcome", "unfinished"),
                "seconds": end.get("seconds"),
                "hosts": end.get("hosts", {}),
                "tenants": tenants,
            }
        )
    return runs


# The chain recomputed with PostgreSQL's own functions only (search_path pinned), never the registry's: its owner may
# replace registry.audit_row_text or audit_chain_breaks (migration 0003) so that a rewritten row hashes as before.
# The same text as audit_row_text, which the trigger hashes on insert: any difference would break every row of the
# chain the integration tests verify (test_hostile_tenant.py, test_audit_runs.py).
VERIFY_QUERY = """
SELECT c.id, CASE WHEN c.prev_hash IS DISTINCT FROM c.expected_prev THEN 'prev_hash is not the previous row''s hash'
                  ELSE 'hash does not match the row' END
  FROM (SELECT a.id, a.prev_hash, a.hash, lag(a.hash) OVER (ORDER BY a.id) AS expected_prev,
               sha256(coalesce(a.prev_hash, ''::bytea) || convert_to(jsonb_build_object(
                   'id', a.id,
                   'at', to_char(a.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'actor', a.actor,
                   'tenant_id', a.tenant_id,
                   'kind', a.kind,
                   'subject', a.subject,
                   'detail', a.detail)::text, 'UTF8')) AS computed
          FROM ONLY registry.audit AS a WHERE a.tableoid = %(table)s) AS c
 WHERE c.prev_hash IS DISTINCT FROM c.expected_prev OR c.hash IS DISTINCT FROM c.computed
 ORDER BY c.id
"""
# The table as migration 0003 made it: its columns of PostgreSQL's own types (a type of the owner's could bring a
# cast of its own into the hashing), no children, no row security. Checked once it is locked: changing any of that
# takes a lock the verification's excludes.
AUDIT_COLUMNS = {
    "id": "int8", "at": "timestamptz", "actor": "text", "tenant_id": "text", "kind": "text", "subject": "text",
    "detail": "jsonb", "prev_hash": "bytea", "hash": "bytea",
}  # fmt: skip
TABLE_QUERY = """
SELECT c.oid, c.relkind, c.relrowsecurity, c.relhassubclass,
       (SELECT jsonb_object_agg(t.attname, ty.typname) FROM pg_catalog.pg_attribute AS t
          JOIN pg_catalog.pg_type AS ty ON ty.oid = t.atttypid AND ty.typnamespace = 'pg_catalog'::regnamespace
         WHERE t.attrelid = c.oid AND t.attnum > 0 AND NOT t.attisdropped)
  FROM pg_catalog.pg_class AS c
 WHERE c.relname = 'audit' AND c.relnamespace = 'registry'::regnamespace
   AND EXISTS (SELECT FROM pg_catalog.pg_locks AS l  -- the one this transaction locked, not one named so since
                WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'relation' AND l.relation = c.oid
                  AND l.mode = 'AccessShareLock' AND l.granted)
"""


class AuditTableReplaced(Exception):
    """registry.audit is not the plain table migration 0003 made: what reads it may be shown anything."""


def verify_chain(conn, expected_hash: str = "", hash_of: int | None = None) -> dict[str, Any]:
    """The chain checked in one transaction: `breaks`, each row whose hash does not match its content and the hash
    before it; `head`, its length and last row, and whether a head recorded earlier (`expected_hash`) is still in it;
    `row_hash`, the hash row `hash_of` has now (None without one, or when it is gone). The table must still be as
    migration 0003 made it (TABLE_QUERY), and stays so while it is read."""
    with conn.transaction():
        cur = _cursor(conn)
        # One snapshot for every read: the head sealed is the head of the chain checked.
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        cur.execute("SET LOCAL lock_timeout = '60s'")
        cur.execute("LOCK TABLE registry.audit IN ACCESS SHARE MODE")  # no ALTER until the reads are done
        table = cur.execute(TABLE_QUERY).fetchone()
        if table is None or table[1:] != ("r", False, False, AUDIT_COLUMNS):
            raise AuditTableReplaced(
                "registry.audit is not the plain table of PostgreSQL types without children or row security that "
                f"migration 0003 made (found {table[1:] if table else 'none'}): someone who owns the registry "
                "changed it, and its rows cannot be trusted"
            )
        found = {"table": table[0]}
        breaks = [{"audit_id": audit_id, "problem": problem} for audit_id, problem in cur.execute(VERIFY_QUERY, found)]
        rows, head_id, head_hash, has_expected = cur.execute(
            """SELECT count(*), max(a.id),
                      (SELECT encode(h.hash, 'hex') FROM ONLY registry.audit AS h WHERE h.tableoid = %(table)s
                        ORDER BY h.id DESC LIMIT 1),
                      coalesce(bool_or(encode(a.hash, 'hex') = %(expected)s), false)
                 FROM ONLY registry.audit AS a WHERE a.tableoid = %(table)s""",
            {**found, "expected": expected_hash},
        ).fetchone()
        sealed = None
        if hash_of is not None:
            sealed = cur.execute(
                "SELECT encode(a.hash, 'hex') FROM ONLY registry.audit AS a WHERE a.tableoid = %(table)s"
                " AND a.id = %(id)s",
                {**found, "id": hash_of},
            ).fetchone()
            sealed = sealed[0] if sealed else None
    return {
        "breaks": breaks,
        "head": {"rows": rows, "head_id": head_id, "head_hash": head_hash, "has_expected": has_expected},
        "row_hash": sealed,
    }
