"""The webhook runner end to end: Kill Bill's notifications in (from the stand-in, byte for byte), the real
gunicorn and worker processes, the real registry, playbooks run through ansible-runner (runtime none:
database and storage), Kill Bill's state read back over its REST API."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from datetime import datetime, timedelta

import psycopg
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from tenant_web import get_status

from tests.e2e.killbill_api import KillBillAPI
from tests.ha_cluster import Cluster
from tests.standins.killbill.killbill_standin import KillBillStandin, encode_notification, post_notification
from webhook_runner import store
from webhook_runner.app import create_app
from webhook_runner.config import load_settings
from webhook_runner.desired import PLAYBOOKS
from webhook_runner.schedules import SCHEDULES

from .conftest import (
    LOCAL_STATE,
    REPO,
    VENV_BIN,
    LocalPlatform,
    alive,
    ansible_env,
    ansible_processes,
    run_playbook,
    supervisor_pid,
    wait_until,
)
from .runner_stack import (
    ADMIN_TOKEN,
    INBOUND_TOKEN,
    METRICS_TOKEN,
    MailCatcher,
    RunnerStack,
    pause_deployed_runner,
    resume_deployed_runner,
    runner_command,
    runner_settings,
    write_settings,
)

KILLBILL_PORT = 58281
RUNNER_PORT = 58290
CREDENTIALS = {"username": "admin", "password": "kb-password", "api_key": "saasodoo", "api_secret": "kb-api-secret"}
PLANS = ("basic-monthly", "standard-monthly", "premium-monthly")


def start_killbill(deliver: bool = True, retries: tuple[float, ...] = (0.2, 0.5, 1, 2, 4)) -> KillBillStandin:
    return KillBillStandin(
        **CREDENTIALS, retries=list(retries), trials=dict.fromkeys(PLANS, 14),
        prices={"basic-monthly": 10, "standard-monthly": 25, "premium-monthly": 99}, deliver=deliver,
    ).start(port=KILLBILL_PORT)  # fmt: skip


@pytest.fixture(scope="module")
def runner(local_platform: LocalPlatform, tmp_path_factory) -> RunnerStack:
    deployed = pause_deployed_runner()
    state = tmp_path_factory.mktemp("runner")
    settings_path = state / "settings.json"
    settings = runner_settings(local_platform, f"http://127.0.0.1:{KILLBILL_PORT}", state)
    write_settings(settings_path, settings)
    stack = RunnerStack(settings_path, RUNNER_PORT, workers=2, registry_conninfo=settings["registry_conninfo"],
                        log_dir=state)  # fmt: skip
    stack.start()
    yield stack
    stack.stop()
    resume_deployed_runner(deployed)


@pytest.fixture
def killbill():
    standin = start_killbill()
    yield standin
    standin.stop()


def kb_api(standin: KillBillStandin) -> KillBillAPI:
    return KillBillAPI(standin.url, **CREDENTIALS)


def tenant_rows(runner: RunnerStack, prefix: str) -> dict[str, dict]:
    with runner.registry() as conn:
        rows = conn.execute(
            "SELECT t.tenant_id, t.plan_name, t.db_type, t.status, t.billing_status, t.db_name, s.port"
            " FROM registry.tenants t"
            " LEFT JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id LIKE %s",
            (prefix + "%",),
        ).fetchall()
    return {row["tenant_id"]: row for row in rows}


def settled_rows(runner: RunnerStack, killbill: KillBillStandin, prefix: str) -> dict[str, dict]:
    """Once Kill Bill has delivered everything and the runner has done what it asked: the tenants of `prefix`."""
    assert killbill.wait_idle(timeout=30) == (True, 0)
    runner.settle()
    return tenant_rows(runner, prefix)


def last_skip(runner: RunnerStack, tenant_id: str) -> str:
    """The reason of the tenant's latest skipped job: what the runner would not do, and why."""
    with runner.registry() as conn:
        row = conn.execute(
            "SELECT reason FROM registry.jobs WHERE tenant_id = %s AND state = 'skipped' ORDER BY id DESC LIMIT 1",
            (tenant_id,),
        ).fetchone()
    return row["reason"] if row else ""


def succeeded_jobs(runner: RunnerStack, prefix: str) -> Counter:
    with runner.registry() as conn:
        rows = conn.execute(
            "SELECT tenant_id, action FROM registry.jobs WHERE tenant_id LIKE %s AND state = 'succeeded'"
            " AND action NOT IN ('converge', 'reconcile')",
            (prefix + "%",),
        ).fetchall()
    return Counter((row["tenant_id"], row["action"]) for row in rows)


