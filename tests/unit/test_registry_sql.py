"""The registry is spoken to through the collection's modules: no playbook or role holds registry SQL.

A column change then touches one place, the module_utils that own the queries, and nothing in YAML goes
unchecked. The schema's own machinery (the migration files and the tasks that apply them and grant on them)
is the exception: migrations stay SQL files.
"""

from __future__ import annotations

import re

import pytest

from conftest import REPO

# SQL that reads or writes a registry table or calls a registry function.
REGISTRY_SQL = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+registry\.\w+|\bregistry\.\w+\s*\(", re.IGNORECASE)
SCHEMA_MACHINERY = {
    "roles/platform_registry/tasks/migrations.yml",  # applies files/migrations/*.sql, reads their ledger
    "roles/platform_registry/tasks/app_role.yml",  # grants the application role its privileges
    "roles/platform_registry/templates/ledger_guard.sql.j2",  # closes each batch of migrations
}


def ansible_files() -> list[str]:
    files = [p for d in ("playbooks", "roles") for p in (REPO / d).rglob("*") if p.suffix in {".yml", ".yaml", ".j2"}]
    return sorted(
        str(p.relative_to(REPO))
        for p in files
        if "molecule" not in p.parts and "migrations" not in p.parts  # tests read the registry directly
    )


def test_the_scan_sees_the_playbooks_and_the_schema_machinery():
    files = set(ansible_files())
    assert {"playbooks/tenant_provision.yml", "playbooks/tasks/server_up.yml"} <= files
    assert files >= SCHEMA_MACHINERY


@pytest.mark.parametrize("path", [f for f in ansible_files() if f not in SCHEMA_MACHINERY])
def test_no_registry_sql_outside_the_modules(path):
    text = (REPO / path).read_text(encoding="utf-8")
    found = [m.group(0) for m in REGISTRY_SQL.finditer(text)]
    assert not found, f"{path} speaks SQL to the registry ({found}): call a saasodoo.platform registry module instead"


def test_the_pattern_catches_what_it_is_for():
    assert REGISTRY_SQL.search("SELECT x FROM registry.tenants WHERE")
    assert REGISTRY_SQL.search("insert into registry.audit (actor)")
    assert REGISTRY_SQL.search("SELECT * FROM registry.audit_chain_breaks()")
    assert not REGISTRY_SQL.search("group/saasodoo.platform.registry: login")
