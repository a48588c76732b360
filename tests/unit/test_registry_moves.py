"""registry_move's pure part: which kept copies of moved databases are due, and when the tenant's role goes too;
and registry_backup's check of a backup recorded twice."""

from __future__ import annotations

import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.registry_backups import (
    BackupError,
    differing_facts,
    expired_backups,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_moves import COPY_FIELDS, due_copies


def kept(move_id: int, tenant: str, server: str, over: bool, tenant_server: str | None = "pool-b") -> dict:
    return {
        "id": move_id,
        "tenant_id": tenant,
        "retained_db": f"t_{tenant}_old{move_id}",
        "retain_until": "2026-11-28 10:00:00+00",
        "retention_over": over,
        "db_role": f"t_{tenant}",
        "tenant_server": tenant_server,
        "server": server,
        "host": "127.0.0.1",
        "port": 55433,
        "pgbouncer_port": None,
        "kind": "shared",
    }


def test_only_copies_whose_retention_is_over_are_due_in_move_order():
    copies = due_copies(
        [kept(3, "acme", "pool-a", True), kept(1, "beta", "pool-a", False), kept(2, "acme", "pool-c", True)]
    )
    assert [copy["id"] for copy in copies] == [2, 3]
    assert all(tuple(copy) == COPY_FIELDS for copy in copies)


def test_every_copy_of_the_named_tenant_is_due():
    rows = [kept(1, "acme", "pool-a", False), kept(2, "beta", "pool-a", False), kept(3, "acme", "pool-c", None)]
    assert [copy["id"] for copy in due_copies(rows, "acme")] == [1, 3]
    assert due_copies(rows, "") == [] == due_copies(rows, None)


def test_the_role_goes_with_the_servers_last_copy():
    rows = [kept(1, "acme", "pool-a", True), kept(2, "acme", "pool-c", True), kept(3, "acme", "pool-c", False)]
    role_unused = {copy["id"]: copy["role_unused"] for copy in due_copies(rows)}
    # pool-c keeps a copy whose retention runs: the role stays there.
    assert role_unused == {1: True, 2: False}


def test_the_role_stays_where_the_tenants_database_is():
    rows = [
        kept(1, "acme", "pool-a", True, tenant_server="pool-a"),
        kept(2, "beta", "pool-a", True, tenant_server=None),
    ]
    assert [copy["role_unused"] for copy in due_copies(rows)] == [False, True]


def test_a_copy_with_no_retention_recorded_stays_and_keeps_the_role():
    rows = [kept(1, "acme", "pool-a", True), kept(2, "acme", "pool-a", None)]
    assert [(copy["id"], copy["role_unused"]) for copy in due_copies(rows)] == [(1, False)]


def test_a_backup_recorded_again_must_have_the_same_facts():
    recorded = {
        "backup_id": "acme-1",
        "tenant_id": "acme",
        "kind": "manual",
        "location": "/b/acme/acme-1",
        "db_name": "t_acme",
        "plan_name": "basic-monthly",
        "bytes": 10,
        "manifest_sha256": "ab",
        "taken_at": "2026-11-21 10:00:00+00",
        "removed_at": None,
    }
    wanted = {k: recorded[k] for k in ("backup_id", "tenant_id", "kind", "location", "db_name", "plan_name")}
    assert differing_facts(recorded, {**wanted, "bytes": 10, "manifest_sha256": "ab"}) == []
    assert differing_facts(recorded, {**wanted, "bytes": 11, "manifest_sha256": "cd"}) == ["bytes", "manifest_sha256"]


def test_retention_keeps_zero_or_more():
    with pytest.raises(BackupError, match="keep must be 0 or more"):
        expired_backups(None, "acme", -1)
