"""Role hygiene: argument_specs is the one description of a role's inputs, and molecule tests every role."""

from __future__ import annotations

import pytest
from ansible.template import trust_as_template

from conftest import ROLES, load_yaml, role_templar

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


def postgres_server_input_errors(**inputs) -> list[str]:
    """What postgres_server's one input check (tasks/validate.yml) reports, on a local_cluster server's inputs."""
    valid = {
        "postgres_server_mode": "local_cluster",
        "postgres_server_base_dir": "/srv/pool",
        "postgres_server_port": 5432,
        "postgres_server_login_roles": [{"name": "app", "password": "x"}],
        "postgres_server_pgbackrest_stanza": "pool-1",
        "postgres_server_pgbackrest_dir": "/srv/pool/pgbackrest",
        "postgres_server_pgbackrest_repos": [{"path": "/srv/backups", "cipher-pass": "repo-key"}],
    }
    templar = role_templar("postgres_server", valid | inputs)
    return templar.template(trust_as_template("{{ __postgres_server_input_errors }}"))


def test_postgres_server_reports_every_broken_input_rule_at_once_and_no_password():
    assert postgres_server_input_errors() == []
    errors = postgres_server_input_errors(
        postgres_server_base_dir="",
        postgres_server_admin_login={"name": "admin"},
        postgres_server_login_roles=[
            {"name": "app", "password": "s3cret"},
            {"name": "nopass"},
            {"password": "hidden"},
            {"name": "empty", "password": ""},
            {"name": "null", "password": None},
            {"name": "number", "password": 1234},
        ],
        postgres_server_pgbackrest_dir="pgbackrest; rm -rf /",
        postgres_server_pgbackrest_stanza="pool 1",
    )
    assert errors == [
        "postgres_server_mode=local_cluster needs postgres_server_base_dir (where data/, run/ and log/ live)",
        "postgres_server_admin_login needs name and password",
        "postgres_server_pgbackrest_stanza must be letters, digits, _ and - (it is written into archive_command), not"
        ' "pool 1"',
        "postgres_server_pgbackrest_dir must be an absolute path of letters, digits and _./- (it is written into"
        ' archive_command), not "pgbackrest; rm -rf /"',
        "postgres_server_login_roles entry (no name) needs name and password",
        "postgres_server_login_roles entry nopass needs name and password",
        "postgres_server_login_roles entry null needs name and password",
        "postgres_server_login_roles entry number needs name and password",
        "postgres_server_login_roles entry empty needs name and password",
    ]
    assert not any(secret in " ".join(errors) for secret in ("s3cret", "hidden"))
    # A line break would end archive_command's line in postgresql.conf: refused, even a trailing one. In a
    # repository's option it would add a line to pgbackrest.conf (another option, another stanza): refused, the
    # value (a key, perhaps) not shown.
    assert postgres_server_input_errors(postgres_server_pgbackrest_dir="/srv/pgbackrest\n") == [
        "postgres_server_pgbackrest_dir must be an absolute path of letters, digits and _./- (it is written into"
        ' archive_command), not "/srv/pgbackrest\\n"'
    ]
    broken_key = postgres_server_input_errors(
        postgres_server_pgbackrest_repos=[{"path": "/srv/backups", "cipher-pass": "k3y\n[other]"}]
    )
    assert broken_key == [
        "postgres_server_pgbackrest_repos and postgres_server_pgbackrest_options take no line breaks (each is one"
        " line of pgbackrest.conf)"
    ]
    assert postgres_server_input_errors(postgres_server_pgbackrest_repos=[]) == [
        "postgres_server_pgbackrest_stanza needs at least one repository in postgres_server_pgbackrest_repos"
    ]
    # Without a stanza, no archiving: nothing else about pgBackRest is asked for.
    assert postgres_server_input_errors(postgres_server_pgbackrest_stanza="", postgres_server_pgbackrest_repos=[]) == []
