"""Every module's DOCUMENTATION, EXAMPLES and RETURN are YAML that ansible-doc can read (a stray ": " breaks it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

MODULES = sorted(
    (Path(__file__).resolve().parents[2] / "collections/ansible_collections/saasodoo/platform/plugins/modules").glob(
        "*.py"
    )
)


def doc_strings(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text())
    return {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN")
    }


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_module_documentation_is_yaml(path: Path):
    docs = doc_strings(path)
    assert set(docs) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}
    documentation = yaml.safe_load(docs["DOCUMENTATION"])
    assert documentation["module"] == path.stem
    assert all(isinstance(line, str) for line in documentation["description"])
    yaml.safe_load(docs["EXAMPLES"])
    yaml.safe_load(docs["RETURN"])
