"""The registry converged by site.yml: migrations applied, plans and pools synced, closed to others."""

from __future__ import annotations

import datetime
from pathlib import Path

import psycopg
import psycopg.rows
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg import sql

from ansible_collections.saasodoo.platform.plugins.module_utils.registry import RegistryUnreachable, connect_registry
from webhook_runner import store

from .conftest import LOCAL_STATE, LocalPlatform, run_playbook
from conftest import INVENTORIES, ROLES

MIGRATIONS = sorted((ROLES / "platform_registry/files/migrations").glob("*.sql"))


def test_every_migration_is_applied(local_platform: LocalPlatform):
    with local_platform.registry() as conn:
        applied = [v for (v,) in conn.execute("SELECT version FROM registry.schema_migrations ORDER BY version")]
    assert applied == [int(p.name.split("_")[0]) for p in MIGRATIONS]


def test_plans_match_the_catalog(local_platform: LocalPlatform):
    catalog = yaml.safe_load((INVENTORIES / "local/group_vars/all/plans.yml").read_text())["saasodoo_plans"]
    with local_platform.registry() as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (name) name, db_type, entitlements FROM registry.plans ORDER BY name, version DESC"
        ).fetchall()
    assert {name: entitlements for name, _, entitlements in rows} == catalog
    assert {name: db_type for name, db_type, _ in rows} == {n: p["db_type"] for n, p in catalog.items()}


def test_pools_are_registered_with_their_pgbouncer(local_platform: LocalPlatform):
    inventory_pools = local_platform.groups["pools_shared"]
    with local_platform.registry() as conn:
        # The inventory's pools; servers placement made at run time (grown, dedicated) are the registry's own.
        rows = conn.execute(
            "SELECT name, kind, port, pgbouncer_port, capacity_tenants FROM registry.db_servers"
            " WHERE name = ANY(%s) ORDER BY name",
            (inventory_pools,),
        ).fetchall()
    expected = [
        (name, "shared", s.port, s.pgbouncer_port, 3)
        for name, s in sorted(local_platform.servers.items())
        if name in inventory_pools
    ]
    assert rows == expected


def test_public_cannot_connect_to_the_registry(local_platform: LocalPlatform):
    with local_platform.registry() as conn:
        public_connect = conn.execute(
            "SELECT has_database_privilege('public', 'saasodoo_registry', 'CONNECT')"
        ).fetchone()[0]
    assert public_connect is False


def test_a_changed_plan_would_become_a_new_version(local_platform: LocalPlatform, tmp_path: Path):
    """Check mode runs the sync in a transaction it rolls back: the change is seen, nothing is written."""
    catalog = yaml.safe_load((INVENTORIES / "local/group_vars/all/plans.yml").read_text())
    catalog["saasodoo_plans"]["basic-monthly"]["odoo_workers"] += 1
    overrides = tmp_path / "plans.yml"
    overrides.write_text(yaml.safe_dump(catalog))
    with local_platform.registry() as conn:
        before = conn.execute("SELECT count(*) FROM registry.plans").fetchone()[0]
    # Without the monitoring, whose targets follow servers the other stream brings up and retires meanwhile.
    preview = run_playbook(
        "site.yml", "--check", "-v", "--limit", "platform", "--skip-tags", "monitoring", "-e", f"@{overrides}"
    )
    assert preview.returncode == 0, preview.output[-3000:]
    assert preview.recap["platform-db"]["changed"] == 1, preview.output[-3000:]
    assert "changed_plans:\n    - basic-monthly\n    plans:" in preview.output, preview.output[-3000:]
    with local_platform.registry() as conn:
        assert conn.execute("SELECT count(*) FROM registry.plans").fetchone()[0] == before


def test_the_audit_trail_refuses_rewrites(local_platform: LocalPlatform):
    with local_platform.registry() as conn, conn.transaction(force_rollback=True):
        conn.execute("INSERT INTO registry.audit (actor, kind, subject, detail) VALUES ('test', 'probe', 'x', '{}')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"), conn.transaction():
            conn.execute("UPDATE registry.audit SET subject = 'y'")


