"""Durability: what a lost server takes with it and how fast it and a tenant's past come back (pgBackRest).

A tenant on a dedicated server of its own (premium-monthly, runtime none) with an Odoo-shaped database of --size-mb
(bench/odoo_tenant.py). In one run, on the same data:
1. backup: a full backup of the server into its first pgBackRest repository (what servers_base_backup.yml takes),
   beside pg_basebackup --format=tar --compress=1 of the same server into a scratch directory (the platform's
   hand-made backups before pgBackRest): the database's MB per second of each. Goal: pgBackRest's >= pg_basebackup's.
   Then one into the offsite repository (S3 on the platform's Ceph), printed beside.
2. point-in-time: tenant_restore.yml -e at=<a moment after the data was loaded>, its wall time (the server restored
   from the repository into a scratch copy, recovered, the tenant's database dumped and restored).
   Goal: <= 180 s at 1 GB.
3. loss: the server gets archive_timeout --archive-timeout (ALTER SYSTEM; the local inventory forces no segment out
   by time); a writer commits a row every 100 ms for --write-seconds; the server is stopped as by a crash (pg_ctl
   stop --mode=immediate) and its data directory deleted with its local backups (its stanza in the first
   repository), as when its machine is lost; servers_restore.yml rebuilds it from the offsite repository. RTO: its
   wall time (goal: <= 120 s at 1 GB). RPO: the seconds between the writer's last acknowledged commit and the last
   one the rebuilt server has (goal: <= 5 s with --archive-timeout 5).
Goals at another size are printed against the same targets.
Usage: bench/durability.py [--size-mb 1024] [--archive-timeout 5] [--write-seconds 30] [--quick]
(needs the local platform up: ansible-playbook playbooks/site.yml; the tenant is purged afterwards)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "collections"), str(REPO / "tests")]  # as pytest sees them
from bench.migration import PG_BIN, RUNTIME_NONE, STATE, Tenant  # noqa: E402
from bench.odoo_tenant import generate  # noqa: E402
from bench.runner import goal  # noqa: E402
from tests.integration.conftest import remove_tenants, run_playbook  # noqa: E402

GOAL_PITR_S = 180.0  # a tenant's point-in-time restore
GOAL_RTO_S = 120.0  # a server rebuilt from its repository
GOAL_RPO_S = 5.0  # acknowledged writes lost with the server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--archive-timeout", type=int, default=5, help="seconds, for section 3 (ALTER SYSTEM)")
    parser.add_argument("--write-seconds", type=float, default=30.0, help="the writer's time before the loss")
    parser.add_argument("--registry-port", type=int, default=55432)
    parser.add_argument(
        "--quick", action="store_true", help="a 20 MB tenant with Odoo's own tables, 8 s of writes (tests/integration)"
    )
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.write_seconds = 20, 8.0
    if args.size_mb < 1 or args.archive_timeout < 1 or args.write_seconds <= 0:
        parser.error("--size-mb and --archive-timeout must be 1 or more, --write-seconds above 0")

    tenant = Tenant(f"bench-dur-{uuid.uuid4().hex[:6]}", args.registry_port)
    try:
        tenant.provision("dedicated")
        server = tenant.server()
        with connect(tenant, server["port"]) as conn:
            shape = generate(conn, args.size_mb, progress=lambda message: print(f"  generating: {message}", flush=True),
                             custom_models=not args.quick)  # fmt: skip
        tenant.writer().prepare()
        size_mb = shape["size_bytes"] / 2**20
        print(f"Tenant database: {size_mb:.0f} MB on {server['name']}, its own server", flush=True)

        pgbackrest_mb_s, basebackup_mb_s = backups(server, size_mb)
        pitr_s = point_in_time(tenant, server["name"])
        rto_s, rpo_s = loss(tenant, server, args.archive_timeout, args.write_seconds)
        print(f"Figures at {size_mb:.0f} MB (targets are for 1 GB):")
        print(goal("backup time, pgBackRest's over pg_basebackup's", basebackup_mb_s / pgbackrest_mb_s, 1.0, "x"))
        print(goal("point-in-time restore", pitr_s, GOAL_PITR_S, "s"))
        print(goal("server restore from the offsite repository (RTO)", rto_s, GOAL_RTO_S, "s"))
        print(goal(f"acknowledged writes lost (RPO, archive_timeout {args.archive_timeout} s)", rpo_s, GOAL_RPO_S, "s"))
    finally:
        removed = remove_tenants([tenant.tenant_id])
    return 0 if removed else 1


def connect(tenant: Tenant, port: int) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=port, dbname=tenant.db, user=tenant.db, password=tenant.password,
                           autocommit=True)  # fmt: skip


def pgbackrest(server: str, *args: str) -> list[str]:
    config = STATE / "pg" / server / "pgbackrest/pgbackrest.conf"
    return ["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={config}", f"--stanza={server}", *args]


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - started


def backups(server: dict, size_mb: float) -> tuple[float, float]:
    """Section 1: MB/s of a full pgBackRest backup and of pg_basebackup, the same server one after the other."""
    pgbackrest_s = timed(pgbackrest(server["name"], "--repo=1", "--type=full", "backup"))
    offsite_s = timed(pgbackrest(server["name"], "--repo=2", "--type=full", "backup"))
    scratch = Path(tempfile.mkdtemp(prefix="bench-basebackup-"))
    shutil.chown(scratch, "postgres", "postgres")
    try:
        basebackup_s = timed([
            "runuser", "-u", "postgres", "--", str(PG_BIN / "pg_basebackup"), f"--pgdata={scratch}/base",
            "--format=tar", "--compress=1", "--wal-method=stream", "--checkpoint=fast", "--no-password",
            f"--host={STATE / 'pg' / server['name'] / 'run'}", f"--port={server['port']}", "--username=postgres",
        ])  # fmt: skip
    finally:
        shutil.rmtree(scratch)
    print(
        f"1. full backup of {size_mb:.0f} MB: pgBackRest {pgbackrest_s:.1f} s ({size_mb / pgbackrest_s:.0f} MB/s),"
        f" pg_basebackup -Ft --compress=1 {basebackup_s:.1f} s ({size_mb / basebackup_s:.0f} MB/s);"
        f" pgBackRest into the offsite repository {offsite_s:.1f} s ({size_mb / offsite_s:.0f} MB/s)",
        flush=True,
    )
    return size_mb / pgbackrest_s, size_mb / basebackup_s


def point_in_time(tenant: Tenant, server: str) -> float:
    """Section 2: a moment after the data was loaded, a table made after it; the restore's wall time."""
    # pgBackRest dates a backup's end in whole seconds: a moment within the second after it counts as before it.
    info = subprocess.run(pgbackrest(server, "info", "--output=json"), check=True, capture_output=True, text=True)
    newest_end = max(backup["timestamp"]["stop"] for backup in json.loads(info.stdout)[0]["backup"])
    time.sleep(max(0.0, newest_end + 2 - time.time()))
    with connect(tenant, tenant.server()["port"]) as conn:
        moment = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        conn.execute("CREATE TABLE bench_after_the_moment (note text)")
    started = time.monotonic()
    run = run_playbook("tenant_restore.yml", "-e", f"tenant_id={tenant.tenant_id}", "-e", f"at={moment.isoformat()}",
                       *RUNTIME_NONE)  # fmt: skip
    seconds = time.monotonic() - started
    if run.returncode != 0:
        raise RuntimeError(f"the point-in-time restore failed:\n{run.output[-3000:]}")
    with connect(tenant, tenant.server()["port"]) as conn:
        if conn.execute("SELECT to_regclass('bench_after_the_moment')").fetchone()[0] is not None:
            raise RuntimeError("the table made after the moment survived its point-in-time restore")
    print(f"2. point-in-time restore (tenant_restore.yml -e at=…): {seconds:.1f} s", flush=True)
    return seconds


