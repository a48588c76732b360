"""Availability: how long a tenant's writes pause when its server's primary goes, and what they lose (Patroni).

A tenant on a dedicated server under Patroni (premium-ha-monthly: two members, an etcd of its own, HAProxy at the
server's port; runtime process, so its Odoo's own PgBouncer is in the path); a writer commits a row every 20 ms
through that PgBouncer with the tenant's credentials. In one run:
1. baseline: the primary's PostgreSQL restarted in place (Patroni's POST /restart), what a planned restart costs the
   tenant of a server with no replica.
2. switchover (planned): --runs times, each to the other member. Goal: write pause p95 <= 2 s.
3. failover (unplanned): --runs times with the synchronous replica, then (not --quick) --runs times without it
   (synchronous_mode off through Patroni's REST API, set back at the end): the primary's Patroni and PostgreSQL
   frozen (SIGSTOP) as a lost host stops them; then killed, as the host restarting, and supervisord starts its
   Patroni again, which rejoins as a replica.
   Goals: write pause p95 <= 15 s; 0 acknowledged rows lost with the synchronous replica (without it, printed).
A write pause is the writer's longest gap between two commits from the event until the next one.
Usage: bench/failover.py [--runs 5] [--quick] [--tenant ID]   (--quick: one of each, the synchronous replica only;
--tenant: an active process-runtime tenant of an ha plan, used as it is and left in place)
(needs the local platform up: ansible-playbook playbooks/site.yml; the tenant it provisions is purged afterwards, its
server stays until the servers_retire schedule retires it)
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "collections"), str(REPO / "tests")]  # as pytest sees them
from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import derive_password  # noqa: E402
from bench.odoo_tenant import TenantWriter  # noqa: E402
from bench.runner import goal, percentile, registry_conninfo  # noqa: E402
from tests.ha_cluster import LOCAL_STATE, SECRET, Cluster  # noqa: E402
from tests.integration.conftest import remove_tenants, run_playbook, wait_until  # noqa: E402

PLAN = "premium-ha-monthly"
REGISTRY_PORT = 55432  # the local inventory's platform-db


def password(purpose: str) -> str:
    return derive_password(SECRET.read_text().strip(), purpose)


class Run:
    """The tenant's writer and its server, and every event's write pause as the writer saw it."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        with psycopg.connect(registry_conninfo(REGISTRY_PORT)) as conn:
            name, port, db_name, db_role, version = conn.execute(
                "SELECT s.name, s.port, t.db_name, t.db_role, t.credential_version FROM registry.tenants t"
                " JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id = %s",
                (tenant,),
            ).fetchone()
        self.cluster = Cluster(name, port, password(f"patroni-restapi@{name}"))
        self.port, self.db_name = port, db_name
        socket_dir = str(LOCAL_STATE / "runtime/pgbouncer" / tenant / "run")
        tenant_password = password(f"tenant:{tenant}:v{version}")
        self.writer = TenantWriter(lambda: (socket_dir, 6432), db_name, db_role, tenant_password, interval=0.02)
        self.events: list[tuple[str, float]] = []  # (kind, when, as time.monotonic())

    def healthy(self, synchronous: bool) -> None:
        want = "sync_standby" if synchronous else "replica"
        wait_until(
            lambda: sorted(self.cluster.roles().values()) == sorted(["leader", want]),
            f"a leader and a {want}",
            120,
            0.2,
        )
        self.resumed()

    def resumed(self) -> None:
        count = self.writer.committed_count
        wait_until(lambda: self.writer.committed_count >= count + 5, "the writer committing", 120, 0.05)

    def event(self, kind: str, action) -> None:
        self.events.append((kind, time.monotonic()))
        action()

    def restart(self) -> None:
        self.event("restart", lambda: self.cluster.restart(self.cluster.leader()))
        self.resumed()

    def switchover(self) -> None:
        leader = self.cluster.leader()
        (candidate,) = set(self.cluster.roles()) - {leader}
        self.event("switchover", lambda: self.cluster.switchover(leader, candidate))
        wait_until(lambda: self.cluster.leader() == candidate, f"{candidate} leading", 60, 0.1)
        self.resumed()

    def failover(self, kind: str, synchronous: bool) -> None:
        lost = self.cluster.leader()
        try:
            self.event(kind, lambda: self.cluster.lose(lost))
            wait_until(lambda: self.cluster.leader() not in (None, lost), "another member leading", 120, 0.1)
            self.resumed()
        finally:  # never leave a member frozen: it would hold its ports and its data directory
            self.cluster.revive(lost)
        self.healthy(synchronous)

    def pauses(self, commit_times: list[float], kind: str) -> list[float]:
        """Each event's write pause: the writer's longest gap between two commits from the event until the next
        event (a switchover takes effect at Patroni's next loop, the loss of a primary once its leader key expires)."""
        origin = self.writer.started_at
        marks = [at - origin for _, at in self.events] + [float("inf")]
        pauses = []
        for (event_kind, _), start, end in zip(self.events, marks, marks[1:], strict=False):
            if event_kind == kind:
                gaps = [b - a for a, b in itertools.pairwise(commit_times) if b > start and a < end]
                if gaps:
                    pauses.append(max(gaps))
        return pauses

    def loser(self, committed_at: float) -> str:
        """The event that lost a row committed at `committed_at` (since the writer's start): the first after it."""
        origin = self.writer.started_at
        return next((kind for kind, at in self.events if at - origin >= committed_at), "no event")