def raw_post(url: str, body: bytes, content_type: str = "application/json; charset=UTF-8") -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_callback_stores_kill_bill_bodies_and_refuses_anything_else(runner: RunnerStack):
    body = encode_notification(
        "TENANT_CONFIG_CHANGE", None, "TENANT_KVS", "5cf9c272-a493-4178-af30-3b8de0344a26", {"key": "CATALOG"}
    )
    with runner.registry() as conn:
        before = conn.execute("SELECT max(id) AS id FROM registry.events").fetchone()["id"] or 0

    assert post_notification(f"{runner.url}/killbill/wrong-token", body) == 401
    assert raw_post(f"{runner.url}/killbill/", body) == 401
    assert raw_post(runner.callback, body, content_type="text/plain") == 415
    assert raw_post(runner.callback, b'{"eventType":') == 400
    assert raw_post(runner.callback, b'{"eventType":"X"}') == 400
    assert raw_post(runner.callback, body[:-1] + b" " * 9000 + b"}") == 413
    assert raw_post(runner.callback, body.decode().encode("utf-16")) == 400  # JSON, but not Kill Bill's UTF-8
    assert raw_post(runner.callback, b"[" * 1000 + b"]" * 1000) == 400  # no 500 from a recursing parser
    assert post_notification(runner.callback, body) == 202
    unknown = encode_notification("SUBSCRIPTION_TELEPORT", "acct-unknown-type", "SUBSCRIPTION", "s-1", None)
    assert post_notification(runner.callback, unknown) == 202

    with runner.registry() as conn:
        stored = conn.execute(
            "SELECT event_type, account_id, meta_data, body FROM registry.events WHERE id > %s ORDER BY id", (before,)
        ).fetchall()
    assert [row["event_type"] for row in stored] == ["TENANT_CONFIG_CHANGE", "SUBSCRIPTION_TELEPORT"]
    assert stored[0]["meta_data"] == {"key": "CATALOG"}  # JSON inside the string, decoded
    assert json.dumps(stored[0]["body"], separators=(",", ":")).encode() != b""  # the whole body kept

    runner.settle()
    status, listing = runner.admin("GET", "/jobs?state=skipped&limit=1000")
    assert status == 200
    [skipped] = [job for job in listing["jobs"] if job["account_id"] == "acct-unknown-type"]
    assert "unknown event type SUBSCRIPTION_TELEPORT" in skipped["reason"]
    for token in (None, ADMIN_TOKEN):  # the scraper's token only: the admin token opens the admin API
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{runner.url}/metrics", headers=headers), timeout=5)
        assert refused.value.code == 401
    families = scrape_metrics(runner)
    jobs = {s.labels["state"]: s.value for s in families["saasodoo_runner_jobs"].samples}
    assert jobs["skipped"] >= 1
    limited = {s.labels["action"] for s in families["saasodoo_runner_jobs_waiting_for_limit"].samples}
    assert {"provision", "change_plan"} <= limited  # the default limits' gauges, 0 when nothing waits
    assert next(s.value for s in families["saasodoo_runner_events_received"].samples) >= 2
    by_type = {s.labels["event_type"] for s in families["saasodoo_runner_events_received_by_type"].samples}
    assert "TENANT_CONFIG_CHANGE" in by_type and "other" in by_type and "SUBSCRIPTION_TELEPORT" not in by_type
    # Prometheus asks for OpenMetrics first: same families, in that format.
    openmetrics = {"Authorization": f"Bearer {METRICS_TOKEN}", "Accept": "application/openmetrics-text;version=1.0.0"}
    scrape = urllib.request.Request(f"{runner.url}/metrics", headers=openmetrics)
    with urllib.request.urlopen(scrape, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        assert {f.name for f in openmetrics_families(response.read().decode())} == set(families)
    request = urllib.request.Request(f"{runner.url}/jobs")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401


def kind(messages: list, name: str):
    """The one message of that kind (X-SaaSOdoo-Message) among these."""
    (found,) = [message for message in messages if message["X-SaaSOdoo-Message"] == name]
    return found


def test_a_customer_life_runs_each_playbook_once(runner: RunnerStack, killbill: KillBillStandin, local_platform):
    api = kb_api(killbill)
    with runner.registry() as conn:
        started = conn.execute("SELECT now() AS now").fetchone()["now"]
    api.register_callback(runner.callback)
    # Template markers in the account's name stay text: Ansible renders them in extra vars, the runner passes
    # them where it cannot.
    mails, owner = MailCatcher(), "owner@life-01.example"
    account, subscription = api.sign_up(
        "Life {{ 6 * 7 }} One", "life-01", "basic-monthly", email=owner, country="BE", locale="fr_FR"
    )
    api.sign_up("Life Two", "life-02", "gold-yearly")  # a plan the catalog does not have

    def settled() -> dict[str, dict]:
        assert killbill.wait_idle(timeout=30) == (True, 0)
        runner.settle()
        return tenant_rows(runner, "life-0")  # not test_tenant_lifecycle.py's life-local, life-ceph

    tenants = settled()
    assert tenants["life-01"]["status"] == "active" and tenants["life-01"]["plan_name"] == "basic-monthly"
    assert tenants["life-01"]["billing_status"] == "trial"
    port = tenants["life-01"]["port"]
    with local_platform.connect(port, "t_life_01", local_platform.password("tenant:life-01:v1"), "t_life_01") as conn:
        company, login = conn.execute(
            "SELECT c.name, u.login FROM public.res_company c, public.res_users u JOIN public.ir_model_data d"
            " ON d.res_id = u.id AND d.module = 'base' AND d.name = 'user_admin' WHERE c.id = 1"
        ).fetchone()
    assert (company, login) == ("Life {{ 6 * 7 }} One", "owner@life-01.example")
    assert "life-02" not in tenants
    # The customer is welcomed in their language, text and HTML, with the one-time sign-in link, and told of the
    # trial's end (the runner's settings tell it at once).
    welcome = kind(mails.wait_for(owner, {"welcome": 1, "trial_ending": 1}), "welcome")
    assert welcome["Subject"] == "Votre Odoo life-01 est prêt"
    text, html = (welcome.get_body((part,)).get_content() for part in ("plain", "html"))
    link = re.search(r"https://life-01\.odoo\.localhost:\d+/web/reset_password\?\S+", text).group()
    assert "token=" in link and f'href="{link.replace("&", "&amp;")}"' in html
    _, listing = runner.admin("GET", "/jobs?tenant=life-02")
    assert any("gold-yearly" in job["reason"] for job in listing["jobs"] if job["state"] == "skipped")

    api.move_clock(15)  # the trial ends and is paid: nothing changes for the tenant but its billing status
    assert settled()["life-01"].items() >= {"status": "active", "billing_status": "paid"}.items()
    api.payments_fail(account)
    api.move_clock(31)
    assert settled()["life-01"].items() >= {"status": "suspended", "billing_status": "overdue:BLOCKED"}.items()
    mails.wait_for(owner, {"payment_failed": 1, "suspended": 1})
    api.payments_fail(account, fail=False)
    api.pay(account)
    assert settled()["life-01"].items() >= {"status": "active", "billing_status": "paid"}.items()
    mails.wait_for(owner, {"resumed": 1})
    api.change_plan(subscription, "standard-monthly")
    assert settled()["life-01"]["plan_name"] == "standard-monthly"
    mails.wait_for(owner, {"plan_changed": 1})
    api.cancel(subscription)
    assert settled()["life-01"]["status"] == "terminated"
    cancelled = kind(mails.wait_for(owner, {"cancelled": 1, "purge_soon": 1}), "cancelled")
    _, view = runner.admin("GET", "/tenants/life-01")
    assert view["tenant"]["retain_until"][:10] in cancelled.get_body(("plain",)).get_content()
    with pytest.raises(psycopg.OperationalError):  # a terminated tenant's credentials open nothing
        local_platform.connect(port, "t_life_01", local_platform.password("tenant:life-01:v1"), "t_life_01")
    # The customer comes back, same account, a new subscription: a returning customer pays up front, so nothing
    # happens in its trial (the job says why); once Kill Bill's clock ends it and the invoice is paid, the tenant
    # is reactivated with its data.
    again = api.subscribe(account, "life-01", "standard-monthly")
    assert settled()["life-01"]["status"] == "terminated"
    assert "a returning customer pays up front" in last_skip(runner, "life-01")
    api.move_clock(15)
    tenants = settled()
    assert tenants["life-01"].items() >= {"status": "active", "plan_name": "standard-monthly"}.items()
    with local_platform.connect(port, "t_life_01", local_platform.password("tenant:life-01:v1"), "t_life_01") as conn:
        assert conn.execute("SELECT name FROM public.res_company WHERE id = 1").fetchone() == (company,)
    _, view = runner.admin("GET", "/tenants/life-01")
    assert view["tenant"]["subscription_id"] == again and view["tenant"]["retain_until"] is None
    # Each message once per cause: one mail for each row of the outbox, sent, its link no longer stored. The new
    # subscription's trial (the stand-in's catalog gives every subscription one) served nothing: nobody is told of
    # its end.
    received = mails.wait_for(owner, {"resumed": 2, "trial_ending": 1})
    with runner.registry() as conn:
        outbox = conn.execute(
            "SELECT message, state, recipient, language, sealed_link FROM registry.customer_mail"
            " WHERE tenant_id = 'life-01' AND queued_at >= %s",
            (started,),
        ).fetchall()
    assert {(row["state"], row["recipient"], row["language"], row["sealed_link"]) for row in outbox} == {
        ("sent", owner, "fr", None)
    }
    kinds = Counter(str(message["X-SaaSOdoo-Message"]) for message in received)
    assert kinds == Counter(row["message"] for row in outbox)
    assert kinds.keys() == {"welcome", "trial_ending", "payment_failed", "suspended", "resumed", "plan_changed",
                            "cancelled", "purge_soon"}  # fmt: skip
    assert kinds["resumed"] == 2
    assert all(kinds[k] == 1 for k in kinds if k not in ("resumed", "payment_failed"))
    assert len({message["Message-ID"] for message in received}) == len(received)

    assert succeeded_jobs(runner, "life-0") == Counter(
        {("life-01", action): 1 for action in ("provision", "suspend", "resume", "change_plan", "terminate",
                                               "reactivate")}
    )  # fmt: skip
    status, view = runner.admin("GET", "/tenants/life-01")
    assert status == 200 and view["tenant"]["status"] == "active" and view["tenant"]["billing_status"]
    assert {"event", "decision", "job", "result", "run", "mail"} <= {row["kind"] for row in view["audit"]}
    with runner.registry() as conn:
        assert conn.execute("SELECT count(*) AS n FROM registry.audit_chain_breaks()").fetchone()["n"] == 0
        # Each job's playbook run is on the record as that job's run, ended as the job did, and the tenant's own
        # rows of the run name it.
        runs = conn.execute(
            "SELECT j.id, j.action, r.actor, r.detail ->> 'outcome' AS outcome, r.detail ->> 'playbook' AS playbook,"
            " (SELECT count(*) FROM registry.audit AS t WHERE t.tenant_id = j.tenant_id AND t.kind <> 'run'"
            "   AND t.detail ->> 'run' = r.detail ->> 'run') AS tenant_rows"
            " FROM registry.jobs AS j JOIN registry.audit AS r ON r.kind = 'run' AND r.detail ? 'run'"
            "  AND r.detail ->> 'run' = 'job-' || j.id || '-' || j.attempts AND r.detail ->> 'phase' = 'end'"
            " WHERE j.tenant_id = 'life-01' AND j.state = 'succeeded'"
        ).fetchall()
    assert sorted(run["action"] for run in runs) == sorted(
        ("provision", "suspend", "resume", "change_plan", "terminate", "reactivate")
    )
    for run in runs:
        assert run["actor"] == f"job:{run['id']}" and run["outcome"] == "ok", run
        assert run["playbook"].endswith(PLAYBOOKS[run["action"]]), run
        assert run["tenant_rows"] >= 2, run  # the runner's job row and the playbook's own result
    # Each ran without a tenant host in its inventory (worker.job_environment): ansible-runner's record of its command.
    commands = [path for path in runner.log_dir.rglob("command") if path.parent.parent.name == "artifacts"]
    assert len(commands) >= len(runs)
    for path in commands:
        assert json.loads(path.read_text())["env"]["SAASODOO_INVENTORY_TENANTS"] == "false", path

    # No secret in the artifacts or the runner's logs.
    secrets = [
        local_platform.password("tenant:life-01:v1"),
        local_platform.password("registry@saasodoo_registry"),
        (LOCAL_STATE / "secrets/platform_secret").read_text().strip(),
        INBOUND_TOKEN,
        ADMIN_TOKEN,
        CREDENTIALS["password"],
        CREDENTIALS["api_secret"],
        local_platform.password("customer-mail-links"),
        link.split("token=")[1],  # the welcome's one-time sign-in link, only in the customer's mail
    ]
    leaks = [
        (path.name, index)
        for path in runner.log_dir.rglob("*")
        if path.is_file() and path.name != "settings.json"
        for index, secret in enumerate(secrets)
        if secret.encode() in path.read_bytes()
    ]
    assert leaks == []


def test_one_trial_per_customer_a_second_tenant_waits_until_its_subscription_is_paid(
    runner: RunnerStack, killbill: KillBillStandin
):
    """The account's first tenant serves in its trial; a second subscription of the same account (another tenant),
    and the first subscription of a second account with the first's e-mail address (in another case, with a +tag),
    are not provisioned in their trial, the job saying why, and are once Kill Bill's clock ends it and they are
    paid. The registry keeps no address, only keyed hashes."""
    api = kb_api(killbill)
    api.register_callback(runner.callback)
    account, _ = api.sign_up("Trial Twice", "trial-01", "basic-monthly", email="Owner@Trial-Twice.example")

    def settled() -> dict[str, dict]:
        return settled_rows(runner, killbill, "trial-")

    assert settled()["trial-01"]["status"] == "active"
    api.subscribe(account, "trial-02", "basic-monthly")
    second, _ = api.sign_up("Trial Again", "trial-03", "basic-monthly", email=" owner+again@trial-twice.example")
    assert not {"trial-02", "trial-03"} & set(settled())
    assert f"one trial per customer (per Kill Bill account): account {account} has had tenant trial-01" in last_skip(
        runner, "trial-02"
    )
    assert (
        f"one trial per customer (per e-mail address): the address of account {second} had its trial with tenant"
        f" trial-01 of account {account}" in last_skip(runner, "trial-03")
    )
    with runner.registry() as conn:
        claims = conn.execute(
            "SELECT account_id, tenant_id FROM registry.trial_claims WHERE account_id = ANY(%s)", ([account, second],)
        ).fetchall()
    assert [(row["account_id"], row["tenant_id"]) for row in claims] == [(account, "trial-01")]  # no address kept
    # What waits on a billing rule is no drift: reconcile (the periodic pass's check) asks for nothing.
    checked = runner_command(runner.settings_path, "reconcile", "--check")
    assert "no drift: the registry matches Kill Bill" in checked, checked
    api.move_clock(15)
    tenants = settled()
    for tenant in ("trial-02", "trial-03"):
        assert tenants[tenant]["status"] == "active" and tenants[tenant]["billing_status"] == "paid"


def test_a_customer_whose_debt_is_written_off_is_terminated_not_resumed(runner: RunnerStack, killbill: KillBillStandin):
    """A customer stops paying and is suspended; the operator writes the unpaid invoice off in Kill Bill, which
    clears the account's overdue state as if it had paid. The tenant is terminated, not resumed, and a new
    subscription of the account gets no tenant while the invoice stays written off."""
    api = kb_api(killbill)
    api.register_callback(runner.callback)
    account, _ = api.sign_up("Bad Debt", "debt-01", "basic-monthly")

    def settled() -> dict[str, dict]:
        return settled_rows(runner, killbill, "debt-")

    assert settled()["debt-01"]["status"] == "active"
    api.move_clock(15)
    api.payments_fail(account)
    api.move_clock(31)
    assert settled()["debt-01"]["status"] == "suspended"
    (unpaid,) = [invoice["invoiceId"] for invoice in api.invoices(account) if invoice["balance"] > 0]
    api.write_off(unpaid)
    assert api.overdue(account)["isClearState"]  # Kill Bill no longer blocks the account
    tenants = settled()
    assert tenants["debt-01"]["status"] == "terminated"
    _, listing = runner.admin("GET", "/jobs?tenant=debt-01")
    assert any(
        job["action"] == "terminate" and f"debt written off (invoice {unpaid})" in job["reason"]
        for job in listing["jobs"]
    ), listing
    api.subscribe(account, "debt-02", "basic-monthly")
    assert "debt-02" not in settled()
    assert f"the debt of account {account} was written off (invoice {unpaid})" in last_skip(runner, "debt-02")


def restarted_runner(runner: RunnerStack, settings: dict, workers: int) -> None:
    """The test's runner stopped and started again with these settings and this many workers (0: its web side only,
    so what the admin API queues waits)."""
    runner.stop()
    write_settings(runner.settings_path, settings)
    runner.workers = workers
    runner.start()


def test_an_operator_restarts_stops_and_starts_a_customers_odoo_through_the_admin_api(
    runner: RunnerStack, killbill: KillBillStandin
):
    """POST /tenants/<id>/odoo queues a job in the tenant's account that runs tenant_restart.yml (the process runtime
    here, an Odoo under supervisord behind nginx): restarted (a new process answers), stopped (503), started; one
    such job open at a time; a job the customer's cancellation overtook is closed unrun."""
    settings = json.loads(runner.settings_path.read_text())

    def job(job_id: int) -> dict:
        return runner.admin("GET", f"/jobs/{job_id}")[1]

    def settled() -> None:
        assert killbill.wait_idle(timeout=30) == (True, 0)
        runner.settle()

    process_runtime = {**settings, "playbook_extravars": {}}
    try:
        restarted_runner(runner, process_runtime, workers=2)
        api = kb_api(killbill)
        api.register_callback(runner.callback)
        _, subscription = api.sign_up("Ops One", "ops-01", "basic-monthly")
        settled()
        assert tenant_rows(runner, "ops-01")["ops-01"]["status"] == "active"
        first = supervisor_pid("odoo-ops-01")
        assert first > 0 and get_status("ops-01", "/web/login") == 200

        restarted_runner(runner, process_runtime, workers=0)
        status, queued = runner.admin("POST", "/tenants/ops-01/odoo")
        assert status == 202, queued
        assert (queued["action"], queued["playbook"], queued["extravars"], queued["state"]) == (
            "odoo", "tenant_restart.yml", {"tenant_id": "ops-01", "odoo": "restarted"}, "queued"
        )  # fmt: skip
        status, refused = runner.admin("POST", "/tenants/ops-01/odoo", {"state": "stopped"})
        assert status == 409 and f"job {queued['id']} " in refused["error"], refused
        assert runner.admin("POST", "/tenants/ops-01/odoo", {"state": "paused"})[0] == 400
        assert runner.admin("POST", "/tenants/nobody-here/odoo")[0] == 404
        restarted_runner(runner, process_runtime, workers=2)
        settled()
        assert job(queued["id"])["state"] == "succeeded"
        assert supervisor_pid("odoo-ops-01") not in (0, first) and get_status("ops-01", "/web/login") == 200

        for state, answer in (("stopped", 503), ("started", 200)):
            status, queued = runner.admin("POST", "/tenants/ops-01/odoo", {"state": state})
            assert status == 202, queued
            settled()
            assert job(queued["id"])["state"] == "succeeded"
            assert get_status("ops-01", "/web/login") == answer, state
        _, view = runner.admin("GET", "/tenants/ops-01")
        assert [row["detail"]["odoo"] for row in view["audit"] if row["kind"] == "odoo"] == [
            "started", "stopped", "restarted"
        ]  # fmt: skip

        restarted_runner(runner, process_runtime, workers=0)
        status, overtaken = runner.admin("POST", "/tenants/ops-01/odoo")
        assert status == 202, overtaken
        api.cancel(subscription)
        assert killbill.wait_idle(timeout=30) == (True, 0)
        restarted_runner(runner, process_runtime, workers=2)
        settled()
        assert tenant_rows(runner, "ops-01")["ops-01"]["status"] == "terminated"
        assert (job(overtaken["id"])["state"], job(overtaken["id"])["reason"]) == (
            "skipped", "the tenant is terminated now: its Odoo is not run"
        )  # fmt: skip
        status, refused = runner.admin("POST", "/tenants/ops-01/odoo")
        assert status == 409 and "is terminated" in refused["error"]
    finally:
        restarted_runner(runner, settings, workers=2)


def test_a_job_that_keeps_failing_is_parked_and_can_be_replayed(
    runner: RunnerStack, killbill: KillBillStandin, local_platform: LocalPlatform
):
    api = kb_api(killbill)
    api.register_callback(runner.callback)
    account, subscription = api.sign_up("Park One", "park-01", "basic-monthly")
    killbill.wait_idle(timeout=30)
    runner.settle()
    # A large object in the tenant's database: logical replication cannot carry it, so the move to a dedicated
    # server is refused each time, before one is chosen.
    tenant = tenant_rows(runner, "park-")["park-01"]
    with psycopg.connect(
        host="127.0.0.1", port=tenant["port"], dbname=tenant["db_name"], user=tenant["db_name"],
        password=local_platform.password("tenant:park-01:v1"), autocommit=True,
    ) as conn:  # fmt: skip
        conn.execute("SELECT lo_from_bytea(0, 'attachment kept in a large object')")
    api.change_plan(subscription, "premium-monthly")
    killbill.wait_idle(timeout=30)
    runner.settle()

    status, listing = runner.admin("GET", "/jobs?tenant=park-01&state=parked")
    [parked] = listing["jobs"]
    assert parked["action"] == "change_plan" and parked["attempts"] == 3
    assert "large objects" in parked["error"] and "Nothing was placed" in parked["error"]
    assert tenant_rows(runner, "park-")["park-01"]["plan_name"] == "basic-monthly"

    refused = urllib.request.Request(f"{runner.url}/jobs/{parked['id']}/replay", method="POST")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(refused, timeout=5)
    assert denied.value.code == 401
    status, replayed = runner.admin("POST", f"/jobs/{parked['id']}/replay")
    assert status == 202 and replayed["state"] == "queued" and replayed["attempts"] == 0
    runner.settle()
    status, again = runner.admin("GET", f"/jobs/{parked['id']}")
    assert again["state"] == "parked" and again["attempts"] == 3  # ran three more times, then parked again
    _, view = runner.admin("GET", "/tenants/park-01")
    assert any(row["kind"] == "replay" for row in view["audit"])

    # The parked plan change holds up nothing else: the customer stops paying and is suspended, pays and is back.
    def settled_status() -> str:
        assert killbill.wait_idle(timeout=30) == (True, 0)
        runner.settle()
        return tenant_rows(runner, "park-")["park-01"]["status"]

    api.move_clock(15)  # the trial ends and is paid
    api.payments_fail(account)
    api.move_clock(31)
    assert settled_status() == "suspended"
    api.payments_fail(account, fail=False)
    api.pay(account)
    assert settled_status() == "active"
    assert succeeded_jobs(runner, "park-")[("park-01", "resume")] == 1
    status, still = runner.admin("GET", f"/jobs/{parked['id']}")
    assert still["state"] == "parked" and still["attempts"] == 3  # not run again behind the customer's back


def wait_for_attempt(runner: RunnerStack, tenant_id: str, attempt: int, timeout: float = 60.0) -> None:
    """Until the tenant's job runs the given attempt (the workers are other processes: poll the registry)."""
    deadline = time.monotonic() + timeout
    with runner.registry() as conn:
        while not conn.execute(
            "SELECT 1 FROM registry.jobs WHERE tenant_id = %s AND state = 'running' AND attempts = %s",
            (tenant_id, attempt),
        ).fetchone():
            assert time.monotonic() < deadline, f"{tenant_id}: attempt {attempt} never ran"
            time.sleep(0.05)


def test_a_job_that_keeps_killing_its_worker_is_parked(runner: RunnerStack, killbill: KillBillStandin):
    """Each run the worker did not live through counts as an attempt: after max_attempts (3) the job is parked,
    not run a fourth time; a replay, killed too, is taken up by the next worker and finishes it."""
    api = kb_api(killbill)
    api.register_callback(runner.callback)
    api.sign_up("Crash One", "crash-01", "basic-monthly")
    for attempt in (1, 2, 3):
        wait_for_attempt(runner, "crash-01", attempt)
        runner.kill()  # as an OOM kill of the worker would, mid-playbook
        runner.start()
    killbill.wait_idle(timeout=30)
    runner.settle()
    _, listing = runner.admin("GET", "/jobs?tenant=crash-01&state=parked")
    [parked] = listing["jobs"]
    assert parked["action"] == "provision" and parked["attempts"] == 3
    assert "stopped" in parked["error"] and "during attempt 3: parked" in parked["error"], parked["error"]
    assert tenant_rows(runner, "crash-").get("crash-01", {}).get("status") != "active"

    # Replayed, and killed once more: its events were handled long ago, yet the next worker finds it.
    assert runner.admin("POST", f"/jobs/{parked['id']}/replay")[0] == 202
    wait_for_attempt(runner, "crash-01", 1)
    runner.kill()
    runner.start()
    runner.settle()
    assert tenant_rows(runner, "crash-")["crash-01"]["status"] == "active"


def running_job(runner: RunnerStack, tenant_id: str) -> dict:
    with runner.registry() as conn:
        return conn.execute(
            "SELECT id, account_id, worker, attempts FROM registry.jobs WHERE tenant_id = %s AND state = 'running'",
            (tenant_id,),
        ).fetchone()


@contextlib.contextmanager
def playbook_held(job_id: int):
    """The job's playbook run stopped (SIGSTOP) until the block ends: a run that is slow, deterministically."""
    held = []
    deadline = time.monotonic() + 60
    while not held:  # the worker has marked the job running; ansible-runner is starting the playbook
        assert time.monotonic() < deadline, f"job {job_id}: no playbook process appeared"
        held = ansible_processes(f"SAASODOO_AUDIT_JOB={job_id}")
    for pid in held:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield held
    finally:
        for pid in held + ansible_processes(f"SAASODOO_AUDIT_JOB={job_id}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def job_audit_rows(runner: RunnerStack, job_id: int) -> list[str]:
    with runner.registry() as conn:
        rows = conn.execute(
            "SELECT kind FROM registry.audit WHERE subject = %s ORDER BY id", (f"job:{job_id}",)
        ).fetchall()
    return [row["kind"] for row in rows]


def test_a_registry_restart_mid_job_neither_frees_the_account_nor_runs_the_job_twice(
    runner: RunnerStack, killbill: KillBillStandin
):
    """Every registry session of the runner dropped while a job's playbook runs (what a registry restart does):
    the account's lease outlives them. The other worker, connected again, is refused the account while the run
    goes on (a session advisory lock would have been freed: it would have requeued and rerun the job), and the
    job's own worker connects again and records its one run."""
    api = kb_api(killbill)
    api.register_callback(runner.callback)
    api.sign_up("Lease One", "lease-01", "basic-monthly")
    wait_for_attempt(runner, "lease-01", 1)
    job = running_job(runner, "lease-01")
    other = next(name for name in ("test-worker-1", "test-worker-2") if name != job["worker"])
    with playbook_held(job["id"]), runner.registry() as conn:
        dropped = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
            " WHERE application_name LIKE 'saasodoo-runner-%% test-worker-_'"
        ).fetchone()["n"]
        assert dropped >= 4  # each worker's own and listening sessions, and the holder's renewal session
        # The other worker back (after serve()'s 5 s pause) and refused the account twice: each refused take
        # draws a token from the sequence.
        deadline = time.monotonic() + 60
        back = None
        while True:
            if (
                back is None
                and conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = %s",
                    (f"saasodoo-runner-worker {other}",),
                ).fetchone()
            ):
                back = conn.execute("SELECT last_value FROM registry.lease_token_seq").fetchone()["last_value"]
            refused = back is not None and (
                conn.execute("SELECT last_value FROM registry.lease_token_seq").fetchone()["last_value"] >= back + 2
            )
            rerun = running_job(runner, "lease-01") is None or running_job(runner, "lease-01")["attempts"] > 1
            if refused or rerun:
                break
            assert time.monotonic() < deadline, "the other worker never came back to the account"
            time.sleep(0.1)  # the workers are other processes: poll the registry
        assert not rerun, "a second worker took the account while its job's playbook still ran"
        lease = conn.execute(
            "SELECT worker FROM registry.account_leases WHERE account_id = %s", (job["account_id"],)
        ).fetchone()
        assert lease == {"worker": job["worker"]}  # renewed over a new session
    runner.settle()
    with runner.registry() as conn:
        finished = conn.execute("SELECT state, attempts FROM registry.jobs WHERE id = %s", (job["id"],)).fetchone()
    assert finished == {"state": "succeeded", "attempts": 1}
    assert job_audit_rows(runner, job["id"]) == ["job", "result"]
    assert tenant_rows(runner, "lease-01")["lease-01"]["status"] == "active"


