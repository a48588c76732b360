# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback plugin: every playbook run becomes a `run` in the platform registry's audit chain."""

# ruff: noqa: E402 - the documentation comes first, as in every Ansible plugin; the imports follow it.
from __future__ import annotations

DOCUMENTATION = r"""
name: audit
type: notification
short_description: Record every playbook run in the SaaSOdoo registry's audit chain
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
description:
  - Records each C(ansible-playbook) run, typed by a person or started by the webhook runner, as two C(run) rows
    in the registry's hash-chained audit trail (C(registry.audit), subject C(run:<run id>)), one when its first
    play starts and one when it ends.
  - The rows name who ran it (the OS user, and the runner's job when the runner started it), the playbook, the
    inventory sources, the limit, check mode, the names of the extra variables (never their values), and at the
    end the per-host ok/changed/failed/unreachable/skipped/rescued counts, the duration and the outcome
    (C(ok) or C(failed)). A run with a start and no end was interrupted.
  - Every play gets the variable C(saasodoo_audit_run), the run id. C(saasodoo_registry_login) passes it to the
    registry modules, whose audit rows then name the run (C(detail.run)), so an auditor goes from a run to the
    tenant rows it wrote and back (C(playbooks/registry_audit.yml)).
  - The registry is the one the run's inventory reads with the C(saasodoo.platform.registry) inventory plugin (its
    first source whose name ends in C(registry.yml)), with that configuration's login.
  - Each run keeps a registry session of its own open until it ends, its C(application_name)
    C(saasodoo-run <run id>). While it lives, the tenant the run took
    (C(saasodoo.platform.registry_tenant) I(hold_seconds)) stays the run's, and other runs wait. It lives in the
    C(ansible-playbook) process itself, and the processes that one forks lose their copy of it, so it ends when
    the run ends, however it ends; at the end the callback also releases the run's tenants. The run's two rows are
    written through it (one login per run), or through a session of their own when it is not there.
  - A registry that cannot be reached, or an inventory without one, makes the callback warn; it never fails a
    run. A fresh install's first C(site.yml) creates the registry midway, so its start is not recorded, its end is.
requirements:
  - psycopg >= 3.1 on the controller
  - enabled in ansible.cfg (C(callbacks_enabled = saasodoo.platform.audit))
options:
  registry_config:
    description: The C(saasodoo.platform.registry) inventory configuration naming the registry, instead of the
      first such source of the run's inventory.
    type: path
    env:
      - name: SAASODOO_AUDIT_REGISTRY_CONFIG
    ini:
      - section: callback_saasodoo_audit
        key: registry_config
  run_id:
    description: The run's id, instead of a new random one (letters, digits and C(_.:-), at most 64).
    type: str
    env:
      - name: SAASODOO_AUDIT_RUN
  job:
    description: The webhook runner's job this run executes; recorded as the run's actor C(job:<id>).
    type: str
    env:
      - name: SAASODOO_AUDIT_JOB
"""

import getpass
import os
import time
import uuid
from pathlib import Path
from typing import Any

from ansible import constants as C
from ansible import context
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import inventory_loader

from ansible_collections.saasodoo.platform.plugins.module_utils.audit import RUN_KIND, record_audit, run_subject
from ansible_collections.saasodoo.platform.plugins.module_utils.registry import AUDIT_RUN_ID, connect_registry

RUN_VAR = "saasodoo_audit_run"
REGISTRY_INVENTORY_PLUGIN = "saasodoo.platform.registry"
REGISTRY_CONFIG_SUFFIXES = ("registry.yml", "registry.yaml")


def registry_config_in(sources: list[str]) -> str | None:
    """The first inventory source (or file of a source directory) that configures the registry plugin."""
    for source in sources:
        path = Path(source)
        candidates = sorted(path.iterdir()) if path.is_dir() else [path]
        for candidate in candidates:
            if candidate.is_file() and candidate.name.endswith(REGISTRY_CONFIG_SUFFIXES):
                return str(candidate)
    return None


def os_user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (a container)
        user = f"uid {os.getuid()}"
    sudo_user = os.environ.get("SUDO_USER")
    return f"{sudo_user} (as {user})" if sudo_user and sudo_user != user else user


def host_counts(stats: Any) -> dict[str, dict[str, int]]:
    counts = {}
    for host in sorted(stats.processed):
        summary = stats.summarize(host)
        counts[host] = {
            "ok": summary["ok"],
            "changed": summary["changed"],
            "failed": summary["failures"],
            "unreachable": summary["unreachable"],
            "skipped": summary["skipped"],
            "rescued": summary["rescued"],
        }
    return counts


_HOLDER_FD: int | None = None  # the socket of the run's holder session, while there is one


def _holder_not_inherited() -> None:
    """In a forked child: the holder session's socket becomes /dev/null (closing it would free the descriptor's
    number for the child's next file, which psycopg would then write its goodbye to)."""
    if _HOLDER_FD is not None:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, _HOLDER_FD)
        os.close(null)


