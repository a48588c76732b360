"""Options of the modules that log in to a server as its superuser over its Unix socket (module_utils/pinned_session.py
SUPERUSER_LOGIN_OPTIONS)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  login_user:
    description: The server's superuser.
    type: str
    default: postgres
  login_unix_socket:
    description: The server's Unix socket directory.
    type: path
    required: true
  login_port:
    description: The server's port.
    type: int
    required: true
"""
