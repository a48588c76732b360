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


def playbook_mappings():
    """(playbook, mapping) for every mapping in the playbooks' YAML, nested ones too."""
    for path in sorted((REPO / "playbooks").rglob("*.yml")):
        nodes = [yaml.safe_load(path.read_text())]
        while nodes:
            node = nodes.pop()
            if isinstance(node, dict):
                yield path.name, node
                nodes += node.values()
            elif isinstance(node, list):
                nodes += node


def action_names(value: str) -> list[str]:
    """The action a string names, or those a template chooses between."""
    return re.findall(r"'(\w+)'", value) if "{{" in value else [value]


def test_every_action_a_playbook_names_is_in_the_table():
    """tenant_action (tenant_backup_action) and registry_tenant's action, literal or in a template."""
    named = {}
    for playbook, mapping in playbook_mappings():
        keys = ["tenant_action", "tenant_backup_action"] + ["action"] * isinstance(mapping.get("tenant_id"), str)
        for key in keys:
            if isinstance(mapping.get(key), str):
                for action in action_names(mapping[key]):
                    named.setdefault(action, playbook)
    assert {action: path for action, path in named.items() if action not in ACTIONS} == {}
    assert {"provision", "tenant_suspend", "tenant_reactivate", "tenant_update", "tenant_backup"} <= set(named)


def test_every_status_a_playbook_records_is_one_its_action_leaves():
    """tenant_record.yml's vars, or registry_tenant's arguments; tenant_record.yml itself passes its importer's on."""
    recorded = [
        (playbook, action, mapping[status_key])
        for playbook, mapping in playbook_mappings()
        for action_key, status_key in [("tenant_action", "tenant_status"), ("action", "status")]
        if isinstance(mapping.get(action_key), str) and isinstance(mapping.get(status_key), str)
        if "{{" not in mapping[status_key]
        for action in action_names(mapping[action_key])
    ]
    refused = []
    for playbook, action, status in recorded:
        try:
            expected_statuses(action, status)
        except ValueError as error:
            refused.append(f"{playbook}: {error}")
    assert refused == []
    checked = {(action, status) for _, action, status in recorded}
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
