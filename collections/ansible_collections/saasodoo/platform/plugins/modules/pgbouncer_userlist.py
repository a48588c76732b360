#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write PgBouncer's auth file from a server's login roles and reload PgBouncer, in one module call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pgbouncer_userlist
short_description: Keep PgBouncer's auth file equal to its server's SCRAM login roles
description:
  - The implementation of C(roles/pgbouncer)'s C(userlist) entry point, which is where playbooks call it from;
    one module call where a query, a template and a handler cost three.
  - PgBouncer checks each client against these SCRAM verifiers and reuses the client's SCRAM keys towards the
    server, so it never needs a plaintext password. Superusers and replication roles never go through it; a role
    that may not log in is not listed, so PgBouncer refuses it, unless it is one of I(incoming_roles).
  - The file is written atomically (owner PgBouncer's user, mode C(0600)) only when it changes; then PgBouncer is
    sent SIGHUP, which rereads it and keeps client connections. A PgBouncer not running reads it when it starts.
  - Runs for different tenants of one server rewrite the same file; each reads the roles and writes the file
    holding an exclusive lock on I(path)C(.lock), so none writes a list read before another run's login role
    existed. A role that may not log in yet is listed only by the run that names it in I(incoming_roles), so another
    run's rewrite in between drops it, until the moving run writes the file again after its switch.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  path:
    description: PgBouncer's auth file.
    type: path
    required: true
  owner:
    description: PgBouncer's OS user, which owns the file.
    type: str
    required: true
  pidfile:
    description: PgBouncer's pid file.
    type: path
    required: true
  incoming_roles:
    description:
      - Roles moving here that may not log in yet (a database move's target before its switch), listed all the same;
        PgBouncer knows them the moment the move opens them, and until then the server refuses them.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.superuser_login
"""

EXAMPLES = r"""
- name: Give PgBouncer the server's login roles
  saasodoo.platform.pgbouncer_userlist:
    path: /etc/pgbouncer/userlist.txt
    owner: postgres
    pidfile: /run/pgbouncer/pgbouncer.pid
    login_unix_socket: /run/postgresql
    login_port: 5432
"""

RETURN = r"""
roles:
  description: How many roles the auth file lists.
  returned: always
  type: int
reloaded:
  description: Whether PgBouncer was sent SIGHUP.
  returned: always
  type: bool
"""

import fcntl
import os
import pwd
import signal
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.saasodoo.platform.plugins.module_utils.files import holds, write_atomically
from ansible_collections.saasodoo.platform.plugins.module_utils.pinned_session import SUPERUSER_LOGIN_OPTIONS

PSYCOPG_IMPORT_ERROR = None

try:
    import psycopg
except ImportError:  # reported by main()
    psycopg = None
    PSYCOPG_IMPORT_ERROR = traceback.format_exc()

HEADER = ";; written by saasodoo.platform.pgbouncer_userlist from the server's SCRAM login roles\n"
LOGIN_ROLES = (
    "SELECT rolname, rolpassword FROM pg_catalog.pg_authid"
    " WHERE (rolcanlogin OR rolname = ANY (%s::pg_catalog.text[])) AND NOT rolsuper AND NOT rolreplication"
    " AND pg_catalog.starts_with(rolpassword, 'SCRAM-SHA-256$') ORDER BY rolname"
)


def quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def reload(pidfile: str) -> bool:
    """SIGHUP to the PgBouncer of `pidfile`; False when it does not run."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            owner=dict(type="str", required=True),
            pidfile=dict(type="path", required=True),
            **SUPERUSER_LOGIN_OPTIONS,
            incoming_roles=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    if psycopg is None:
        module.fail_json(msg=missing_required_lib("psycopg"), exception=PSYCOPG_IMPORT_ERROR)
    p = module.params
    with auth_file_lock(p["path"]):
        module.exit_json(**write_userlist(module, p))


@contextmanager
def auth_file_lock(path: str) -> Iterator[None]:
    """Held while the roles are read and the file at path written. Runs for other tenants on this server (a
    provision, a move) rewrite the same file: under this lock, none writes what it read before another's role was
    added."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_userlist(module: AnsibleModule, p: dict) -> dict:
    try:
        with psycopg.connect(
            host=p["login_unix_socket"], port=p["login_port"], user=p["login_user"], dbname="postgres",
            connect_timeout=10, prepare_threshold=None, options="-c search_path=pg_catalog,pg_temp",
        ) as conn:  # fmt: skip
            roles = conn.execute(LOGIN_ROLES, (p["incoming_roles"],)).fetchall()
    except psycopg.Error as error:
        module.fail_json(msg=f"cannot read the login roles of the server on port {p['login_port']}: {error}")
    content = (HEADER + "".join(f"{quoted(name)} {quoted(verifier)}\n" for name, verifier in roles)).encode()
    user = pwd.getpwnam(p["owner"])
    changed = not holds(p["path"], content, user.pw_uid, user.pw_gid, 0o600)
    reloaded = False
    if changed and not module.check_mode:
        write_atomically(p["path"], content, user.pw_uid, user.pw_gid, 0o600)
        reloaded = reload(p["pidfile"])
    return dict(changed=changed, roles=len(roles), reloaded=reloaded)


if __name__ == "__main__":
    main()
