"""One tenant through its whole life on the local platform, every step run twice
(docs/lifecycle.md).

provision -> reachable through nginx by Host header -> suspend -> resume -> change plan within shared ->
backup -> data changed -> restore -> terminate -> purge with `local` storage; and on a real CephFS
(tests/integration/ceph_cluster.py) the same but for suspend and resume, which do not touch storage, with the
plan's quota refusing a write past it.
The Odoo is the test double (tests/standins/odoo), run by the real supervisord behind the real nginx.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import pwd
import re
import shutil
import ssl
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ansible_runner
import psycopg
import pytest
from psycopg.rows import dict_row
from tenant_web import NGINX_HTTP, host_name, tenant_url
from tenant_web import get_status as get  # over HTTPS, as the tenant's host name

from ansible_collections.saasodoo.platform.plugins.filter.tenants import tenant_os_user
from webhook_runner.execution import job_environment, park_reason

from .conftest import (
    LOCAL_STATE,
    REPO,
    LocalPlatform,
    PlaybookRun,
    assert_nothing_changed,
    run_playbook,
    supervisor_pid,
    wait_until,
)
from .test_storage_cephfs import PROPAGATION_TIMEOUT, rbytes_of, write_chunks
from conftest import INVENTORIES, load_yaml

GIB = 1 << 30


def get_plain(tenant_id: str, path: str) -> tuple[int, str | None]:
    """Status and Location of GET path through nginx's plain HTTP listener, as the tenant's host name."""
    conn = http.client.HTTPConnection(*NGINX_HTTP, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host_name(tenant_id)})
        response = conn.getresponse()
        return response.status, response.getheader("Location")
    finally:
        conn.close()


def assert_idempotent(first: PlaybookRun, second: PlaybookRun) -> None:
    assert first.returncode == 0, first.output[-5000:]
    assert_nothing_changed(second)


@dataclass
class Tenant:
    """The tenant under test, seen from outside: the registry, its database, its files."""

    tenant_id: str
    platform: LocalPlatform
    extra_vars: tuple[str, ...]

    def run(self, playbook: str, *args: str) -> PlaybookRun:
        return run_playbook(playbook, "-e", f"tenant_id={self.tenant_id}", *self.extra_vars, *args)

    def run_twice(self, playbook: str, *args: str) -> None:
        assert_idempotent(self.run(playbook, *args), self.run(playbook, *args))

    def registry(self) -> psycopg.Connection:
        return self.platform.connect(
            self.platform.servers["platform-db"].port,
            "saasodoo_registry",
            self.platform.password("registry@saasodoo_registry"),
            "saasodoo_registry",
        )

    def record(self) -> dict:
        with self.registry() as conn:
            row = conn.execute(
                "SELECT to_jsonb(t) || jsonb_build_object('retained_days', "
                "  round(extract(epoch FROM t.retain_until - now()) / 86400)) "
                "FROM registry.tenants AS t WHERE tenant_id = %s",
                (self.tenant_id,),
            ).fetchone()
        return row[0]

    @property
    def db_name(self) -> str:
        return self.record()["db_name"]

    def server(self) -> dict:
        """The tenant's server as the registry has it: it may be one the fleet grew after the session began."""
        with self.registry() as conn:
            conn.row_factory = dict_row
            return conn.execute(
                "SELECT s.name, s.port, s.pgbouncer_port FROM registry.tenants t"
                " JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id = %s",
                (self.tenant_id,),
            ).fetchone()

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        server = self.server()
        return psycopg.connect(
            host=str(LOCAL_STATE / "pg" / server["name"] / "run"),
            port=server["port"],
            user="postgres",
            dbname=dbname,
            autocommit=True,
        )

    def as_tenant(self) -> psycopg.Connection:
        """The tenant's own credentials, as its Odoo connects: through its pool's PgBouncer, or to its dedicated
        server (which has none)."""
        record, server = self.record(), self.server()
        password = self.platform.password(f"tenant:{self.tenant_id}:v{record['credential_version']}")
        port = server["pgbouncer_port"] or server["port"]
        return self.platform.connect(port, record["db_role"], password, record["db_name"])

    @property
    def data_dir(self) -> Path:
        return Path(self.record()["storage_path"])

    @property
    def filestore(self) -> Path:
        return self.data_dir / "filestore" / self.db_name

    def plan(self, name: str) -> dict:
        """A plan's entitlements as the registry has them (its newest version)."""
        with self.registry() as conn:
            return conn.execute(
                "SELECT entitlements FROM registry.plans WHERE name = %s ORDER BY version DESC LIMIT 1", (name,)
            ).fetchone()[0]

    def odoo_conf(self) -> dict[str, str]:
        text = (LOCAL_STATE / "runtime/tenants" / self.tenant_id / "odoo.conf").read_text()
        return dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith(";"))


