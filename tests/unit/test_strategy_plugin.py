"""The strategy plugin every run loads (saasodoo.platform.mitogen_linear): what loading it does to the run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import REPO

STRATEGY = REPO / "collections/ansible_collections/saasodoo/platform/plugins/strategy/mitogen_linear.py"

# Loads the plugin as Ansible's strategy loader does (by its path), in an interpreter of its own: the freeze is
# the process's for good. Prints how many objects were frozen before and after, and whether one made afterwards is
# still the collector's.
LOAD = textwrap.dedent(
    r"""
    import gc, importlib.util, json, sys
    frozen_before = gc.get_freeze_count()
    spec = importlib.util.spec_from_file_location("mitogen_linear", sys.argv[1])
    strategy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(strategy)
    frozen_after = gc.get_freeze_count()
    made_later = [[]]
    print(json.dumps({
        "before": frozen_before, "after": frozen_after, "later_tracked": gc.is_tracked(made_later),
        "frozen_after_later": gc.get_freeze_count(), "state": str(strategy.STATE),
    }))
    """
)


def test_loading_the_strategy_freezes_the_runs_objects_and_not_those_made_later():
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(STRATEGY)],
        cwd=REPO, env={"PYTHONPATH": f"{REPO / 'collections'}"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["before"] == 0
    assert seen["after"] > 10_000, seen  # ansible's and Mitogen's modules, at least
    assert seen["later_tracked"] and seen["frozen_after_later"] == seen["after"], seen


def test_its_caches_are_in_the_checkouts_state_directory_whatever_ansible_cfg_the_run_reads(tmp_path):
    elsewhere = tmp_path / "molecule-scratch"
    elsewhere.mkdir()
    (elsewhere / "ansible.cfg").write_text("[defaults]\n")
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(STRATEGY)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": f"{REPO / 'collections'}", "ANSIBLE_CONFIG": str(elsewhere / "ansible.cfg")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["state"] == str(REPO / ".state")
    # Both caches installed there: the Jinja code cache and, before Mitogen's multiplexer is forked, the scan cache.
    assert {"jinja-code", "mitogen-scan"} <= {path.name for path in (REPO / ".state").iterdir()}
    assert not (elsewhere / ".state").exists()
    assert "/.state/" in (REPO / ".gitignore").read_text()  # the checkout's own: never committed