os.register_at_fork(after_in_child=_holder_not_inherited)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "saasodoo.platform.audit"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_id = ""
        self.base_run_id = ""
        self.playbooks = 0  # `ansible-playbook a.yml b.yml` runs each as its own run: <id>, <id>.2, ...
        self.facts: dict[str, Any] | None = None  # what the start row says; known at the first play
        self.started = 0.0
        self.playbook = ""
        self.holder: Any = None  # the run's holder session (a psycopg connection)

    def set_options(self, *args: Any, **kwargs: Any) -> None:
        super().set_options(*args, **kwargs)
        given = self.get_option("run_id")
        if given and not AUDIT_RUN_ID.fullmatch(given):
            self._display.warning(f"saasodoo_audit: ignoring SAASODOO_AUDIT_RUN {given!r}: not a run id")
            given = None
        self.run_id = self.base_run_id = given or uuid.uuid4().hex

    # -- the run ------------------------------------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self.playbooks += 1
        if self.playbooks > 1:
            self._release_run()
            self.run_id, self.facts = f"{self.base_run_id}.{self.playbooks}", None
        self.started = time.monotonic()
        self.playbook = os.path.relpath(playbook._file_name)

    def v2_playbook_on_play_start(self, play: Any) -> None:
        play.vars[RUN_VAR] = self.run_id  # every play's registry modules name the run (saasodoo_registry_login)
        if self.facts is None:
            self.facts = self._run_facts(play)
            self._hold_run()
            self._record("start", self.facts, warn=False)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        hosts = host_counts(stats)
        failed = any(c["failed"] or c["unreachable"] for c in hosts.values())
        self._record(
            "end",
            {
                **(self.facts or {"playbook": self.playbook}),
                "hosts": hosts,
                "seconds": round(time.monotonic() - self.started, 2),
                "outcome": "failed" if failed else "ok",
            },
            warn=True,
        )
        self._release_run()

    def _run_facts(self, play: Any) -> dict[str, Any]:
        args = context.CLIARGS
        job = self.get_option("job")
        return {
            "playbook": self.playbook,
            "user": os_user(),
            "job": job,
            "inventory": list(args.get("inventory") or C.DEFAULT_HOST_LIST or []),
            "limit": args.get("subset"),
            "check_mode": bool(args.get("check")),
            # Names only: an extra variable may carry a secret or a customer's data.
            "extra_vars": sorted(play.get_variable_manager().extra_vars),
        }

    # -- the registry -------------------------------------------------------------------------------------------

    def _record(self, phase: str, facts: dict[str, Any], warn: bool) -> None:
        job = self.get_option("job")
        row = {
            "actor": f"job:{job}" if job else facts.get("user") or os_user(),
            "kind": RUN_KIND,
            "subject": run_subject(self.run_id),
            "detail": {"run": self.run_id, "phase": phase, **facts},
        }
        # Through the run's holder session while there is one: one login per run (TLS, SCRAM, a backend) where each
        # row used to pay its own. A holder the registry lost meanwhile: a session of its own, as without one.
        if self.holder is not None:
            try:
                record_audit(self.holder, **row)
                return
            except Exception as e:
                self._display.vv(f"saasodoo_audit: run {self.run_id}: its holder session failed ({e}), a new one")
        try:
            with self._connect() as conn:
                record_audit(conn, **row)
        except Exception as e:  # never fail the run over its record
            message = f"saasodoo_audit: the {phase} of run {self.run_id} ({self.playbook}) was not recorded: {e}"
            if warn:
                self._display.warning(message)
            else:
                self._display.vv(message)

    def _hold_run(self) -> None:
        """Open the run's holder session (registry.tenant_runs): it lives as long as this process does."""
        holder = None
        try:
            holder = self._connect()
            holder.execute(
                "SELECT pg_catalog.set_config('application_name', registry.run_holder_name(%s), false)", (self.run_id,)
            )
        except Exception as e:  # a module asked to hold a tenant then warns that the run holds nothing
            if holder is not None:
                holder.close()
            self._display.vv(f"saasodoo_audit: run {self.run_id} has no holder session in the registry: {e}")
            return
        self.holder = holder
        # Ansible forks its workers (and Mitogen its multiplexer, which may outlive a killed run) from this
        # process: a child's copy of the holder's socket would keep the session, and the run's tenants, alive.
        # Each child's copy is replaced with /dev/null; the session stays this process's alone.
        global _HOLDER_FD
        _HOLDER_FD = holder.fileno()

    def _release_run(self) -> None:
        global _HOLDER_FD
        if self.holder is None:
            return
        _HOLDER_FD = None
        try:
            self.holder.execute("DELETE FROM registry.tenant_runs WHERE run_id = %s", (self.run_id,))
            self.holder.close()
        except Exception as e:  # the session ends with the process anyway, and frees the tenants with it
            self._display.vv(f"saasodoo_audit: run {self.run_id}: releasing its tenants: {e}")
        self.holder = None

    def _connect(self) -> Any:
        config = self.get_option("registry_config") or registry_config_in(
            list(context.CLIARGS.get("inventory") or C.DEFAULT_HOST_LIST or [])
        )
        if not config:
            raise LookupError(f"the inventory has no {REGISTRY_INVENTORY_PLUGIN} source (a *registry.yml file)")
        settings = inventory_loader.get(REGISTRY_INVENTORY_PLUGIN).registry_settings(DataLoader(), config)
        return connect_registry(settings.login())
