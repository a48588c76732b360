"""The main job end to end through the webhook runner (`make demo`, tests/e2e/test_demo.py).

Starts the Kill Bill stand-in (tests/standins/killbill) where the local inventory says Kill Bill is,
registers the runner's callback with it, and plays three customers' lives on it with Kill Bill's own REST
calls: two basic, a standard and a premium sign up on a trial; the trials end and are paid; standard's card
is declined, then paid; a basic upgrades to standard (resized in place) and the other to premium (its
database moves from a shared pool to its own dedicated server while it keeps running: the measured write
downtime is printed); premium cancels. Nothing here calls a playbook: Kill Bill
notifies the runner, whose workers read Kill Bill back and run them. After each step it waits until the
runner has handled every notification, then prints the jobs that step caused; at the end, the tenants and
one tenant's audit trail, event by event.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.e2e.killbill_api import KillBillAPI  # noqa: E402
from tests.standins.killbill.killbill_standin import KillBillStandin  # noqa: E402

SECRETS = REPO / ".state/local/secrets"
CUSTOMERS = [("Acme Corp", "acme", "basic-monthly"), ("Globex", "globex", "standard-monthly"),
             ("Initech", "initech", "premium-monthly"), ("Hooli", "hooli", "basic-monthly")]  # fmt: skip
# What Kill Bill knows of each customer beyond the name: a new tenant's company and admin come from it.
PROFILES = {"acme": {"timeZone": "America/New_York", "country": "US"},
            "globex": {"timeZone": "Europe/Paris", "country": "FR", "locale": "fr_FR"},
            "initech": {"timeZone": "America/Chicago", "country": "US"},
            "hooli": {"timeZone": "America/Los_Angeles", "country": "US"}}  # fmt: skip
TRIAL_DAYS = 14
LOGIN_URL = "http://{}.odoo.localhost:58080/web/login"


class Runner:
    """The runner's HTTP API as an operator uses it."""

    def __init__(self, url: str, admin_token: str, metrics_token: str):
        self.url, self.admin_token, self.metrics_token = url.rstrip("/"), admin_token, metrics_token

    def get(self, path: str):
        token = self.metrics_token if path == "/metrics" else self.admin_token
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
        return body if path == "/metrics" else json.loads(body)

    def metrics(self) -> dict[str, float]:
        values = {}
        for line in self.get("/metrics").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def wait_settled(self, timeout: float = 600.0) -> dict[str, float]:
        """Until no stored notification is pending and no job is running or waiting for a retry."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            busy = m['saasodoo_runner_jobs{state="running"}'] + m['saasodoo_runner_jobs{state="queued"}']
            if not (m["saasodoo_runner_events_pending"] or busy):
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"the runner did not settle within {timeout:.0f} s: {m}")
            time.sleep(0.5)  # polling the runner's metrics: there is nothing to block on across processes


def secret(name: str) -> str:
    return (SECRETS / name).read_text().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runner-url", default="http://127.0.0.1:58190")
    parser.add_argument("--killbill-port", type=int, default=58180)
    args = parser.parse_args(argv)

    # werkzeug's request log would print the callback registration, whose URL holds the runner's token.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    credentials = {"username": "admin", "password": secret("killbill_password"), "api_key": "saasodoo",
                   "api_secret": secret("killbill_api_secret")}  # fmt: skip
    standin = KillBillStandin(
        **credentials, trials=dict.fromkeys((plan for _, _, plan in CUSTOMERS), TRIAL_DAYS),
        prices={"basic-monthly": 10, "standard-monthly": 25, "premium-monthly": 99},
    ).start(port=args.killbill_port)  # fmt: skip
    killbill = KillBillAPI(standin.url, **credentials)
    runner = Runner(args.runner_url, secret("runner_admin_token"), secret("runner_metrics_token"))
    seen_jobs = {job["id"] for job in runner.get("/jobs?limit=1000")["jobs"]}  # earlier runs' jobs
    # A demo run on a platform that has one already signs up new customers: tenant ids are never reused.
    suffix = uuid.uuid4().hex[:4]
    customers = [(f"{name} {suffix}", f"{tenant_id}-{suffix}", plan) for name, tenant_id, plan in CUSTOMERS]
    emails = {f"{tenant_id}-{suffix}": f"admin@{tenant_id}-{suffix}.example" for _, tenant_id, _ in CUSTOMERS}
    acme, globex, initech, hooli = (tenant_id for _, tenant_id, _ in customers)

    def step(title: str, action) -> None:
        print(f"\n== {title}", flush=True)
        started = time.monotonic()
        action()
        delivered, retries = standin.wait_idle(timeout=60)
        if not delivered or retries:
            raise RuntimeError(f"Kill Bill could not deliver every notification ({retries} retries pending)")
        metrics = runner.wait_settled()
        for job in reversed(runner.get("/jobs?limit=100")["jobs"]):
            if job["id"] in seen_jobs:
                continue
            seen_jobs.add(job["id"])
            took = _seconds(job)
            print(f"   job {job['id']:>3}  {job['action']:<12} {job['tenant_id'] or '-':<8} {job['state']:<10}"
                  f" {took:>6}  {job['reason'] or ''}")  # fmt: skip
        print(f"   ({time.monotonic() - started:.1f} s, {metrics['saasodoo_runner_events_received_total']:.0f}"
              " notifications so far)")  # fmt: skip

    try:
        callback = f"{args.runner_url}/killbill/{secret('runner_inbound_token')}"
        step("Kill Bill: register the runner's callback", lambda: killbill.register_callback(callback))
        accounts, subscriptions = {}, {}

        def sign_up():
            for name, tenant_id, plan in customers:
                profile = PROFILES[tenant_id.rsplit("-", 1)[0]]
                accounts[tenant_id], subscriptions[tenant_id] = killbill.sign_up(
                    name, tenant_id, plan, email=emails[tenant_id], **profile
                )

        step("Four customers sign up (basic, standard, premium, basic), on a trial", sign_up)
        step(f"{TRIAL_DAYS + 1} days later: the trials end, the first invoices are paid",
             lambda: killbill.move_clock(TRIAL_DAYS + 1))  # fmt: skip

        def decline():
            killbill.payments_fail(accounts[globex])
            killbill.move_clock(31)

        step("A month later: Globex's card is declined", decline)

        def pay():
            killbill.payments_fail(accounts[globex], fail=False)
            killbill.pay(accounts[globex])

        step("Globex pays", pay)
        step("Hooli upgrades basic -> standard", lambda: killbill.change_plan(subscriptions[hooli], "standard-monthly"))
        step("Acme upgrades basic -> premium: its database moves to a dedicated server",
             lambda: killbill.change_plan(subscriptions[acme], "premium-monthly"))  # fmt: skip
        print_moves(runner, acme)
        step("Initech cancels", lambda: killbill.cancel(subscriptions[initech]))
    finally:
        standin.stop()

    print("\n== Tenants (registry, through the runner's admin API)")
    print(f"   {'tenant':<13} {'plan':<17} {'db_type':<10} {'server':<22} {'status':<11} /web/login through nginx")
    for _, tenant_id, _ in customers:
        tenant = runner.get(f"/tenants/{tenant_id}")["tenant"]
        print(f"   {tenant_id:<13} {tenant['plan_name']:<17} {tenant['db_type']:<10} {tenant['db_server']:<22}"
              f" {tenant['status']:<11} {_login_page(tenant_id)}")  # fmt: skip

    print("\n== How each customer signs in (the admin's one-time link: tenant_admin_link.yml -e tenant_id=…)")
    for _, tenant_id, _ in customers:
        print(f"   {LOGIN_URL.format(tenant_id)}   admin: {emails[tenant_id]}")

    print(f"\n== Audit trail of {globex}, event by event (registry.audit, hash-chained)")
    for row in reversed(runner.get(f"/tenants/{globex}")["audit"]):
        print(f"   {row['id']:>5} {row['kind']:<9} {row['subject'] or '':<22} {_detail(row)}")
    return 0


def print_moves(runner: Runner, tenant_id: str) -> None:
    for move in runner.get(f"/tenants/{tenant_id}")["moves"]:
        check = move["verification"] or {}
        print(f"   moved {tenant_id}: {move['source_server']} -> {move['target_server']} ({move['method']}, "
              f"{move['phase']}): copy {move['copy_ms']} ms, write downtime {move['write_downtime_ms']} ms, "
              f"{check.get('rows')} rows in {check.get('tables')} tables and {check.get('sequences')} sequences "
              f"verified; old copy {move['retained_db']} kept until {move['retain_until']}")  # fmt: skip


def _login_page(tenant_id: str) -> str:
    """The tenant's login page through the local nginx, by Host header (the process runtime's route)."""
    request = urllib.request.Request(
        "http://127.0.0.1:58080/web/login", headers={"Host": f"{tenant_id}.odoo.localhost"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            page = response.read().decode(errors="replace")
            return f"{response.status} {'login form' if 'oe_login_form' in page else 'no login form'}"
    except urllib.error.HTTPError as error:
        return f"{error.code} (stopped)"
    except OSError as error:
        return f"unreachable ({error})"


def _seconds(job: dict) -> str:
    if not (job["started_at"] and job["finished_at"]):
        return "-"
    from datetime import datetime

    took = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
    return f"{took.total_seconds():.1f}s"


def _detail(row: dict) -> str:
    detail = row["detail"]
    if row["kind"] == "event":
        return f"{detail.get('event_type')} {detail.get('action_type') or ''}".strip()
    if row["kind"] == "decision":
        kb = detail.get("killbill", {})
        return f"Kill Bill says {kb.get('state')} {kb.get('planName')}{' (blocked)' if detail.get('blocked') else ''}" \
               f" -> {', '.join(detail.get('actions') or ['nothing to do'])}"  # fmt: skip
    if row["kind"] == "job":
        return f"run {detail.get('playbook')} (attempt {detail.get('attempt')})"
    if row["kind"] == "result":
        return f"{detail.get('state')} in {detail.get('seconds')} s"
    return json.dumps(detail)[:100]


if __name__ == "__main__":
    sys.exit(main())