def running_job_of(runner: RunnerStack, tenant_id: str, action: str, timeout: float = 120.0) -> dict:
    """The tenant's job of that action once a worker runs it (the workers are other processes: poll the registry)."""

    def running() -> dict | None:
        with runner.registry() as conn:
            return conn.execute(
                "SELECT id, attempts FROM registry.jobs WHERE tenant_id = %s AND action = %s AND state = 'running'",
                (tenant_id, action),
            ).fetchone()

    return wait_until(running, f"{tenant_id}: a running {action} job", timeout, every=0.05)


def test_a_registry_failover_in_a_customers_life_loses_and_repeats_no_effect(runner: RunnerStack, local_platform):
    """The registry's server runs under Patroni with a synchronous replica (inventories/local: ha_servers). Its
    primary changes twice in a customer's life while a job's playbook runs: switched over, then lost as a host is
    (frozen, its replica promoted once its leader key expires). Meanwhile Kill Bill's notifications are refused (503)
    and delivered again, the workers and the playbook's modules reach the new primary through HAProxy at the same
    address, and each effect happens once: one succeeded job per action, each mail once (by Message-ID), every event
    processed, nothing parked, the audit chain whole."""
    killbill = start_killbill(retries=(0.5, 1, 2, 3, 5, 8, 8, 8, 8))  # Kill Bill's own retries span a day
    registry = local_platform.servers["platform-db"]
    cluster = Cluster(registry.name, registry.port, local_platform.password(f"patroni-restapi@{registry.name}"))
    try:
        api = kb_api(killbill)
        api.register_callback(runner.callback)
        mails, owner = MailCatcher(), "owner@regfail-01.example"
        account, _ = api.sign_up("Registry Failover", "regfail-01", "basic-monthly", email=owner)

        first = cluster.leader()
        job = running_job_of(runner, "regfail-01", "provision")
        with playbook_held(job["id"]):
            second = next(name for name in cluster.roles() if name != first)
            cluster.switchover(first, second)
            wait_until(lambda: cluster.roles().get(second) == "leader", "the switchover", 60, every=0.2)
        # Until the old primary is the synchronous replica again, only it could take over (none would be promoted).
        wait_until(
            lambda: cluster.roles() == {first: "sync_standby", second: "leader"}, "the old primary back", 60, 0.2
        )
        killbill.wait_idle(timeout=120)
        runner.settle()
        assert tenant_rows(runner, "regfail-")["regfail-01"]["status"] == "active"

        api.move_clock(15)  # the trial ends, paid; then the payments fail and the account is blocked
        api.payments_fail(account)
        api.move_clock(31)
        job = running_job_of(runner, "regfail-01", "suspend")
        with playbook_held(job["id"]):
            cluster.lose(second)
            try:
                wait_until(lambda: cluster.leader() == first, "the lost primary's replica promoted", 90, every=0.5)
            finally:
                cluster.revive(second)
        wait_until(lambda: len(cluster.roles()) == 2, "the lost primary back as a replica", 120, every=0.5)
        assert killbill.wait_idle(timeout=180) == (True, 0)  # every notification delivered in the end
        runner.settle()
        assert tenant_rows(runner, "regfail-")["regfail-01"]["status"] == "suspended"

        api.payments_fail(account, fail=False)
        api.pay(account)
        assert killbill.wait_idle(timeout=60) == (True, 0)
        runner.settle()
        assert tenant_rows(runner, "regfail-")["regfail-01"]["status"] == "active"
    finally:
        killbill.stop()

    assert succeeded_jobs(runner, "regfail-") == Counter(
        {("regfail-01", action): 1 for action in ("provision", "suspend", "resume")}
    )
    with runner.registry() as conn:
        attempts = conn.execute(
            "SELECT attempts FROM registry.jobs WHERE tenant_id = 'regfail-01' AND action = 'suspend'"
        ).fetchone()["attempts"]
    assert attempts >= 2, "the suspension's first run should have lost its lease with the registry"
    received = mails.wait_for(owner, {"welcome": 1, "payment_failed": 1, "suspended": 1, "resumed": 1})
    by_kind = Counter(str(message["X-SaaSOdoo-Message"]) for message in {m["Message-ID"]: m for m in received}.values())
    assert all(count == 1 for count in by_kind.values()), by_kind  # a copy sent again carries the same Message-ID
    with runner.registry() as conn:
        assert (
            conn.execute(
                "SELECT state, count(*) AS n FROM registry.jobs WHERE tenant_id = 'regfail-01'"
                " AND state NOT IN ('succeeded', 'skipped') GROUP BY state"
            ).fetchall()
            == []
        )
        assert (
            conn.execute(
                "SELECT count(*) AS n FROM registry.events WHERE account_id = %s"
                " AND (processed_at IS NULL OR outcome LIKE 'failed%%')",
                (account,),
            ).fetchone()["n"]
            == 0
        )
        assert conn.execute("SELECT count(*) AS n FROM registry.audit_chain_breaks()").fetchone()["n"] == 0


