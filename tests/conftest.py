"""Shared paths and helpers for unit and integration tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

REPO = Path(__file__).resolve().parent.parent
INVENTORIES = REPO / "inventories"
ROLES = REPO / "roles"
MODULES = REPO / "collections/ansible_collections/saasodoo/platform/plugins/modules"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def trusted(value):
    """Role files as Ansible reads them: their strings are templates (ansible-core 2.19 renders only trusted ones)."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {key: trusted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [trusted(item) for item in value]
    return value


def role_templar(role: str, inputs: dict) -> Templar:
    """A templar with the role's defaults, then its vars, as Ansible layers them, and `inputs` over both."""
    loader = DataLoader()
    variables = {"ansible_managed": "Ansible managed", "inventory_hostname": "pool-shared-01"}
    for layer in ("defaults", "vars"):
        variables |= trusted(loader.load_from_file(str(ROLES / role / layer / "main.yml")))
    return Templar(loader=loader, variables=variables | inputs)


def run_module(name: str, args: dict, tmp_path: Path, check_mode: bool = False) -> dict:
    """One of the collection's modules run as Ansible runs it (its arguments in a file), its JSON result."""
    params = tmp_path / f"{name}-args.json"
    params.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args | ({"_ansible_check_mode": True} if check_mode else {})}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "collections")}
    run = subprocess.run([sys.executable, str(MODULES / f"{name}.py"), str(params)], env=env, capture_output=True,
                         text=True, check=False, timeout=60)  # fmt: skip
    return json.loads(run.stdout)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
