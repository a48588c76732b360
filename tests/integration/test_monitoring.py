"""The monitoring as an operator meets it on the local platform (roles/monitoring, group_vars/all/monitoring.yml):
every server, PgBouncer and tenant watched without a site.yml for the new ones. A tenant's Odoo stopped behind the
runner's back raising its alert in Alertmanager, gone once it is back, is bench/alerting.py's quick run
(test_bench.py), which times it."""

from __future__ import annotations

import pytest
from monitoring_api import query
from tenant_web import tenant_url

from .conftest import LocalPlatform, run_playbook, wait_until

TENANT = "watch-a"


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
    local_platform: LocalPlatform, watched_tenant: str
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
