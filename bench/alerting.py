"""From a tenant's Odoo going down to its alert in Alertmanager, with the monitoring's production timings, beside
the same with the local platform's timings as the baseline, from the same run.

Production's are roles/monitoring's defaults (every target scraped and every rule evaluated each 15 s,
TenantLoginPageDown after 2 minutes down); the local platform's are inventories/local's. Each line says the
timings it ran with, as the running Prometheus reports them.
Each round: a tenant whose login page answers its probe has its Odoo stopped behind the runner's back
(supervisorctl, as a crash would); the time until Alertmanager holds TenantLoginPageDown for it; then its Odoo is
started again, and the time until Prometheus holds the alert no more. The monitoring runs with production's timings
only while they are measured (site.yml's monitoring play with them, then without).
Goal (issue 52): from a tenant's Odoo going down to its alert firing, at most 3 minutes with production's timings.
--quick: one round, the local platform's timings only (it proves the benchmark, not the figure).
Usage: bench/alerting.py [--rounds N] [--quick]   (needs the local platform up: ansible-playbook playbooks/site.yml)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "collections"), str(REPO / "tests")]  # as pytest sees them
from bench.runner import goal  # noqa: E402
from tests.integration.conftest import LOCAL_STATE, remove_tenants, run_playbook, wait_until  # noqa: E402
from tests.monitoring_api import PROMETHEUS, alertmanager_alerts, get_json, prometheus_alerts, query  # noqa: E402

TENANT = "bench-alert"
SUPERVISORCTL = ["supervisorctl", "-c", str(LOCAL_STATE / "runtime/supervisor/supervisord.conf")]
ROLE_DEFAULTS = REPO / "roles/monitoring/defaults/main.yml"
GOAL_SECONDS = 180


def production_timings() -> dict:
    """The role's defaults that say how soon trouble shows: what an inventory without overrides runs."""
    defaults = yaml.safe_load(ROLE_DEFAULTS.read_text())
    return {key: defaults[key] for key in ("monitoring_scrape_interval", "monitoring_evaluation_interval",
                                           "monitoring_alert_after")}  # fmt: skip


def converge_monitoring(extra: dict | None = None) -> None:
    """site.yml's monitoring play, with `extra` over the inventory (none: the inventory's own)."""
    args = ["--tags", "monitoring"]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as extra_file:
        if extra:
            json.dump(extra, extra_file)
            extra_file.flush()
            args += ["-e", f"@{extra_file.name}"]
        run = run_playbook("site.yml", *args)
    assert run.returncode == 0, run.output[-3000:]


def running_timings() -> str:
    """The scrape and evaluation intervals and TenantLoginPageDown's `for`, as the running Prometheus has them."""
    config = yaml.safe_load(get_json(f"{PROMETHEUS}/api/v1/status/config")["data"]["yaml"])["global"]
    rules = [r for g in get_json(f"{PROMETHEUS}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
    after = next(r["duration"] for r in rules if r["name"] == "TenantLoginPageDown")
    return (f"scrape {config['scrape_interval']}, evaluate {config['evaluation_interval']},"
            f" fire after {after:g} s")  # fmt: skip


def probed_up() -> bool:
    return bool(query(f'probe_success{{tenant="{TENANT}"}} == 1'))


def one_round(patience: float) -> tuple[float, float]:
    """Seconds from the Odoo stopped to the alert in Alertmanager, and from it started again to the alert gone."""
    wait_until(probed_up, "the tenant's login page probed up", patience)
    wait_until(lambda: not prometheus_alerts("TenantLoginPageDown", tenant=TENANT), "no alert left", patience)
    subprocess.run([*SUPERVISORCTL, "stop", f"odoo-{TENANT}"], capture_output=True, check=True)
    down = time.monotonic()
    try:
        wait_until(lambda: alertmanager_alerts("TenantLoginPageDown", tenant=TENANT), "the alert", patience, 0.5)
        fired = time.monotonic() - down
    finally:
        subprocess.run([*SUPERVISORCTL, "start", f"odoo-{TENANT}"], capture_output=True, check=True)
    back = time.monotonic()
    wait_until(lambda: not prometheus_alerts("TenantLoginPageDown", tenant=TENANT), "the alert resolved", patience, 0.5)
    return fired, time.monotonic() - back


def measure(label: str, rounds: int, patience: float) -> list[float]:
    label = f"{label} ({running_timings()})"
    results = [one_round(patience) for _ in range(rounds)]
    fired = [f for f, _ in results]
    cleared = [c for _, c in results]
    print(f"  {label}:\n    alert after {' '.join(f'{f:5.1f}' for f in fired)} s (max {max(fired):.1f} s);"
          f" cleared after {' '.join(f'{c:5.1f}' for c in cleared)} s", flush=True)  # fmt: skip
    return fired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    run = run_playbook(
        "tenant_provision.yml", "-e", f"tenant_id={TENANT}", "-e", "plan=basic-monthly",
        "-e", f"customer_id=acct-{TENANT}",
    )  # fmt: skip
    assert run.returncode == 0, run.output[-3000:]
    try:
        print("From a tenant's Odoo stopped to TenantLoginPageDown in Alertmanager, and from it back to the alert gone")
        measure("baseline: the local platform's timings", rounds, patience=120)
        if not args.quick:
            timings = production_timings()
            converge_monitoring(timings)
            try:
                fired = measure("production's timings (the role's defaults)", rounds, patience=600)
            finally:
                converge_monitoring()
            print(goal("tenant down to its alert firing", max(fired), GOAL_SECONDS, "s"))
    finally:
        assert remove_tenants([TENANT], runtime=None), f"{TENANT} could not be removed"


if __name__ == "__main__":
    main()
