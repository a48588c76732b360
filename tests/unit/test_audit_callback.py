"""The audit callback (saasodoo.platform.audit): its documentation, where it finds the registry, what it counts."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml
from ansible.executor.stats import AggregateStats
from ansible.plugins.loader import callback_loader

from conftest import REPO

CALLBACK = REPO / "collections/ansible_collections/saasodoo/platform/plugins/callback/audit.py"


@pytest.fixture(scope="module")
def callback():
    """The plugin's module, loaded by ansible-core's plugin loader (from its directory: this process has no
    collection loader)."""
    callback_loader.add_directory(str(CALLBACK.parent))
    return sys.modules[type(callback_loader.get(CALLBACK.stem)).__module__]


def test_its_documentation_is_yaml_and_names_it():
    tree = ast.parse(CALLBACK.read_text())
    (documentation,) = (
        yaml.safe_load(n.value.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "DOCUMENTATION"
    )
    assert documentation["name"] == CALLBACK.stem
    assert set(documentation["options"]) == {"registry_config", "run_id", "job"}


def test_ansible_cfg_enables_it_and_the_strategy_by_name():
    cfg = (REPO / "ansible.cfg").read_text()
    assert "callbacks_enabled = saasodoo.platform.audit" in cfg
    assert "strategy = saasodoo.platform.mitogen_linear" in cfg
    assert "callback_plugins" not in cfg and "strategy_plugins" not in cfg  # the collection is the plugins' home


def test_the_registry_is_the_inventory_directory_registry_source(callback, tmp_path: Path):
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    (tmp_path / "saasodoo.registry.yml").write_text("plugin: saasodoo.platform.registry\n")
    assert callback.registry_config_in(["localhost,", str(tmp_path)]) == str(tmp_path / "saasodoo.registry.yml")
    assert callback.registry_config_in([str(tmp_path / "saasodoo.registry.yml")]) == str(
        tmp_path / "saasodoo.registry.yml"
    )


def test_an_inventory_without_a_registry_source_has_none(callback, tmp_path: Path):
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    assert callback.registry_config_in([str(tmp_path), "localhost,"]) is None


def test_the_local_inventory_names_its_registry(callback):
    assert callback.registry_config_in([str(REPO / "inventories/local")]).endswith("saasodoo.registry.yml")


def test_host_counts_are_per_host_with_failures_named_failed(callback):
    stats = AggregateStats()
    for what, host in [("ok", "a"), ("ok", "a"), ("changed", "a"), ("failures", "b"), ("skipped", "b")]:
        stats.increment(what, host)
    assert callback.host_counts(stats) == {
        "a": {"ok": 2, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 0, "rescued": 0},
        "b": {"ok": 0, "changed": 0, "failed": 1, "unreachable": 0, "skipped": 1, "rescued": 0},
    }


def test_an_invalid_run_id_from_the_environment_is_replaced(callback, monkeypatch):
    monkeypatch.setenv("SAASODOO_AUDIT_RUN", "x'; DROP TABLE registry.audit; --")
    plugin = callback_loader.get(CALLBACK.stem)
    plugin.set_options()
    assert callback.AUDIT_RUN_ID.fullmatch(plugin.run_id) and "DROP" not in plugin.run_id


def test_a_run_id_from_the_environment_is_kept(callback, monkeypatch):
    monkeypatch.setenv("SAASODOO_AUDIT_RUN", "job-12-3")
    plugin = callback_loader.get(CALLBACK.stem)
    plugin.set_options()
    assert plugin.run_id == "job-12-3"


def test_a_row_goes_through_the_runs_holder_session_and_else_through_one_of_its_own(callback, monkeypatch):
    written = []

    class Session:
        def __init__(self, name: str, lost: bool = False):
            self.name, self.lost = name, lost

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def record_audit(conn, **row):
        if conn.lost:
            raise OSError("server closed the connection unexpectedly")
        written.append((conn.name, row["detail"]["phase"]))

    monkeypatch.setattr(callback, "record_audit", record_audit)
    plugin = callback_loader.get(CALLBACK.stem)
    plugin.set_options()
    monkeypatch.setattr(plugin, "_connect", lambda: Session("its own"))
    for holder, phase in ((Session("holder"), "start"), (Session("holder", lost=True), "end"), (None, "end")):
        plugin.holder = holder
        plugin._record(phase, {"user": "ops"}, warn=True)
    assert written == [("holder", "start"), ("its own", "end"), ("its own", "end")]
