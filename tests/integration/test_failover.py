"""A tenant whose plan asks for a synchronous replica (premium-ha-monthly, ha: sync) gets a dedicated server that
outlives its primary: a Patroni cluster of two members with an etcd of its own, reached through HAProxy at the
server's port (roles/postgres_ha, docs/availability.md). A premium tenant upgraded to it moves from its plain
dedicated server to one made so, under its running Odoo. bench/failover.py --quick runs on it: under the tenant's
writes through its own PgBouncer, the primary is restarted in place, switched over and then lost (its Patroni and
PostgreSQL frozen as a lost host stops them, then killed as it restarts); writes resume each time and no
acknowledged row is lost. Its Odoo answers throughout without a restart, the lost member is back as the synchronous
replica, and the plan change run again changes nothing. Then the whole server is lost and rebuilt from its backups."""

from __future__ import annotations

import re
import subprocess
import sys

from tenant_web import get_status

from tests.ha_cluster import Cluster

from .conftest import (
    LOCAL_STATE,
    REPO,
    LocalPlatform,
    assert_nothing_changed,
    remove_tenants,
    run_playbook,
    supervisor_pid,
    wait_until,
)
from .test_tenant_lifecycle import Tenant, segment_archived


def test_a_customers_database_outlives_its_primary(local_platform: LocalPlatform) -> None:
    tenant = Tenant("ha-failover", local_platform, ())
    provisioned = tenant.run("tenant_provision.yml", "-e", "plan=premium-monthly")
    assert provisioned.returncode == 0, provisioned.output[-5000:]
    try:
        program = f"odoo-{tenant.tenant_id}"
        serving = supervisor_pid(program)
        assert serving > 0 and get_status(tenant.tenant_id, "/web/login") == 200
        # premium to premium-ha: both dedicated, but a server's ha is fixed when it is made, so the database moves
        # to a server made under Patroni, under the running Odoo.
        plain = tenant.server()
        upgraded = tenant.run("tenant_change_plan.yml", "-e", "plan=premium-ha-monthly")
        assert upgraded.returncode == 0, upgraded.output[-5000:]
        server = tenant.server()
        assert server["name"] != plain["name"], f"{tenant.tenant_id} stayed on {plain['name']}"
        with tenant.registry() as conn:
            assert conn.execute("SELECT ha FROM registry.db_servers WHERE name = %s", (server["name"],)).fetchone() == (
                "sync",
            )
        cluster = Cluster(server["name"], server["port"], local_platform.password(f"patroni-restapi@{server['name']}"))
        assert sorted(cluster.roles().values()) == ["leader", "sync_standby"], cluster.members()
        assert supervisor_pid(program) == serving and get_status(tenant.tenant_id, "/web/login") == 200

        bench = subprocess.run(
            [sys.executable, "bench/failover.py", "--quick", "--tenant", tenant.tenant_id],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        print(bench.stdout)
        assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
        for event in ("switchover \\(planned\\)", "failover, synchronous replica"):
            assert re.search(rf"^  {event} +n=1 ", bench.stdout, re.MULTILINE), bench.stdout
        assert "goal rows_lost_sync: 0.0 rows vs 0 rows — met" in bench.stdout, bench.stdout
        assert len(re.findall(r"^goal \w+: ", bench.stdout, re.MULTILINE)) == 3, bench.stdout

        wait_until(lambda: get_status(tenant.tenant_id, "/web/login") == 200, "the login page answering", 60, 0.5)
        assert supervisor_pid(program) == serving, "the tenant's Odoo was restarted"

        # The bench brought the lost member back (its Patroni restarted by supervisord), and the plan change run again
        # changes nothing.
        assert sorted(cluster.roles().values()) == ["leader", "sync_standby"], cluster.members()
        assert_nothing_changed(tenant.run("tenant_change_plan.yml", "-e", "plan=premium-ha-monthly"))

        whole_server_lost_and_rebuilt(tenant, cluster)
        wait_until(lambda: get_status(tenant.tenant_id, "/web/login") == 200, "the login page answering", 60, 0.5)
        assert supervisor_pid(program) == serving, "the tenant's Odoo was restarted"
    finally:
        assert remove_tenants([tenant.tenant_id], runtime=None)


def whole_server_lost_and_rebuilt(tenant: Tenant, cluster: Cluster) -> None:
    """Everything of the server on its host lost at once (both members' data, its etcd's): servers_restore.yml makes
    the cluster anew from its backup and the archived WAL (the member that bootstraps it restores and recovers, the
    other clones it), with every archived row; it refuses while the server runs."""
    name, directory = cluster.name, LOCAL_STATE / "pg" / cluster.name
    backed_up = run_playbook("servers_base_backup.yml", "--limit", name)
    assert backed_up.returncode == 0, backed_up.output[-5000:]
    with tenant.as_tenant() as conn:
        conn.execute("CREATE TABLE ha_notes (id integer PRIMARY KEY, note text)")
        conn.execute("INSERT INTO ha_notes VALUES (1, 'archived before the loss')")
    segment_archived(tenant, "the segment with the note in the repositories")
    running = run_playbook("servers_restore.yml", "-e", f"server={name}")
    assert running.returncode != 0 and f"{name} is running" in running.output, running.output[-3000:]

    supervisor = ["supervisorctl", "-c", str(directory / "supervisord.conf")]
    subprocess.run([*supervisor, "shutdown"], check=True, capture_output=True)
    wait_until(lambda: not (directory / "supervisord.pid").exists(), "the server's supervisord gone", 120, 0.5)
    for member in ("m0", "m1"):
        (directory / member / "data/PG_VERSION").unlink()  # neither can start again

    rebuilt = run_playbook("servers_restore.yml", "-e", f"server={name}")
    assert rebuilt.returncode == 0, rebuilt.output[-5000:]
    with tenant.as_tenant() as conn:
        assert conn.execute("SELECT id, note FROM ha_notes").fetchall() == [(1, "archived before the loss")]
    assert sorted(cluster.roles().values()) == ["leader", "sync_standby"], cluster.members()
    assert len(list(directory.glob("m?/data.lost-*"))) == 2 and list(directory.glob("etcd.lost-*")), "kept beside"
    # Made once (Patroni moves a failed bootstrap's data aside as data_<time>), and the rebuild's record is gone.
    assert not list(directory.glob("m?/data_*")) and not (directory / "restore-from-backup.json").exists()
