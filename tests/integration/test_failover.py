"""A tenant whose plan asks for a synchronous replica (premium-ha-monthly, ha: sync) gets a dedicated server that
outlives its primary: a Patroni cluster of two members with an etcd of its own, reached through HAProxy at the
server's port (roles/postgres_ha, docs/availability.md). Its customer's writes go on through a planned switchover
and through the loss of the primary (Patroni and PostgreSQL killed as a lost host loses them), no acknowledged row
is lost, its Odoo answers again without a restart, and the lost member comes back as a replica with a run of the
server's roles."""

from __future__ import annotations

from tenant_web import get_status

from bench.odoo_tenant import TenantWriter
from tests.ha_cluster import Cluster

from .conftest import LOCAL_STATE, LocalPlatform, remove_tenants, run_playbook, supervisor_pid, wait_until
from .test_tenant_lifecycle import Tenant


def tenant_writer(tenant: Tenant, platform: LocalPlatform) -> TenantWriter:
    """Writes as the tenant's Odoo does: through its own PgBouncer, with its own credentials."""
    record = tenant.record()
    socket_dir = str(LOCAL_STATE / "runtime/pgbouncer" / tenant.tenant_id / "run")
    password = platform.password(f"tenant:{tenant.tenant_id}:v{record['credential_version']}")
    return TenantWriter(lambda: (socket_dir, 6432), record["db_name"], record["db_role"], password, interval=0.05)


def writes_resume(writer: TenantWriter, after: int, what: str) -> None:
    wait_until(lambda: writer.committed_count >= after + 10, what, 90, 0.1)


def test_a_customers_database_outlives_its_primary(local_platform: LocalPlatform) -> None:
    tenant = Tenant("ha-failover", local_platform, ())
    provisioned = tenant.run("tenant_provision.yml", "-e", "plan=premium-ha-monthly")
    assert provisioned.returncode == 0, provisioned.output[-5000:]
    try:
        server = tenant.server()
        cluster = Cluster(server["name"], server["port"], local_platform.password(f"patroni-restapi@{server['name']}"))
        roles = cluster.roles()
        assert sorted(roles.values()) == ["leader", "sync_standby"], roles
        first = cluster.leader()
        (second,) = set(roles) - {first}
        program = f"odoo-{tenant.tenant_id}"
        serving = supervisor_pid(program)
        assert serving > 0 and get_status(tenant.tenant_id, "/web/login") == 200

        writer = tenant_writer(tenant, local_platform)
        writer.prepare()
        writer.start()
        try:
            writes_resume(writer, 0, "the first writes")
            cluster.switchover(first, second)
            wait_until(lambda: cluster.leader() == second, f"{second} leading after the switchover", 60, 0.1)
            writes_resume(writer, writer.committed_count, "writes after the switchover")
            # Only the synchronous replica may take over (no acknowledged commit lost): the old primary first
            # rejoins as that, then the new primary is lost.
            synchronous = {second: "leader", first: "sync_standby"}
            wait_until(lambda: cluster.roles() == synchronous, f"{first} the synchronous replica again", 60, 0.2)

            before_the_loss = writer.committed_count
            cluster.lose(second)
            wait_until(lambda: cluster.leader() == first, f"{first} leading after {second} was lost", 90, 0.2)
            writes_resume(writer, before_the_loss, "writes after the primary was lost")
        finally:
            report = writer.stop()
        print(f"writes: {report.commits} acknowledged, longest pause {report.longest_gap_s:.2f} s")

        with tenant.admin(tenant.db_name) as conn:
            stored = {row[0] for row in conn.execute("SELECT id FROM bench_writer")}
        lost = set(report.committed_ids) - stored
        assert not lost, f"{len(lost)} acknowledged rows lost with the primary (synchronous replication)"
        wait_until(lambda: get_status(tenant.tenant_id, "/web/login") == 200, "the login page answering", 60, 0.5)
        assert supervisor_pid(program) == serving, "the tenant's Odoo was restarted"

        # The lost member comes back with the next run of its server's roles, as a replica of the new primary.
        back = run_playbook("site.yml", "--limit", f"{cluster.name},platform-db")
        assert back.returncode == 0, back.output[-5000:]
        expected = {first: "leader", second: "sync_standby"}
        wait_until(lambda: cluster.roles() == expected, f"{second} back as the synchronous replica", 60, 0.5)
    finally:
        assert remove_tenants([tenant.tenant_id], runtime=None)