def downgrade_keeps_the_modules(tenant: Tenant, smaller_plan: str, bigger_plan: str, tmp_path: Path) -> None:
    """Back to the plan without the module the bigger one installed: refused while the tenant's files exceed its
    smaller quota (the webhook runner would park the job at once, with the reason), then carried out with the module
    kept installed and recorded as extra, and no longer extra once the bigger plan is back."""
    added = sorted(set(tenant.record()["quotas"]["odoo_modules"]) - set(tenant.plan(smaller_plan)["odoo_modules"]))
    assert added, f"{bigger_plan} adds no module to {smaller_plan}"
    over = tenant.plan(smaller_plan)["storage_gb"] * GIB + (1 << 20)
    big, sparse = tenant.data_dir / "big.bin", tenant.data_dir / "sparse.bin"
    with big.open("wb") as file:  # blocks on disk, without writing them
        os.posix_fallocate(file.fileno(), 0, over)
    with sparse.open("wb") as file:  # a size it claims, on no disk: no use of the quota, it holds nothing up
        file.truncate(over)
    refused = ansible_runner.run(  # as the webhook runner runs a job
        private_data_dir=str(tmp_path), project_dir=str(REPO), playbook=str(REPO / "playbooks/tenant_change_plan.yml"),
        inventory=str(REPO / "inventories/local"), envvars=job_environment(REPO), suppress_env_files=True, quiet=True,
        extravars={"tenant_id": tenant.tenant_id, "plan": smaller_plan},
    )  # fmt: skip
    reason = park_reason(refused)
    assert refused.status == "failed" and reason is not None, refused.stdout.read()[-5000:]
    assert f"more than plan {smaller_plan}'s storage quota" in reason and f"keeps plan {bigger_plan}" in reason
    assert (tenant.record()["plan_name"], tenant.record()["extra_modules"]) == (bigger_plan, [])
    big.unlink()

    # Once: a plan change run twice changes nothing the second time (the change to the bigger plan above).
    downgraded = tenant.run("tenant_change_plan.yml", "-e", f"plan={smaller_plan}")
    assert downgraded.returncode == 0, downgraded.output[-5000:]
    sparse.unlink()
    record = tenant.record()
    assert (record["plan_name"], record["extra_modules"]) == (smaller_plan, added)
    assert tenant.odoo_conf()["workers"] == str(record["quotas"]["odoo_workers"])
    with tenant.as_tenant() as conn:
        installed = conn.execute(
            "SELECT name FROM public.ir_module_module WHERE state = 'installed' AND name = ANY(%s)", (added,)
        ).fetchall()
    assert sorted(name for (name,) in installed) == added
    assert get(tenant.tenant_id, "/web/health") == 200

    upgraded = tenant.run("tenant_change_plan.yml", "-e", f"plan={bigger_plan}")
    assert upgraded.returncode == 0, upgraded.output[-5000:]
    assert (tenant.record()["plan_name"], tenant.record()["extra_modules"]) == (bigger_plan, [])


def stopped_and_started_by_hand(tenant: Tenant) -> None:
    """tenant_restart.yml -e odoo=stopped: its route answers 503, its login still opens its database, a second run
    changes nothing; started again, its login page is back. (Restarts: test_webhook_runner.py, through the API.)"""
    refused = tenant.run("tenant_restart.yml", "-e", "odoo=paused")
    assert refused.returncode != 0 and "-e odoo=paused: restarted, stopped or started" in refused.output
    tenant.run_twice("tenant_restart.yml", "-e", "odoo=stopped")
    assert get(tenant.tenant_id, "/web/login") == 503
    with tenant.as_tenant() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (tenant.record()["db_role"],)
    started = tenant.run("tenant_restart.yml", "-e", "odoo=started")
    assert started.returncode == 0, started.output[-3000:]
    assert get(tenant.tenant_id, "/web/login") == 200