def line(label: str, values: list[float], unit: str = "s") -> str:
    if not values:
        return f"  {label:<44} (none)"
    p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
    figures = f"p50 {p50:7.2f} {unit}  p95 {p95:7.2f} {unit}  max {max(values):7.2f} {unit}"
    return f"  {label:<44} n={len(values):<3} {figures}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one of each, the synchronous replica only")
    parser.add_argument("--tenant", help="an active process-runtime tenant of an ha plan, left in place")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs

    tenant = args.tenant or "bench-failover"
    if not args.tenant:
        provisioned = run_playbook("tenant_provision.yml", "-e", f"tenant_id={tenant}", "-e", f"plan={PLAN}")
        if provisioned.returncode != 0:
            print(provisioned.output[-5000:], file=sys.stderr)
            return 1
    run = Run(tenant)
    try:
        run.writer.prepare()
        run.writer.start()
        run.healthy(synchronous=True)
        print(f"{tenant} on {run.cluster.name}: a commit every 20 ms through its own PgBouncer")
        run.restart()
        run.healthy(synchronous=True)
        for _ in range(runs):
            run.switchover()
            run.healthy(synchronous=True)
        for _ in range(runs):
            run.failover("failover sync", synchronous=True)
        if not args.quick:
            run.cluster.set_synchronous(False)
            run.healthy(synchronous=False)
            for _ in range(runs):
                run.failover("failover async", synchronous=False)
            run.cluster.set_synchronous(True)
            run.healthy(synchronous=True)
    finally:
        report = run.writer.stop()
    with psycopg.connect(
        host=str(LOCAL_STATE / "pg" / run.cluster.name / "run"),
        port=run.port,
        user="postgres",
        dbname=run.db_name,
    ) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM bench_writer")}
    if not args.tenant:
        remove_tenants([tenant], runtime=None)

    times = report.commit_times_s
    lost: dict[str, int] = {}
    for row_id, at in zip(report.committed_ids, times, strict=True):
        if row_id not in stored:
            kind = run.loser(at)
            lost[kind] = lost.get(kind, 0) + 1
    lost_all = len(set(report.committed_ids) - stored)
    print(f"writes: {report.commits} acknowledged, {report.errors} failed attempts, {lost_all} lost")
    restart, switchover = run.pauses(times, "restart"), run.pauses(times, "switchover")
    sync, unsync = run.pauses(times, "failover sync"), run.pauses(times, "failover async")
    print("write pause:")
    print(line("baseline: the primary restarted in place", restart))
    print(line("switchover (planned)", switchover))
    print(line("failover, synchronous replica", sync))
    print(line("failover, asynchronous replica", unsync))
    unsynchronous = lost.get("failover async", 0) if unsync else "not run"
    print(f"acknowledged rows lost: synchronous {lost.get('failover sync', 0)}, asynchronous {unsynchronous}")
    print(goal("switchover_write_pause_p95", percentile(switchover, 0.95), 2, "s"))
    print(goal("failover_write_pause_p95", percentile(sync + unsync, 0.95), 15, "s"))
    print(goal("rows_lost_sync", lost.get("failover sync", 0), 0, "rows"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
