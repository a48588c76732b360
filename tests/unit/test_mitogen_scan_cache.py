"""The Mitogen scan cache (plugin_utils/mitogen_scan_cache.py): what Mitogen finds a module imports never depends
on it, and what it holds is compiled once."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

# Mitogen's two scans, as its multiplexer runs them: the module_utils a module needs (ansible_mitogen.module_finder)
# and the modules sent along with one a host asks for (mitogen.master.ModuleFinder). argv: cache directory ('' for
# none), the module's path, the module_utils search path.
SCAN = textwrap.dedent(
    r"""
    import builtins, json, sys
    import ansible_mitogen.module_finder
    import mitogen.master
    from ansible_collections.saasodoo.platform.plugins.plugin_utils import mitogen_scan_cache

    compiled = []  # every compile of source text, the cache's own included
    compile_source = builtins.compile
    builtins.compile = lambda *a, **k: compiled.append(a[1]) or compile_source(*a, **k)
    installed = mitogen_scan_cache.install(sys.argv[1]) if sys.argv[1] else None

    directory, module, search_path = sys.argv[1:]
    needs = [
        ansible_mitogen.module_finder.scan(name, path, [search_path])
        for name, path in (("ansible_module_fixture", module), ("ansible_module_fixture_again", module))
    ]
    related = mitogen.master.ModuleFinder().find_related_imports("ansible.module_utils.basic")
    print(json.dumps({"needs": needs, "related": related, "compiled": len(compiled), "installed": installed}))
    """
)


def scan(cache_dir: str, module: Path, search_path: Path) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", SCAN, cache_dir, str(module), str(search_path)],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO / "collections")},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.fixture
def module_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A module importing a module_utils file that imports another, as a collection's would."""
    utils = tmp_path / "module_utils"
    utils.mkdir()
    (utils / "first.py").write_text("from ansible.module_utils import second\n")
    (utils / "second.py").write_text("import os\n")
    (utils / "third.py").write_text("import sys\n")
    module = tmp_path / "fixture.py"
    module.write_text("from ansible.module_utils.basic import AnsibleModule\nfrom ansible.module_utils import first\n")
    return module, utils


def names(needs: list) -> set[str]:
    return {name for name, _path, _is_package in needs}


def test_the_scans_find_the_same_without_the_cache_with_it_empty_and_with_it_filled(tmp_path, module_tree):
    module, utils = module_tree
    cache = tmp_path / "cache"
    plain, empty, filled = (scan(d, module, utils) for d in ("", str(cache), str(cache)))
    assert empty["installed"] is True and filled["installed"] is True
    assert plain["needs"] == empty["needs"] == filled["needs"]
    assert plain["related"] == empty["related"] == filled["related"]
    assert {"ansible.module_utils.first", "ansible.module_utils.second"} <= names(plain["needs"][0])
    # Without the cache the second module compiles everything again; with it, each file once, then never.
    assert empty["compiled"] < plain["compiled"]
    assert filled["compiled"] == 0


def test_a_changed_file_is_scanned_as_it_is_now(tmp_path, module_tree):
    module, utils = module_tree
    cache = str(tmp_path / "cache")
    assert "ansible.module_utils.third" not in names(scan(cache, module, utils)["needs"][0])
    (utils / "first.py").write_text("from ansible.module_utils import third\n")
    rescanned = names(scan(cache, module, utils)["needs"][0])
    assert "ansible.module_utils.third" in rescanned and "ansible.module_utils.second" not in rescanned


def test_a_directory_others_can_write_to_turns_the_cache_off(tmp_path, module_tree):
    assert scan(str(tmp_path / "cache"), *module_tree)["installed"] is True
    (directory,) = (tmp_path / "cache").iterdir()  # one per bytecode version
    directory.chmod(0o770)
    turned_off = scan(str(tmp_path / "cache"), *module_tree)
    assert turned_off["installed"] is False and turned_off["compiled"] > 0


@pytest.mark.parametrize("entry", [b"", b"\x00garbage", marshal.dumps(5), marshal.dumps(("import os",))])
def test_an_entry_that_is_not_code_is_compiled_again(tmp_path, module_tree, entry):
    cache = tmp_path / "cache"
    plain = scan("", *module_tree)
    scan(str(cache), *module_tree)
    (directory,) = cache.iterdir()
    for kept in directory.iterdir():
        kept.write_bytes(entry)
    again = scan(str(cache), *module_tree)
    assert again["needs"] == plain["needs"] and again["related"] == plain["related"]
    assert again["compiled"] > 0