def filestore_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def lifecycle(tenant: Tenant, first_plan: str, bigger_plan: str, cephfs: bool, tmp_path: Path) -> None:
    # provision: reachable through nginx over HTTPS by its host name; plain HTTP only redirects there
    tenant.run_twice("tenant_provision.yml", "-e", f"plan={first_plan}")
    assert tenant.record()["status"] == "active"
    assert get(tenant.tenant_id, "/web/health") == 200
    assert get(tenant.tenant_id, "/web/login") == 200
    assert get_plain(tenant.tenant_id, "/web/login?x=1") == (308, tenant_url(tenant.tenant_id, "/web/login?x=1"))
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):  # an unknown host name gets no handshake
        get("someone-else", "/web/health")
    with pytest.raises(http.client.RemoteDisconnected):  # nor a plain answer (444)
        get_plain("someone-else", "/web/health")
    with tenant.as_tenant() as conn:
        conn.execute("CREATE TABLE invoices (id serial PRIMARY KEY, amount numeric NOT NULL)")
        conn.execute("INSERT INTO invoices (amount) SELECT g FROM generate_series(1, 500) AS g")
    if cephfs:
        quota = int(os.getxattr(tenant.data_dir, "ceph.quota.max_bytes"))
        assert quota == 1 * GIB  # basic-test-trial: storage_gb 1
        # Past the quota writes are refused. Enforcement is lazy (the MDS propagates usage every few seconds,
        # test_storage_cephfs.py): write 1.5x, let the usage reach the quota, then nothing more goes in.
        big = tenant.data_dir / "too-big.bin"
        written, error = write_chunks(big, quota * 3 // 2)
        if error is None:
            wait_until(
                lambda: rbytes_of(tenant.data_dir) > quota, "the MDS counting the writes", PROPAGATION_TIMEOUT, 0.2
            )
            _, error = write_chunks(big, 1 << 20)
        stored = big.stat().st_size
        big.unlink()
        assert error is not None and error.errno == errno.EDQUOT, f"{written} bytes in a {quota}-byte quota, no EDQUOT"
        assert stored < 2 * quota

    if not cephfs:  # storage plays no part in a suspension or an update: proven once, on local storage
        suspend_and_resume(tenant)
        updated_then_rolled_back(tenant)

    change_plan_backup_restore_terminate_purge(tenant, first_plan, bigger_plan, cephfs, tmp_path)


def suspend_and_resume(tenant: Tenant) -> None:
    # suspend: no 200, the database refuses the tenant, its data stays
    tenant.run_twice("tenant_suspend.yml")
    assert tenant.record()["status"] == "suspended"
    assert get(tenant.tenant_id, "/web/health") != 200
    with pytest.raises(psycopg.OperationalError):
        tenant.as_tenant().close()
    with tenant.admin(tenant.db_name) as conn:
        assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 500

    # resume; a start that finds the tenant's OS user other than provisioning made it makes it again
    os_user = tenant_os_user(tenant.tenant_id)
    subprocess.run(["usermod", "--shell", "/bin/sh", os_user], check=True)
    tenant.run_twice("tenant_resume.yml")
    assert pwd.getpwnam(os_user).pw_shell == "/usr/sbin/nologin"
    assert tenant.record()["status"] == "active"
    assert get(tenant.tenant_id, "/web/health") == 200
    with tenant.as_tenant() as conn:
        assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 500


def standin_build(name: str, release: str, migrations: dict[str, str]) -> str:
    """Another build of the Odoo stand-in (tests/standins/odoo/README.md): its odoo-bin at `release`, with migration
    scripts ({"<module>/<version>/<stage>-<name>.py": code}), where the tenants' OS users can run it. Its command."""
    root = LOCAL_STATE / "odoo-builds" / name
    shutil.rmtree(root, ignore_errors=True)
    source = (REPO / "tests/standins/odoo/odoo-bin").read_text()
    assert source.count('\nRELEASE = "18.0.1.0"\n') == 1
    for path, text in {"odoo-bin": source.replace('\nRELEASE = "18.0.1.0"\n', f'\nRELEASE = "{release}"\n'),
                       **{f"addons/{module}/migrations/{script}": code
                          for module, script, code in ((*key.split("/", 1), code) for key, code in migrations.items())}
                       }.items():  # fmt: skip
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    for directory in (root.parent, *(p for p in root.rglob("*") if p.is_dir()), root):
        directory.chmod(0o755)
    return f"/usr/bin/python3 {root / 'odoo-bin'}"


def odoo_command(tenant: Tenant) -> list[str]:
    """The command line of the tenant's serving Odoo."""
    conf = str(LOCAL_STATE / "runtime/tenants" / tenant.tenant_id / "odoo.conf")
    pids = subprocess.run(["pgrep", "-f", f" -c {conf}$"], capture_output=True, text=True, check=True).stdout.split()
    assert len(pids) == 1, pids
    return Path(f"/proc/{pids[0]}/cmdline").read_text().rstrip("\0").split("\0")


def module_versions(tenant: Tenant) -> set[str]:
    with tenant.admin(tenant.db_name) as conn:
        rows = conn.execute("SELECT latest_version FROM public.ir_module_module WHERE state = 'installed'").fetchall()
    return {version for (version,) in rows}


def updated_then_rolled_back(tenant: Tenant) -> None:
    """tenant_update.yml: a new build updates every module (its migration scripts run) and then serves the tenant, a
    run again changes nothing; a build whose update fails after it updated some modules is rolled back to the backup
    its update took, and the tenant is served by its build as before, its data whole; after a run that died with its
    backup recorded, the next goes back to that one without taking another."""
    mark = (
        "def migrate(cr, version):\n"
        "    cr.execute(\"INSERT INTO ir_config_parameter (key, value) VALUES ('updated_from', %s)\", (version,))\n"
    )
    good = standin_build("good", "18.0.1.1", {"base/18.0.1.1/post-mark.py": mark})
    tenant.run_twice("tenant_update.yml", "-e", json.dumps({"build": good}))
    conf = str(LOCAL_STATE / "runtime/tenants" / tenant.tenant_id / "odoo.conf")
    record = tenant.record()
    assert (record["odoo_build"], record["odoo_update_backup"]) == (good, None) and record["odoo_build_since"]
    assert odoo_command(tenant) == [*good.split(), "-c", conf]
    assert module_versions(tenant) == {"18.0.1.1"}
    with tenant.as_tenant() as conn:
        assert conn.execute("SELECT value FROM ir_config_parameter WHERE key = 'updated_from'").fetchall() == [
            ("18.0.1.0",)
        ]
        assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 500
    assert get(tenant.tenant_id, "/web/login") == 200

    # base is updated first (and committed), then web's migration fails: the database is at no build until restored.
    # What the customer wrote before the update is in the backup it takes after stopping Odoo.
    with tenant.as_tenant() as conn:
        conn.execute("INSERT INTO invoices (amount) VALUES (501)")
    fail = "def migrate(cr, version):\n    raise RuntimeError('this build cannot update web')\n"
    bad = standin_build("bad", "18.0.1.2", {"web/18.0.1.2/pre-fail.py": fail})

    def failed_and_rolled_back() -> str:
        failed = tenant.run("tenant_update.yml", "-e", json.dumps({"build": bad}))
        assert failed.returncode != 0
        said = " ".join(failed.output.split())
        assert "Install or update the modules all: non-zero return code (exit 255)" in said, failed.output[-5000:]
        assert "module web: RuntimeError: this build cannot update web" in said  # Odoo's log, in the run's output
        record = tenant.record()
        assert (record["odoo_build"], record["odoo_update_backup"]) == (good, None)
        assert odoo_command(tenant) == [*good.split(), "-c", conf]
        assert module_versions(tenant) == {"18.0.1.1"}
        with tenant.as_tenant() as conn:
            assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 501
        assert get(tenant.tenant_id, "/web/login") == 200
        return said

    said = failed_and_rolled_back()
    with tenant.registry() as conn:
        taken = conn.execute(
            "SELECT backup_id FROM registry.backups WHERE tenant_id = %s ORDER BY taken_at", (tenant.tenant_id,)
        )
        backups = [backup_id for (backup_id,) in taken]
    assert f"Backup {backups[-1]}, taken before it, was restored: the tenant runs {good} again" in said

    # A run that died during the update left its backup recorded: nothing but the update (or a restore) acts on the
    # tenant meanwhile, and the next run takes no second backup (of a half-updated database) and goes back to it.
    with tenant.registry() as conn:
        conn.execute(
            "UPDATE registry.tenants SET odoo_update_backup = %s WHERE tenant_id = %s", (backups[-1], tenant.tenant_id)
        )
    refused = tenant.run("tenant_restart.yml")
    assert refused.returncode != 0 and f"has an Odoo update under way (its backup {backups[-1]})" in refused.output
    failed_and_rolled_back()
    with tenant.registry() as conn:
        again = conn.execute("SELECT backup_id FROM registry.backups WHERE tenant_id = %s", (tenant.tenant_id,))
        assert len(again.fetchall()) == len(backups)
    with tenant.as_tenant() as conn:  # the invoices as the rest of the life expects them
        conn.execute("DELETE FROM invoices WHERE amount = 501")


def restore_drills(tenant: Tenant, tampered_backup: str, newest_backup: str) -> None:
    """backups_drill.yml restores a backup's offsite copy into a scratch database beside the tenant's, which it leaves
    alone: the newest backup passes; one whose offsite copy was swapped for another backup's fails, saying why; each
    is recorded, and neither the scratch database nor the fetched copy is left."""
    passed = tenant.run("backups_drill.yml", "-e", f"drill_tenant={tenant.tenant_id}")
    assert passed.returncode == 0 and "passed in" in passed.output, passed.output[-5000:]
    offsite, bucket = tenant.platform.offsite_store()
    newest_copy = offsite.get_object(Bucket=bucket, Key=offsite_key(tenant, newest_backup))["Body"].read()
    offsite.put_object(Bucket=bucket, Key=offsite_key(tenant, tampered_backup), Body=newest_copy)
    failed = tenant.run(
        "backups_drill.yml", "-e", f"drill_tenant={tenant.tenant_id}", "-e", f"drill_backup={tampered_backup}"
    )
    tampered = "is not the manifest the registry recorded"
    assert failed.returncode != 0 and tampered in failed.output, failed.output[-5000:]
    assert not list((LOCAL_STATE / "backups" / tenant.tenant_id).glob(".drill-*")), "the fetched copies are gone"
    with tenant.registry() as conn:
        drills = conn.execute(
            "SELECT backup_id, passed, detail, seconds FROM registry.restore_drills WHERE tenant_id = %s ORDER BY id",
            (tenant.tenant_id,),
        ).fetchall()
    assert [(backup, ok) for backup, ok, _, _ in drills] == [(newest_backup, True), (tampered_backup, False)]
    assert drills[0][2].startswith("restored ") and drills[0][2].endswith(" (its offsite copy)")
    assert tampered in drills[1][2]
    assert all(seconds > 0 for *_, seconds in drills)
    with tenant.admin() as conn:  # neither the scratch database nor the restore's role is left
        left = conn.execute(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = %(drill)s),"
            " (SELECT count(*) FROM pg_roles WHERE rolname = %(role)s)",
            {"drill": f"drill_{tenant.db_name}", "role": f"saasodoo_restore_{tenant.db_name}"},
        )
        assert left.fetchone() == (0, 0)
    with tenant.as_tenant() as conn:  # the tenant's own data as it was
        assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 101


