"""/metrics as prometheus_client writes it, read back by prometheus_client's own parsers, without a registry:
the snapshot the registry would give is stubbed."""

from __future__ import annotations

from contextlib import nullcontext
from datetime import UTC, datetime

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from webhook_runner import metrics, store

# An action name the runner never uses, as a row written by hand could hold: its label must come back intact.
ODD_ACTION = 'hand "made" \\ job\nsecond line'

SNAPSHOT = {
    "received": 7,
    "pending": 2,
    "by_type": {"SUBSCRIPTION_CREATION": 4, "INVOICE_CREATION": 1, 'TELEPORT"}\n': 1, "SUBSCRIPTION_ZAP": 1},
    "jobs": {"succeeded": 3, "running": 1, "queued": 1},
    "running": {"provision": 1, ODD_ACTION: 0},
    "waiting": {"provision": 1, ODD_ACTION: 1},
    "bounds": [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0],
    "durations": [{"action": "provision", "n": 3, "total": 95.5, "le": [0, 0, 0, 0, 1, 2, 3, 3, 3, 3]}],
    # One never run yet (store.metrics_snapshot reads only the schedules turned on).
    "schedules": [
        {
            "name": "tenant_backups",
            "last_run_at": datetime(2026, 11, 24, tzinfo=UTC),
            "next_run_at": datetime(2026, 11, 25, tzinfo=UTC),
        },
        {"name": "moves_cleanup", "last_run_at": None, "next_run_at": datetime(2026, 11, 24, 1, tzinfo=UTC)},
    ],
    # What the alert rules watch (store.fleet_snapshot); a tenant id is the customer's, so any text.
    "tenants": {"active": 2, "suspended": 1},
    "last_backups": [{"tenant_id": "acme", "at": 1795700000.0}, {"tenant_id": 'odd "id"', "at": 1795600000.0}],
    "parked": [
        {"tenant_id": "acme", "action": "change_plan", "n": 1},
        {"tenant_id": "", "action": "reconcile", "n": 2},
    ],
    "last_drill": {"passed": False, "at": 1795500000.0},
    "open_moves": [{"tenant_id": "acme", "phase": "catching_up", "at": 1795800000.0}],
    "last_event_at": 1795805000.0,
    "customer_mail": {"due": 2, "oldest_due": 1795804000.0, "sent": 40, "dropped": 3},
}


@pytest.fixture
def runner_metrics(monkeypatch):
    monkeypatch.setattr(store, "metrics_snapshot", lambda conn, scheduled: SNAPSHOT)
    return metrics.exposition_registry(lambda: nullcontext(), limited=("provision", "change_plan"))


def samples(families, name: str, label: str | None = None) -> dict:
    return {(s.labels[label] if label else s.name): s.value for s in families[name].samples}


