"""Every playbook run is audited as a run (the saasodoo.platform.audit callback), and its tenant rows name it."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from .conftest import LOCAL_STATE, LocalPlatform, ansible_playbook, inventory_hosts, remove_tenants, run_playbook

# Each row's hash computed again from row `first` on, each from the row before it (what the chain's trigger does on
# insert), as someone who owns the registry would after rewriting that row: the chain then verifies.
RECHAIN = """
DO $rechain$
DECLARE
    r registry.audit;
    previous bytea := (SELECT a.hash FROM registry.audit AS a WHERE a.id < {first} ORDER BY a.id DESC LIMIT 1);
BEGIN
    FOR r IN SELECT * FROM registry.audit AS a WHERE a.id >= {first} ORDER BY a.id LOOP
        r.prev_hash := previous;
        r.hash := sha256(coalesce(previous, ''::bytea) || convert_to(registry.audit_row_text(r), 'UTF8'));
        UPDATE registry.audit SET prev_hash = r.prev_hash, hash = r.hash WHERE id = r.id;
        previous := r.hash;
    END LOOP;
END
$rechain$
"""

# What the chain's trigger takes before each insert (migration 0003): no row is appended meanwhile.
LOCK_CHAIN = "SELECT pg_advisory_xact_lock('registry.audit'::regclass::oid::bigint)"


def run_rows(platform: LocalPlatform, run_id: str) -> dict[str, dict]:
    """The run's own rows by phase (start, end), with their actor."""
    with platform.registry() as conn:
        rows = conn.execute(
            "SELECT actor, subject, detail FROM registry.audit WHERE kind = 'run' AND detail ->> 'run' = %s",
            (run_id,),
        ).fetchall()
    return {detail["phase"]: {**detail, "actor": actor, "subject": subject} for actor, subject, detail in rows}


def test_a_run_is_recorded_with_who_what_options_counts_and_outcome(local_platform: LocalPlatform):
    secret_value = "s3cret-never-recorded"
    run = run_playbook("registry_audit_verify.yml", "-e", f"unused_token={secret_value}", "--limit", "platform")
    assert run.returncode == 0, run.output[-2000:]

    rows = run_rows(local_platform, run.run_id)
    assert set(rows) == {"start", "end"}
    end = rows["end"]
    assert end["subject"] == f"run:{run.run_id}"
    assert end["actor"] == end["user"] and end["job"] is None
    assert end["playbook"] == "playbooks/registry_audit_verify.yml"
    assert end["limit"] == "platform" and end["check_mode"] is False
    assert [Path(source).name for source in end["inventory"]] == ["local"]
    assert "unused_token" in end["extra_vars"]
    assert end["outcome"] == "ok" and end["seconds"] > 0
    assert list(end["hosts"]) == ["platform-db"]
    counts = end["hosts"]["platform-db"]
    assert counts["ok"] >= 1 and counts["changed"] == counts["failed"] == counts["unreachable"] == 0
    assert secret_value not in json.dumps(rows), "an extra variable's value reached the audit chain"


def test_a_failed_run_is_recorded_as_failed_with_the_failing_host(local_platform: LocalPlatform):
    run = run_playbook("registry_audit_verify.yml", "-e", f"expect_head={'0' * 64}", "--check")
    assert run.returncode != 0

    end = run_rows(local_platform, run.run_id)["end"]
    assert end["outcome"] == "failed" and end["check_mode"] is True
    assert end["hosts"]["platform-db"]["failed"] == 1


def test_an_unreachable_registry_warns_and_never_fails_the_run(local_platform: LocalPlatform, tmp_path: Path):
    nowhere = tmp_path / "nowhere.registry.yml"
    nowhere.write_text(
        "plugin: saasodoo.platform.registry\nregistry_port: 1\nregistry_password: x\nconnect_timeout: 1\n"
    )
    run = ansible_playbook("playbooks/registry_audit_verify.yml", env={"SAASODOO_AUDIT_REGISTRY_CONFIG": str(nowhere)})

    assert run.returncode == 0, run.output[-2000:]
    assert f"saasodoo_audit: the end of run {run.run_id}" in run.output
    assert run_rows(local_platform, run.run_id) == {}


