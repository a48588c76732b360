"""The monitoring as an operator meets it on the local platform (roles/monitoring, group_vars/all/monitoring.yml):
every server, PgBouncer and tenant watched without a site.yml for the new ones, and an alert mailed to the operators.
A tenant's Odoo stopped behind the runner's back raising its alert in Alertmanager, gone once it is back, is
bench/alerting.py's quick run (test_bench.py), which times it."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from monitoring_api import ALERTMANAGER, query
from tenant_web import tenant_url

from .conftest import REPO, VENV_BIN, LocalPlatform, ansible_env, run_playbook, wait_until
from .runner_stack import MailCatcher

TENANT = "watch-a"
# An alert of no rule's, sent to Alertmanager as Prometheus sends its own: where it goes is the routes' doing.
ROUTE_CHECK = {"alertname": "AlertRouteCheck", "severity": "critical", "server": "route-check"}


def send_alert(ends_in: timedelta) -> None:
    """ROUTE_CHECK to Alertmanager's API (POST /api/v2/alerts), firing until `ends_in` from now (0: resolved)."""
    body = json.dumps([{"labels": ROUTE_CHECK, "annotations": {"summary": "an alert the tests send"},
                        "endsAt": (datetime.now(UTC) + ends_in).isoformat()}]).encode()  # fmt: skip
    request = urllib.request.Request(
        f"{ALERTMANAGER}/api/v2/alerts", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


@pytest.fixture(scope="module")
def alert_sent(local_platform: LocalPlatform):
    """ROUTE_CHECK firing from the module's start (Alertmanager holds a new alert group_wait, 30 s, before its first
    notification: the other test runs meanwhile), resolved at its end; the mail catcher's messages since."""
    mail = MailCatcher()
    send_alert(timedelta(minutes=10))
    yield mail
    send_alert(timedelta(0))


@pytest.fixture(scope="module")
def watched_tenant(local_platform: LocalPlatform):
    run = run_playbook(
        "tenant_provision.yml", "-e", f"tenant_id={TENANT}", "-e", "plan=basic-monthly",
        "-e", f"customer_id=acct-{TENANT}",
    )  # fmt: skip
    assert run.returncode == 0, run.output[-4000:]
    yield TENANT
    for playbook, *extra in (("tenant_terminate.yml",), ("tenant_purge.yml", "-e", "force=true")):
        run = run_playbook(playbook, "-e", f"tenant_id={TENANT}", *extra)
        assert run.returncode == 0, run.output[-4000:]


def test_every_server_and_pgbouncer_is_watched_and_a_new_tenant_is_probed_through_its_public_url(
    local_platform: LocalPlatform, alert_sent: MailCatcher, watched_tenant: str
):
    """The servers' exporters log in as the monitor role and see the replica of each server under Patroni streaming;
    the PgBouncer exporter reads each pool's console; the tenant provisioned after site.yml is probed within a refresh
    of the runner's list, by its https URL, and its storage use is known against its quota."""
    servers = {s.name for s in local_platform.servers.values()}
    pools = {s.name for s in local_platform.servers.values() if s.pgbouncer_port}
    up = wait_until(
        lambda: (found := {r["metric"]["server"] for r in query("pg_up == 1")}) >= servers and found,
        "every server's exporter logged in",
        60,
    )
    assert servers <= up
    # The servers under Patroni (the registry's and pool-shared-01, locally): each primary streams to a replica.
    replicated = servers & set(local_platform.groups.get("ha_servers", []))
    assert replicated
    wait_until(
        lambda: (
            {r["metric"]["server"] for r in query('pg_stat_replication_pg_wal_lsn_diff{ha=~"async|sync"}')}
            >= replicated
        ),
        "every replica streaming",
        60,
    )
    assert not query(f'ALERTS{{alertname="ReplicaMissing", server=~"{"|".join(sorted(replicated))}"}}')
    wait_until(lambda: {r["metric"]["server"] for r in query("pgbouncer_up == 1")} >= pools, "every PgBouncer read", 60)
    probe = wait_until(lambda: query(f'probe_success{{tenant="{watched_tenant}"}} == 1'), "the tenant probed", 90)
    assert probe[0]["metric"]["instance"] == tenant_url(watched_tenant)
    # Its storage against its plan's quota, as its provision measured it (playbooks/tasks/storage_usage.yml).
    share = wait_until(
        lambda: query(f'saasodoo_tenant_storage_used_bytes{{tenant="{watched_tenant}"}}'
                      f' / saasodoo_tenant_storage_quota_bytes{{tenant="{watched_tenant}"}}'),
        "the tenant's storage figures",
        60,
    )  # fmt: skip
    assert 0 < float(share[0]["value"][1]) < 0.85, share
    # Its certificate is read too: the platform CA's, valid for weeks at least.
    expiry = query(f'probe_ssl_earliest_cert_expiry{{tenant="{watched_tenant}"}} - time()')
    assert expiry and float(expiry[0]["value"][1]) > 14 * 86400, expiry


def test_an_alert_reaches_the_operators_by_e_mail(alert_sent: MailCatcher):
    """Alertmanager's route (roles/monitoring's alertmanager.yml): an alert firing is mailed to the operators through
    the platform's SMTP relay (locally the mail catcher), naming the alert and what it is about."""

    def mailed():
        return [
            message for message in alert_sent.messages("operators@") if "AlertRouteCheck" in str(message["Subject"])
        ]

    [message] = wait_until(mailed, "the alert's e-mail", 90)
    assert "[FIRING:1]" in str(message["Subject"]) and str(message["From"]).startswith("alerts@")
    body = message.get_body(("plain", "html")).get_content()
    assert "route-check" in body and "an alert the tests send" in body


@pytest.mark.skipif(Path("/run/systemd/system").exists(), reason="with systemd, the entry point would install it here")
@pytest.mark.parametrize(
    ("entry", "address_var"),
    [
        ("node_exporter", "monitoring_node_exporter_address"),
        ("postgres_exporter", "monitoring_postgres_exporter_address"),
    ],
)
def test_an_exporter_beside_what_it_watches_needs_systemd_and_changes_nothing_without_it(entry: str, address_var: str):
    """The exporters that run beside what they watch (production) run under Debian's systemd units: on a machine
    without systemd (this one) the entry point refuses before it writes or installs anything."""
    default_file = Path(f"/etc/default/prometheus-{entry.replace('_', '-')}")
    before = default_file.read_bytes() if default_file.exists() else None
    run = subprocess.run(
        [str(VENV_BIN / "ansible"), "pool-shared-01", "-i", "inventories/local", "-m", "ansible.builtin.include_role",
         "-a", f"name=monitoring tasks_from={entry}", "-e", f"{address_var}=127.0.0.1"],
        cwd=REPO, env=ansible_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode != 0 and "runs no systemd" in run.stdout, run.stdout[-3000:]
    assert (default_file.read_bytes() if default_file.exists() else None) == before
