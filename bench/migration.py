"""Moving a tenant's database between servers: write downtime and copy time, logical beside the baseline.

A tenant with an Odoo-shaped database of --size-mb (bench/odoo_tenant.py) on a shared pool and a client
committing every 100 ms through PgBouncer (bench/odoo_tenant.py TenantWriter: it finds the tenant's server in
the registry, as Odoo finds it in its config). In one run, on the same data:
1. logical: tenant_change_plan.yml basic -> premium, db_migrate method logical (shared pool -> dedicated server).
2. baseline: stop, pg_dump -Fc, pg_restore, start, the way a hand-written script moves a database: the tenant's
   role refused on its server for the whole of a custom-format dump and its restore into a scratch database on
   another server, then allowed again (the registry is not repointed: the baseline is, if anything, flattered).
3. dump: tenant_change_plan.yml premium -> basic with migration_method=dump (db_migrate, parallel
   directory-format dump/restore with writes blocked throughout), back to a shared pool.
Write downtime is the longest gap between the writer's successful commits. Goal: logical downtime <= 5 s and
>= 20x below the baseline's; copy >= 1.5x faster than the baseline's.
Usage: bench/migration.py [--size-mb 1024] [--quick]
(needs the local platform up: ansible-playbook playbooks/site.yml; the tenant is purged afterwards)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "collections"), str(REPO / "tests")]  # as pytest sees them
from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import derive_password  # noqa: E402
from bench.odoo_tenant import TenantWriter, WriterReport, generate  # noqa: E402
from tests.integration.conftest import remove_tenants, run_playbook, superuser  # noqa: E402

STATE = REPO / ".state/local"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
RUNTIME_NONE = ("-e", "saasodoo_runtime_backend=none")


@dataclass
class Result:
    label: str
    writer: WriterReport
    copy_s: float
    total_s: float
    db_downtime_s: float | None = None  # what db_migrate recorded: writes blocked -> the target open


class Tenant:
    def __init__(self, tenant_id: str, registry_port: int):
        self.tenant_id, self.db = tenant_id, "t_" + tenant_id.lower().replace("-", "_")
        self.secret = (STATE / "secrets/platform_secret").read_text().strip()
        self.registry_conninfo = {
            "host": "127.0.0.1",
            "port": registry_port,
            "dbname": "saasodoo_registry",
            "user": "saasodoo_registry",
            "password": derive_password(self.secret, "registry@saasodoo_registry"),
            "autocommit": True,
        }

    @property
    def password(self) -> str:
        return derive_password(self.secret, f"tenant:{self.tenant_id}:v1")

    def server(self) -> dict:
        with psycopg.connect(**self.registry_conninfo) as conn:
            name, port, pgbouncer_port = conn.execute(
                "SELECT s.name, s.port, s.pgbouncer_port FROM registry.tenants t"
                " JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id = %s",
                (self.tenant_id,),
            ).fetchone()
        return {"name": name, "port": port, "pgbouncer_port": pgbouncer_port}

    def shared_servers(self) -> dict[str, int]:
        with psycopg.connect(**self.registry_conninfo) as conn:
            rows = conn.execute(
                "SELECT name, port FROM registry.db_servers WHERE kind = 'shared' AND status = 'active' ORDER BY name"
            )
            return dict(rows.fetchall())

    def last_move(self) -> dict:
        with psycopg.connect(**self.registry_conninfo) as conn:
            copy_ms, total_ms, downtime_ms = conn.execute(
                "SELECT copy_ms, total_ms, write_downtime_ms FROM registry.migrations WHERE tenant_id = %s"
                " AND phase = 'done' ORDER BY id DESC LIMIT 1",
                (self.tenant_id,),
            ).fetchone()
        return {"copy_s": copy_ms / 1000, "total_s": total_ms / 1000, "downtime_s": downtime_ms / 1000}

    def writer(self) -> TenantWriter:
        def locate() -> tuple[str, int]:
            server = self.server()
            return "127.0.0.1", server["pgbouncer_port"] or server["port"]

        return TenantWriter(locate, self.db, self.db, self.password)


def move(tenant: Tenant, label: str, plan: str, *extra: str) -> Result:
    writer = tenant.writer()
    writer.start()
    started = time.monotonic()
    run = run_playbook(
        "tenant_change_plan.yml", "-e", f"tenant_id={tenant.tenant_id}", "-e", f"plan={plan}", *RUNTIME_NONE, *extra
    )
    total = time.monotonic() - started
    report = writer.stop()
    if run.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{run.output[-3000:]}")
    recorded = tenant.last_move()
    return Result(label, report, recorded["copy_s"], total, recorded["downtime_s"])


def baseline(tenant: Tenant) -> Result:
    """Stop (the role refused, its sessions ended), pg_dump -Fc, pg_restore into another server, start."""
    source = tenant.server()
    scratch_server, scratch_port = next(iter(tenant.shared_servers().items()))
    scratch_db = f"bench_baseline_{uuid.uuid4().hex[:6]}"
    role = sql.Identifier(tenant.db)
    writer = tenant.writer()
    writer.start()
    with (
        tempfile.TemporaryDirectory(prefix="bench-baseline-") as scratch,
        superuser(source["name"], source["port"]) as source_admin,
        superuser(scratch_server, scratch_port) as target_admin,
    ):
        dump = Path(scratch) / "tenant.dump"
        wait_for_commits(writer, 10)  # the writer at its pace before the stop: its gap is the downtime
        started = time.monotonic()
        source_admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
        source_admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s", (tenant.db,)
        )
        # pg_dump and pg_restore go through the superuser connections' own sockets (conftest's superuser).
        subprocess.run(
            [
                PG_BIN / "pg_dump",
                "-h",
                source_admin.info.host,
                "-p",
                str(source["port"]),
                "-U",
                "postgres",
                "-Fc",
                "-f",
                dump,
                tenant.db,
            ],
            check=True,
        )
        target_admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(scratch_db)))
        subprocess.run(
            [
                PG_BIN / "pg_restore",
                "-h",
                target_admin.info.host,
                "-p",
                str(scratch_port),
                "-U",
                "postgres",
                "--no-owner",
                "--exit-on-error",
                "-d",
                scratch_db,
                dump,
            ],
            check=True,
        )
        copy = time.monotonic() - started
        source_admin.execute(sql.SQL("ALTER ROLE {} LOGIN").format(role))
        total = time.monotonic() - started
        wait_for_commits(writer, writer.committed_count + 10)  # and after the start
        report = writer.stop()
        target_admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(scratch_db)))
    return Result("baseline: stop, pg_dump -Fc, pg_restore, start", report, copy, total)


def wait_for_commits(writer: TenantWriter, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while writer.committed_count < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the writer committed {writer.committed_count} rows, not {count}, in {timeout:.0f} s")
        time.sleep(0.05)  # the writer is another thread committing every 100 ms: poll its count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--registry-port", type=int, default=55432)
    parser.add_argument("--quick", action="store_true", help="a 40 MB tenant (tests/integration)")
    args = parser.parse_args()
    if args.quick:
        args.size_mb = 40

    tenant = Tenant(f"bench-move-{uuid.uuid4().hex[:6]}", args.registry_port)
    try:
        run = run_playbook(
            "tenant_provision.yml", "-e", f"tenant_id={tenant.tenant_id}", "-e", "plan=basic-monthly", *RUNTIME_NONE
        )
        if run.returncode != 0:
            raise RuntimeError(f"provisioning the bench tenant failed:\n{run.output[-3000:]}")
        server = tenant.server()
        started = time.monotonic()
        with psycopg.connect(
            host="127.0.0.1",
            port=server["port"],
            dbname=tenant.db,
            user=tenant.db,
            password=tenant.password,
            autocommit=True,
        ) as conn:
            shape = generate(conn, args.size_mb, progress=lambda message: print(f"  generating: {message}", flush=True))
        tenant.writer().prepare()
        print(
            f"Tenant database: {shape['size_bytes'] / 2**20:.0f} MB, {shape['tables']} tables, {shape['indexes']} "
            f"indexes, {shape['rows']:,} rows (generated in {time.monotonic() - started:.0f} s)",
            flush=True,
        )

        results = [move(tenant, "logical (db_migrate, shared -> dedicated)", "premium-monthly")]
        print_result(results[-1])
        results.append(baseline(tenant))
        print_result(results[-1])
        results.append(
            move(
                tenant, "dump (db_migrate -Fd -j2, dedicated -> shared)", "basic-monthly", "-e", "migration_method=dump"
            )
        )
        print_result(results[-1])
        print_summary(args.size_mb, results)
    finally:
        removed = remove_tenants([tenant.tenant_id])
    return 0 if removed else 1


def print_result(result: Result) -> None:
    w = result.writer
    recorded = f" (db_migrate recorded {result.db_downtime_s:.2f} s)" if result.db_downtime_s is not None else ""
    print(
        f"  {result.label:<50} write downtime {w.longest_gap_s:7.2f} s{recorded}  copy {result.copy_s:7.1f} s"
        f"  total {result.total_s:7.1f} s  commits {w.commits:5}  failed {w.errors:4}",
        flush=True,
    )


def print_summary(size_mb: int, results: list[Result]) -> None:
    logical, base, _ = results
    downtime_ratio = base.writer.longest_gap_s / max(logical.writer.longest_gap_s, 1e-3)
    copy_ratio = base.copy_s / max(logical.copy_s, 1e-3)
    print(
        f"Moving {size_mb} MB with a writer every 100 ms through PgBouncer (goal: downtime <= 5 s and >= 20x "
        "below the baseline, copy >= 1.5x faster)"
    )
    print(
        f"  logical vs baseline: downtime {logical.writer.longest_gap_s:.2f} s vs {base.writer.longest_gap_s:.2f} s"
        f" ({downtime_ratio:.0f}x lower), copy {logical.copy_s:.1f} s vs {base.copy_s:.1f} s ({copy_ratio:.2f}x)"
    )


if __name__ == "__main__":
    sys.exit(main())
