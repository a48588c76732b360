"""The rollout of an Odoo build (webhook_runner/store/updates.py) on a scratch registry, through the admin API: a
canary, then batches, a failure pausing it, a resume going on with the rest, its progress, its end. What each job
runs, tenant_update.yml, is tested on a real tenant in test_tenant_lifecycle.py."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from webhook_runner import store
from webhook_runner.app import create_app
from webhook_runner.config import load_settings

from .conftest import PLATFORM_SOCKET_DIR, LocalPlatform, ScratchRegistry
from .runner_stack import ADMIN_TOKEN, runner_settings, write_settings

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BUILD = "/opt/odoo/18.0-20261201/odoo-bin"  # what the canary's tenant_update.yml recorded
PLAN = {"db_type": "shared", "storage_gb": 1, "odoo_version": "18.0", "odoo_workers": 1, "db_connection_limit": 4}


def seed(conn: psycopg.Connection) -> None:
    """Tenants a to f, oldest first: a, b and c active, d suspended, e active without a Kill Bill account, f
    terminated."""
    conn.execute(
        "INSERT INTO registry.plans (name, version, db_type, entitlements) VALUES ('basic', 1, 'shared', %s)",
        (json.dumps(PLAN),),
    )
    tenants = [("a", "acct-1", "active"), ("b", "acct-1", "active"), ("c", "acct-2", "active"),
               ("d", "acct-3", "suspended"), ("e", None, "active"), ("f", "acct-4", "terminated")]  # fmt: skip
    for n, (tenant, account, status) in enumerate(tenants):
        conn.execute(
            "INSERT INTO registry.tenants (tenant_id, customer_id, plan_name, plan_version, db_type, status,"
            " created_at) VALUES (%s, %s, 'basic', 1, 'shared', %s, now() - make_interval(days => %s))",
            (tenant, account, status, 10 - n),
        )


def ended(conn: psycopg.Connection, outcomes: dict[str, str]) -> None:
    """The rollout's jobs of these tenants ended so (a worker ran tenant_update.yml)."""
    for tenant, state in outcomes.items():
        error = (
            f"The update of tenant {tenant} failed at Install or update the modules all" if state == "parked" else None
        )
        conn.execute(
            "UPDATE registry.jobs SET state = %s, finished_at = now(), error = %s WHERE tenant_id = %s"
            " AND action = 'update' AND state = 'queued'",
            (state, error, tenant),
        )
        if state == "succeeded":
            conn.execute("UPDATE registry.tenants SET odoo_build = %s WHERE tenant_id = %s", (BUILD, tenant))


def test_a_rollout_goes_canary_first_then_in_batches_pauses_at_a_failure_and_resumes(
    local_platform: LocalPlatform, scratch_registry: ScratchRegistry, tmp_path: Path
):
    conninfo = f"host={PLATFORM_SOCKET_DIR} port={scratch_registry.port} dbname={scratch_registry.dbname} user=postgres"
    settings = tmp_path / "runner.json"
    write_settings(
        settings, runner_settings(local_platform, "http://127.0.0.1:9", tmp_path, registry_conninfo=conninfo)
    )
    client = create_app(load_settings(settings)).test_client()
    with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
        seed(conn)
        assert client.get("/odoo-update", headers=ADMIN).status_code == 404
        assert client.post("/odoo-update", headers=ADMIN, json={"canary": 0}).status_code == 400
        assert client.post("/odoo-update", headers=ADMIN, json={"batch": "2"}).status_code == 400
        assert client.post("/odoo-update", json={"canary": 1}).status_code == 401
        started = client.post("/odoo-update", headers=ADMIN, json={"canary": 1, "batch": 2})
        assert started.status_code == 202 and started.get_json()["state"] == "running"
        again = client.post("/odoo-update", headers=ADMIN, json={})
        assert again.status_code == 409 and "resume it or let it finish" in again.get_data(as_text=True)

        # The canary: the oldest tenant, a job in its account; nothing more until it has ended.
        assert store.advance_update(conn) == ["update 1: canary of 1 queued (a)"]
        assert store.advance_update(conn) == []
        job = conn.execute("SELECT account_id, playbook, extravars FROM registry.jobs WHERE tenant_id = 'a'").fetchone()
        assert job == {"account_id": "acct-1", "playbook": "tenant_update.yml", "extravars": {"tenant_id": "a"}}
        ended(conn, {"a": "succeeded"})
        assert store.advance_update(conn) == ["update 1: batch of 2 queued (b, c)"]
        # The batches are given the canary's build, whatever the inventory names by the time they run.
        batch = conn.execute("SELECT extravars FROM registry.jobs WHERE tenant_id IN ('b', 'c') ORDER BY id").fetchall()
        assert [job["extravars"] for job in batch] == [
            {"tenant_id": "b", "build": BUILD},
            {"tenant_id": "c", "build": BUILD},
        ]
        view = client.get("/odoo-update", headers=ADMIN).get_json()
        assert (view["tenants"], view["updated"], view["queued"], view["unowned"]) == (3, 1, ["b", "c"], ["e"])

        # A failure pauses it, naming it, even one that ended while an operator had paused it.
        assert client.post("/odoo-update/pause", headers=ADMIN).get_json()["state"] == "paused"
        ended(conn, {"b": "succeeded", "c": "parked"})
        assert store.advance_update(conn) == []
        assert client.post("/odoo-update/resume", headers=ADMIN).get_json()["state"] == "running"
        paused = store.advance_update(conn)
        assert paused == ["update 1 paused: tenant c's update failed (job 3, parked): The update of tenant c failed"
                          " at Install or update the modules all"]  # fmt: skip
        assert store.advance_update(conn) == []
        view = client.get("/odoo-update", headers=ADMIN).get_json()
        assert view["state"] == "paused" and [f["tenant_id"] for f in view["failed"]] == ["c"]

        # Resumed: the failure was named, the rest go on (c is not tried again; d, suspended, keeps its build), and
        # it ends.
        assert client.post("/odoo-update/resume", headers=ADMIN).status_code == 200
        assert store.advance_update(conn) == ["update 1 finished: 2 tenants updated, 1 not"]
        view = client.get("/odoo-update", headers=ADMIN).get_json()
        assert (view["state"], view["updated"], view["reason"]) == ("finished", 2, "2 tenants updated, 1 not")
        assert conn.execute("SELECT count(*) AS n FROM registry.jobs WHERE tenant_id = 'd'").fetchone()["n"] == 0
        assert client.post("/odoo-update/pause", headers=ADMIN).status_code == 404
        states = [row["detail"]["state"] for row in conn.execute(
            "SELECT detail FROM registry.audit WHERE kind = 'odoo_update' ORDER BY id")]  # fmt: skip
        assert states == ["running", "paused", "running", "paused", "running", "finished"]

        # The next build's rollout starts afresh. Its canary failing, the batches get the inventory's build.
        assert client.post("/odoo-update", headers=ADMIN, json={"canary": 2}).status_code == 202
        assert store.advance_update(conn) == ["update 2: canary of 2 queued (a, b)"]
        ended(conn, {"a": "parked", "b": "parked"})
        assert store.advance_update(conn)[0].startswith("update 2 paused: tenant a's update failed")
        assert client.post("/odoo-update/resume", headers=ADMIN).status_code == 200
        assert store.advance_update(conn) == ["update 2: batch of 1 queued (c)"]
        job = conn.execute("SELECT extravars FROM registry.jobs WHERE tenant_id = 'c' ORDER BY id DESC").fetchone()
        assert job["extravars"] == {"tenant_id": "c"}
