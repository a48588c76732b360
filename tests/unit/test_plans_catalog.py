"""The plan catalog of every inventory: the Kill Bill plan names, each with complete entitlements."""

from __future__ import annotations

import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.registry_backups import retention_problem

from conftest import INVENTORIES, load_yaml

KILL_BILL_PLANS = {"basic-monthly", "basic-immediate", "basic-test-trial", "standard-monthly", "premium-monthly"}
ENTITLEMENTS = {
    "db_type": str,
    "cpu": (int, float),
    "memory_mb": int,
    "storage_gb": int,
    "odoo_workers": int,
    "db_connection_limit": int,
    "odoo_version": str,
    "odoo_modules": list,
    "backup_keep": (int, dict),
    "retention_days": int,
}
INVENTORY_NAMES = sorted(p.name for p in INVENTORIES.iterdir() if (p / "group_vars/all/plans.yml").exists())


def catalog(inventory: str) -> dict:
    return load_yaml(INVENTORIES / inventory / "group_vars/all/plans.yml")["saasodoo_plans"]


def test_both_inventories_have_a_catalog():
    assert {"local", "production.example"} <= set(INVENTORY_NAMES)


@pytest.mark.parametrize("inventory", INVENTORY_NAMES)
def test_catalog_has_the_kill_bill_plans(inventory):
    assert set(catalog(inventory)) >= KILL_BILL_PLANS


@pytest.mark.parametrize("inventory", INVENTORY_NAMES)
def test_every_plan_has_complete_typed_entitlements(inventory):
    for name, plan in catalog(inventory).items():
        missing = set(ENTITLEMENTS) - set(plan)
        assert not missing, f"{inventory}: plan {name} lacks {sorted(missing)}"
        for key, kind in ENTITLEMENTS.items():
            assert isinstance(plan[key], kind) and not isinstance(plan[key], bool), f"{inventory}: {name}.{key}"
        assert plan["db_type"] in {"shared", "dedicated"}, f"{inventory}: {name}.db_type"
        # ha is optional, and only a dedicated server has one of its own to keep up.
        assert plan.get("ha", "none") in {"none", "async", "sync"}, f"{inventory}: {name}.ha"
        assert plan.get("ha", "none") == "none" or plan["db_type"] == "dedicated", f"{inventory}: {name}.ha"
        assert retention_problem(plan["backup_keep"]) is None, f"{inventory}: {name}.backup_keep"
        # Optional: how far back its tenants' point-in-time restores reach (servers_base_backup.yml keeps it).
        days = plan.get("point_in_time_days", 1)
        assert isinstance(days, int) and not isinstance(days, bool) and days >= 1, (
            f"{inventory}: {name}.point_in_time_days"
        )
        assert plan["db_connection_limit"] > 0 and plan["odoo_workers"] > 0


@pytest.mark.parametrize("inventory", INVENTORY_NAMES)
def test_db_type_follows_the_entitlements_not_the_name(inventory):
    plans = catalog(inventory)
    assert plans["premium-monthly"]["db_type"] == "dedicated"
    assert {plans[p]["db_type"] for p in KILL_BILL_PLANS - {"premium-monthly"}} == {"shared"}
