"""Filters reading Kill Bill's answers for playbooks/killbill_setup.yml, so the playbook compares what Kill Bill
holds with the inventory without hand-written Jinja over its JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from ansible.errors import AnsibleFilterError


def _utc(text: str) -> datetime:
    """An ISO 8601 time as Kill Bill or the inventory writes it (2026-01-01T00:00:00.000Z, +00:00, +0000)."""
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise AnsibleFilterError(f"not an ISO 8601 time with its offset: {text!r}") from None
    if moment.tzinfo is None:
        raise AnsibleFilterError(f"{text!r} has no UTC offset")
    return moment.astimezone(UTC)


def _amount(value) -> Decimal:
    try:
        return Decimal(str(value))  # equal whatever the trailing zeros: 10 == 10.00
    except InvalidOperation:
        raise AnsibleFilterError(f"not an amount: {value!r}") from None


def _shown(value) -> str:
    return f"{value:f}" if isinstance(value, Decimal) else str(value)


def killbill_catalog_version(versions: list, effective_date: str) -> dict | None:
    """The version of GET /1.0/kb/catalog (a list of CatalogJson) that takes effect at effective_date, or None."""
    wanted = _utc(effective_date)
    return next((v for v in versions or [] if _utc(v["effectiveDate"]) == wanted), None)


def killbill_catalog_differences(version: dict, catalog: dict) -> list[str]:
    """How a CatalogJson version differs from saasodoo_killbill_catalog (its name, each plan's product, billing
    period, trial and recurring price in the catalog's currency), one line each; [] when it matches."""
    differences = []
    if version.get("name") != catalog["name"]:
        differences.append(f"catalog name {version.get('name')!r}, not {catalog['name']!r}")
    held = {}
    for product in version.get("products") or []:
        for plan in product.get("plans") or []:
            phases = {phase["type"]: phase for phase in plan.get("phases") or []}
            trial = phases.get("TRIAL", {}).get("duration") or {}
            prices = {p["currency"]: _amount(p["value"]) for p in phases.get("EVERGREEN", {}).get("prices") or []}
            held[plan["name"]] = {
                "product": product["name"],
                "billing_period": plan.get("billingPeriod"),
                "trial_days": trial.get("number") if trial.get("unit") == "DAYS" else None,
                "price": prices.get(catalog["currency"]),
            }
    for name, plan in sorted(catalog["plans"].items()):
        wanted = {
            "product": plan["product"],
            "billing_period": plan.get("billing_period", "MONTHLY"),
            "trial_days": plan.get("trial_days") or None,
            "price": _amount(plan["price"]),
        }
        if name not in held:
            differences.append(f"plan {name} is missing")
            continue
        differences += [
            f"plan {name}: {key} {_shown(held[name][key])} in Kill Bill, {_shown(value)} here"
            for key, value in wanted.items()
            if held[name][key] != value
        ]
    differences += [f"plan {name} is not in the inventory" for name in sorted(set(held) - set(catalog["plans"]))]
    return differences


class FilterModule:
    def filters(self):
        return {
            "killbill_catalog_version": killbill_catalog_version,
            "killbill_catalog_differences": killbill_catalog_differences,
        }