def test_a_tenant_playbook_links_its_rows_to_the_run_and_the_auditor_sees_them(local_platform: LocalPlatform):
    tenant = "audit-link"
    provision = run_playbook(
        "tenant_provision.yml",
        *("-e", f"tenant_id={tenant}", "-e", "plan=basic-monthly", "-e", f"customer_id=acct-{tenant}"),
        *("-e", f"subscription_id=sub-{tenant}", "-e", "saasodoo_runtime_backend=none"),
    )
    try:
        assert provision.returncode == 0, provision.output[-3000:]
        with local_platform.registry() as conn:
            linked = conn.execute(
                "SELECT count(*) FROM registry.audit WHERE tenant_id = %s AND detail ->> 'run' = %s",
                (tenant, provision.run_id),
            ).fetchone()[0]
        assert linked >= 2, "the placement decision and the tenant's result should both name the run"

        hostvars, _ = inventory_hosts()
        assert hostvars[f"tenant-{tenant}"]["saasodoo_tenant_last_run"] == {"__ansible_unsafe": provision.run_id}

        report = run_playbook("registry_audit.yml", "-e", "since=-1h")
        assert report.returncode == 0, report.output[-2000:]
        assert provision.run_id in report.output
        assert "OK playbooks/tenant_provision.yml" in report.output and f"tenants: {tenant}" in report.output
    finally:
        assert remove_tenants([tenant])


def test_a_since_without_a_unit_is_refused_with_the_forms_it_takes(local_platform: LocalPlatform):
    run = run_playbook("registry_audit.yml", "-e", "since=-1")
    assert run.returncode != 0
    assert "such as -1d, -6h or -30min, not '-1'" in run.output


def test_a_rewrite_by_the_registrys_owner_and_a_seal_written_by_hand_are_found(local_platform: LocalPlatform):
    """The registry's owner (its superuser here) rewrites the newest sealed row and computes the chain again after it:
    every hash verifies, but the seal on the controller no longer matches. A seal not signed with the platform
    secret is refused, and so is a table whose column has another type. Alone: the chain is rewritten for a moment
    (and put back)."""
    seals = LOCAL_STATE / "audit-seals.txt"
    first = run_playbook("registry_audit_verify.yml")
    assert first.returncode == 0, first.output[-3000:]
    sealed_id, sealed_hash, *_ = seals.read_text().splitlines()[-1].split()
    with registry_superuser(local_platform) as conn:
        conn.execute("SET session_replication_role = replica")  # the append-only triggers stay out of the way
        actor = conn.execute("SELECT actor FROM registry.audit WHERE id = %s", (int(sealed_id),)).fetchone()[0]
        try:
            with conn.transaction():
                conn.execute(LOCK_CHAIN)
                conn.execute("UPDATE registry.audit SET actor = 'rewritten' WHERE id = %s", (int(sealed_id),))
                conn.execute(RECHAIN.format(first=int(sealed_id)))
            assert conn.execute("SELECT count(*) FROM registry.audit_chain_breaks()").fetchone()[0] == 0
            found = run_playbook("registry_audit_verify.yml")
            assert found.returncode != 0, found.output[-3000:]
            assert f"Audit row #{sealed_id} was sealed at" in found.output and "was rewritten" in found.output
        finally:
            with conn.transaction():
                conn.execute(LOCK_CHAIN)
                conn.execute("UPDATE registry.audit SET actor = %s WHERE id = %s", (actor, int(sealed_id)))
                conn.execute(RECHAIN.format(first=int(sealed_id)))
        assert (
            conn.execute("SELECT encode(hash, 'hex') FROM registry.audit WHERE id = %s", (int(sealed_id),)).fetchone()[
                0
            ]
            == sealed_hash
        )

    kept = seals.read_text()
    head = run_playbook("registry_audit_verify.yml")
    assert head.returncode == 0, head.output[-3000:]
    newest_id, newest_hash, _, at = seals.read_text().splitlines()[-1].split()
    try:
        seals.write_text(f"{kept}{newest_id} {newest_hash} {'A' * 43} {at}\n")  # the right row, no key to sign it
        forged = run_playbook("registry_audit_verify.yml")
        assert forged.returncode != 0 and "was not signed with the platform secret" in forged.output
    finally:
        seals.write_text(kept)

    # A column of another type than migration 0003's (an owner's type could bring its own cast into the hashing).
    with registry_superuser(local_platform) as conn:
        conn.execute("ALTER TABLE registry.audit ALTER COLUMN actor TYPE varchar")
        try:
            altered = run_playbook("registry_audit_verify.yml")
            assert altered.returncode != 0 and "is not the plain table" in altered.output, altered.output[-3000:]
        finally:
            conn.execute("ALTER TABLE registry.audit ALTER COLUMN actor TYPE text")


def registry_superuser(platform: LocalPlatform) -> psycopg.Connection:
    return psycopg.connect(
        host=str(LOCAL_STATE / "pg/platform-db/run"), port=platform.servers["platform-db"].port,
        user="postgres", dbname="saasodoo_registry", autocommit=True,
    )  # fmt: skip
