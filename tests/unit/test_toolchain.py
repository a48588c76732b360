"""The pinned toolchain: collections unpacked by make setup are the versions requirements.yml names."""

from __future__ import annotations

import json
import re
from importlib import metadata

from packaging.version import Version

from conftest import REPO, load_yaml


def test_unpacked_collections_match_requirements():
    pinned = {c["name"]: c["version"] for c in load_yaml(REPO / "collections/requirements.yml")["collections"]}
    assert pinned, "collections/requirements.yml pins nothing"
    for name, version in pinned.items():
        manifest = REPO / "collections/ansible_collections" / name.replace(".", "/") / "MANIFEST.json"
        assert manifest.exists(), f"{name} is not installed: run make setup"
        installed = json.loads(manifest.read_text())["collection_info"]["version"]
        assert installed == version, f"{name}: requirements.yml pins {version}, make setup installed {installed}"


def test_every_python_requirement_is_pinned_exactly():
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line]
    assert requirements
    unpinned = [r for r in requirements if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.]*", r)]
    assert not unpinned, f"not pinned with ==: {unpinned}"


def test_the_kubernetes_client_kubernetes_core_needs_is_installed():
    """kubernetes.core.k8s, which the kubernetes runtime applies tenants with, imports it on the controller."""
    needs = (REPO / "collections/ansible_collections/kubernetes/core/requirements.txt").read_text()
    minimum = re.search(r"^kubernetes>=([0-9.]+)$", needs, re.MULTILINE)
    assert minimum, f"kubernetes.core no longer names its client's minimum version:\n{needs}"
    try:
        installed = metadata.version("kubernetes")
    except metadata.PackageNotFoundError:
        raise AssertionError("the kubernetes Python client is not installed: requirements.txt must pin it") from None
    assert Version(installed) >= Version(minimum.group(1)), f"kubernetes {installed} < {minimum.group(1)}"
