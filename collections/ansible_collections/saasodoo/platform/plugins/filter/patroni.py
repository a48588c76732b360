"""Filters for servers under Patroni: what to send its REST API so its shared settings become the inventory's."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


def patroni_config_patch(current: dict, desired: dict) -> dict:
    """The body of a `PATCH /config` that turns Patroni's dynamic configuration `current` into one holding `desired`:
    each key of `desired` whose value differs, and under `postgresql.parameters` a null for each setting `current`
    has and `desired` no longer names (Patroni's patch removes a key given as null). Keys only `current` holds
    outside the parameters (Patroni's own, a pause) are left alone. An empty dict when nothing differs."""
    if not isinstance(current, dict) or not isinstance(desired, dict):
        raise AnsibleFilterError("patroni_config_patch compares two dicts: Patroni's /config and the desired one")
    patch = {}
    for key, value in desired.items():
        if key == "postgresql" and isinstance(value, dict):
            section = _postgresql_patch(current.get("postgresql") or {}, value)
            if section:
                patch["postgresql"] = section
        elif current.get(key) != value:
            patch[key] = value
    return patch


def _postgresql_patch(current: dict, desired: dict) -> dict:
    section = {}
    for key, value in desired.items():
        if key == "parameters":
            have = current.get("parameters") or {}
            changed = {name: setting for name, setting in value.items() if have.get(name) != setting}
            changed.update({name: None for name in have if name not in value})
            if changed:
                section["parameters"] = changed
        elif current.get(key) != value:
            section[key] = value
    return section


class FilterModule:
    def filters(self):
        return {"patroni_config_patch": patroni_config_patch}
