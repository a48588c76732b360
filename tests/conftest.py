"""Shared paths and helpers for unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INVENTORIES = REPO / "inventories"
ROLES = REPO / "roles"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