def test_a_worker_whose_account_was_taken_over_writes_nothing_more(runner: RunnerStack, killbill: KillBillStandin):
    """A worker stalled past its lease (its playbook held here, the lease handed to another worker in the registry
    as a takeover after expiry does) is fenced: its renewal fails, its run is cancelled, it records nothing about
    the job or the tenant; once the account is free the next worker reruns the job, which succeeds. A playbook
    carrying a lease no longer held is refused its first registry write."""
    api = kb_api(killbill)
    api.register_callback(runner.callback)
    api.sign_up("Lease Two", "lease-02", "basic-monthly")
    wait_for_attempt(runner, "lease-02", 1)
    job = running_job(runner, "lease-02")
    with playbook_held(job["id"]) as held, runner.registry() as conn:
        taken = conn.execute(
            """UPDATE registry.account_leases SET token = nextval('registry.lease_token_seq'), worker = 'intruder',
                      taken_at = now(), expires_at = now() + interval '1 hour'
                WHERE account_id = %s RETURNING token""",
            (job["account_id"],),
        ).fetchone()
        assert taken is not None
        mark = conn.execute("SELECT max(id) AS id FROM registry.audit").fetchone()["id"]
    deadline = time.monotonic() + 60
    while any(map(alive, held)):  # cancelled, or failed at its first fenced write
        assert time.monotonic() < deadline, "the fenced run went on"
        time.sleep(0.1)
    with runner.registry() as conn:
        assert conn.execute("SELECT state, attempts FROM registry.jobs WHERE id = %s", (job["id"],)).fetchone() == {
            "state": "running", "attempts": 1,
        }  # fmt: skip
        written = conn.execute(
            "SELECT kind, subject FROM registry.audit WHERE id > %s AND (tenant_id = %s OR subject = %s)",
            (mark, "lease-02", f"job:{job['id']}"),
        ).fetchall()
        assert written == []
        conn.execute("DELETE FROM registry.account_leases WHERE token = %s", (taken["token"],))  # the intruder done
    runner.settle()
    with runner.registry() as conn:
        finished = conn.execute("SELECT state, attempts FROM registry.jobs WHERE id = %s", (job["id"],)).fetchone()
    assert finished == {"state": "succeeded", "attempts": 2}
    assert tenant_rows(runner, "lease-02")["lease-02"]["status"] == "active"

    # The same fence, through a playbook: the token in saasodoo_lease reaches every registry module.
    refused = run_playbook(
        "tenant_record.yml", "-e", "tenant_id=lease-02", "-e", "tenant_action=tenant_suspend", "-e",
        "tenant_status=suspended",
        "-e", f"saasodoo_lease={taken['token']}",
    )  # fmt: skip
    assert refused.returncode != 0 and "is no longer held" in refused.output, refused.output[-3000:]
    assert tenant_rows(runner, "lease-02")["lease-02"]["status"] == "active"


