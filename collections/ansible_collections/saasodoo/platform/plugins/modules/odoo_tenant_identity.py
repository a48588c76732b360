#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Give a tenant's Odoo database its own identity, and its admin a one-time sign-in link."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: odoo_tenant_identity
short_description: Give a cloned Odoo database its own identity and its admin a one-time sign-in link
description:
  - A tenant's database is cloned from a golden template (roles/odoo_template). While it still carries the
    template's C(database.uuid), it gets a new C(database.secret), C(database.uuid) and C(database.create_date) (as
    Odoo's own duplicate does) and its admin no password (a NULL one, which nothing verifies, as an invited user has).
  - Every run then brings C(web.base.url) (frozen), the company's name, language, time zone and country and the
    admin's login (the customer's e-mail) in line with the inputs; a second run with the same inputs changes nothing.
  - Per I(admin_link), a new one-time sign-in link (auth_signup's reset token, valid I(admin_link_hours)) is
    returned; it stops working once the admin has logged in. It is the only way in, and no password is ever kept.
    Register the result under C(no_log), for the link is a credential.
  - The session logs in as the tenant's own role, with the tenant's credentials, and pins its settings (the tenant
    owns the database and may have set any), so whatever the tenant may have planted there (a trigger, a view, a
    C(RESET ROLE) in them) runs with the tenant's rights and no more. No privileged session is ever opened.
version_added: 0.1.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  db_name:
    description: The tenant's database.
    type: str
    required: true
  tenant_role:
    description: The tenant's login role, which the session logs in as.
    type: str
    required: true
  template:
    description:
      - The golden template the database was cloned from; its C(database.uuid) is read from the template's comment.
      - Omitted for a database that was not cloned (its identity is then never reset).
    type: str
  base_url:
    description: The tenant's URL, without a trailing slash.
    type: str
    required: true
  company_name:
    description: The company's name (Kill Bill account C(name)); omitted, it is left as it is.
    type: str
  admin_email:
    description: The admin's login and e-mail (Kill Bill account C(email)); omitted, they are left as they are.
    type: str
  lang:
    description:
      - Language code of the company and the admin; one the database does not have installed gives C(en_US) (a
        warning says so). Omitted, it is left as it is.
    type: str
  tz:
    description: Time zone of the company and the admin; omitted, it is left as it is.
    type: str
  country_code:
    description: ISO 3166 code of the company's country; omitted or empty, it is left as it is.
    type: str
  admin_link:
    description:
      - When to issue a new one-time sign-in link for the admin; C(new_identity) only in the run that gave the
        database its identity (a provision), C(always) every run (a new link on request).
    type: str
    choices: [never, new_identity, always]
    default: never
  admin_link_hours:
    description: How long the link stays valid.
    type: int
    default: 24
  login_host:
    description: The database server's address (the tenant's C(pg_hba) line lets its role in there).
    type: str
    required: true
  login_port:
    description: The server's port.
    type: int
    required: true
  login_password:
    description: The tenant role's password (derived, never stored).
    type: str
    required: true
  login_sslmode:
    description: libpq C(sslmode).
    type: str
    default: prefer
  login_sslrootcert:
    description: The CA that signs the server's certificate (for C(verify-ca)/C(verify-full)).
    type: path
attributes:
  check_mode:
    support: full
    details: Every write runs in a transaction that is rolled back; no link is returned.
extends_documentation_fragment:
  - saasodoo.platform.attributes
"""

EXAMPLES = r"""
- name: Give the tenant's database its identity and the customer a sign-in link
  saasodoo.platform.odoo_tenant_identity:
    db_name: t_acme
    tenant_role: t_acme
    template: tpl_180_3f1c2a9b0d4e
    base_url: https://acme.odoo.example.com
    company_name: Acme Corp
    admin_email: ops@acme.example
    lang: fr_FR
    tz: Europe/Paris
    country_code: FR
    admin_link: new_identity
    login_host: 10.20.1.11
    login_port: 5432
    login_password: "{{ tenant_password }}"
    login_sslmode: verify-full
    login_sslrootcert: /etc/saasodoo/ca.crt
  register: identity
"""

RETURN = r"""
identity_reset:
  description: Whether this run gave the database its own secret and uuid and took its admin's password away.
  returned: success
  type: bool
