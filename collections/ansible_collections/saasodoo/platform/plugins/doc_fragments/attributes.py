"""What the collection's modules support, as ansible-core's attributes."""

from __future__ import annotations


class ModuleDocFragment:
    # The collection's usual case; a module's own attributes say where it differs.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Runs in check mode, reporting what it would change and writing nothing.
    support: full
  diff_mode:
    description: Returns what it changed (or would change, in check mode) when run in diff mode.
    support: none
"""