class MaintenancePage(http.server.BaseHTTPRequestHandler):
    """A proxy in front of Kill Bill answering 200 with a JSON object of its own to every request: a reply of a
    shape the runner never expects (a list of bundles is an object here)."""

    def do_GET(self):
        body = b'{"status": "maintenance", "retry": "later"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_unexpected_error_fails_its_account_and_the_worker_goes_on(runner: RunnerStack):
    """A bug or an unforeseen reply fails one account's events, with the traceback in the audit trail; the workers
    survive it and handle the next account's events."""
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", KILLBILL_PORT), MaintenancePage)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        with runner.registry() as conn:
            before = conn.execute("SELECT coalesce(max(id), 0) AS id FROM registry.events").fetchone()["id"]
        for account in ("acct-odd-reply-1", "acct-odd-reply-2"):
            body = encode_notification("ACCOUNT_CHANGE", account, "ACCOUNT", account, None)
            assert post_notification(runner.callback, body) == 202
            runner.settle(timeout=60)
        workers_alive = [process.poll() is None for process in runner.processes]
    finally:
        proxy.shutdown()
        proxy.server_close()
    with runner.registry() as conn:
        outcomes = conn.execute(
            "SELECT account_id, outcome FROM registry.events WHERE id > %s ORDER BY id", (before,)
        ).fetchall()
        errors = conn.execute(
            "SELECT subject, detail FROM registry.audit WHERE kind = 'error' AND subject LIKE 'account:acct-odd-%%'"
        ).fetchall()
    assert all(workers_alive), workers_alive
    assert [row["account_id"] for row in outcomes] == ["acct-odd-reply-1", "acct-odd-reply-2"]
    assert all(row["outcome"].startswith("failed: AttributeError") for row in outcomes), outcomes
    assert {row["subject"] for row in errors} == {"account:acct-odd-reply-1", "account:acct-odd-reply-2"}
    assert all("Traceback (most recent call last)" in row["detail"]["traceback"] for row in errors)