def loss(tenant: Tenant, server: dict, archive_timeout: int, write_seconds: float) -> tuple[float, float]:
    """Section 3: RTO and RPO in seconds."""
    name = server["name"]
    admin = {"host": str(STATE / "pg" / name / "run"), "port": server["port"], "user": "postgres",
             "dbname": "postgres", "autocommit": True}  # fmt: skip
    with psycopg.connect(**admin) as conn:
        conn.execute(f"ALTER SYSTEM SET archive_timeout = {int(archive_timeout)}")
        conn.execute("SELECT pg_reload_conf()")
    writer = tenant.writer()
    writer.start()
    time.sleep(write_seconds)  # the writer's run: what there is to lose
    data = STATE / "pg" / name / "data"
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), f"--pgdata={data}", "stop",
                    "--mode=immediate"], check=True, capture_output=True)  # fmt: skip
    lost_at = datetime.now(UTC)
    report = writer.stop()
    shutil.rmtree(data)
    for kind in ("archive", "backup"):  # its local backups, lost with its machine
        shutil.rmtree(STATE / "backups/_servers" / kind / name)
    started = time.monotonic()
    run = run_playbook("servers_restore.yml", "-e", f"server={name}")
    rto_s = time.monotonic() - started
    if run.returncode != 0:
        raise RuntimeError(f"servers_restore.yml failed:\n{run.output[-3000:]}")
    with connect(tenant, server["port"]) as conn:
        kept = conn.execute("SELECT max(id) FROM bench_writer").fetchone()[0] or 0
    with psycopg.connect(**admin) as conn:
        conn.execute("ALTER SYSTEM RESET archive_timeout")
        conn.execute("SELECT pg_reload_conf()")
    acknowledged = report.committed_ids
    if not acknowledged:
        raise RuntimeError(f"the writer committed nothing before the loss ({report.last_error})")
    last_kept = max((n for n, row_id in enumerate(acknowledged) if row_id <= kept), default=None)
    lost_s = report.commit_times_s[-1] - (report.commit_times_s[last_kept] if last_kept is not None else 0.0)
    print(f"3. server lost at {lost_at:%H:%M:%S} after {len(acknowledged)} acknowledged commits, "
          f"{len(acknowledged) - (last_kept + 1 if last_kept is not None else 0)} of them lost ({lost_s:.1f} s); "
          f"servers_restore.yml from the offsite repository: {rto_s:.1f} s", flush=True)  # fmt: skip
    return rto_s, lost_s


if __name__ == "__main__":
    sys.exit(main())
