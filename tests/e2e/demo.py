"""The main job end to end through the webhook runner (`make demo`, tests/e2e/test_demo.py).

Starts the Kill Bill stand-in (tests/standins/killbill) where the local inventory says Kill Bill is,
registers the runner's callback with it, and plays three customers' lives on it with Kill Bill's own REST
calls: two basic, a standard and a premium sign up on a trial; the trials end and are paid; standard's card
is declined, then paid; a basic upgrades to standard (resized in place) and the other to premium (its
database moves from a shared pool to its own dedicated server while it keeps running: the measured write
downtime is printed); premium cancels. Nothing here calls a playbook: Kill Bill
notifies the runner, whose workers read Kill Bill back and run them. After each step it waits until the
runner has handled every notification and sent every e-mail due, then prints the jobs that step caused; at the
end, the tenants, the e-mails each customer got (the runner's mail catcher), and one tenant's audit trail, event by
event.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import logging
import mailbox
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
from tests.tenant_web import opener, tenant_url  # noqa: E402

SECRETS = REPO / ".state/local/secrets"
MAILDIR = REPO / ".state/local/runner/mail"  # the local runner's mail catcher (webhook_runner_mail_catcher_port)
CUSTOMERS = [("Acme Corp", "acme", "basic-monthly"), ("Globex", "globex", "standard-monthly"),
             ("Initech", "initech", "premium-monthly"), ("Hooli", "hooli", "basic-monthly")]  # fmt: skip
# What Kill Bill knows of each customer beyond the name: a new tenant's company and admin come from it.
PROFILES = {"acme": {"timeZone": "America/New_York", "country": "US"},
            "globex": {"timeZone": "Europe/Paris", "country": "FR", "locale": "fr_FR"},
            "initech": {"timeZone": "America/Chicago", "country": "US"},
            "hooli": {"timeZone": "America/Los_Angeles", "country": "US"}}  # fmt: skip
TRIAL_DAYS = 14


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
        """Until no stored notification is pending, no job is running or waiting for a retry, and no customer e-mail
        is due (its account is read from Kill Bill when it is sent)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            busy = m['saasodoo_runner_jobs{state="running"}'] + m['saasodoo_runner_jobs{state="queued"}']
            if not (m["saasodoo_runner_events_pending"] or busy or m["saasodoo_customer_mail_due"]):
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

    print(f"\n== What each customer was told (the mail catcher's Maildir, {MAILDIR.relative_to(REPO)})")
    told = customer_mail({tenant_id for _, tenant_id, _ in customers})
    for _, tenant_id, _ in customers:
        print(f"   {tenant_id} <{emails[tenant_id]}>, at {tenant_url(tenant_id)}")
        for subject in told.get(tenant_id, ["(nothing)"]):
            print(f"      {subject}")
    print("   (the welcome holds the admin's one-time sign-in link; tenant_admin_link.yml -e tenant_id=… issues more)")

    print(f"\n== Audit trail of {globex}, event by event (registry.audit, hash-chained)")
    for row in reversed(runner.get(f"/tenants/{globex}")["audit"]):
        print(f"   {row['id']:>5} {row['kind']:<9} {row['subject'] or '':<22} {audit_line(row)}")
    return 0


def customer_mail(tenant_ids: set[str]) -> dict[str, list[str]]:
    """The subjects of the e-mails the mail catcher kept for these tenants, by tenant, in the order they were
    queued (the outbox's id is in each Message-ID: <customer-mail-<id>.<time>@...>)."""
    found: dict[str, list[tuple[int, str]]] = {}
    for message in mailbox.Maildir(MAILDIR, create=False):
        parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
        if (tenant := str(parsed["X-SaaSOdoo-Tenant"] or "")) in tenant_ids:
            queued = int(str(parsed["Message-ID"]).split("customer-mail-")[1].split(".")[0])
            found.setdefault(tenant, []).append((queued, str(parsed["Subject"])))
    return {tenant: [subject for _, subject in sorted(mails)] for tenant, mails in found.items()}


def print_moves(runner: Runner, tenant_id: str) -> None:
    for move in runner.get(f"/tenants/{tenant_id}")["moves"]:
        check = move["verification"] or {}
        print(f"   moved {tenant_id}: {move['source_server']} -> {move['target_server']} ({move['method']}, "
              f"{move['phase']}): copy {move['copy_ms']} ms, write downtime {move['write_downtime_ms']} ms, "
              f"{check.get('rows')} rows in {check.get('tables')} tables and {check.get('sequences')} sequences "
              f"verified; old copy {move['retained_db']} kept until {move['retain_until']}")  # fmt: skip


def _login_page(tenant_id: str) -> str:
    """The tenant's login page through the local nginx, over HTTPS as its host name (the process runtime's route)."""
    try:
        with opener().open(tenant_url(tenant_id), timeout=5) as response:
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


# Keys a summary leaves out: long (a traceback, a job's extra vars) or a link (the run id the trigger adds).
NOT_SHOWN = {"traceback", "extravars", "run"}


