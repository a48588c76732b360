"""Filters naming the golden templates Odoo tenants are cloned from (module_utils/odoo_identity.py)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.saasodoo.platform.plugins.module_utils.odoo_identity import template_name

# The admin's one-time sign-in link is auth_signup's: every template has it, whatever the plan names.
PLATFORM_MODULES = {"auth_signup"}


def template_modules(plan: dict) -> list[str]:
    modules = set(plan.get("odoo_modules") or [])
    return sorted(modules | PLATFORM_MODULES) if modules else []


def odoo_template(plan: dict, lang: str = "en_US", build: str | list[str] = "") -> str:
    """The template a tenant on this plan is cloned from; '' for a plan with no modules (a bare database)."""
    try:
        modules = template_modules(plan)
        return template_name(plan["odoo_version"], modules, lang, build) if modules else ""
    except (KeyError, TypeError, AttributeError) as e:
        raise AnsibleFilterError(f"odoo_template needs a plan with odoo_version and odoo_modules: {e}") from None


def odoo_templates(plans: dict, languages: list[str], build: str | list[str] = "") -> list[dict]:
    """Every template the plans need, once each: name, odoo_version, modules and lang, sorted by name."""
    found: dict[str, dict] = {}
    for plan in plans.values():
        for lang in languages:
            name = odoo_template(plan, lang, build)
            if name:
                modules = template_modules(plan)
                version = str(plan["odoo_version"])
                found[name] = {"name": name, "odoo_version": version, "modules": modules, "lang": lang}
    return [found[name] for name in sorted(found)]


class FilterModule:
    def filters(self):
        return {"odoo_template": odoo_template, "odoo_templates": odoo_templates}
