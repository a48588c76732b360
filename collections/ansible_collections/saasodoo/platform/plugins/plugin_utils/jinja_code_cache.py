"""A disk cache of the Python code ansible-core compiles its Jinja templates and expressions into.

ansible-core runs every task in a process forked for it, and compiles each template the task needs again there: the
same `vars/` expression is compiled once per task per host, 12 ms on average on this platform's hosts (the
postgres_server role's input rules, 42 templates, cost 0.5 s of CPU per server before anything is done). The
compiled code is a pure function of the template's text and of the settings it is compiled under, so it is kept on
disk, keyed by those, and the next process that needs it loads it instead of compiling it again.

What the code depends on, and how each is kept:
- the text, the backslash escaping of the call (`_TemplateCompileContext`), the embedded-templates setting, the
  environment's syntax settings, and the ansible-core, Jinja and Python versions: in the key;
- the filters and tests it calls: Jinja writes a filter's calling convention (whether it takes the context) into the
  code. Each entry lists the filters and tests with their conventions; a hit whose list no longer matches the
  plugins now loaded is compiled again.
A template is compiled only after ansible-core's trust check passed, as before: the cache changes what a compile
costs, never what is compiled. The directory is its owner's alone (plugin_utils/code_directory.py): its files are
code this controller runs. A read or write that fails, or an entry that is not whole, compiles as before. Not
cached: a template with Jinja settings of its own (an overlay), the template debugger, Jinja extensions (ansible.cfg's
jinja2_extensions change the syntax), and vault-encrypted text (its plain text would stay on disk).
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib.util
import os
import types
import typing as t

import jinja2
from ansible.release import __version__ as ansible_core_version
from jinja2 import nodes
from jinja2.environment import TemplateExpression
from jinja2.utils import _PassArg

from ansible_collections.saasodoo.platform.plugins.plugin_utils import code_directory

# Written against ansible-core 2.19's private templating (requirements.txt pins it; tests/unit check it): another
# series compiles as before.
try:
    from ansible._internal._datatag._tags import SourceWasEncrypted, VaultedValue
    from ansible._internal._templating import _jinja_bits
    from ansible._internal._templating._jinja_common import _TemplateConfig
except ImportError:  # another ansible-core: nothing is cached
    _jinja_bits = None

# The code of a compile_expression() in progress, caught on its way through compile().
_expression_code: contextvars.ContextVar[list | None] = contextvars.ContextVar("expression_code", default=None)


def _convention(plugin: t.Callable | None) -> str:
    """How Jinja's code calls a filter or test: with the context, the environment, neither, or not at all."""
    return "missing" if plugin is None else str(_PassArg.from_obj(plugin))


class JinjaCodeCache:
    """Entries in one directory (plugin_utils/code_directory.py), reached through a descriptor opened once."""

    def __init__(self, directory_fd: int):
        self.directory_fd = directory_fd
        self.loaded: dict[str, tuple[types.CodeType, tuple]] = {}  # this process's entries: key -> (code, plugins)

    def key(self, env: t.Any, kind: str, source: str) -> str:
        compiling = _jinja_bits._TemplateCompileContext.current(optional=True)
        parts = (
            kind,
            source,
            bool(compiling and compiling.escape_backslashes),
            tuple(getattr(env, name) for name in _jinja_bits._TEMPLATE_OVERRIDE_FIELD_NAMES),
            _TemplateConfig.allow_embedded_templates,
            env.optimized,
            env.is_async,
            env.sandboxed,
        )
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    @staticmethod
    def plugins(env: t.Any, tree: nodes.Node) -> tuple:
        """The filters and tests `tree` calls, each with the calling convention the code was written for."""
        kinds = (("filter", nodes.Filter, env.filters), ("test", nodes.Test, env.tests))
        return tuple(
            sorted(
                {
                    (kind, node.name, _convention(mapping.get(node.name)))
                    for kind, node_type, mapping in kinds
                    for node in tree.find_all(node_type)
                }
            )
        )

    def read(self, key: str) -> tuple[types.CodeType, tuple] | None:
        """The entry on disk, if it is whole: a code object and its (kind, name, convention) strings."""
        entry = code_directory.load(self.directory_fd, key)
        if not isinstance(entry, tuple) or len(entry) != 2:
            return None
        code, plugins = entry
        whole = (
            isinstance(code, types.CodeType)
            and isinstance(plugins, tuple)
            and all(isinstance(p, tuple) and len(p) == 3 and all(isinstance(part, str) for part in p) for p in plugins)
        )
        return (code, plugins) if whole else None

    def get(self, env: t.Any, key: str) -> types.CodeType | None:
        entry = self.loaded.get(key) or self.read(key)
        if entry is None:
            return None
        code, plugins = entry
        try:
            current = tuple(
                (kind, name, _convention((env.filters if kind == "filter" else env.tests).get(name)))
                for kind, name, _recorded in plugins
            )
        except Exception:  # a plugin that fails to load: the compile says why
            return None
        if current != plugins:
            return None
        self.loaded[key] = entry
        return code

    def put(self, key: str, code: types.CodeType, list_plugins: t.Callable[[], tuple]) -> None:
        try:
            plugins = list_plugins()
        except Exception:  # the compile succeeded: it is used, not kept
            return
        self.loaded[key] = (code, plugins)
        code_directory.keep(self.directory_fd, key, (code, plugins))


