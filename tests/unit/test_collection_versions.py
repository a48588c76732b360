"""The collection's version (galaxy.yml), its changelog's releases and every plugin's version_added agree."""

import ast
import re
from pathlib import Path

import yaml

COLLECTION = Path(__file__).resolve().parents[2] / "collections/ansible_collections/saasodoo/platform"


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def versions_added() -> dict[str, str]:
    """Each plugin's version_added, from its DOCUMENTATION (Python plugins) or its YAML documentation (filters)."""
    found = {}
    for path in sorted((COLLECTION / "plugins").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DOCUMENTATION":
                documentation = yaml.safe_load(node.value.value)
                if "version_added" in documentation:
                    found[str(path.relative_to(COLLECTION))] = str(documentation["version_added"])
    for path in sorted((COLLECTION / "plugins/filter").glob("*.yml")):
        documentation = yaml.safe_load(path.read_text())["DOCUMENTATION"]
        if "version_added" in documentation:
            found[str(path.relative_to(COLLECTION))] = str(documentation["version_added"])
    return found


def test_the_collections_version_is_its_changelogs_newest_release():
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())["version"]
    releases = yaml.safe_load((COLLECTION / "changelogs/changelog.yaml").read_text())["releases"]
    assert max(releases, key=version) == galaxy


def test_every_version_added_is_a_release_of_the_changelog():
    releases = set(yaml.safe_load((COLLECTION / "changelogs/changelog.yaml").read_text())["releases"])
    added = versions_added()
    assert len(added) >= 20, added  # every module, the callback and the strategy say theirs
    assert {path: release for path, release in added.items() if release not in releases} == {}


def test_every_module_callback_and_strategy_says_when_it_came():
    plugins = [
        path
        for kind in ("modules", "callback", "strategy")
        for path in (COLLECTION / "plugins" / kind).glob("*.py")
        if re.search(r"^DOCUMENTATION = ", path.read_text(), re.MULTILINE)
    ]
    added = versions_added()
    assert [
        str(path.relative_to(COLLECTION)) for path in plugins if str(path.relative_to(COLLECTION)) not in added
    ] == []