admin_login:
  description: The admin's login.
  returned: success
  type: str
admin_link:
  description: The one-time sign-in link (per I(admin_link), outside check mode).
  returned: when requested
  type: str
warnings:
  description: Inputs the database could not take (a language it lacks, an unknown country), as Ansible's warnings.
  returned: when there are any
  type: list
  elements: str
executed:
  description: What was written, one line per parameter or row.
  returned: success
  type: list
  elements: str
"""

import json

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.saasodoo.platform.plugins.module_utils.odoo_identity import (
    Identity,
    Outcome,
    TenantIdentity,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.pinned_session import PINNED_SESSION

# The tenant's own tables, views and triggers may be made to hang: its session gets timeouts (they come after the
# pinned ones, so they win).
TENANT_SESSION = f"{PINNED_SESSION} -c statement_timeout=30s -c lock_timeout=10s"

try:
    import psycopg
except ImportError:
    psycopg = None


def template_uuid(conn, template: str | None) -> str | None:
    """The template's database.uuid, which roles/odoo_template wrote into its comment (pg_database and its
    comments are readable by every role)."""
    if not template:
        return None
    row = conn.execute(
        "SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database"
        " WHERE datname = %s AND datistemplate",
        (template,),
    ).fetchone()
    if not row or not row[0]:
        raise LookupError(f"template {template} is missing or unlabelled: converge the templates (site.yml)")
    return json.loads(row[0]).get("uuid")


def run_module(module: AnsibleModule) -> dict:
    params = module.params
    identity = Identity(
        base_url=params["base_url"].rstrip("/"),
        company_name=params["company_name"],
        admin_email=params["admin_email"],
        lang=params["lang"],
        tz=params["tz"],
        country_code=params["country_code"],
    )
    outcome = Outcome()
    tls = {"sslrootcert": params["login_sslrootcert"]} if params["login_sslrootcert"] else {}
    with psycopg.connect(
        host=params["login_host"], port=params["login_port"], user=params["tenant_role"],
        password=params["login_password"], dbname=params["db_name"], sslmode=params["login_sslmode"],
        options=TENANT_SESSION, connect_timeout=10, **tls,
    ) as conn:  # fmt: skip
        tenant = TenantIdentity(conn)
        tenant.apply(identity, template_uuid(conn, params["template"]), outcome)
        wanted = params["admin_link"] == "always" or (params["admin_link"] == "new_identity" and outcome.identity_reset)
        if wanted and not module.check_mode:
            tenant.admin_link(identity.base_url, params["db_name"], params["admin_link_hours"], outcome)
        if module.check_mode:
            conn.rollback()
        else:
            conn.commit()
    for warning in outcome.warnings:
        module.warn(warning)
    changed = any(not line.startswith("auth_signup") for line in outcome.executed)
    result = dict(
        changed=changed,
        identity_reset=outcome.identity_reset,
        admin_login=outcome.admin_login,
        executed=outcome.executed,
    )
    if outcome.admin_link:
        result["admin_link"] = outcome.admin_link
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            db_name=dict(type="str", required=True),
            tenant_role=dict(type="str", required=True),
            template=dict(type="str"),
            base_url=dict(type="str", required=True),
            company_name=dict(type="str"),
            admin_email=dict(type="str"),
            lang=dict(type="str"),
            tz=dict(type="str"),
            country_code=dict(type="str"),
            admin_link=dict(type="str", choices=["never", "new_identity", "always"], default="never"),
            admin_link_hours=dict(type="int", default=24),
            login_host=dict(type="str", required=True),
            login_port=dict(type="int", required=True),
            login_password=dict(type="str", required=True, no_log=True),
            login_sslmode=dict(type="str", default="prefer"),
            login_sslrootcert=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    if psycopg is None:
        module.fail_json(msg=missing_required_lib("psycopg"))
    if module.params["admin_link_hours"] < 1:
        module.fail_json(msg="admin_link_hours must be at least 1")
    try:
        module.exit_json(**run_module(module))
    except LookupError as e:
        module.fail_json(msg=f"{module.params['db_name']}: {e}")
    except psycopg.Error as e:
        module.fail_json(msg=f"{module.params['db_name']}: {type(e).__name__}: {' '.join(str(e).split())}")


if __name__ == "__main__":
    main()
