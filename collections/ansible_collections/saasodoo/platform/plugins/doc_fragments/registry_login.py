"""Options of the modules that work on the registry database."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  login_host:
    description: Registry server address.
    type: str
    default: 127.0.0.1
  login_port:
    description: Registry server port.
    type: int
    default: 5432
  login_db:
    description: Registry database.
    type: str
    default: saasodoo_registry
  login_user:
    description: Registry owner role.
    type: str
    default: saasodoo_registry
  login_password:
    description: The owner role's password.
    type: str
    required: true
  login_sslmode:
    description: libpq C(sslmode) of the login; C(verify-full) checks the registry's certificate and name.
    type: str
    choices: [disable, prefer, require, verify-ca, verify-full]
    default: prefer
  login_ca_certificate:
    description:
      - The CA (PEM) the registry's certificate is checked against, as content (the module may run on a host
        without the controller's files); written to a private file while the module connects.
    type: str
    default: ""
  audit_run:
    description:
      - The playbook run this module works for; every audit row it writes names it (C(detail.run)).
      - Playbooks pass C(saasodoo_audit_run), which the C(saasodoo.platform.audit) callback sets for every play.
    type: str
    default: ""
  lease:
    description:
      - The fencing token of the webhook runner's lease on the Kill Bill account this run works for (the runner
        passes it as the extra variable C(saasodoo_lease)). Once another worker has taken the account over, the
        registry refuses every write this module makes. Empty for a run an operator started.
    type: str
    default: ""
requirements:
  - psycopg >= 3.1
"""

    # The registry's own machinery (module_utils/registry_session.py SESSION_LOGIN_OPTIONS): a module lists it before
    # saasodoo.platform.registry_login, since the first fragment to document an option is the one that counts.
    SESSION = r"""
options:
  login_password:
    description: The login role's password; not needed for a login the server admits without one (C(postgres) over
      the Unix socket, peer authentication).
    type: str
    required: false
  session_role:
    description: The role to act as once logged in (C(SET ROLE)), for example the registry owner when logged in as
      C(postgres).
    type: str
"""