def test_a_lease_taken_over_fences_its_old_holders_writes(local_platform: LocalPlatform):
    """The runner's account leases (migration 0013): a takeover only after expiry, a new token each time, the old
    token's writes refused on every fenced table, and a takeover waiting for a write under the old token to end."""
    account, write = "fence-probe", "UPDATE registry.tenants SET status = status WHERE false"
    with local_platform.registry() as old, local_platform.registry() as new, local_platform.registry() as other:
        for conn in (old, new, other):
            conn.row_factory = psycopg.rows.dict_row
        try:
            first = store.take_lease(old, account, "worker-1", 60)
            assert first is not None and store.take_lease(new, account, "worker-2", 60) is None  # not expired
            store.carry_lease(old, first)
            old.execute(write)
            # A write under the current token holds the lease: a takeover waits for it, here past lock_timeout.
            old.execute("UPDATE registry.account_leases SET expires_at = now() - interval '1 s' WHERE token = %s",
                        (first,))  # fmt: skip
            with old.transaction():
                old.execute(write)
                other.execute("SET lock_timeout = '300ms'")
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    store.take_lease(other, account, "worker-3", 60)
            second = store.take_lease(new, account, "worker-2", 60)
            assert second is not None and second > first
            for table in ("tenants", "migrations", "placements", "jobs", "events", "db_servers"):
                with pytest.raises(psycopg.DatabaseError, match=f"lease {first} is no longer held.*{table}") as refused:
                    old.execute(sql.SQL("DELETE FROM registry.{} WHERE false").format(sql.Identifier(table)))
                assert store.is_fenced(refused.value)
            with pytest.raises(psycopg.DatabaseError, match="no longer held"):
                old.execute("INSERT INTO registry.audit (actor, kind, subject, detail) VALUES ('t', 'p', 'x', '{}')")
            store.carry_lease(new, second)
            new.execute(write)  # the holder writes
            other.execute(write)  # so does a session that carries no lease (an operator's playbook)
            assert not store.renew_lease(old, first, 60) and store.renew_lease(new, second, 60)
        finally:
            other.execute("DELETE FROM registry.account_leases WHERE account_id = %s", (account,))


def test_metrics_counters_keep_what_rows_counted_before_and_after_they_are_pruned(unmigrated_scratch_registry):
    """/metrics' counters (migration 0017): seeded from the rows there are and from what pruned rows counted
    (runner_totals, which it replaces), then kept by triggers through inserts, state changes and pruning."""
    before = [m for m in MIGRATIONS if m.name < "0017"]
    unmigrated_scratch_registry.migrate(before)
    bounds = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
    pruned_runs = [1.5, 5.5]  # what the runner's earlier pruning moved into runner_totals
    with unmigrated_scratch_registry.connect() as conn:
        conn.row_factory = psycopg.rows.dict_row
        totals = [
            ("events_received_by_type", "SUBSCRIPTION_CREATION", 5.0),
            ("job_duration_count", "provision", 2.0),
            ("job_duration_sum", "provision", sum(pruned_runs)),
        ]
        totals += [
            ("job_duration_le", f"provision {float(b)}", float(sum(s <= b for s in pruned_runs))) for b in bounds
        ]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO registry.runner_totals (metric, label, value) VALUES (%s, %s, %s)", totals)
        add_event = """INSERT INTO registry.events (event_type, object_type, body, processed_at)
                       VALUES (%s, 'SUBSCRIPTION', '{}', %s) RETURNING id"""
        conn.execute(add_event, ("SUBSCRIPTION_CREATION", "2026-01-01"))
        conn.execute(add_event, ("INVOICE_CREATION", None))
        add_job = """INSERT INTO registry.jobs (action, playbook, state, started_at, finished_at)
                     VALUES (%s, 'p.yml', %s, now() - make_interval(secs => %s), now()) RETURNING id"""
        conn.execute(add_job, ("provision", "succeeded", 3))
        conn.execute(add_job, ("provision", "succeeded", 40))
        conn.execute(add_job, ("suspend", "parked", 1))

    unmigrated_scratch_registry.migrate([m for m in MIGRATIONS if m not in before])
    with unmigrated_scratch_registry.connect() as conn:
        conn.row_factory = psycopg.rows.dict_row
        seeded = store.metrics_snapshot(conn)
        assert seeded["by_type"] == {"SUBSCRIPTION_CREATION": 6, "INVOICE_CREATION": 1} and seeded["pending"] == 1
        assert seeded["jobs"] == {"succeeded": 2, "parked": 1}

        # Through the triggers: two events in one statement, one handled; a job queued, run, timed; one skipped.
        conn.execute("""INSERT INTO registry.events (event_type, object_type, body)
                        VALUES ('SUBSCRIPTION_CANCEL', 'SUBSCRIPTION', '{}'), ('INVOICE_CREATION', 'INVOICE', '{}')""")
        conn.execute("UPDATE registry.events SET processed_at = now() WHERE event_type = 'SUBSCRIPTION_CANCEL'")
        job = conn.execute("INSERT INTO registry.jobs (action, playbook) VALUES ('provision', 'p.yml') RETURNING id")
        job = job.fetchone()["id"]
        conn.execute("UPDATE registry.jobs SET state = 'running', started_at = now() - interval '12 s' WHERE id = %s",
                     (job,))  # fmt: skip
        conn.execute("UPDATE registry.jobs SET state = 'succeeded', finished_at = now() WHERE id = %s", (job,))
        conn.execute("UPDATE registry.jobs SET error = 'seen' WHERE id = %s", (job,))  # not timed twice
        conn.execute("INSERT INTO registry.jobs (action, playbook, state, finished_at)"
                     " VALUES ('suspend', 'p.yml', 'skipped', now())")  # fmt: skip
        live = store.metrics_snapshot(conn)

        # Everything finished is pruned: the counters stay, the gauges follow the rows that are left.
        conn.execute("UPDATE registry.jobs SET finished_at = now() - interval '100 days' WHERE finished_at IS NOT NULL")
        conn.execute("UPDATE registry.events SET received_at = now() - interval '100 days'")
        pruned = store.prune(conn, 90)
        after = store.metrics_snapshot(conn)
        rows = conn.execute("""SELECT (SELECT count(*) FROM registry.events WHERE processed_at IS NULL) AS pending,
                                      (SELECT count(*) FROM registry.jobs) AS jobs""").fetchone()

    received = {"SUBSCRIPTION_CREATION": 6, "INVOICE_CREATION": 2, "SUBSCRIPTION_CANCEL": 1}
    runs = [*pruned_runs, 3, 40, 12]
    timed = [{"action": "provision", "n": len(runs), "total": pytest.approx(sum(runs), abs=0.1),
              "le": [sum(s <= b for s in runs) for b in bounds]}]  # fmt: skip
    assert live["by_type"] == received and live["received"] == 9 and live["pending"] == 2
    assert live["jobs"] == {"succeeded": 3, "parked": 1, "skipped": 1, "queued": 0, "running": 0}
    assert live["durations"] == timed and live["bounds"] == [float(b) for b in bounds]
    assert pruned == {"jobs": 4, "events": 2, "placements": 0, "customer mails": 0}
    assert (after["by_type"], after["durations"]) == (received, timed)
    assert after["jobs"] == {"succeeded": 0, "parked": 1, "skipped": 0, "queued": 0, "running": 0} and rows["jobs"] == 1
    assert after["pending"] == rows["pending"] == 2