def scrape_metrics(runner: RunnerStack) -> dict:
    scrape = urllib.request.Request(f"{runner.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(scrape, timeout=5) as response:
        return {f.name: f for f in text_string_to_metric_families(response.read().decode())}


def test_a_job_limit_holds_a_second_provision_back_and_metrics_show_it_waiting(
    runner: RunnerStack, killbill: KillBillStandin
):
    """job_limits {provision: 1}: two sign-ups at once (two accounts, two idle workers) provision one after the
    other, and /metrics shows the second waiting for the limit while the first runs."""
    settings = json.loads(runner.settings_path.read_text())
    write_settings(runner.settings_path, {**settings, "job_limits": {"provision": 1}, "limit_wait_seconds": 0.5})
    runner.stop()
    runner.start()
    seen = set()
    try:
        api = kb_api(killbill)
        api.register_callback(runner.callback)
        for n in (1, 2):
            api.sign_up(f"Limit {n}", f"lim-0{n}", "basic-monthly")
        assert killbill.wait_idle(timeout=30) == (True, 0)
        deadline = time.monotonic() + 600
        done = "SELECT count(*) AS n FROM registry.jobs WHERE tenant_id LIKE 'lim-%' AND action = 'provision'"
        done += " AND state = 'succeeded'"
        with runner.registry() as conn:
            while conn.execute(done).fetchone()["n"] < 2:
                assert time.monotonic() < deadline, "the two provisions did not both succeed within 600 s"
                families = scrape_metrics(runner)
                running = {s.labels["action"]: s.value for s in families["saasodoo_runner_jobs_running"].samples}
                waiting = {
                    s.labels["action"]: s.value for s in families["saasodoo_runner_jobs_waiting_for_limit"].samples
                }
                seen.add((running.get("provision", 0), waiting.get("provision", 0)))
                time.sleep(0.2)  # sampling what the other processes report, not waiting for them
        runner.settle()
    finally:
        write_settings(runner.settings_path, settings)
        runner.stop()
        runner.start()
    with runner.registry() as conn:
        jobs = conn.execute(
            "SELECT tenant_id, started_at, finished_at, waits FROM registry.jobs"
            " WHERE tenant_id LIKE 'lim-%' AND action = 'provision' AND state = 'succeeded' ORDER BY started_at"
        ).fetchall()
    assert [job["tenant_id"] for job in jobs] in (["lim-01", "lim-02"], ["lim-02", "lim-01"])
    assert jobs[0]["finished_at"] <= jobs[1]["started_at"], "the limit let two provisions run at once"
    assert jobs[1]["waits"] >= 1
    assert max(running for running, _ in seen) == 1
    assert (1, 1) in seen, f"/metrics never showed one provision running and one waiting: {sorted(seen)}"


def test_a_tenant_obeys_only_the_account_it_was_provisioned_for(runner: RunnerStack, killbill: KillBillStandin):
    api = kb_api(killbill)
    api.register_callback(runner.callback)
    owner, owners_subscription = api.sign_up("Owner", "claim-01", "basic-monthly")
    killbill.wait_idle(timeout=30)
    runner.settle()
    api.cancel(owners_subscription)
    killbill.wait_idle(timeout=30)
    runner.settle()
    assert tenant_rows(runner, "claim-")["claim-01"]["status"] == "terminated"  # its data retained for the owner

    # Kill Bill lets another account take the bundle key once its bundle is cancelled.
    intruder, _ = api.sign_up("Intruder", "claim-01", "premium-monthly")
    killbill.wait_idle(timeout=30)
    runner.settle()

    tenant = tenant_rows(runner, "claim-")["claim-01"]
    assert (tenant["status"], tenant["plan_name"]) == ("terminated", "basic-monthly")
    with runner.registry() as conn:
        ids = conn.execute("SELECT customer_id FROM registry.tenants WHERE tenant_id = 'claim-01'").fetchone()
    assert ids["customer_id"] == owner
    _, listing = runner.admin("GET", "/jobs?tenant=claim-01")
    skipped = [job["reason"] for job in listing["jobs"] if job["state"] == "skipped"]
    assert any(f"of account {intruder} claims tenant claim-01" in r and f"account {owner}" in r for r in skipped)
    assert succeeded_jobs(runner, "claim-") == Counter({("claim-01", "provision"): 1, ("claim-01", "terminate"): 1})


# -- reliability ------------------------------------------------------------------------------------------------

# Accounts whose lives the notifications tell: six in `make test` (every kind of job, each a playbook run), eight
# in `make soak`.
RELIABILITY_ACCOUNTS = int(os.environ.get("RELIABILITY_ACCOUNTS", "6"))
RELIABILITY_NOTIFICATIONS = 1000
DUPLICATE_SHARE = 0.2
# Where in which phase's stream the runner is SIGKILLed (five times), each time while a playbook runs.
KILL_PLAN = {0: (0.3, 0.8), 2: (0.5,), 4: (0.5,), 5: (0.02,)}


def wait_for_a_running_job(runner: RunnerStack, timeout: float = 60.0) -> bool:
    """Until playbooks run, each its job's first attempt (the events posted so far may ask for none: then kill
    between jobs). A kill then hits no job a kill has hit before, so none is parked for the kills alone."""
    deadline = time.monotonic() + timeout
    running = "SELECT bool_and(attempts = 1) AS fresh FROM registry.jobs WHERE state = 'running'"
    with runner.registry() as conn:
        while not conn.execute(running).fetchone()["fresh"]:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # the workers are other processes: poll the registry
    return True


# What the customer is told when a job of each action succeeds (the registry queues it with the change).
EFFECT_MAIL = {"provision": "welcome", "suspend": "suspended", "resume": "resumed", "change_plan": "plan_changed",
               "terminate": "cancelled"}  # fmt: skip


def test_reliability_duplicates_reordering_and_crashes(runner: RunnerStack, local_platform):
    """1,000 notifications, 20% duplicates, shuffled, the runner SIGKILLed five times, failed deliveries
    redelivered byte for byte: every tenant ends as Kill Bill says, each effect happened once, nothing lost."""
    rng = random.Random(20261121)
    standin = start_killbill(deliver=False)  # this test is Kill Bill's sender: it shuffles and redelivers
    try:
        api = kb_api(standin)
        tenants = [f"rel-{n:02d}" for n in range(1, RELIABILITY_ACCOUNTS + 1)]
        accounts, subscriptions = {}, {}

        def sign_up():
            for n, tenant in enumerate(tenants):
                plan = "basic-monthly" if n % 2 == 0 else "standard-monthly"
                email = f"{tenant}@rel.example"
                accounts[tenant], subscriptions[tenant] = api.sign_up(tenant, tenant, plan, email=email)

        def fail_cards():
            for tenant in tenants[:3]:
                api.payments_fail(accounts[tenant])
            api.move_clock(31)

        def pay_two():
            for tenant in tenants[:2]:
                api.payments_fail(accounts[tenant], fail=False)
                api.pay(accounts[tenant])

        phases = [
            ("sign up", sign_up),
            ("trials end", lambda: api.move_clock(15)),
            ("cards declined", fail_cards),
            ("two pay", pay_two),
            ("upgrades", lambda: [api.change_plan(subscriptions[t], "standard-monthly") for t in tenants[4:8:2]]),
            ("cancellations", lambda: [api.cancel(subscriptions[t]) for t in tenants[5:7]]),
        ]
        # Kill Bill's state moves phase by phase; each phase's notifications reach the runner as a shuffled burst
        # with 20% duplicates (some of them late copies of earlier phases'), and the runner settles before the
        # next phase, so each phase's effects are known. The last phase adds months of invoices and payments:
        # triggers that change nothing, up to the 1,000 notifications.
        unique_target = int(RELIABILITY_NOTIFICATIONS * (1 - DUPLICATE_SHARE))
        mails = MailCatcher()
        with runner.registry() as conn:
            before = conn.execute("SELECT coalesce(max(id), 0) AS id FROM registry.events").fetchone()["id"]

        acknowledged, redeliveries, posts, position, sent, kills_mid_job = 0, [], 0, 0, [], 0
        for index, (_, operation) in enumerate(phases):
            operation()
            phase = [n.body for n in standin.drain_notifications()]
            while index == len(phases) - 1 and len(sent) + len(phase) < unique_target:
                api.move_clock(31)
                phase += [n.body for n in standin.drain_notifications()]
            sent += phase
            duplicates = round(len(phase) * DUPLICATE_SHARE / (1 - DUPLICATE_SHARE))
            if index == len(phases) - 1:  # the rest of the 1,000
                duplicates = RELIABILITY_NOTIFICATIONS - position - len(phase)
            stream = phase + [rng.choice(sent) for _ in range(duplicates)]
            rng.shuffle(stream)
            kill_at = {int(len(stream) * share) for share in KILL_PLAN.get(index, ())}
            failed = []
            for offset, body in enumerate(stream):
                position += 1
                if offset in kill_at:
                    kills_mid_job += wait_for_a_running_job(runner)
                    runner.kill()  # mid-stream, and mid-job when one runs
                    for late in stream[:2]:  # Kill Bill keeps sending while the runner is down
                        posts += 1
                        assert post_notification(runner.callback, late, timeout=2) is None
                        failed.append(late)
                    runner.start()
                posts += 1
                status = post_notification(runner.callback, body)
                if status is not None and 200 <= status < 300:
                    acknowledged += 1
                else:
                    failed.append(body)
            for body in failed:  # Kill Bill's retry: the same bytes, later
                posts += 1
                assert post_notification(runner.callback, body) == 202
                acknowledged += 1
            redeliveries += failed
            runner.settle()

        with runner.registry() as conn:
            stored = conn.execute(
                "SELECT count(*) AS n, count(*) FILTER (WHERE processed_at IS NULL) AS pending"
                " FROM registry.events WHERE id > %s",
                (before,),
            ).fetchone()
            jobs = conn.execute(
                "SELECT state, count(*) AS n FROM registry.jobs WHERE tenant_id LIKE 'rel-%%' GROUP BY state"
            ).fetchall()
        assert position == RELIABILITY_NOTIFICATIONS
        assert kills_mid_job >= 3  # sign-ups, suspensions and terminations always have playbooks running
        assert stored["n"] == acknowledged >= RELIABILITY_NOTIFICATIONS  # every acknowledged notification kept
        assert stored["pending"] == 0
        assert {row["state"] for row in jobs} <= {"succeeded", "skipped"}, jobs  # nothing parked or left running

        # Every tenant is what Kill Bill says now.
        rows = tenant_rows(runner, "rel-")
        for tenant in tenants:
            kb = api.subscription(subscriptions[tenant])
            blocked = kb["state"] == "BLOCKED" or api.overdue(accounts[tenant])["isDisableEntitlementAndChangesBlocked"]
            expected = "terminated" if kb["state"] == "CANCELLED" else "suspended" if blocked else "active"
            assert (tenant, rows[tenant]["status"], rows[tenant]["plan_name"]) == (tenant, expected, kb["planName"])

        # Each effect once.
        done = succeeded_jobs(runner, "rel-")
        expected = {(tenant, "provision") for tenant in tenants}
        expected |= {(tenant, "suspend") for tenant in tenants[:3]} | {(tenant, "resume") for tenant in tenants[:2]}
        expected |= {(tenant, "change_plan") for tenant in tenants[4:8:2]}
        expected |= {(tenant, "terminate") for tenant in tenants[5:7]}
        assert done == Counter(dict.fromkeys(expected, 1))
        # Each customer told of each effect once, whatever the kills cut short: a mail the relay took just before a
        # kill goes again with the same Message-ID, which mail systems drop.
        for tenant in tenants:
            wanted = Counter(EFFECT_MAIL[action] for owner, action in expected if owner == tenant)
            received = {mail["Message-ID"]: mail for mail in mails.wait_for(f"{tenant}@rel.example", wanted)}
            told = Counter(str(mail["X-SaaSOdoo-Message"]) for mail in received.values())
            assert {message: told[message] for message in wanted} == wanted, tenant
        with runner.registry() as conn:
            assert conn.execute("SELECT count(*) AS n FROM registry.audit_chain_breaks()").fetchone()["n"] == 0
            databases = conn.execute(
                "SELECT count(DISTINCT db_name) AS n FROM registry.tenants WHERE tenant_id LIKE 'rel-%%'"
            ).fetchone()["n"]
        assert databases == len(tenants)
        print(f"reliability: {posts} POSTs, {acknowledged} acknowledged, {len(redeliveries)} redelivered,"
              f" {sum(map(len, KILL_PLAN.values()))} kills, jobs {dict(done)}")  # fmt: skip
    finally:
        standin.stop()


def scrape_counters(runner: RunnerStack) -> dict[tuple, float]:
    """Every counter and histogram sample /metrics gives, by (sample name, labels)."""
    scrape = urllib.request.Request(f"{runner.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(scrape, timeout=5) as response:
        families = text_string_to_metric_families(response.read().decode())
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        if family.type in ("counter", "histogram")
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def run_schedules_on_two_hosts(settings_path, at: datetime) -> dict[str, str]:
    """`python -m webhook_runner schedule --now <at>` on two runner hosts at once: what each printed."""
    hosts = {
        host: subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "webhook_runner", "schedule", "--now", at.isoformat(), "--name", host],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**ansible_env(), "SAASODOO_RUNNER_CONFIG": str(settings_path)},
        )
        for host in ("host-a", "host-b")
    }
    printed = {host: process.communicate(timeout=600)[0] for host, process in hosts.items()}
    assert all(process.returncode == 0 for process in hosts.values()), printed
    return printed


