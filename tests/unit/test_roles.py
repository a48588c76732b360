"""Role hygiene: argument_specs is the one description of a role's inputs, and molecule tests every role."""

from __future__ import annotations

import pytest

from conftest import ROLES, load_yaml

ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "tasks").is_dir())


def spec_options(role: str) -> dict:
    specs = load_yaml(ROLES / role / "meta/argument_specs.yml")["argument_specs"]
    options: dict = {}
    for entry_point in specs.values():
        options.update(entry_point.get("options", {}))
    return options


def test_roles_exist():
    assert {"postgres_server", "pgbouncer", "platform_registry"} <= set(ROLE_NAMES)


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_default_is_documented(role):
    defaults = load_yaml(ROLES / role / "defaults/main.yml") or {}
    undocumented = set(defaults) - set(spec_options(role))
    assert not undocumented, f"{role}: defaults without argument_specs entries: {sorted(undocumented)}"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_input_carries_the_role_prefix_and_a_description(role):
    for name, option in spec_options(role).items():
        assert name.startswith(f"{role}_"), f"{role}: input {name} lacks the {role}_ prefix"
        assert option.get("description"), f"{role}: input {name} has no description"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_role_has_a_full_molecule_scenario(role):
    scenario = ROLES / role / "molecule/default"
    assert (scenario / "converge.yml").exists() and (scenario / "verify.yml").exists()
    sequence = load_yaml(scenario / "molecule.yml")["scenario"]["test_sequence"]
    assert {"converge", "idempotence", "verify"} <= set(sequence)
