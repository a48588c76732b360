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
# The same text as audit_row_text, which the trigger hashes on insert; a test keeps the two equal.
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
          FROM registry.audit AS a) AS c
 WHERE c.prev_hash IS DISTINCT FROM c.expected_prev OR c.hash <> c.computed
 ORDER BY c.id
"""


class AuditTableReplaced(Exception):
    """registry.audit is not the plain table migration 0003 made: what reads it may be shown anything."""


def verify_chain(conn, expected_hash: str = "", hash_of: int | None = None) -> dict[str, Any]:
    """The chain checked in one transaction: `breaks`, each row whose hash does not match its content and the hash
    before it; `head`, its length and last row, and whether a head recorded earlier (`expected_hash`) is still in it;
    `row_hash`, the hash row `hash_of` has now (None without one, or when it is gone). The table must still be a plain
    one without row security (a view or a policy could show other rows), and stays so while it is read."""
    with conn.transaction():
        cur = _cursor(conn)
        cur.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        cur.execute("LOCK TABLE registry.audit IN ACCESS SHARE MODE")  # no ALTER until the reads are done
        found = cur.execute(
            "SELECT c.relkind, c.relrowsecurity FROM pg_catalog.pg_class AS c"
            " WHERE c.oid = pg_catalog.to_regclass('registry.audit')"
        ).fetchone()
        if found != ("r", False):
            raise AuditTableReplaced(
                f"registry.audit is not a plain table without row security (relkind, relrowsecurity: {found}): "
                "someone who owns the registry changed it, and its rows cannot be trusted"
            )
        breaks = [{"audit_id": audit_id, "problem": problem} for audit_id, problem in cur.execute(VERIFY_QUERY)]
        rows, head_id, head_hash, has_expected = cur.execute(
            """SELECT count(*), max(a.id),
                      (SELECT encode(h.hash, 'hex') FROM registry.audit AS h ORDER BY h.id DESC LIMIT 1),
                      coalesce(bool_or(encode(a.hash, 'hex') = %s), false)
                 FROM registry.audit AS a""",
            (expected_hash,),
        ).fetchone()
        sealed = None
        if hash_of is not None:
            found = cur.execute("SELECT encode(a.hash, 'hex') FROM registry.audit AS a WHERE a.id = %s", (hash_of,))
            sealed = (found.fetchone() or [None])[0]
    return {
        "breaks": breaks,
        "head": {"rows": rows, "head_id": head_id, "head_hash": head_hash, "has_expected": has_expected},
        "row_hash": sealed,
    }