def test_the_text_format_parses_back_with_every_family_and_escaped_labels(runner_metrics):
    body, content_type = metrics.exposition(runner_metrics, None)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b'{action="hand \\"made\\" \\\\ job\\nsecond line"}' in body  # escaped on one line
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {name: f.type for name, f in families.items()} == {
        "saasodoo_runner_events_received": "counter",
        "saasodoo_runner_events_received_by_type": "counter",
        "saasodoo_runner_events_pending": "gauge",
        "saasodoo_runner_jobs": "gauge",
        "saasodoo_runner_jobs_running": "gauge",
        "saasodoo_runner_jobs_waiting_for_limit": "gauge",
        "saasodoo_runner_job_duration_seconds": "histogram",
        "saasodoo_runner_schedule_last_run_timestamp_seconds": "gauge",
        "saasodoo_runner_schedule_next_run_timestamp_seconds": "gauge",
        "saasodoo_tenants": "gauge",
        "saasodoo_tenant_last_backup_timestamp_seconds": "gauge",
        "saasodoo_runner_parked_jobs": "gauge",
        "saasodoo_restore_drill_last_passed": "gauge",
        "saasodoo_restore_drill_last_timestamp_seconds": "gauge",
        "saasodoo_move_started_timestamp_seconds": "gauge",
        "saasodoo_runner_events_last_received_timestamp_seconds": "gauge",
        "saasodoo_customer_mail_due": "gauge",
        "saasodoo_customer_mail_oldest_due_timestamp_seconds": "gauge",
        "saasodoo_customer_mail": "gauge",
    }
    # Every status is there, 0 when none; the rules read these by tenant, phase and status.
    assert samples(families, "saasodoo_tenants", "status") == {
        "provisioning": 0, "active": 2, "suspended": 1, "terminated": 0, "purged": 0, "failed": 0,
    }  # fmt: skip
    assert samples(families, "saasodoo_tenant_last_backup_timestamp_seconds", "tenant") == {
        "acme": 1795700000.0, 'odd "id"': 1795600000.0,
    }  # fmt: skip
    assert samples(families, "saasodoo_restore_drill_last_passed") == {"saasodoo_restore_drill_last_passed": 0}
    parked = families["saasodoo_runner_parked_jobs"].samples
    assert [(p.labels, p.value) for p in parked] == [
        ({"tenant": "acme", "action": "change_plan"}, 1), ({"tenant": "", "action": "reconcile"}, 2),
    ]  # fmt: skip
    moves = families["saasodoo_move_started_timestamp_seconds"].samples
    assert [(m.labels, m.value) for m in moves] == [({"tenant": "acme", "phase": "catching_up"}, 1795800000.0)]
    assert samples(families, "saasodoo_runner_events_last_received_timestamp_seconds") == {
        "saasodoo_runner_events_last_received_timestamp_seconds": 1795805000.0
    }
    assert samples(families, "saasodoo_customer_mail", "state") == {"sent": 40, "dropped": 3}
    assert samples(families, "saasodoo_customer_mail_oldest_due_timestamp_seconds") == {
        "saasodoo_customer_mail_oldest_due_timestamp_seconds": 1795804000.0
    }
    assert samples(families, "saasodoo_runner_schedule_last_run_timestamp_seconds", "schedule") == {
        "tenant_backups": datetime(2026, 11, 24, tzinfo=UTC).timestamp(),
    }
    assert samples(families, "saasodoo_runner_schedule_next_run_timestamp_seconds", "schedule") == {
        "tenant_backups": datetime(2026, 11, 25, tzinfo=UTC).timestamp(),
        "moves_cleanup": datetime(2026, 11, 24, 1, tzinfo=UTC).timestamp(),
    }
    assert samples(families, "saasodoo_runner_events_received") == {"saasodoo_runner_events_received_total": 7}
    # Kill Bill's own types keep their name; any other, however odd, is one `other`.
    assert samples(families, "saasodoo_runner_events_received_by_type", "event_type") == {
        "SUBSCRIPTION_CREATION": 4, "INVOICE_CREATION": 1, "other": 2,
    }  # fmt: skip
    assert samples(families, "saasodoo_runner_events_pending") == {"saasodoo_runner_events_pending": 2}
    assert samples(families, "saasodoo_runner_jobs", "state") == {
        "queued": 1, "running": 1, "succeeded": 3, "failed": 0, "parked": 0, "skipped": 0,
    }  # fmt: skip
    # A limited action's gauges are there at 0 when idle; a label holding ", \ and a newline reads back as written.
    assert samples(families, "saasodoo_runner_jobs_running", "action") == {
        "change_plan": 0, "provision": 1, ODD_ACTION: 0,
    }  # fmt: skip
    assert samples(families, "saasodoo_runner_jobs_waiting_for_limit", "action") == {
        "change_plan": 0, "provision": 1, ODD_ACTION: 1,
    }  # fmt: skip
    histogram = {
        (s.name, s.labels.get("le")): s.value
        for s in families["saasodoo_runner_job_duration_seconds"].samples
        if s.labels["action"] == "provision"
    }
    assert histogram[("saasodoo_runner_job_duration_seconds_bucket", "30")] == 1
    assert histogram[("saasodoo_runner_job_duration_seconds_bucket", "+Inf")] == 3
    assert histogram[("saasodoo_runner_job_duration_seconds_count", None)] == 3
    assert histogram[("saasodoo_runner_job_duration_seconds_sum", None)] == 95.5


def test_a_scraper_that_asks_for_openmetrics_gets_it(runner_metrics):
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"  # Prometheus'
    body, content_type = metrics.exposition(runner_metrics, accept)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    families = {f.name: f for f in openmetrics_families(body.decode())}
    assert samples(families, "saasodoo_runner_events_received") == {"saasodoo_runner_events_received_total": 7}
    assert samples(families, "saasodoo_runner_jobs_waiting_for_limit", "action")[ODD_ACTION] == 1
    assert families["saasodoo_runner_job_duration_seconds"].type == "histogram"


def test_no_drill_and_no_event_yet_give_no_figure_rather_than_a_false_one(monkeypatch):
    """A platform that never drilled a restore nor heard from Kill Bill has nothing to alert on: the figures the
    rules compare are absent, not 0 (a drill "failed", a notification in 1970)."""
    quiet = SNAPSHOT | {"last_drill": None, "last_event_at": None, "open_moves": [], "last_backups": [],
                        "customer_mail": {"due": 0, "oldest_due": None, "sent": 0, "dropped": 0}}  # fmt: skip
    monkeypatch.setattr(store, "metrics_snapshot", lambda conn, scheduled: quiet)
    body, _ = metrics.exposition(metrics.exposition_registry(lambda: nullcontext()), None)
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "saasodoo_restore_drill_last_passed" not in names
    assert "saasodoo_runner_events_last_received_timestamp_seconds" not in names
    assert "saasodoo_customer_mail_oldest_due_timestamp_seconds" not in names  # no mail waits
    assert "saasodoo_tenants" in names