def final_backup_restored_from_offsite(tenant: Tenant, plan: str) -> None:
    """A terminated tenant's final backup, its copy here lost with its machine, restored from the offsite store into
    another tenant (tenant_restore.yml -e from_tenant=…): its data come back."""
    with tenant.registry() as conn:
        final = conn.execute(
            "SELECT location FROM registry.backups WHERE tenant_id = %s AND kind = 'final'", (tenant.tenant_id,)
        ).fetchone()[0]
    shutil.rmtree(final)
    heir = Tenant(f"{tenant.tenant_id}-heir", tenant.platform, tenant.extra_vars)
    provisioned = heir.run("tenant_provision.yml", "-e", f"plan={plan}")
    assert provisioned.returncode == 0, provisioned.output[-5000:]
    try:
        restored = heir.run("tenant_restore.yml", "-e", f"from_tenant={tenant.tenant_id}")
        assert restored.returncode == 0, restored.output[-5000:]
        with heir.as_tenant() as conn:
            assert conn.execute("SELECT count(*), sum(amount) FROM invoices").fetchone() == (500, 125250)
        assert (Path(final) / "manifest.json").exists()
    finally:
        assert heir.run("tenant_terminate.yml").returncode == 0
        assert heir.run("tenant_purge.yml", "-e", "force=true").returncode == 0


def offsite_key(tenant: Tenant, backup_id: str) -> str:
    return f"tenants/{tenant.tenant_id}/{backup_id}.tar.enc"


def installed_modules(tenant: Tenant) -> set[str]:
    with tenant.as_tenant() as conn:
        return {name for (name,) in conn.execute("SELECT name FROM public.ir_module_module WHERE state = 'installed'")}


