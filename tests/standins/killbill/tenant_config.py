"""The Kill Bill stand-in's per-tenant configuration: the catalog and the overdue configuration uploaded as XML,
read back as Kill Bill writes them. NOT Kill Bill: only what playbooks/killbill_setup.yml and the stand-in's
billing need, each behaviour from the Kill Bill source it mirrors (killbill/killbill, 0.24/0.25):

- catalog (catalog/.../api/user/DefaultCatalogUserApi.uploadCatalog, DefaultVersionedCatalog.validate): every
  upload adds a version; one whose effectiveDate a version already has, or whose catalogName differs from the
  versions', is refused with 400, code 2080 CAT_INVALID_FOR_TENANT "Invalid catalog for tenant : <record id>"
  (killbill-api ErrorCode.java); GET /catalog lists the versions as CatalogJson (jaxrs/.../json/CatalogJson.java),
  [] before any upload (the tenant's template catalog is filtered out: VersionedCatalogLoader);
- overdue (overdue/.../api/DefaultOverdueApi.uploadOverdueConfig): an upload replaces the configuration, stored as
  given (GET /tenants/userKeyValue/OVERDUE_CONFIG reads it back, TenantResource.getUserKeyValue); GET /overdue is
  OverdueJson (jaxrs/.../json/OverdueJson.java), NoOverdueConfig.xml's single "Clear" state before any upload;
  the states are evaluated in document order, the first whose condition holds wins
  (overdue/.../config/DefaultOverdueStateSet.calculateOverdueState).

Simplified: of a catalog, only what the stand-in bills from (per plan: product, billing period, trial days,
recurring price in the catalog's first currency); of an overdue state, only the condition
timeSinceEarliestUnpaidInvoiceEqualsOrExceeds in DAYS (the only one Kill Bill's JSON upload supports either,
OverdueJson.toOverdueConfigWithValidation). A state's subscriptionCancellationPolicy is shown, not carried out.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

CAT_INVALID_FOR_TENANT = 2080
TENANT_RECORD_ID = 1  # the stand-in serves one tenant


class ConfigRefused(Exception):
    """An upload Kill Bill refuses: (code, message) of its BillingExceptionJson."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PlanDef:
    product: str
    category: str
    billing_period: str
    trial_days: int | None
    price: Decimal


@dataclass(frozen=True)
class CatalogVersion:
    name: str
    effective: datetime
    currencies: tuple[str, ...]
    plans: dict[str, PlanDef]
    price_list: tuple[str, ...]


@dataclass(frozen=True)
class OverdueState:
    name: str
    days: int | None
    external_message: str = ""
    block_changes: bool = False
    disable_entitlement: bool = False
    cancellation_policy: str = "NONE"
    auto_reevaluation_days: int | None = None


@dataclass
class TenantConfig:
    catalog: list[CatalogVersion] = field(default_factory=list)
    catalog_xml: list[str] = field(default_factory=list)  # as uploaded (the CATALOG key's values)
    overdue: list[OverdueState] = field(default_factory=list)  # empty: NoOverdueConfig.xml
    overdue_xml: str | None = None
    initial_reevaluation_days: int | None = None

    # -- catalog -----------------------------------------------------------------------------------------------

    def upload_catalog(self, text: str) -> CatalogVersion:
        version = parse_catalog(text)
        if any(v.effective == version.effective for v in self.catalog) or any(
            v.name != version.name for v in self.catalog
        ):
            raise ConfigRefused(CAT_INVALID_FOR_TENANT, f"Invalid catalog for tenant : {TENANT_RECORD_ID}")
        self.catalog.append(version)
        self.catalog.sort(key=lambda v: v.effective)
        self.catalog_xml.append(text)
        return version

    def plan(self, name: str, at: datetime) -> PlanDef | None:
        """The plan in the version in effect at `at` (the earliest one before any), None without a catalog."""
        current = [v for v in self.catalog if v.effective <= at] or self.catalog[:1]
        return current[-1].plans.get(name) if current else None

    def catalog_json(self) -> list[dict]:
        return [_catalog_json(version) for version in self.catalog]

    # -- overdue -----------------------------------------------------------------------------------------------

    def upload_overdue(self, text: str) -> None:
        self.initial_reevaluation_days, self.overdue = parse_overdue(text)
        self.overdue_xml = text

    def overdue_state(self, unpaid_days: float | None) -> OverdueState | None:
        """The first state, in document order, whose condition holds; None: the clear state."""
        if unpaid_days is None:
            return None
        return next((s for s in self.overdue if s.days is not None and unpaid_days >= s.days), None)

    def overdue_json(self) -> dict:
        states = self.overdue or [OverdueState("Clear", None)]
        return {
            "initialReevaluationInterval": self.initial_reevaluation_days,
            "overdueStates": [
                {
                    "name": s.name,
                    "isClearState": s.days is None,
                    "condition": None
                    if s.days is None
                    else {
                        "timeSinceEarliestUnpaidInvoiceEqualsOrExceeds": {"unit": "DAYS", "number": s.days},
                        "controlTagInclusion": None,
                        "controlTagExclusion": None,
                        "numberOfUnpaidInvoicesEqualsOrExceeds": None,
                        "responseForLastFailedPayment": None,
                        "totalUnpaidInvoiceBalanceEqualsOrExceeds": None,
                    },
                    "externalMessage": s.external_message,
                    "isBlockChanges": s.block_changes,
                    "isDisableEntitlement": s.disable_entitlement,
                    "subscriptionCancellationPolicy": s.cancellation_policy,
                    "autoReevaluationIntervalDays": s.auto_reevaluation_days,
                }
                for s in states
            ],
        }

    def user_key_values(self, key: str) -> dict:
        """GET /tenants/userKeyValue/<key>: the stored strings."""
        values = {"CATALOG": self.catalog_xml, "OVERDUE_CONFIG": [self.overdue_xml] if self.overdue_xml else []}
        return {"key": key, "values": list(values.get(key, []))}


