"""SaaSOdoo webhook runner: Kill Bill push notifications in, idempotent playbook runs out (docs/runner.md).

- ``app``: the Flask app gunicorn serves: ``POST /killbill/<token>`` stores each notification in the
  registry inbox before answering; ``/healthz``, ``/metrics`` and the admin API (``/jobs``, ``/tenants``).
- ``worker``: takes the inbox per Kill Bill account, reads the account back from Kill Bill's REST API and
  runs the playbooks that bring its tenants to that state, through ansible-runner.
- ``desired``: the pure decision (Kill Bill state + registry row -> actions), unit-tested without I/O.
"""

import sys
from pathlib import Path

# The collection's module_utils are the runner's too (the tenant lifecycle's table: one home for what both decide
# on). The runner runs from the project's checkout, whose collections/ Ansible reads them from.
_COLLECTIONS = str(Path(__file__).resolve().parent.parent / "collections")
if _COLLECTIONS not in sys.path:
    sys.path.insert(0, _COLLECTIONS)  # before any saasodoo.platform installed elsewhere