def _cacheable(env: t.Any, source: str) -> bool:
    """Not an overlay (a template's own Jinja settings), not the template debugger, no Jinja extensions (which
    change the syntax and the text), and not text that was vault-encrypted (its plain text would be kept on disk)."""
    return (
        not env.overlayed
        and not env._debuggable_template_source
        and not env.extensions
        and not SourceWasEncrypted.is_tagged_on(source)
        and not VaultedValue.is_tagged_on(source)
    )


def install(directory: str) -> bool:
    """Cache the compiles of every AnsibleEnvironment in this process and the task processes it forks, in
    `directory` (made 0700 if missing). False, and nothing changed, when the directory is not this user's alone or
    this ansible-core is not the one it was written for."""
    if _jinja_bits is None or not ansible_core_version.startswith("2.19."):
        return False
    if getattr(_jinja_bits.AnsibleEnvironment, "_jinja_code_cache", None):  # installed already
        return False
    directory = os.path.join(
        directory, "-".join((ansible_core_version, jinja2.__version__, importlib.util.MAGIC_NUMBER.hex()))
    )
    directory_fd = code_directory.open_private(directory, "Jinja code cache")
    if directory_fd is None:
        return False

    cache = JinjaCodeCache(directory_fd)  # the task processes forked later inherit the descriptor
    environment = _jinja_bits.AnsibleEnvironment
    compile_template, compile_expression = environment.compile, environment.compile_expression

    def compile_cached(self, source, name=None, filename=None, raw=False, defer_init=False):
        if isinstance(source, nodes.Template) and (caught := _expression_code.get()) is not None:
            code = compile_template(self, source, name, filename, raw, defer_init)
            caught.append((code, source))
            return code
        if not isinstance(source, str) or name or filename or raw or defer_init or not _cacheable(self, source):
            return compile_template(self, source, name, filename, raw, defer_init)
        key = cache.key(self, "template", source)
        code = cache.get(self, key)
        if code is None:
            code = compile_template(self, source, name, filename, raw, defer_init)
            cache.put(key, code, lambda: cache.plugins(self, self.parse(source)))
        return code

    def compile_expression_cached(self, source, undefined_to_none=True):
        if not isinstance(source, str) or not _cacheable(self, source):
            return compile_expression(self, source, undefined_to_none)
        key = cache.key(self, "expression", source)
        code = cache.get(self, key)
        if code is not None:  # as Jinja's compile_expression and from_string make it
            return TemplateExpression(self.template_class.from_code(self, code, self.make_globals(None), None),
                                      undefined_to_none)  # fmt: skip
        token = _expression_code.set([])
        try:
            expression = compile_expression(self, source, undefined_to_none)
            caught = _expression_code.get()
        finally:
            _expression_code.reset(token)
        if len(caught) == 1:
            code, tree = caught[0]
            cache.put(key, code, lambda: cache.plugins(self, tree))
        return expression

    environment.compile, environment.compile_expression = compile_cached, compile_expression_cached
    environment._jinja_code_cache = cache
    return True