def test_each_periodic_job_runs_once_per_due_time_across_two_runner_hosts(
    runner: RunnerStack, killbill: KillBillStandin, local_platform: LocalPlatform, tmp_path
):
    """The schedules (every 600 s here, the base backups every 1200 s) with the scheduler's clock advanced: two
    hosts looking at once run each schedule's job once per due time, and never again for the same time; the backup
    and the purge they queue run in the tenant's account (its workers), and GET /schedules and /metrics show the
    last and next runs. The customer who comes back after the purge gets a new, empty tenant, and the job says so."""
    api = kb_api(killbill)
    api.register_callback(runner.callback)
    account, subscription = api.sign_up("Clock One", "clock-01", "basic-monthly")
    assert killbill.wait_idle(timeout=30) == (True, 0)
    runner.settle()
    first_life = tenant_rows(runner, "clock-")["clock-01"]
    assert first_life["status"] == "active"
    tenant_v1 = ("t_clock_01", local_platform.password("tenant:clock-01:v1"), "t_clock_01")
    with local_platform.connect(first_life["port"], *tenant_v1) as conn:
        conn.execute("CREATE TABLE public.first_life (note text)")
    settings = tmp_path / "settings.json"
    # The restore drill picks a tenant at random (other tests' tenants too): test_tenant_lifecycle.py drills one.
    # The base backups (every server's) every 1200 s: due at the second due time only, once is enough here.
    every_600_s = {**dict.fromkeys(SCHEDULES, 600), "restore_drill": 0, "base_backups": 1200}
    turned_on = [name for name, seconds in every_600_s.items() if seconds]
    scheduled_here = [name for name in turned_on if every_600_s[name] == 600]
    write_settings(settings, {**json.loads(runner.settings_path.read_text()), "schedules": every_600_s})
    with runner.registry() as conn:
        conn.execute("DELETE FROM registry.schedules")  # the deployed runner's (paused), if it wrote them
        start = conn.execute("SELECT now() AS now").fetchone()["now"]
        first_job = conn.execute("SELECT coalesce(max(id), 0) AS id FROM registry.jobs").fetchone()["id"]

    def scheduled() -> Counter:
        """The schedules' jobs the two hosts ran (each succeeded)."""
        with runner.registry() as conn:
            rows = conn.execute(
                "SELECT action, state FROM registry.jobs WHERE id > %s AND action = ANY(%s) AND worker = ANY(%s)",
                (first_job, list(SCHEDULES), ["host-a", "host-b"]),
            ).fetchall()
        assert all(row["state"] == "succeeded" for row in rows), rows
        return Counter(row["action"] for row in rows)

    def tenant_jobs(action: str) -> list[dict]:
        with runner.registry() as conn:
            return conn.execute(
                "SELECT state, worker FROM registry.jobs WHERE id > %s AND tenant_id = 'clock-01' AND action = %s",
                (first_job, action),
            ).fetchall()

    try:
        run_schedules_on_two_hosts(settings, start)  # first seen: due one interval later
        assert scheduled() == Counter()
        due = start + timedelta(seconds=601)
        printed = run_schedules_on_two_hosts(settings, due)
        assert scheduled() == Counter(dict.fromkeys(scheduled_here, 1))
        for name in scheduled_here:  # each run by one host only
            assert sum(f"{name}: " in output for output in printed.values()) == 1, printed
        for output in run_schedules_on_two_hosts(settings, due + timedelta(seconds=5)).values():
            assert output.strip().endswith("GET /schedules shows the next runs") and ": job " not in output, output
        assert scheduled() == Counter(dict.fromkeys(scheduled_here, 1))
        with runner.registry() as conn:  # servers_probe.yml found the inventory's pools well
            probed = conn.execute(
                "SELECT name, health FROM registry.db_servers WHERE name = ANY(%s) AND health_checked_at > %s",
                (["pool-shared-01", "pool-shared-02"], start),
            ).fetchall()
        assert sorted((row["name"], row["health"]) for row in probed) == [
            ("pool-shared-01", "healthy"), ("pool-shared-02", "healthy")
        ]  # fmt: skip
        runner.settle()  # the account's workers run the backup the schedule queued
        assert [job["state"] for job in tenant_jobs("backup")] == ["succeeded"]
        with runner.registry() as conn:
            assert (
                conn.execute(
                    "SELECT count(*) AS n FROM registry.backups WHERE tenant_id = 'clock-01' AND taken_at > %s",
                    (start,),
                ).fetchone()["n"]
                == 1
            )

        api.cancel(subscription)
        assert killbill.wait_idle(timeout=30) == (True, 0)
        runner.settle()
        with runner.registry() as conn:  # the retention ends (it is days): the purge is due
            conn.execute(
                "UPDATE registry.tenants SET retain_until = now() - interval '1 minute' WHERE tenant_id = 'clock-01'"
                " AND status = 'terminated'"
            )
        again = due + timedelta(seconds=601)
        run_schedules_on_two_hosts(settings, again)
        assert scheduled() == Counter({**dict.fromkeys(scheduled_here, 2), "base_backups": 1})
        runner.settle()
        assert [job["state"] for job in tenant_jobs("purge")] == ["succeeded"]
        assert [job["state"] for job in tenant_jobs("backup")] == ["succeeded"]  # a terminated tenant: no backup
        assert tenant_rows(runner, "clock-")["clock-01"]["status"] == "purged"

        # Back after the purge, same account: once its new subscription is past its trial and paid (a returning
        # customer pays up front), provisioned anew under the same id, empty, with new credentials.
        api.subscribe(account, "clock-01", "basic-monthly")
        assert killbill.wait_idle(timeout=30) == (True, 0)
        runner.settle()
        assert tenant_rows(runner, "clock-")["clock-01"]["status"] == "purged"
        api.move_clock(15)
        assert killbill.wait_idle(timeout=30) == (True, 0)
        runner.settle()
        second_life = tenant_rows(runner, "clock-")["clock-01"]
        assert second_life["status"] == "active"
        tenant_v2 = ("t_clock_01", local_platform.password("tenant:clock-01:v2"), "t_clock_01")
        with local_platform.connect(second_life["port"], *tenant_v2) as conn:
            assert conn.execute("SELECT to_regclass('public.first_life')").fetchone() == (None,)
        with pytest.raises(psycopg.OperationalError):  # the first life's password stays dead
            local_platform.connect(second_life["port"], *tenant_v1).close()
        with runner.registry() as conn:
            provisions = conn.execute(
                "SELECT state, reason FROM registry.jobs WHERE id > %s AND tenant_id = 'clock-01'"
                " AND action = 'provision'",
                (first_job,),
            ).fetchall()
        assert [job["state"] for job in provisions] == ["succeeded"]
        assert "purged (its retention ended, its data is gone): provisioned anew, empty" in provisions[0]["reason"]

        # The API of a runner with these schedules (the stack's own has them off): in process, Flask's test client.
        client = create_app(load_settings(settings)).test_client()
        view = client.get("/schedules", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).get_json()
        shown = {row["name"]: row for row in view["schedules"]}
        assert set(shown) == set(turned_on)
        assert all(row["last_job_state"] == "succeeded" for row in shown.values()), shown
        scrape = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).get_data(as_text=True)
        family = {f.name: f for f in text_string_to_metric_families(scrape)}[
            "saasodoo_runner_schedule_next_run_timestamp_seconds"
        ]
        next_runs = {sample.labels["schedule"]: sample.value for sample in family.samples}
        assert next_runs == {
            name: pytest.approx((again + timedelta(seconds=every_600_s[name])).timestamp()) for name in turned_on
        }

        with runner.registry() as conn:  # a third host died running moves_cleanup: its job is left running
            dead = store.insert_job(
                conn, account=None, tenant_id=None, event_id=None, action="moves_cleanup",
                playbook="moves_cleanup.yml", extravars={}, state="running", reason="a host that died", worker="host-c",
            )  # fmt: skip
        printed = run_schedules_on_two_hosts(settings, again + timedelta(seconds=5))  # not due: but run again
        assert scheduled() == Counter({**dict.fromkeys(scheduled_here, 2), "base_backups": 1, "moves_cleanup": 3})
        with runner.registry() as conn:
            left = store.get_job(conn, dead["id"])
        assert left["state"] == "failed" and "the worker running it stopped (host-c)" in left["error"], left
        assert sum(f"moves_cleanup: job {dead['id']} failed" in output for output in printed.values()) == 1, printed
    finally:
        with runner.registry() as conn:  # the deployed runner starts its own afresh
            conn.execute("DELETE FROM registry.schedules")


