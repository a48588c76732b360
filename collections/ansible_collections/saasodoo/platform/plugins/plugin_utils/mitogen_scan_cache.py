"""A disk cache of the code Mitogen compiles to find out what a Python file imports.

Mitogen's multiplexer compiles Python source only to read the imports out of the code:
`ansible_mitogen.module_finder` for every module a task runs (the module and each module_utils file under it, to
know which to send), `mitogen.master.ModuleFinder.find_related_imports` for every module a host's interpreter asks
for (to send the ones it will ask for next with it). Neither keeps what it compiled for the next module or the next
run: every distinct module in a run compiled ansible.module_utils.basic and the forty files under it again, 50-75 ms
each on this machine, and every run (a tenant job is one) started from nothing. The imports read out of the code
depend on the source, the compile's arguments and the optimisation level only, so the code is kept, keyed by those
and the interpreter's bytecode version (the directory's name), in memory for the run and on disk
(plugin_utils/code_directory.py) for the next one.

Mitogen never runs this code: it reads its import instructions, and sends the host the source. So a wrong entry could
only change which modules go with another, never what runs. A failed read or write compiles as before.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib.util
import os
import sys
import types

from ansible_collections.saasodoo.platform.plugins.plugin_utils import code_directory

# The modules whose `compile` is read for imports only (mitogen is pinned in requirements.txt; tests/unit check it).
SCANNERS = ("ansible_mitogen.module_finder", "mitogen.master")


def cached_compile(directory_fd: int) -> types.FunctionType:
    """builtins.compile, keeping what it compiles from source text in the directory `directory_fd` and in memory."""
    kept: dict[str, types.CodeType] = {}

    def compile(source, filename, mode, flags=0, dont_inherit=False, optimize=-1, **kwargs):  # noqa: A001
        if kwargs or not isinstance(source, (str, bytes)):  # an AST, or a newer argument: compiled as asked
            return builtins.compile(source, filename, mode, flags, dont_inherit, optimize, **kwargs)
        # Compiled without this module's own __future__ flags (no future flag changes what an import compiles to),
        # at the optimisation level the run's interpreter would use (-O drops `if __debug__:` blocks, imports too).
        optimize = sys.flags.optimize if optimize == -1 else optimize
        text = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
        arguments = repr((type(source).__name__, filename, mode, flags, optimize)).encode()
        key = hashlib.sha256(arguments + b"\0" + text).hexdigest()
        code = kept.get(key)
        if code is None:
            code = code_directory.load(directory_fd, key)
            if not isinstance(code, types.CodeType):
                code = builtins.compile(source, filename, mode, flags, True, optimize)
                code_directory.keep(directory_fd, key, code)
            kept[key] = code
        return code

    return compile


def install(directory: str) -> bool:
    """Make Mitogen's import scans in this process, and the multiplexer it forks later, use the cache in `directory`
    (one subdirectory per bytecode version). False, and nothing changed, when the directory is not this user's alone
    or a scanner is missing."""
    try:
        scanners = [importlib.import_module(name) for name in SCANNERS]
    except ImportError:
        return False
    if any(getattr(scanner, "compile", builtins.compile) is not builtins.compile for scanner in scanners):
        return False  # installed already
    directory_fd = code_directory.open_private(
        os.path.join(directory, importlib.util.MAGIC_NUMBER.hex()), "Mitogen scan cache"
    )
    if directory_fd is None:
        return False
    compile_kept = cached_compile(directory_fd)
    for scanner in scanners:
        scanner.compile = compile_kept  # the module's own global, found before the builtin
    return True
