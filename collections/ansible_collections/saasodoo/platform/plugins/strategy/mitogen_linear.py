# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible's linear strategy, run through Mitogen: one Python kept alive per connection for the whole run.

Stock Ansible starts a new Python for every task on every host, about 0.4 s of a 2-core machine each time; a
no-change site.yml is ~150 of them. Mitogen (requirements.txt) runs the same modules in an interpreter it keeps
(one for all the local-connection hosts, which then take turns), so task results are the same and only the cost
per task drops. ansible.cfg selects this strategy; `ANSIBLE_STRATEGY=linear` runs any playbook without it.
ansible-core 2.19 warns that strategy plugins from outside ansible.builtin carry no compatibility guarantee: the
price of the speed, paid by pinning both.

Loading this strategy also turns on two code caches for the run: the Jinja code cache
(plugin_utils/jinja_code_cache.py, .state/jinja-code): a template compiled by one task's process is loaded, not
compiled again, by the next; and the Mitogen scan cache (plugin_utils/mitogen_scan_cache.py, .state/mitogen-scan):
the Python files Mitogen compiles to read their imports are compiled once, not once per module and run.
And it freezes the run's objects out of the garbage collector (below).
"""

# ruff: noqa: E402 - the documentation comes first, as in every Ansible plugin; the imports follow it.
DOCUMENTATION = r"""
name: mitogen_linear
short_description: Ansible's linear strategy through Mitogen, with the platform's code caches
description:
  - Runs each play as Ansible's C(linear) strategy does, through Mitogen (C(mitogen) in requirements.txt), which
    keeps one Python per connection for the whole run instead of starting one per task.
  - Keeps the code ansible-core compiles templates into and the code Mitogen compiles Python files into, in the
    C(.state) directory beside the collections path the collection is loaded from (the checkout's, which git
    ignores), so every run of the checkout shares them, molecule's too.
  - Pins no process to a CPU, and freezes the objects made before the run's first play out of the garbage collector.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
requirements:
  - mitogen (the version requirements.txt pins) on the controller
notes:
  - Selected in the repository's C(ansible.cfg) (C(strategy = saasodoo.platform.mitogen_linear));
    C(ANSIBLE_STRATEGY=linear) runs a playbook without it.
"""

import gc
from pathlib import Path

from ansible.errors import AnsibleError

from ansible_collections.saasodoo.platform.plugins.plugin_utils import jinja_code_cache, mitogen_scan_cache

try:
    from ansible_mitogen import affinity
    from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule
except ImportError as missing:  # a controller without Mitogen: a run that selects this strategy says so
    MITOGEN_MISSING = str(missing)

    class StrategyModule:
        def __init__(self, *args, **kwargs):
            raise AnsibleError(f"saasodoo.platform.mitogen_linear needs mitogen (requirements.txt): {MITOGEN_MISSING}")

else:
    # Mitogen pins its processes to CPUs and keeps CPU 0 for its multiplexer: on a 2-core host the controller, the
    # modules and everything they start (PostgreSQL, PgBouncer, supervisord through the local connection) inherit
    # CPU 1 alone, and the platform runs on half the machine. The base Policy pins nothing: the kernel balances.
    affinity.policy = affinity.Policy()

# The caches are the checkout's: in its state directory (.state, which git ignores), beside the collections path
# this collection is loaded from (<checkout>/collections/ansible_collections/saasodoo/platform/plugins/strategy), so
# every run of the checkout shares them, whatever ansible.cfg it reads (molecule's is its own, in a scratch directory).
STATE = Path(__file__).resolve().parents[6] / ".state"
jinja_code_cache.install(str(STATE / "jinja-code"))
mitogen_scan_cache.install(str(STATE / "mitogen-scan"))  # before the multiplexer is forked, which scans

# A strategy is loaded once the playbook is parsed and the inventory read: the objects made so far (ansible's modules
# and plugins, the plays, the hosts: about 90,000 in a tenant job) live until the process exits. Frozen, the collector
# never walks them again, and above all not in the collections of the interpreter's exit, which took 0.35-0.41 s of
# every run's CPU on this machine (0.07 s frozen; a suspend or resume job 0.4 s shorter). The objects made later are
# collected as before; a frozen one that becomes garbage in a cycle is freed with the process (the run keeps them).
gc.freeze()

__all__ = ["StrategyModule"]
