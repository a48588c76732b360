"""The Jinja code cache (plugin_utils/jinja_code_cache.py): what a template renders to never depends on it."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
import textwrap

import pytest
from jinja2 import Environment
from jinja2.utils import pass_context

from ansible_collections.saasodoo.platform.plugins.plugin_utils.jinja_code_cache import JinjaCodeCache

from conftest import REPO

# Templates and expressions as tasks and vars/ hold them: filters (the collection's too), tests, lookups, loops,
# backslashes in a template string, an untrusted string, a template with its own Jinja settings (an overlay).
RENDER = textwrap.dedent(
    r"""
    import json, sys
    import jinja2
    from ansible.plugins.loader import init_plugin_loader
    init_plugin_loader()  # the collections from ansible.cfg, as ansible-playbook finds them
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template
    from ansible._internal._datatag._tags import SourceWasEncrypted
    from ansible_collections.saasodoo.platform.plugins.plugin_utils import jinja_code_cache

    compiled = []  # Jinja's code generation, run only for what the cache does not hold
    generate = jinja2.Environment._generate
    jinja2.Environment._generate = lambda self, *a, **k: compiled.append(1) or generate(self, *a, **k)
    installed = jinja_code_cache.install(sys.argv[1]) if sys.argv[1] else None

    templar = Templar(loader=DataLoader(), variables={
        "plan": {"name": "basic", "workers": 2}, "roles": [{"name": "a"}, {"name": "b", "password": "x"}],
        "secret": "s" * 32, "path": "/srv/wal",
    })
    templates = [
        "{{ plan | to_json }}",
        "{{ roles | rejectattr('password', 'defined') | map(attribute='name') | list }}",
        "{{ 'tenant:acme:v1' | saasodoo.platform.derived_password(secret) }}",
        "{{ path is regex('/[a-z/]+', match_type='fullmatch') }}",
        "{% for r in roles %}{{ r.name }};{% endfor %}",
        "{{ 'a\\nb' }}|{{ path | regex_replace('^/(.*)$', '\\1') }}",
        "{{ plan.workers * 2 }} {{ plan.missing | default('none') }}",
        "#jinja2:variable_start_string:'[[', variable_end_string:']]'\n[[ plan.name ]] {{ plan.name }}",
    ]
    rendered = [templar.template(trust_as_template(source)) for source in templates]
    rendered.append(templar.template("{{ plan.name }}"))  # untrusted: not a template, not compiled
    # Text that was vault-encrypted: compiled every time, never kept (its plain text would stay on disk).
    rendered.append(templar.template(SourceWasEncrypted().tag(trust_as_template("{{ plan.name }}-vaulted"))))
    expressions = ["plan.workers > 1 and roles | length == 2", "'b' in roles | map(attribute='name')"]
    rendered += [templar.evaluate_expression(trust_as_template(e)) for e in expressions]
    # The same text compiled with and without ansible-core's backslash escaping: two different codes.
    rendered += [templar.template(trust_as_template("{{ 'a\\tb' }}"), escape_backslashes=e) for e in (True, False)]
    print(json.dumps({"rendered": rendered, "compiled": len(compiled), "installed": installed}, default=str))
    """
)


def render(cache_dir: str, **env: str) -> dict:
    run = subprocess.run([sys.executable, "-c", RENDER, cache_dir], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, **env}, check=False, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_templates_render_the_same_without_the_cache_with_it_empty_and_with_it_filled(tmp_path):
    plain, cold, warm = render(""), render(str(tmp_path)), render(str(tmp_path))
    assert cold["installed"] is True and warm["installed"] is True
    assert plain["rendered"] == cold["rendered"] == warm["rendered"]
    assert plain["rendered"][0] == '{"name": "basic", "workers": 2}' and plain["rendered"][8] == "{{ plan.name }}"
    assert plain["rendered"][9] == "basic-vaulted"
    assert plain["rendered"][5] == "a\\nb|srv/wal"  # the backslashes as ansible-core escapes them
    assert plain["rendered"][-2:] == ["a\\tb", "a\tb"]
    # The overlay (its own delimiters) and the vaulted text are compiled every time; everything else is loaded once
    # it is in the cache.
    assert cold["compiled"] == plain["compiled"] > 2
    assert warm["compiled"] == 2
    (entries,) = [path for path in tmp_path.iterdir()]  # one directory per ansible-core, Jinja and Python version
    assert oct(entries.stat().st_mode & 0o777) == "0o700"
    assert all(oct(entry.stat().st_mode & 0o777) == "0o600" for entry in entries.iterdir())


def test_jinja_extensions_turn_the_cache_off(tmp_path):
    """An extension (ansible.cfg's jinja2_extensions) changes what a text compiles to: nothing is kept or loaded."""
    extended = {"ANSIBLE_JINJA2_EXTENSIONS": "jinja2.ext.loopcontrols"}
    cold, warm = render(str(tmp_path), **extended), render(str(tmp_path), **extended)
    assert cold["rendered"] == warm["rendered"] == render("")["rendered"]
    assert warm["compiled"] == cold["compiled"] > 2
    assert [entry for directory in tmp_path.iterdir() for entry in directory.iterdir()] == []


def test_a_directory_others_can_write_to_turns_the_cache_off(tmp_path):
    versions = render(str(tmp_path))  # makes the version directory
    assert versions["installed"] is True
    (directory,) = tmp_path.iterdir()
    directory.chmod(0o770)
    assert render(str(tmp_path))["installed"] is False


class Environmentish:
    """What the cache reads of an environment: its filters and tests."""

    def __init__(self, filters: dict):
        self.filters, self.tests = filters, {}


def test_an_entry_whose_filters_changed_their_calling_convention_is_compiled_again(tmp_path):
    """Jinja writes whether a filter takes the context into the code: a plugin that changed since is recompiled."""

    def shout(value):
        return value.upper()

    @pass_context
    def shout_with_context(context, value):
        return value.upper()

    tree = Environment(autoescape=False).parse("{{ name | shout }}")  # noqa: S701 - parsed, never rendered
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    cache = JinjaCodeCache(directory)
    before = Environmentish({"shout": shout})
    cache.put("k", compile("x = 1", "<t>", "exec"), lambda: cache.plugins(before, tree))
    assert cache.get(before, "k") is not None
    assert JinjaCodeCache(directory).get(before, "k") is not None  # another process, from disk
    assert JinjaCodeCache(directory).get(Environmentish({"shout": shout_with_context}), "k") is None
    assert JinjaCodeCache(directory).get(Environmentish({}), "k") is None  # the filter is gone


@pytest.mark.parametrize(
    "entry",
    [b"", b"\x00garbage", b"\xe3\x00\x00", marshal.dumps(5), marshal.dumps((1, 2, 3)),
     marshal.dumps((b"print('ran')", ())), marshal.dumps((compile("x = 1", "<t>", "exec"), (("filter", "f"),)))],
)  # fmt: skip
def test_an_entry_that_is_not_whole_is_a_miss(tmp_path, entry):
    (tmp_path / "k").write_bytes(entry)
    assert JinjaCodeCache(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)).get(Environmentish({}), "k") is None


def test_a_directory_swapped_after_it_was_opened_is_never_read(tmp_path):
    """Whoever may write to the directories above it can rename the cache's directory and put another in its place:
    the cache keeps reading the one it checked."""
    checked, planted = tmp_path / "cache", tmp_path / "moved"
    checked.mkdir(mode=0o700)
    cache = JinjaCodeCache(os.open(checked, os.O_RDONLY | os.O_DIRECTORY))
    cache.put("k", compile("x = 1", "<t>", "exec"), lambda: ())
    checked.rename(planted)
    checked.mkdir()
    (checked / "k").write_bytes(marshal.dumps((compile("x = 'planted'", "<t>", "exec"), ())))
    loaded = JinjaCodeCache(cache.directory_fd).get(Environmentish({}), "k")
    assert loaded is not None and "planted" not in loaded.co_consts