def change_plan_installing_live(tenant: Tenant, plan: str) -> None:
    """The plan change, run twice, installs the modules the plan adds while the tenant's Odoo serves: when they show
    installed, the Odoo that served before the run is still running (its restart for the new limits comes after)."""
    program = f"odoo-{tenant.tenant_id}"
    added = set(tenant.plan(plan)["odoo_modules"]) - installed_modules(tenant)
    assert added, f"{plan} adds no module"
    serving = supervisor_pid(program)
    assert serving > 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(tenant.run, "tenant_change_plan.yml", "-e", f"plan={plan}")
        wait_until(lambda: first.done() or added <= installed_modules(tenant), "the new modules installed", 600, 0.05)
        while_installed = supervisor_pid(program)
        run = first.result()
    assert run.returncode == 0, run.output[-5000:]
    assert added <= installed_modules(tenant)
    assert while_installed == serving, "the tenant's Odoo was stopped for the install"
    assert_idempotent(run, tenant.run("tenant_change_plan.yml", "-e", f"plan={plan}"))


def change_plan_backup_restore_terminate_purge(
    tenant: Tenant, first_plan: str, bigger_plan: str, cephfs: bool, tmp_path: Path
) -> None:
    # change plan within shared: new limits in its config, its role and its quota, its new modules installed live
    # (the local storage's plans add one; the same playbook on either storage: proven once)
    workers_before = tenant.odoo_conf()["workers"]
    if cephfs:
        tenant.run_twice("tenant_change_plan.yml", "-e", f"plan={bigger_plan}")
    else:
        change_plan_installing_live(tenant, bigger_plan)
    record = tenant.record()
    plan = record["quotas"]
    assert record["plan_name"] == bigger_plan
    conf = tenant.odoo_conf()
    assert conf["workers"] == str(plan["odoo_workers"]) != workers_before
    assert conf["limit_memory_hard"] == str(plan["memory_mb"] * 1048576 // (plan["odoo_workers"] + 1))
    with tenant.admin() as conn:
        limit = conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (record["db_role"],))
        assert limit.fetchone()[0] == plan["db_connection_limit"]
    if cephfs:
        assert int(os.getxattr(tenant.data_dir, "ceph.quota.max_bytes")) == plan["storage_gb"] * GIB
    assert get(tenant.tenant_id, "/web/health") == 200
    # (A plan on another db_type moves the database: tests/integration/test_tenant_move.py.)
    if not cephfs:  # the same playbook on either storage: proven once
        downgrade_keeps_the_modules(tenant, first_plan, bigger_plan, tmp_path)
        stopped_and_started_by_hand(tenant)

    # backup: a new one every run, each with a manifest of every part
    filestore_before = filestore_digest(tenant.filestore)
    assert filestore_before, "the Odoo double writes its boot marker into the filestore"
    offsite, bucket = tenant.platform.offsite_store()

    def backups_since(before: tuple[str, ...]) -> list[tuple[str, str, str]]:
        with tenant.registry() as conn:
            return conn.execute(
                "SELECT backup_id, location, manifest_sha256 FROM registry.backups WHERE tenant_id = %s"
                " AND backup_id <> ALL(%s) ORDER BY taken_at",
                (tenant.tenant_id, list(before)),
            ).fetchall()

    earlier = tuple(backup_id for backup_id, _, _ in backups_since(()))  # an update's (updated_then_rolled_back)
    for n in range(2):
        backup = tenant.run("tenant_backup.yml")
        assert backup.returncode == 0, backup.output[-5000:]
        if n == 0:  # its copy lost, as if the store had been down when it was taken: the next run copies it again
            offsite.delete_object(Bucket=bucket, Key=offsite_key(tenant, backups_since(earlier)[0][0]))
    backups = backups_since(earlier)
    assert len(backups) == 2
    for backup_id, location, manifest_sha256 in backups:
        assert Path(location).name == backup_id, "a backup's directory is named by its id"
        manifest_path = Path(location) / "manifest.json"
        assert hashlib.sha256(manifest_path.read_bytes()).hexdigest() == manifest_sha256
        parts = json.loads(manifest_path.read_text())["parts"]
        assert "filestore.tar.gz" in parts and "database/toc.dat" in parts
        for part, facts in parts.items():
            assert hashlib.sha256((Path(location) / part).read_bytes()).hexdigest() == facts["sha256"]
    for backup_id, _, _ in backups:  # and a copy of each off site, encrypted
        copy = offsite.get_object(Bucket=bucket, Key=offsite_key(tenant, backup_id))["Body"].read()
        assert copy[:8] == b"Salted__" and b"manifest.json" not in copy

    # data changed: rows gone, the filestore altered
    with tenant.as_tenant() as conn:
        conn.execute("DELETE FROM invoices WHERE id > 100")
        conn.execute("INSERT INTO invoices (amount) VALUES (-1)")
    shutil.rmtree(tenant.filestore)
    tenant.filestore.mkdir()
    (tenant.filestore / "stray").write_text("not in the backup")

    # A tampered backup is refused before anything is touched.
    first_backup = Path(backups[0][1])
    (first_backup / "filestore.tar.gz").write_bytes(b"tampered")
    tampered = tenant.run("tenant_restore.yml", "-e", f"backup_id={backups[0][0]}")
    assert tampered.returncode != 0 and "does not match its manifest" in tampered.output
    with tenant.as_tenant() as conn:
        assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 101

    if not cephfs:  # the drill reads backups as restores do: proven once
        restore_drills(tenant, tampered_backup=backups[0][0], newest_backup=backups[1][0])

    # restore (the newest backup, its copy here lost): fetched from off site, data and files back, checksums verified
    shutil.rmtree(backups[1][1])
    tenant.run_twice("tenant_restore.yml")
    assert (Path(backups[1][1]) / "manifest.json").exists(), "the backup is back here too"
    with tenant.as_tenant() as conn:
        assert conn.execute("SELECT count(*), sum(amount) FROM invoices").fetchone() == (500, 125250)
    assert filestore_digest(tenant.filestore) == filestore_before
    assert get(tenant.tenant_id, "/web/health") == 200

    # terminate: a final backup, stopped, refused, retained for the plan's retention_days
    tenant.run_twice("tenant_terminate.yml")
    record = tenant.record()
    assert record["status"] == "terminated"
    assert record["retained_days"] == plan["retention_days"]
    assert get(tenant.tenant_id, "/web/health") != 200
    with pytest.raises(psycopg.OperationalError):
        tenant.as_tenant().close()
    with tenant.registry() as conn:
        finals = conn.execute(
            "SELECT count(*) FROM registry.backups WHERE tenant_id = %s AND kind = 'final'", (tenant.tenant_id,)
        ).fetchone()[0]
    assert finals == 1
    if not cephfs:  # the same playbooks on either storage: proven once
        final_backup_restored_from_offsite(tenant, first_plan)

    # purge: refused while retained, then forced; nothing of the tenant is left
    refused = tenant.run("tenant_purge.yml")
    assert refused.returncode != 0 and "force=true" in refused.output
    data_dir, db_name, role = tenant.data_dir, record["db_name"], record["db_role"]
    tenant.run_twice("tenant_purge.yml", "-e", "force=true")
    assert tenant.record()["status"] == "purged"
    with tenant.admin() as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (db_name,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0] == 0
    assert not data_dir.exists()
    assert not (LOCAL_STATE / "runtime/nginx/sites" / f"{tenant.tenant_id}.conf").exists()
    assert not (LOCAL_STATE / "backups" / tenant.tenant_id).exists()
    assert "Contents" not in offsite.list_objects_v2(Bucket=bucket, Prefix=f"tenants/{tenant.tenant_id}/")
    with tenant.registry() as conn:
        actions = [
            row[0]
            for row in conn.execute(
                "SELECT detail ->> 'action' FROM registry.audit WHERE tenant_id = %s ORDER BY id", (tenant.tenant_id,)
            )
        ]
        assert conn.execute("SELECT count(*) FROM registry.audit_chain_breaks()").fetchone()[0] == 0
    suspension = () if cephfs else ("tenant_suspend", "tenant_resume")
    for action in ("provision", *suspension, "tenant_change_plan", "backup", "restore"):
        assert action in actions
    assert actions[-1] == "tenant_purge"