def audit_line(row: dict) -> str:
    """What one audit row says, from the keys its detail holds: the trail mixes the runner's rows (event, decision,
    job, result, replay, error), the modules' (decision and result rows naming an action) and the audit callback's
    run rows, so the kind alone does not tell the shape. A missing fact is left out, never printed as None."""
    detail = row.get("detail") or {}
    kind = row.get("kind")
    if kind == "run":
        line = _run_line(detail)
    elif kind == "event" and "event_type" in detail:
        line = _join(detail["event_type"], detail.get("action_type"))
    elif "killbill" in detail:  # the runner's decision
        line = _killbill_line(detail)
    elif kind == "job" and "playbook" in detail:
        line = _join(detail.get("action"), "run", detail["playbook"], _attempt(detail))
    elif "chosen" in detail:  # db_placement's decision
        line = _with_reason(_join("place on", detail["chosen"], _parenthesised(detail.get("db_type"))), detail)
    elif "changes" in detail:  # registry_tenant's result
        changes = _changes(detail["changes"]) or "no change"
        line = _join(f"{detail.get('action') or 'record'}:", changes, _facts(detail, "action", "changes"))
    elif detail.get("action") == "move":  # db_migrate's decision and its phases
        line = _move_line(detail)
    elif detail.get("action"):  # another module's row naming its action (a backup, a restore), or a replay
        facts = _facts(detail, "action")
        line = f"{detail['action']}: {facts}" if facts else str(detail["action"])
    elif kind == "result" and "state" in detail:  # the runner's job result
        took = f"in {detail['seconds']} s" if detail.get("seconds") is not None else None
        rc = f"rc {detail['rc']}" if detail.get("rc") not in (None, 0) else None
        line = _join(detail["state"], took, rc) + (f": {detail['error']}" if detail.get("error") else "")
    elif kind == "error" and "traceback" in detail:
        line = _error_line(detail)
    else:
        line = _facts(detail)
    return _shorten(line or "(no detail)")


def _run_line(detail: dict) -> str:
    """A playbook run's start or end row (the saasodoo.platform.audit callback): who ran what, and how it ended."""
    outcome = detail.get("outcome")
    hosts = detail.get("hosts") or {}
    failed = [name for name, counts in hosts.items() if counts.get("failed") or counts.get("unreachable")]
    shown = ("phase", "playbook", "outcome", "seconds", "user", "job", "limit", "check_mode", "hosts", "extra_vars",
             "inventory")  # fmt: skip
    return _join(
        detail.get("phase"),
        detail.get("playbook") or "a playbook",
        f"-> {outcome}" if outcome not in (None, "") else None,
        f"({', '.join(failed)})" if failed else None,  # the hosts that failed or were unreachable
        f"in {detail['seconds']} s" if detail.get("seconds") is not None else None,
        f"by {detail['user']}" if detail.get("user") else None,
        f"(job {detail['job']})" if detail.get("job") else None,
        f"limit {detail['limit']}" if detail.get("limit") else None,
        "in check mode" if detail.get("check_mode") else None,
        f"with {', '.join(map(str, detail['extra_vars']))}" if detail.get("extra_vars") else None,
        f"on {len(hosts)} hosts" if hosts else None,
        _facts(detail, *shown),
    )


def _killbill_line(detail: dict) -> str:
    killbill = detail["killbill"] or {}
    says = _join(killbill.get("state"), killbill.get("planName"), killbill.get("phaseType")) or "nothing"
    blocked = " (blocked)" if detail.get("blocked") else ""
    return f"Kill Bill says {says}{blocked} -> {', '.join(detail.get('actions') or ['nothing to do'])}"


def _move_line(detail: dict) -> str:
    route = f"{detail['from']} -> {detail['to']}" if detail.get("from") and detail.get("to") else None
    how = ", ".join(str(detail[key]) for key in ("method", "plan", "db_type") if detail.get(key) is not None)
    shown = ("action", "phase", "from", "to", "method", "plan", "db_type", "reason")
    line = _join("move", detail.get("phase"), route, _parenthesised(how), _facts(detail, *shown))
    return _with_reason(line, detail)


def _error_line(detail: dict) -> str:
    labels = {"events": "events failed", "jobs_parked": "jobs parked"}
    counts = [f"{len(detail[key])} {label}" for key, label in labels.items() if isinstance(detail.get(key), list)]
    last = [line for line in str(detail["traceback"]).splitlines() if line.strip()][-1:]  # the exception itself
    return ": ".join(part for part in (", ".join(counts), *last) if part)


def _changes(changes: dict) -> str:
    def shown(value) -> str:
        return "unset" if value is None else str(value)

    return ", ".join(
        f"{field} {shown(change.get('before'))} -> {shown(change.get('after'))}"
        if isinstance(change, dict) else f"{field} {shown(change)}"
        for field, change in changes.items()
    )  # fmt: skip


def _facts(detail: dict, *shown: str) -> str:
    """The keys a summary did not show already, as key=value: empty values and NOT_SHOWN left out."""
    return " ".join(
        f"{key}={value if isinstance(value, str | int | float) else json.dumps(value, default=str)}"
        for key, value in detail.items()
        if key not in shown and key not in NOT_SHOWN and value not in (None, "", [], {})
    )


def _attempt(detail: dict) -> str | None:
    return f"(attempt {detail['attempt']})" if detail.get("attempt") is not None else None


def _with_reason(line: str, detail: dict) -> str:
    return f"{line}: {detail['reason']}" if detail.get("reason") else line


def _parenthesised(text: str | None) -> str | None:
    return f"({text})" if text else None


def _join(*parts) -> str:
    """The parts that are there, space-separated."""
    return " ".join(str(part) for part in parts if part not in (None, ""))


def _shorten(text: str, width: int = 110) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
