"""Filters naming a tenant's things on a host, so roles and playbooks derive them in one place."""

from __future__ import annotations

import hashlib

from ansible.errors import AnsibleFilterError

from ansible_collections.saasodoo.platform.plugins.module_utils.placement import PlacementError, database_name
from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_limits import limits_names
from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_network import tenant_network as network_of

MAX_USER_NAME = 32  # useradd's limit


def tenant_os_user(tenant_id: str) -> str:
    """The OS user (and group) a tenant's Odoo runs as: named after its database, so ids that differ only in
    case or '-'/'_' (one tenant, one database) never get two; a long id is cut and told apart by a hash.

    No id may spell the cut form (an id of 27 characters could, and take that tenant's user): placement refuses its
    shape (module_utils/placement.py RESERVED_NAMES), and roles/odoo_runtime/tasks/tenant_user.yml takes over no
    user that is not the tenant's."""
    try:
        key = database_name(tenant_id).removeprefix("t_")
    except PlacementError as e:
        raise AnsibleFilterError(str(e)) from None
    name = f"odoo_{key}"
    if len(name) <= MAX_USER_NAME:
        return name
    return f"odoo_{key[:18]}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def tenant_network(http_port: int, scope: str) -> dict:
    """The network namespace and addresses of a process-runtime tenant (module_utils/tenant_network.py)."""
    try:
        return network_of(http_port, scope)
    except ValueError as e:
        raise AnsibleFilterError(str(e)) from None


def tenant_limits_names(http_port: int, scope: str) -> dict:
    """The control group and systemd slice of a process-runtime tenant's ceiling (module_utils/tenant_limits.py)."""
    try:
        return limits_names(http_port, scope)
    except ValueError as e:
        raise AnsibleFilterError(str(e)) from None


class FilterModule:
    def filters(self):
        return {
            "tenant_os_user": tenant_os_user,
            "tenant_network": tenant_network,
            "tenant_limits_names": tenant_limits_names,
        }