def test_lifecycle_with_local_storage(local_platform: LocalPlatform, tmp_path: Path) -> None:
    lifecycle(Tenant("life-local", local_platform, ()), "basic-monthly", "standard-monthly", False, tmp_path)


def test_lifecycle_on_cephfs(local_platform: LocalPlatform, ceph_cluster, tmp_path: Path) -> None:
    storage = (
        "-e",
        "saasodoo_storage_backend=cephfs",
        "-e",
        f"saasodoo_storage_root={ceph_cluster.mount}",
        "-e",
        f"saasodoo_storage_cephfs_conf={ceph_cluster.conf}",
        # The golden templates' filestores stay where site.yml built them, on the platform's local storage.
        "-e",
        f"saasodoo_templates_dir={LOCAL_STATE / 'storage/templates'}",
    )
    lifecycle(Tenant("life-ceph", local_platform, storage), "basic-test-trial", "basic-monthly", True, tmp_path)


def test_point_in_time_restore_then_the_server_lost_and_a_backup_file_damaged(local_platform: LocalPlatform) -> None:
    """tenant_restore.yml -e at=T brings the tenant's database back as it was at T, from its server's pgBackRest
    backup and archived WAL: a row deleted after T is back, a row written after T is not; a moment after the last
    write (no commit after it to stop at) is reached too; running it again changes nothing, and neither the server's
    scratch copy nor its files are left. On a dedicated server, new with the tenant: no backup of it comes before.
    Then that server is lost and rebuilt, and a file of its backups damaged and found."""
    tenant = Tenant("pitr-01", local_platform, ())
    provisioned = tenant.run("tenant_provision.yml", "-e", "plan=premium-monthly")
    assert provisioned.returncode == 0, provisioned.output[-5000:]
    server = tenant.server()["name"]
    with tenant.as_tenant() as conn:
        placed_and_no_base_backup_yet = conn.execute("SELECT clock_timestamp()").fetchone()[0].isoformat()
    before_any = run_playbook("servers_base_backup.yml", "--limit", server)
    assert before_any.returncode == 0, before_any.output[-5000:]
    # Its server keeps what a restore as far back as its plan's point_in_time_days needs, longer than the default.
    local = INVENTORIES / "local/group_vars"
    window = load_yaml(local / "all/plans.yml")["saasodoo_plans"]["premium-monthly"]["point_in_time_days"]
    assert window > load_yaml(local / "postgres_servers/postgres_server.yml")["saasodoo_point_in_time_days"]
    assert f"keeping {window} days" in before_any.output
    backup_log = (LOCAL_STATE / "pg" / server / "pgbackrest/log" / f"{server}-backup.log").read_text()
    begun = [line for line in backup_log.splitlines() if "backup command begin" in line]
    # one backup per repository, each expiring both with the server's window
    assert all(f"--repo{n}-retention-full={window} " in line for line in begun[-2:] for n in (1, 2)), begun[-2:]
    whole = tenant.run("tenant_backup.yml")  # the files a point-in-time restore fills in come from it
    assert whole.returncode == 0, whole.output[-5000:]
    files = filestore_digest(tenant.filestore)
    assert files, "the Odoo double writes its boot marker into the filestore"

    def notes() -> list[tuple]:
        with tenant.as_tenant() as conn:
            return conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall()

    def now(conn) -> str:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0].isoformat()

    with tenant.as_tenant() as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'kept'), (2, 'deleted after the moment')")
    with tenant.as_tenant() as conn:
        moment = now(conn)
    with tenant.as_tenant() as conn:  # committed after the moment, by the server's clock
        conn.execute("DELETE FROM notes WHERE id = 2")
        conn.execute("INSERT INTO notes VALUES (3, 'written after the moment')")
        after_the_last_write = now(conn)

    for name in files:  # as Odoo's file store garbage collection does with an unlinked attachment's file
        (tenant.filestore / name).unlink()
    (tenant.filestore / "written after the moment").write_text("kept: a restore never deletes a file")

    latest = tenant.run("tenant_restore.yml", "-e", f"at={after_the_last_write}")
    assert latest.returncode == 0, latest.output[-5000:]
    assert notes() == [(1, "kept"), (3, "written after the moment")]
    assert filestore_digest(tenant.filestore).items() >= files.items(), "the deleted files are back"
    assert (tenant.filestore / "written after the moment").exists()
    restored = tenant.run("tenant_restore.yml", "-e", f"at={moment}")
    assert restored.returncode == 0, restored.output[-5000:]
    assert notes() == [(1, "kept"), (2, "deleted after the moment")]
    assert get(tenant.tenant_id, "/web/health") == 200
    assert_nothing_changed(tenant.run("tenant_restore.yml", "-e", f"at={moment}"))

    with tenant.registry() as conn:
        restores = conn.execute(
            "SELECT b.kind FROM registry.restores r JOIN registry.backups b ON b.backup_id = r.backup_id"
            " WHERE r.tenant_id = %s ORDER BY r.id",
            (tenant.tenant_id,),
        ).fetchall()
    assert restores == [("point_in_time",), ("point_in_time",)], "each moment a backup of its own, restored once"
    assert not any((LOCAL_STATE / "point-in-time" / server).iterdir()), "the server's scratch copy is gone"

    # Refused, saying why, with the tenant untouched: a moment without offset, one before the tenant was placed on
    # its server, one before its server's oldest base backup, a repository the server has not.
    without_offset = re.sub(r"[+-]\d\d:\d\d$", "", moment)
    naive = tenant.run("tenant_restore.yml", "-e", f"at={without_offset}")
    assert naive.returncode != 0 and "has no UTC offset" in naive.output
    before_placed = tenant.run("tenant_restore.yml", "-e", "at=2020-01-01T00:00:00Z")
    assert before_placed.returncode != 0 and "(placed or moved there)" in before_placed.output, before_placed.output
    before_base = tenant.run("tenant_restore.yml", "-e", f"at={placed_and_no_base_backup_yet}")
    assert before_base.returncode != 0 and "No base backup of" in before_base.output, before_base.output[-3000:]
    with tenant.as_tenant() as conn:
        later = now(conn)
    no_such_repository = tenant.run("tenant_restore.yml", "-e", f"at={later}", "-e", "repository=3")
    assert no_such_repository.returncode != 0 and "in repository 3 (" in no_such_repository.output
    assert notes() == [(1, "kept"), (2, "deleted after the moment")]

    server_lost_and_rebuilt(tenant, server, notes)
    damaged_backup_file_found(server)
    machine_lost_and_rebuilt_from_offsite(tenant, server, notes)


