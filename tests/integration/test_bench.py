"""The small real version of each benchmark, so `make bench` cannot rot between releases."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import LocalPlatform
from conftest import REPO


def run_bench(script: str, *args: str, timeout: int) -> str:
    """A benchmark's quick run; its output, once it exited 0."""
    run = subprocess.run(
        [sys.executable, script, "--quick", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return run.stdout


def test_placement_benchmark_quick_run_prints_both_approaches(local_platform: LocalPlatform):
    output = run_bench("bench/placement.py", "--port", str(local_platform.servers["platform-db"].port), timeout=300)
    assert "counters: place(), check mode" in output
    assert "baseline: lock + count scan + choose" in output


def test_runner_benchmark_quick_run_prints_both_latencies(local_platform: LocalPlatform):
    port = str(local_platform.servers["platform-db"].port)
    output = run_bench("bench/runner.py", "--registry-port", port, timeout=600)
    assert "POST /killbill/<token>: stored, committed, 202" in output
    assert "baseline: same POST, wrong token, 401, no write" in output
    assert "sign-up at Kill Bill -> tenant's credentials open its DB" in output
    assert "ansible-runner start-up" in output
    assert "all 2 tenants active after the sign-ups" in output and "baseline: 2 x one provision job" in output
    assert "database servers brought up meanwhile" in output
    goals = output.splitlines()[-3:]  # the last lines, one per goal
    assert [g.split(":")[0] for g in goals] == [
        "goal acknowledgement-p99",
        "goal event-to-database-ready-p95",
        "goal 2 sign-ups all active",
    ], goals
    with local_platform.connect(
        int(port), "saasodoo_registry", local_platform.password("registry@saasodoo_registry"), "saasodoo_registry"
    ) as registry:
        left = registry.execute(
            "SELECT tenant_id, status FROM registry.tenants WHERE tenant_id LIKE 'bench-%' AND status <> 'purged'"
        ).fetchall()
    assert left == [], "the benchmark leaves its tenants behind"


def test_migration_benchmark_quick_run_prints_both_methods_and_the_baseline(local_platform: LocalPlatform):
    port = str(local_platform.servers["platform-db"].port)
    output = run_bench("bench/migration.py", "--registry-port", port, timeout=900)
    for label in ("logical (db_migrate", "baseline: stop, pg_dump -Fc, pg_restore, start", "dump (db_migrate"):
        assert label in output
    assert "logical vs baseline: downtime" in output
    assert output.count("\ngoal ") == 3


def test_migration_benchmark_drains_a_pool_under_a_running_odoo(local_platform: LocalPlatform):
    """Alone (a drain moves every tenant of its pool): three drains (make bench runs five), each with its held window
    and Odoo-seen gap on one timeline, and the goals; the tenant's Odoo kept its process through them."""
    port = str(local_platform.servers["platform-db"].port)
    output = run_bench("bench/migration.py", "--registry-port", port, "--moves", "0", "--drains", "3", timeout=900)
    drains = re.findall(r"^  drain \d of (\S+): .*\(ms after the block: (.*)\)$", output, re.MULTILINE)
    assert len(drains) == 3, output
    assert drains[0][0] != drains[1][0], "the second drain empties the pool the first one moved the tenant to"
    for _, timeline in drains:
        assert re.search(r"let in \d+.*next good answer \d+", timeline), timeline  # Odoo answers after the let-in
    goals = [line for line in output.splitlines() if line.startswith("goal ")]
    assert [g.split(":")[0] for g in goals] == [
        "goal Odoo not restarted by a move",
        "goal Odoo-seen downtime of a drain (its login page), p95",
        "goal no login-page request timed out during the drains",
    ], goals
    assert goals[0].endswith("— met"), goals[0]


def test_provision_benchmark_quick_run_prints_both_paths_and_its_goals_and_grows_a_pool_ahead(
    local_platform: LocalPlatform,
):
    port = local_platform.servers["platform-db"].port
    with local_platform.registry() as registry:
        audited_before = registry.execute("SELECT coalesce(max(id), 0) FROM registry.audit").fetchone()[0]
    output = run_bench("bench/provision.py", "--registry-port", str(port), timeout=900)
    assert "sign-up at Kill Bill -> login page through nginx, headroom 0" in output
    assert "baseline: odoo-bin -i" in output
    # The quick run's headroom is one slot more than the pools have: pools_grow.yml brought a pool up (two, if it
    # counts a pool another test left unhealthy out) before the sign-up, which was placed on a pool that was up.
    waits = r"placed on a pool being brought up: 0 of 1 with, [01] of 1 without; pools grown ahead of need: [12]$"
    assert re.search(waits, output, re.MULTILINE), output
    with local_platform.registry() as registry:
        grown = registry.execute(
            "SELECT s.name, s.status FROM registry.db_servers AS s JOIN registry.audit AS a"
            " ON a.subject = 'server:' || s.name AND a.actor = 'pool_headroom' AND a.id > %s",
            (audited_before,),
        ).fetchall()
    assert grown and {status for _, status in grown} == {"active"}, grown  # brought up, not only recorded
    assert [line.split(":")[0] for line in output.splitlines()[-3:]] == [
        "goal sign-up to login page p95",
        "goal sign-up p95 within 1.5x its p50",
        "goal template path against the -i path",
    ]


def test_lifecycle_benchmark_quick_run_prints_every_transition_beside_the_startup(local_platform: LocalPlatform):
    output = run_bench("bench/lifecycle.py", timeout=900)
    for runtime in ("none", "process"):
        for transition in ("provision", "suspend", "resume", "change plan, in place", "terminate"):
            # A provision that found the pools full shows in a row of its own.
            assert re.search(rf"{transition}(, with a new server)? \(runtime {runtime}\)", output), transition
    assert "baseline: one-task playbook (ping) start-up" in output and "meta: noop" in output
    assert output.count("goal ") == 10
    with local_platform.registry() as registry:
        left = registry.execute(
            "SELECT tenant_id FROM registry.tenants WHERE tenant_id LIKE 'lc-%' AND status <> 'purged'"
        ).fetchall()
    assert left == [], "the benchmark leaves its tenants behind"


def test_site_noop_benchmark_quick_run_counts_the_tasks_tenants_add(local_platform: LocalPlatform):
    output = run_bench("bench/site_noop.py", timeout=900)
    assert "site.yml, no change, the fleet as it is" in output and "site.yml, no change, 2 more tenants" in output
    assert "baseline: ansible postgres_servers -m ping" in output
    assert output.count("goal ") == 2
    with local_platform.registry() as registry:
        left = registry.execute(
            "SELECT tenant_id FROM registry.tenants WHERE tenant_id LIKE 'site-%' AND status <> 'purged'"
        ).fetchall()
        capacity = registry.execute(
            "SELECT DISTINCT capacity_tenants FROM registry.db_servers WHERE kind = 'shared'"
        ).fetchall()
    assert left == [], "the benchmark leaves its tenants behind"
    assert capacity == [(3,)], "the benchmark leaves the pools' capacity changed"


def test_alerting_benchmark_quick_run_times_a_tenant_down_to_its_alert(local_platform: LocalPlatform):
    output = run_bench("bench/alerting.py", timeout=600)
    assert re.search(
        r"baseline: the local platform's timings \(scrape 15s, evaluate 5s, fire after 20 s\):\n"
        r" +alert after +\d+\.\d s \(max \d+\.\d s\); cleared after +\d+\.\d s",
        output,
    ), output


def test_durability_benchmark_quick_run_loses_a_server_and_prints_its_goals(local_platform: LocalPlatform):
    port = str(local_platform.servers["platform-db"].port)
    output = run_bench("bench/durability.py", "--registry-port", port, timeout=600)
    assert re.search(
        r"1\. full backup of \d+ MB: pgBackRest [\d.]+ s .*, pg_basebackup -Ft --compress=1 [\d.]+ s .*;"
        r" pgBackRest into the offsite repository [\d.]+ s",
        output,
    )
    assert re.search(r"2\. point-in-time restore \(tenant_restore\.yml -e at=…\): [\d.]+ s", output), output
    lost = re.search(r"3\. server lost at .* after (\d+) acknowledged commits, (\d+) of them lost", output)
    assert lost and int(lost[1]) > int(lost[2]), output
    assert "servers_restore.yml from the offsite repository: " in output
    assert output.count("\ngoal ") == 4
