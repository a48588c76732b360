"""The tenant lifecycle's table (module_utils/lifecycle.py) is the one every part reads: the registry's CHECK holds its
statuses, every action a playbook names is in it, and registry_tenant refuses what it does not allow."""

import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.saasodoo.platform.plugins.module_utils.lifecycle import (
    ACTIONS,
    STATUSES,
    expected_statuses,
)

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "roles/platform_registry/files/migrations"


def test_the_registry_checks_the_tables_statuses():
    core = (MIGRATIONS / "0001_core.sql").read_text()
    tenants = core[core.index("CREATE TABLE registry.tenants") :].split(");", 1)[0]
    checked = re.search(r"status\s+text[^,]*CHECK \(status IN \(([^)]*)\)\)", tenants)
    assert checked, "registry.tenants.status has no CHECK of its values in 0001_core.sql"
    assert tuple(re.findall(r"'([a-z_]+)'", checked[1])) == STATUSES
    later = [path.name for path in sorted(MIGRATIONS.glob("*.sql")) if "tenants_status_check" in path.read_text()]
    assert later == [], f"a later migration changes the statuses: the table must follow ({later})"


def named_actions(node) -> list[str]:
    """The lifecycle actions a playbook names: tenant_action and registry_tenant's action, literal or in a template."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("tenant_action", "tenant_backup_action") or (
                key == "action" and isinstance(node.get("tenant_id"), str)  # registry_tenant's arguments
            ):
                found += re.findall(r"'(\w+)'", value) if "{{" in value else [value]
            else:
                found += named_actions(value)
    elif isinstance(node, list):
        for item in node:
            found += named_actions(item)
    return found


def test_every_action_a_playbook_names_is_in_the_table():
    named = {}
    for path in sorted((REPO / "playbooks").rglob("*.yml")):
        for action in named_actions(yaml.safe_load(path.read_text())):
            named.setdefault(action, path.name)
    assert {action: path for action, path in named.items() if action not in ACTIONS} == {}
    assert {"provision", "tenant_suspend", "tenant_reactivate", "tenant_update", "tenant_backup"} <= set(named)


def recorded_transitions(node) -> list[tuple[str, str]]:
    """(action, status) of each record a playbook makes: tenant_record.yml's vars, or registry_tenant's arguments."""
    found = []
    if isinstance(node, dict):
        pairs = [("tenant_action", "tenant_status"), ("action", "status")]
        for action_key, status_key in pairs:
            if isinstance(node.get(action_key), str) and isinstance(node.get(status_key), str):
                action = node[action_key]
                for name in re.findall(r"'(\w+)'", action) if "{{" in action else [action]:
                    found.append((name, node[status_key]))
        for value in node.values():
            found += recorded_transitions(value)
    elif isinstance(node, list):
        for item in node:
            found += recorded_transitions(item)
    return found


def test_every_status_a_playbook_records_is_one_its_action_leaves():
    recorded = []
    for path in sorted((REPO / "playbooks").rglob("*.yml")):
        recorded += [(path.name, *pair) for pair in recorded_transitions(yaml.safe_load(path.read_text()))]
    refused = []
    for playbook, action, status in recorded:
        if "{{" in status:  # tenant_record.yml itself passes its importer's on
            continue
        try:
            expected_statuses(action, status)
        except ValueError as error:
            refused.append(f"{playbook}: {error}")
    assert refused == []
    checked = {(action, status) for _, action, status in recorded if "{{" not in status}
    assert {("tenant_suspend", "suspended"), ("tenant_reactivate", "active"), ("provision", "failed")} <= checked


@pytest.mark.parametrize(
    ("action", "status", "expected"),
    [
        ("tenant_resume", None, ("active", "suspended")),  # its first read
        ("tenant_resume", "active", ("active", "suspended")),  # its record
        ("tenant_reactivate", "active", ("active", "suspended", "terminated")),
        ("tenant_purge", "purged", ("terminated", "purged")),
        ("provision", "failed", ("provisioning", "failed")),  # a failure never marks an active tenant failed
        ("tenant_update", None, ("active",)),
    ],
)
def test_an_action_starts_from_its_statuses(action, status, expected):
    assert expected_statuses(action, status) == expected


@pytest.mark.parametrize(
    ("action", "status", "refusal"),
    [
        ("tenant_suspend", "active", "tenant_suspend leaves a tenant suspended, not active"),
        ("tenant_change_plan", "suspended", "tenant_change_plan leaves a tenant no other status, not suspended"),
        ("tenant_resume", "failed", "tenant_resume leaves a tenant active, not failed"),
        ("probe", None, "'probe' is not a lifecycle action"),
    ],
)
def test_what_the_table_does_not_allow_is_refused(action, status, refusal):
    with pytest.raises(ValueError, match=re.escape(refusal)):
        expected_statuses(action, status)


def test_every_action_starts_and_ends_in_known_statuses():
    for name, action in ACTIONS.items():
        assert set(action.starts_from) | set(action.fails_from) <= set(STATUSES), name
        assert action.leaves in (None, *STATUSES), name
        assert action.summary, name