def segment_archived(tenant: Tenant, what: str) -> None:
    """The WAL segment being written closed and waited for until the server counts it archived (in every repository)."""
    with tenant.admin() as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        wait_until(
            lambda: (conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0] or "") >= segment,
            what,
            30,
        )


def stopped_as_by_a_crash(server: str) -> Path:
    """The server stopped without a checkpoint (pg_ctl stop --mode=immediate); its data directory."""
    data = LOCAL_STATE / "pg" / server / "data"
    pg_ctl = ["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", f"--pgdata={data}"]
    subprocess.run([*pg_ctl, "stop", "--mode=immediate"], check=True, capture_output=True)
    return data


def server_lost_and_rebuilt(tenant: Tenant, server: str, notes) -> None:
    """The tenant's server is lost: its archiving failed for a while, then it stopped as by a crash and its
    PG_VERSION is gone, so it cannot start. servers_restore.yml rebuilds it from its pgBackRest repository with every
    row in a completed WAL segment, the one it could not archive included (pushed first); the row in the segment
    being written when it stopped is lost, as the playbook says. It refuses a running server."""
    running = run_playbook("servers_restore.yml", "-e", f"server={server}")
    assert running.returncode != 0 and f"{server} is running" in running.output, running.output[-3000:]
    with tenant.as_tenant() as conn:
        conn.execute("INSERT INTO notes VALUES (4, 'archived before the loss')")
    segment_archived(tenant, "the segment with row 4 in the repositories")
    with tenant.admin() as conn:
        conn.execute("ALTER SYSTEM SET archive_command = 'false'")
        conn.execute("SELECT pg_reload_conf()")
    with tenant.as_tenant() as conn:
        conn.execute("INSERT INTO notes VALUES (5, 'in a completed segment never archived')")
    with tenant.admin() as conn:
        unarchived = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        wait_until(
            lambda: conn.execute("SELECT last_failed_wal FROM pg_stat_archiver").fetchone()[0] == unarchived,
            "archiving of the segment with row 5 failing",
            30,
        )
    with tenant.as_tenant() as conn:
        conn.execute("INSERT INTO notes VALUES (6, 'in the segment being written')")
    data = stopped_as_by_a_crash(server)
    (data / "PG_VERSION").unlink()  # it cannot start again
    assert (data / "pg_wal/archive_status" / f"{unarchived}.ready").exists()

    rebuilt = run_playbook("servers_restore.yml", "-e", f"server={server}")
    assert rebuilt.returncode == 0, rebuilt.output[-5000:]
    assert notes() == [
        (1, "kept"), (2, "deleted after the moment"), (4, "archived before the loss"),
        (5, "in a completed segment never archived"),
    ]  # fmt: skip
    [lost] = data.parent.glob("data.lost-*")
    assert (lost / "global/pg_control").exists(), "what was left is kept beside"
    with tenant.admin() as conn:  # the backup's settings: archiving works again
        assert conn.execute("SELECT current_setting('archive_command')").fetchone()[0].startswith("pgbackrest ")
    assert get(tenant.tenant_id, "/web/health") == 200
    with tenant.registry() as conn:
        health = conn.execute("SELECT health FROM registry.db_servers WHERE name = %s", (server,)).fetchone()[0]
    assert health == "healthy"


