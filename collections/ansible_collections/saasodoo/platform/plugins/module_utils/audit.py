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


def chain_breaks(conn) -> list[dict[str, Any]]:
    """Where the chain breaks: every row's hash recomputed from its content and the hash before it."""
    query = "SELECT audit_id, problem FROM registry.audit_chain_breaks() ORDER BY audit_id"
    rows = _cursor(conn).execute(query).fetchall()
    return [{"audit_id": audit_id, "problem": problem} for audit_id, problem in rows]


def chain_head(conn, expected_hash: str = "") -> dict[str, Any]:
    """The chain's length and head (its last row), and whether a head recorded earlier is still in it."""
    cur = _cursor(conn)
    cur.execute(
        """
        SELECT count(*), max(id),
               (SELECT encode(hash, 'hex') FROM registry.audit ORDER BY id DESC LIMIT 1),
               coalesce(bool_or(encode(hash, 'hex') = %s), false)
        FROM registry.audit
        """,
        (expected_hash,),
    )
    rows, head_id, head_hash, has_expected = cur.fetchone()
    return {"rows": rows, "head_id": head_id, "head_hash": head_hash, "has_expected": has_expected}