# -- parsing ---------------------------------------------------------------------------------------------------


def _xml(text: str) -> ET.Element:
    try:
        return ET.fromstring(text)  # noqa: S314 - test uploads on loopback; expat >= 2.4.1 limits entity expansion
    except ET.ParseError as exc:  # Kill Bill's XMLLoader fails the upload (IllegalStateException: 500)
        raise ValueError(f"not well-formed XML: {exc}") from exc


def _required(element: ET.Element, path: str) -> str:
    found = element.findtext(path)
    if found is None or not found.strip():
        raise ConfigRefused(CAT_INVALID_FOR_TENANT, f"Invalid catalog for tenant : {TENANT_RECORD_ID}")
    return found.strip()


def _days(duration: ET.Element | None) -> int | None:
    if duration is None or duration.findtext("unit") != "DAYS":
        return None
    return int(duration.findtext("number"))


def parse_catalog(text: str) -> CatalogVersion:
    root = _xml(text)
    effective = datetime.fromisoformat(_required(root, "effectiveDate")).astimezone(UTC)
    currencies = tuple(c.text.strip() for c in root.findall("currencies/currency"))
    categories = {p.get("name"): p.findtext("category", "BASE") for p in root.findall("products/product")}
    if root.find("rules") is None or not currencies:  # <rules> and a currency are required (StandaloneCatalog)
        raise ConfigRefused(CAT_INVALID_FOR_TENANT, f"Invalid catalog for tenant : {TENANT_RECORD_ID}")
    plans = {}
    for plan in root.findall("plans/plan"):
        product = _required(plan, "product")
        final = plan.find("finalPhase")
        trial = next((p for p in plan.findall("initialPhases/phase") if p.get("type") == "TRIAL"), None)
        price = next(
            (
                Decimal(p.findtext("value"))
                for p in final.findall("recurring/recurringPrice/price")
                if p.findtext("currency") == currencies[0]
            ),
            Decimal(0),
        )
        plans[plan.get("name")] = PlanDef(
            product=product,
            category=categories.get(product, "BASE"),
            billing_period=final.findtext("recurring/billingPeriod", "NO_BILLING_PERIOD"),
            trial_days=_days(trial.find("duration")) if trial is not None else None,
            price=price,
        )
    price_list = tuple(p.text.strip() for p in root.findall("priceLists/defaultPriceList/plans/plan"))
    return CatalogVersion(_required(root, "catalogName"), effective, currencies, plans, price_list)


def parse_overdue(text: str) -> tuple[int | None, list[OverdueState]]:
    states = _xml(text).find("accountOverdueStates")
    if states is None:
        raise ValueError("overdueConfig needs accountOverdueStates")
    parsed = []
    for state in states.findall("state"):
        if state.findtext("isClearState") == "true":
            continue  # the clear state is built in (DefaultOverdueStateSet.clearState)
        days = _days(state.find("condition/timeSinceEarliestUnpaidInvoiceEqualsOrExceeds"))
        parsed.append(
            OverdueState(
                name=state.get("name"),
                days=days,
                external_message=state.findtext("externalMessage", ""),
                block_changes=state.findtext("blockChanges") == "true",
                disable_entitlement=state.findtext("disableEntitlementAndChangesBlocked") == "true",
                cancellation_policy=state.findtext("subscriptionCancellationPolicy", "NONE"),
                auto_reevaluation_days=_days(state.find("autoReevaluationInterval")),
            )
        )
    return _days(states.find("initialReevaluationInterval")), parsed


def _catalog_json(version: CatalogVersion) -> dict:
    products: dict[str, dict] = {}
    for name, plan in version.plans.items():
        product = products.setdefault(
            plan.product,
            {"type": plan.category, "name": plan.product, "prettyName": plan.product, "plans": [], "included": [],
             "available": []},
        )  # fmt: skip
        phases = []
        if plan.trial_days is not None:
            phases.append({"type": "TRIAL", "prices": [], "fixedPrices": [], "duration": {"unit": "DAYS",
                           "number": plan.trial_days}, "usages": []})  # fmt: skip
        phases.append({
            "type": "EVERGREEN", "prices": [{"currency": version.currencies[0], "value": plan.price}],
            "fixedPrices": [], "duration": {"unit": "UNLIMITED", "number": -1}, "usages": [],
        })  # fmt: skip
        product["plans"].append({"name": name, "prettyName": name, "recurringBillingMode": "IN_ADVANCE",
                                 "billingPeriod": plan.billing_period, "phases": phases})  # fmt: skip
    return {
        "name": version.name,
        "effectiveDate": version.effective.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "currencies": list(version.currencies),
        "units": [],
        "products": list(products.values()),
        "priceLists": [{"name": "DEFAULT", "plans": list(version.price_list)}],
    }