def machine_lost_and_rebuilt_from_offsite(tenant: Tenant, server: str, notes) -> None:
    """The server's machine is lost with its local backups: its whole data directory and its stanza in the first
    repository are gone. servers_restore.yml rebuilds it from the offsite S3 repository alone, with the last row
    archived before the loss, and makes the stanza in the first repository again; a point-in-time restore to a moment
    before the loss reads the offsite repository, the only one with a backup from before it."""
    with tenant.as_tenant() as conn:
        conn.execute("INSERT INTO notes VALUES (7, 'archived offsite before the machine was lost')")
    with tenant.as_tenant() as conn:
        before_the_loss = conn.execute("SELECT clock_timestamp()").fetchone()[0].isoformat()
    segment_archived(tenant, "the segment with row 7 in the repositories")
    shutil.rmtree(stopped_as_by_a_crash(server))
    for kind in ("archive", "backup"):
        shutil.rmtree(LOCAL_STATE / "backups/_servers" / kind / server)

    rebuilt = run_playbook("servers_restore.yml", "-e", f"server={server}")
    assert rebuilt.returncode == 0, rebuilt.output[-5000:]
    assert (7, "archived offsite before the machine was lost") in notes()
    assert get(tenant.tenant_id, "/web/health") == 200
    assert (LOCAL_STATE / "backups/_servers/backup" / server / "backup.info").exists(), "the stanza made again"

    with tenant.as_tenant() as conn:
        conn.execute("INSERT INTO notes VALUES (8, 'written after the rebuild')")
    restored = tenant.run("tenant_restore.yml", "-e", f"at={before_the_loss}")
    assert restored.returncode == 0, restored.output[-5000:]
    assert "to recover to the moment - repo2 " in restored.output, restored.output[-3000:]
    assert [row[0] for row in notes()][-2:] == [5, 7]


def damaged_backup_file_found(server: str) -> None:
    """A file of the server's archived WAL damaged in its repository: the next servers_base_backup.yml run still takes
    its backup, then fails saying verify found the damage, and tells the monitoring (BackupRepositoryDamaged); once
    the file is whole again the next run passes."""
    figure = LOCAL_STATE / "monitoring/textfile" / f"backup_repository_{server}.prom"
    archived = sorted((LOCAL_STATE / "backups/_servers/archive" / server).glob("*/*/*.lz4"))[0]
    whole = archived.read_bytes()
    archived.write_bytes(whole[:100] + bytes(b ^ 0xFF for b in whole[100:104]) + whole[104:])
    try:
        damaged = run_playbook("servers_base_backup.yml", "--limit", server)
        assert damaged.returncode != 0 and "WAL damaged (repo1: " in damaged.output, damaged.output[-3000:]
        assert f'saasodoo_backup_repository_intact{{server="{server}"}} 0' in figure.read_text()
    finally:
        archived.write_bytes(whole)
    mended = run_playbook("servers_base_backup.yml", "--limit", server)
    assert mended.returncode == 0, mended.output[-3000:]
    assert f'saasodoo_backup_repository_intact{{server="{server}"}} 1' in figure.read_text()


def test_a_base_backup_that_cannot_read_the_registry_expires_nothing_and_says_so(local_platform: LocalPlatform):
    """Its tenants' plans say how far back a server's backups must reach: without the registry, servers_base_backup.yml
    still takes the backups, expires none of them, and fails after, saying why."""
    server = "pool-shared-02"
    unreachable = {"saasodoo_registry_login": {"login_host": "127.0.0.1", "login_port": 9, "login_password": "none"}}
    run = run_playbook("servers_base_backup.yml", "--limit", server, "-e", json.dumps(unreachable))
    assert run.returncode != 0
    assert "expiring nothing" in run.output
    assert "backups were taken and none expired" in " ".join(run.output.split())
    backup_log = (LOCAL_STATE / "pg" / server / "pgbackrest/log" / f"{server}-backup.log").read_text()
    begun = [line for line in backup_log.splitlines() if "backup command begin" in line]
    assert all("--no-expire-auto" in line for line in begun[-2:]), begun[-2:]
    assert "backup command end: completed successfully" in backup_log.rsplit("backup command begin", 1)[1]
