"""GET /metrics: the runner's figures in Prometheus' text format or OpenMetrics, written by prometheus_client.

Every figure is read from the registry at scrape time, from counters its triggers keep as events and jobs change
(a few rows, however many the tables hold), so each gunicorn worker (and each runner host) answers the same:
nothing is counted in a process's memory, and no multiprocess directory is needed.
No process_* figures either: each scrape would describe whichever gunicorn worker answered it.
Label values come from fixed sets (Kill Bill's event types, any other being `other`; job states; the actions the
runner itself names its jobs with; its schedules' names; tenant statuses and move phases) and from the registry's
tenant ids, one series per active tenant or open move, which the alert rules name in their alerts.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ansible_collections.saasodoo.platform.plugins.module_utils.lifecycle import STATUSES

from . import store
from .notification import KNOWN_EVENT_TYPES
from .schedules import SCHEDULES

JOB_STATES = ("queued", "running", "succeeded", "failed", "parked", "skipped")
OTHER = "other"  # the label of an event type Kill Bill does not define


class RegistryCollector(Collector):
    def __init__(self, registry: Callable[[], AbstractContextManager], limited: tuple[str, ...] = (), scheduled=()):
        self.registry = registry
        self.limited = limited  # actions with a job limit: their gauges are always there, 0 when idle
        self.scheduled = [name for name in scheduled if name in SCHEDULES]  # the schedules turned on

    def describe(self):
        return []  # registered without a scrape (the registry may be down when the app starts)

    def collect(self):
        with self.registry() as conn:
            snapshot = store.metrics_snapshot(conn, self.scheduled)
        received = CounterMetricFamily(
            "saasodoo_runner_events_received", "Kill Bill notifications stored in the inbox."
        )
        received.add_metric([], snapshot["received"])
        yield received
        by_type = CounterMetricFamily(
            "saasodoo_runner_events_received_by_type",
            "Kill Bill notifications stored in the inbox, by event type.",
            labels=["event_type"],
        )
        for event_type, n in _folded(snapshot["by_type"], KNOWN_EVENT_TYPES).items():
            by_type.add_metric([event_type], n)
        yield by_type
        yield GaugeMetricFamily(
            "saasodoo_runner_events_pending", "Notifications stored but not yet handled by a worker.",
            value=snapshot["pending"],
        )  # fmt: skip
        jobs = GaugeMetricFamily("saasodoo_runner_jobs", "Runner jobs by state.", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], snapshot["jobs"].get(state, 0))
        yield jobs
        running = GaugeMetricFamily("saasodoo_runner_jobs_running", "Jobs running, by action.", labels=["action"])
        waiting = GaugeMetricFamily(
            "saasodoo_runner_jobs_waiting_for_limit",
            "Queued jobs a per-server job limit (settings job_limits) holds back, by action.",
            labels=["action"],
        )
        for action in sorted(set(snapshot["running"]) | set(snapshot["waiting"]) | set(self.limited)):
            running.add_metric([action], snapshot["running"].get(action, 0))
            waiting.add_metric([action], snapshot["waiting"].get(action, 0))
        yield running
        yield waiting
        durations = HistogramMetricFamily(
            "saasodoo_runner_job_duration_seconds", "Playbook run time of jobs that succeeded.", labels=["action"]
        )
        for row in snapshot["durations"]:
            buckets = [(f"{b:g}", n) for b, n in zip(snapshot["bounds"], row["le"], strict=True)]
            durations.add_metric([row["action"]], [*buckets, ("+Inf", row["n"])], sum_value=float(row["total"]))
        yield durations
        last = GaugeMetricFamily(
            "saasodoo_runner_schedule_last_run_timestamp_seconds",
            "When each periodic job last ran (the due time its run was claimed at), as a Unix time.",
            labels=["schedule"],
        )
        after = GaugeMetricFamily(
            "saasodoo_runner_schedule_next_run_timestamp_seconds",
            "When each periodic job is next due, as a Unix time.",
            labels=["schedule"],
        )
        for row in snapshot["schedules"]:
            if row["last_run_at"] is not None:
                last.add_metric([row["name"]], row["last_run_at"].timestamp())
            after.add_metric([row["name"]], row["next_run_at"].timestamp())
        yield last
        yield after
        yield from _fleet(snapshot)


def _fleet(snapshot: dict):
    """The registry's facts the alert rules watch (store.fleet_snapshot)."""
    tenants = GaugeMetricFamily("saasodoo_tenants", "Tenants by lifecycle status.", labels=["status"])
    for status in STATUSES:
        tenants.add_metric([status], snapshot["tenants"].get(status, 0))
    yield tenants
    backups = GaugeMetricFamily(
        "saasodoo_tenant_last_backup_timestamp_seconds",
        "Each active tenant's newest backup kept (its creation until it has one), as a Unix time.",
        labels=["tenant"],
    )
    for row in snapshot["last_backups"]:
        backups.add_metric([row["tenant_id"]], row["at"])
    yield backups
    parked = GaugeMetricFamily(
        "saasodoo_runner_parked_jobs", "Jobs parked after their last attempt, by tenant and action.",
        labels=["tenant", "action"],
    )  # fmt: skip
    for row in snapshot["parked"]:
        parked.add_metric([row["tenant_id"], row["action"]], row["n"])
    yield parked
    if drill := snapshot["last_drill"]:
        yield GaugeMetricFamily(
            "saasodoo_restore_drill_last_passed", "1 when the last restore drill passed, 0 when it failed.",
            value=int(drill["passed"]),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "saasodoo_restore_drill_last_timestamp_seconds", "When the last restore drill ran, as a Unix time.",
            value=drill["at"],
        )  # fmt: skip
    moves = GaugeMetricFamily(
        "saasodoo_move_started_timestamp_seconds",
        "When each database move not finished started, as a Unix time, with its phase now.",
        labels=["tenant", "phase"],
    )
    for row in snapshot["open_moves"]:
        moves.add_metric([row["tenant_id"], row["phase"]], row["at"])
    yield moves
    if snapshot["last_event_at"] is not None:
        yield GaugeMetricFamily(
            "saasodoo_runner_events_last_received_timestamp_seconds",
            "When Kill Bill's last notification kept in the inbox arrived, as a Unix time.",
            value=snapshot["last_event_at"],
        )  # fmt: skip
    mail = snapshot["customer_mail"]
    yield GaugeMetricFamily(
        "saasodoo_customer_mail_due", "Customer e-mails due and not sent yet (the relay or Kill Bill failing).",
        value=mail["due"],
    )  # fmt: skip
    if mail["oldest_due"] is not None:
        yield GaugeMetricFamily(
            "saasodoo_customer_mail_oldest_due_timestamp_seconds",
            "When the customer e-mail waiting longest was due, as a Unix time.", value=mail["oldest_due"],
        )  # fmt: skip
    outcomes = GaugeMetricFamily(
        "saasodoo_customer_mail", "Customer e-mails sent and dropped (kept retention_days).", labels=["state"]
    )
    for state in ("sent", "dropped"):
        outcomes.add_metric([state], mail[state])
    yield outcomes


def _folded(counts: dict[str, int], known: frozenset[str]) -> dict[str, int]:
    folded: dict[str, int] = {}
    for name, n in counts.items():
        key = name if name in known else OTHER
        folded[key] = folded.get(key, 0) + n
    return folded


def exposition_registry(registry: Callable[[], AbstractContextManager], limited=(), scheduled=()) -> CollectorRegistry:
    """One CollectorRegistry per app, holding only the runner's collector."""
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(RegistryCollector(registry, limited, scheduled))
    return metrics


def exposition(metrics: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The body and its Content-Type: OpenMetrics when the scraper's Accept header asks for it (Prometheus does),
    else the classic text format 0.0.4."""
    encode, content_type = choose_encoder(accept or "")
    return encode(metrics), content_type