def test_a_plan_without_db_type_is_refused_by_name(local_platform: LocalPlatform, tmp_path: Path):
    catalog = yaml.safe_load((INVENTORIES / "local/group_vars/all/plans.yml").read_text())
    catalog["saasodoo_plans"]["mystery-monthly"] = {
        k: v for k, v in catalog["saasodoo_plans"]["basic-monthly"].items() if k != "db_type"
    }
    overrides = tmp_path / "plans.yml"
    overrides.write_text(yaml.safe_dump(catalog))
    run = run_playbook("site.yml", "--check", "--limit", "platform", "-e", f"@{overrides}")
    assert run.returncode != 0
    assert "Plan mystery-monthly needs db_type shared or dedicated in its entitlements (got nothing)" in run.output


def test_the_platforms_registry_logins_check_the_registrys_certificate(local_platform: LocalPlatform, tmp_path: Path):
    """The modules' login (content of the platform CA, as the platform group's saasodoo_registry_login gives it) and
    the inventory plugin's and the audit callback's (the CA's path) take the registry only with a certificate the
    platform CA signed for its address: another CA's is refused."""
    ca = (LOCAL_STATE / "secrets/tls/ca.crt").read_text()
    other_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the platform CA")])
    now = datetime.datetime.now(datetime.UTC)
    other_ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(other_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(other_key, hashes.SHA256())
    ).public_bytes(serialization.Encoding.PEM).decode()  # fmt: skip
    login = {
        "login_host": "127.0.0.1", "login_port": local_platform.servers["platform-db"].port,
        "login_db": "saasodoo_registry", "login_user": "saasodoo_registry_app",
        "login_password": local_platform.password("registry-app@saasodoo_registry"), "login_sslmode": "verify-full",
    }  # fmt: skip
    with connect_registry({**login, "login_ca_certificate": ca}) as conn:
        assert conn.pgconn.ssl_in_use
    with connect_registry({**login, "login_sslrootcert": str(LOCAL_STATE / "secrets/tls/ca.crt")}) as conn:
        assert conn.pgconn.ssl_in_use
    with pytest.raises(RegistryUnreachable, match="certificate verify failed"):
        connect_registry({**login, "login_ca_certificate": other_ca})
    inventory = yaml.safe_load((INVENTORIES / "local/saasodoo.registry.yml").read_text())
    assert inventory["registry_sslmode"] == "verify-full"
