# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant's life in one table: the statuses it can be in and, for each lifecycle action (a tenant playbook's
`tenant_action`, the audit row's action), the statuses it starts from and the one it leaves the tenant in.

`registry_tenant` checks every read and record of an action against it, the webhook runner's decisions
(`webhook_runner/desired.py`) name its groups of statuses, `registry.tenants`' CHECK holds its statuses (a unit test
compares them) and `docs/reference/lifecycle.md` is generated from it."""

from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("provisioning", "active", "suspended", "terminated", "purged", "failed")
LIVE = ("active", "suspended")  # its data in use and billed; the runner suspends, resumes and changes plans here
ENDED = ("terminated", "purged")  # its subscription ended; only a reactivation or a new provision brings it back
STARTING = ("provisioning", "failed")  # placed or not, never served: a provision (again) brings it up


@dataclass(frozen=True)
class Action:
    """What an action may find and what it leaves; `leaves` None keeps the status."""

    starts_from: tuple[str, ...]
    leaves: str | None = None
    fails_from: tuple[str, ...] = ()  # where its failure may record the status `failed` (nothing left behind)
    summary: str = ""

    @property
    def leads_to(self) -> tuple[str, ...]:
        """The statuses it may record: the one it leaves, and `failed` where its failure may be recorded."""
        return (self.leaves,) * (self.leaves is not None) + ("failed",) * bool(self.fails_from)


ACTIONS = {
    "provision": Action(
        ("provisioning", "active"), "active", ("provisioning", "failed"), "a new tenant, or one whose provision failed"
    ),
    "tenant_suspend": Action(LIVE, "suspended", summary="Odoo stopped, logins refused, everything kept"),
    "tenant_resume": Action(LIVE, "active", summary="the reverse of a suspension"),
    "tenant_reactivate": Action(
        (*LIVE, "terminated"), "active", summary="a terminated tenant whose retention still runs, back"
    ),
    "tenant_terminate": Action((*LIVE, "terminated"), "terminated", summary="a final backup, kept until its purge"),
    "tenant_purge": Action(ENDED, "purged", summary="everything removed once its retention ended"),
    "tenant_change_plan": Action(LIVE, summary="moved to another plan (and database server)"),
    "tenant_transfer": Action(LIVE, summary="bound to another Kill Bill account"),
    "tenant_rotate_credentials": Action(LIVE, summary="its database password replaced"),
    "tenant_restore": Action(LIVE, summary="a backup, or a moment, restored"),
    "tenant_backup": Action((*LIVE, "terminated"), summary="a new backup"),
    "backups_drill": Action(LIVE, summary="a backup restored into a scratch tenant"),
    "tenant_update": Action(("active",), summary="updated to another Odoo build"),
    "tenant_restart": Action(("active",), summary="its Odoo restarted, stopped or started"),
    "tenant_admin_link": Action(("active",), summary="a new one-time sign-in link for its admin"),
}


def expected_statuses(action: str, status: str | None) -> tuple[str, ...]:
    """The statuses `action` may find the tenant in, when recording `status` (None: reading it); raises ValueError
    for an action the table lacks or a status it does not lead to."""
    if action not in ACTIONS:
        raise ValueError(f"{action!r} is not a lifecycle action (module_utils/lifecycle.py ACTIONS)")
    step = ACTIONS[action]
    if status is None or status == step.leaves:
        return step.starts_from
    if status == "failed" and step.fails_from:
        return step.fails_from
    leads = " or ".join(step.leads_to) or "no other status"
    raise ValueError(f"{action} leaves a tenant {leads}, not {status} (module_utils/lifecycle.py ACTIONS)")
