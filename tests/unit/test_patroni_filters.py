"""The patch the postgres_ha role sends Patroni so that a server's shared settings become the inventory's."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.saasodoo.platform.plugins.filter.patroni import patroni_config_patch

CURRENT = {
    "ttl": 10,
    "loop_wait": 2,
    "retry_timeout": 4,
    "synchronous_mode": False,
    "postgresql": {"use_pg_rewind": True, "parameters": {"max_connections": 200, "work_mem": "4MB"}},
}


def test_nothing_to_send_when_the_settings_are_the_inventorys():
    parameters = {"max_connections": 200, "work_mem": "4MB"}
    desired = {"ttl": 10, "postgresql": {"use_pg_rewind": True, "parameters": parameters}}
    assert patroni_config_patch(CURRENT, desired) == {}


def test_a_changed_key_and_a_changed_setting_are_sent_alone():
    parameters = {"max_connections": 300, "work_mem": "4MB"}
    desired = {"ttl": 10, "synchronous_mode": True, "postgresql": {"parameters": parameters}}
    assert patroni_config_patch(CURRENT, desired) == {
        "synchronous_mode": True,
        "postgresql": {"parameters": {"max_connections": 300}},
    }


def test_a_setting_the_inventory_no_longer_names_is_removed():
    desired = {"postgresql": {"parameters": {"max_connections": 200}}}
    assert patroni_config_patch(CURRENT, desired) == {"postgresql": {"parameters": {"work_mem": None}}}


def test_patroni_keys_the_inventory_does_not_name_are_left_alone():
    assert patroni_config_patch({**CURRENT, "pause": True}, {"ttl": 10}) == {}


def test_a_bootstrap_without_parameters_gets_them_all():
    desired = {"postgresql": {"parameters": {"wal_level": "logical"}}}
    assert patroni_config_patch({"ttl": 30}, desired) == desired


def test_anything_but_two_dicts_is_refused():
    with pytest.raises(AnsibleFilterError):
        patroni_config_patch(None, {})