def test_housekeeping_prunes_old_finished_work_and_no_counter_goes_down(runner: RunnerStack):
    """Run last in this module, on all it left: finished work aged past retention_days (90) is deleted, parked
    and unfinished work and each tenant's latest placement that placed it stay, and every counter reads the
    same after."""
    with runner.registry() as conn:
        conn.execute(
            "UPDATE registry.jobs SET started_at = started_at - interval '100 days',"
            " finished_at = finished_at - interval '100 days' WHERE finished_at IS NOT NULL"
        )
        conn.execute("UPDATE registry.events SET received_at = received_at - interval '100 days'")
        # Only the placements of the runner's tenants: other tests place theirs meanwhile (make integration runs
        # two streams at once), and none of them makes jobs or events.
        ours = [r["tenant_id"] for r in conn.execute("SELECT DISTINCT tenant_id FROM registry.jobs")]
        conn.execute(
            "UPDATE registry.placements SET decided_at = decided_at - interval '100 days' WHERE tenant_id = ANY(%s)",
            (ours,),
        )
        before = conn.execute(
            """SELECT (SELECT count(*) FROM registry.jobs) AS jobs,
                      (SELECT count(*) FROM registry.jobs WHERE state IN ('queued', 'running', 'parked')) AS kept,
                      (SELECT count(*) FROM registry.placements p
                        WHERE p.tenant_id = ANY(%(ours)s) AND p.id >= coalesce(
                          (SELECT max(id) FROM registry.placements q
                            WHERE q.tenant_id = p.tenant_id AND q.chosen_server IS NOT NULL), 0)) AS placed""",
            {"ours": ours},
        ).fetchone()
    counters = scrape_counters(runner)
    assert before["jobs"] > before["kept"] > 0  # the parked jobs of the tests above stay

    first = runner_command(runner.settings_path, "housekeeping")
    again = runner_command(runner.settings_path, "housekeeping")

    with runner.registry() as conn:
        after = conn.execute(
            """SELECT (SELECT count(*) FROM registry.jobs) AS jobs,
                      (SELECT count(*) FROM registry.events e WHERE processed_at IS NOT NULL
                          AND NOT EXISTS (SELECT 1 FROM registry.jobs j WHERE j.event_id = e.id)) AS loose,
                      (SELECT count(*) FROM registry.placements WHERE tenant_id = ANY(%s)) AS placements""",
            (ours,),
        ).fetchone()
    assert (after["jobs"], after["loose"], after["placements"]) == (before["kept"], 0, before["placed"])
    assert f": {before['jobs'] - before['kept']} jobs, " in first, first
    assert "pruned (older than 90 days): 0 jobs, 0 events, 0 placements" in again, again
    assert scrape_counters(runner) == pytest.approx(counters)
