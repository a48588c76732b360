"""The strategy plugin every run loads (plugins/strategy/mitogen_linear.py): what loading it does to the run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import REPO

# Loads the plugin as Ansible's strategy loader does (by its path), in an interpreter of its own: the freeze is
# the process's for good. Prints how many objects were frozen before and after, and whether one made afterwards is
# still the collector's.
LOAD = textwrap.dedent(
    r"""
    import gc, importlib.util, json, sys
    frozen_before = gc.get_freeze_count()
    spec = importlib.util.spec_from_file_location("mitogen_linear", sys.argv[1])
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    frozen_after = gc.get_freeze_count()
    made_later = [[]]
    print(json.dumps({
        "before": frozen_before, "after": frozen_after, "later_tracked": gc.is_tracked(made_later),
        "frozen_after_later": gc.get_freeze_count(),
    }))
    """
)


def test_loading_the_strategy_freezes_the_runs_objects_and_not_those_made_later():
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(REPO / "plugins/strategy/mitogen_linear.py")],
        cwd=REPO, env={"PYTHONPATH": f"{REPO / 'collections'}"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["before"] == 0
    assert seen["after"] > 10_000, seen  # ansible's and Mitogen's modules, at least
    assert seen["later_tracked"] and seen["frozen_after_later"] == seen["after"], seen
