"""A tenant's Odoo identity, given to a database cloned from a golden template (docs/templates.md).

Odoo's own "duplicate database" (odoo/service/db.py exp_duplicate_database) clones a database and resets
ir.config_parameter's `database.secret`, `database.uuid` and `database.create_date`
(odoo/addons/base/models/ir_config_parameter.py _default_parameters). A clone here gets those and more: its URL,
its company, its admin (the customer's e-mail as login, no password) and a one-time sign-in link.

The formats are Odoo 18's, so that a real Odoo accepts what is written here:
- no password: a NULL `res_users.password`, as a user Odoo has invited has until they accept, which no password
  verifies (odoo/addons/base/models/res_users.py _check_credentials reads it as '', and refuses an empty password);
- the sign-in link: auth_signup's stateless token (odoo/addons/auth_signup/models/res_partner.py
  _generate_signup_token), signed as odoo/tools/misc.py hash_sign does with `database.secret`; it names the
  admin's last login date, so it stops working once the admin has logged in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlencode

SIGNUP_SCOPE = "signup"
TEMPLATE_PREFIX = "tpl_"


def template_name(odoo_version: str, modules: list[str], lang: str, build: str | list[str] = "") -> str:
    """One template per (Odoo version, module set, language): the name is a digest of that key, so a new key is
    a new template and an existing name is an up-to-date one. The database and its owning role share it.
    `build` names the Odoo that builds it and the one its tenants run, once each when they are one (an odoo-bin
    command): another build of the same version has templates of its own."""
    if not isinstance(build, str):
        build = " ".join(dict.fromkeys(str(part) for part in build if part))
    key = json.dumps(
        {"odoo_version": str(odoo_version), "modules": sorted(set(modules)), "lang": lang, "build": build},
        sort_keys=True,
    )
    version = re.sub(r"[^0-9a-z]", "", str(odoo_version).lower())
    return f"{TEMPLATE_PREFIX}{version}_{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def signup_token(secret: str, partner_id: int, login_date: int | None, signup_type: str, expires_at: int) -> str:
    """auth_signup's token: version 1, expiry (little-endian), HMAC-SHA256 keyed by database.secret over
    repr((scope, '1:<json>:<expiry>')), then the JSON itself; URL-safe base64 without padding."""
    message = json.dumps([partner_id, login_date, signup_type])
    signed = repr((SIGNUP_SCOPE, f"1:{message}:{expires_at}"))
    digest = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    token = b"\x01" + expires_at.to_bytes(8, "little") + digest + message.encode()
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


@dataclass
class Identity:
    """What the tenant's Odoo should say about itself; None leaves a field as the database has it."""

    base_url: str
    company_name: str | None = None
    admin_email: str | None = None
    lang: str | None = None
    tz: str | None = None
    country_code: str | None = None


@dataclass
class Outcome:
    identity_reset: bool = False
    admin_login: str = ""
    admin_link: str = ""
    warnings: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)


def given(**values) -> dict:
    return {key: value for key, value in values.items() if value is not None}


class TenantIdentity:
    """Reads and writes one tenant database's identity over a connection whose session already runs as the tenant's
    role with a pinned search_path: every name below is schema-qualified all the same."""

    def __init__(self, conn):
        self.conn = conn

    def _one(self, query: str, params: tuple = ()):
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None

    def _xmlid(self, name: str) -> int:
        res_id = self._one("SELECT res_id FROM public.ir_model_data WHERE module = 'base' AND name = %s", (name,))
        if res_id is None:
            raise LookupError(f"base.{name} is missing: is this an Odoo database?")
        return res_id

    def parameter(self, key: str) -> str | None:
        return self._one("SELECT value FROM public.ir_config_parameter WHERE key = %s", (key,))

    def set_parameter(self, key: str, value: str, outcome: Outcome) -> None:
        if self.parameter(key) == value:
            return
        self.conn.execute(
            "INSERT INTO public.ir_config_parameter (key, value, create_uid, create_date, write_uid, write_date)"
            " VALUES (%s, %s, 1, pg_catalog.now() AT TIME ZONE 'UTC', 1, pg_catalog.now() AT TIME ZONE 'UTC')"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, write_date = EXCLUDED.write_date",
            (key, value),
        )
        outcome.executed.append(f"ir.config_parameter {key}")

    def _update(self, table: str, row_id: int, values: dict, outcome: Outcome) -> None:
        """Set the columns that differ (an idempotent write); the table name is one of ours, never input."""
        columns = list(values)
        if not columns:
            return
        current = self.conn.execute(
            f"SELECT {', '.join(columns)} FROM public.{table} WHERE id = %s",  # noqa: S608 - fixed names
            (row_id,),
        ).fetchone()
        changed = {c: v for c, v, now in zip(columns, values.values(), current or (), strict=False) if now != v}
        if not changed:
            return
        assignments = ", ".join(f"{c} = %s" for c in changed)
        self.conn.execute(
            f"UPDATE public.{table} SET {assignments}, write_date = pg_catalog.now() AT TIME ZONE 'UTC'"  # noqa: S608
            " WHERE id = %s",
            (*changed.values(), row_id),
        )
        outcome.executed.append(f"{table} {row_id}: {', '.join(sorted(changed))}")

    def apply(self, identity: Identity, template_uuid: str | None, outcome: Outcome) -> None:
        # A clone still carrying its template's database.uuid has never had an identity of its own.
        if template_uuid and self.parameter("database.uuid") == template_uuid:
            # Made by the server, so the secret is in no statement text a slow-query log could keep.
            self.conn.execute(
                "UPDATE public.ir_config_parameter SET value = pg_catalog.gen_random_uuid()::text,"
                " write_date = pg_catalog.now() AT TIME ZONE 'UTC' WHERE key = 'database.secret'"
            )
            outcome.executed.append("ir.config_parameter database.secret")
            self.set_parameter("database.uuid", str(uuid.uuid1()), outcome)
            self.set_parameter("database.create_date", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), outcome)
            # The template's admin has Odoo's default password: it gets none; the one-time link sets its first. (A
            # random one hashed at Odoo's 600,000 rounds was as closed, and cost 0.8 s of every provision.)
            self._update("res_users", self._xmlid("user_admin"), {"password": None}, outcome)
            outcome.identity_reset = True
        self.set_parameter("web.base.url", identity.base_url, outcome)
        self.set_parameter("web.base.url.freeze", "True", outcome)

        lang = identity.lang
        if lang and not self._one("SELECT active FROM public.res_lang WHERE code = %s", (lang,)):
            outcome.warnings.append(f"language {lang} is not installed in this database: its users keep en_US")
            lang = "en_US"
        country_id = None
        if identity.country_code:
            country_id = self._one(
                "SELECT id FROM public.res_country WHERE code = %s", (identity.country_code.upper(),)
            )
            if country_id is None:
                outcome.warnings.append(f"no country {identity.country_code} in this database: the company has none")

        company_id = self._xmlid("main_company")
        company_partner = self._one("SELECT partner_id FROM public.res_company WHERE id = %s", (company_id,))
        if identity.company_name:
            self._update("res_company", company_id, {"name": identity.company_name}, outcome)
        self._update(
            "res_partner",
            company_partner,
            given(name=identity.company_name, lang=lang, tz=identity.tz, country_id=country_id),
            outcome,
        )

        admin = self._xmlid("user_admin")
        admin_partner = self._one("SELECT partner_id FROM public.res_users WHERE id = %s", (admin,))
        self._update("res_users", admin, given(login=identity.admin_email), outcome)
        self._update(
            "res_partner", admin_partner, given(email=identity.admin_email, lang=lang, tz=identity.tz), outcome
        )
        outcome.admin_login = self._one("SELECT login FROM public.res_users WHERE id = %s", (admin,))

    def admin_link(self, base_url: str, dbname: str, valid_hours: int, outcome: Outcome) -> None:
        """A new one-time sign-in link for the admin (auth_signup's reset, as "Send password reset" makes it)."""
        admin = self._xmlid("user_admin")
        partner = self._one("SELECT partner_id FROM public.res_users WHERE id = %s", (admin,))
        self._update("res_partner", partner, {"signup_type": "reset"}, outcome)
        # res_partner._get_login_date: the newest login (res_users_log) of the partner's active users, or None.
        login_date = self._one(
            "SELECT pg_catalog.max((SELECT pg_catalog.floor(extract(epoch FROM l.create_date))::bigint"
            "                       FROM public.res_users_log l WHERE l.create_uid = u.id ORDER BY l.id DESC LIMIT 1))"
            " FROM public.res_users u WHERE u.partner_id = %s AND u.active",
            (partner,),
        )
        secret = self.parameter("database.secret")
        if not secret:
            raise LookupError("database.secret is missing: the database has no identity yet")
        token = signup_token(secret, partner, login_date, "reset", int(time.time()) + valid_hours * 3600)
        outcome.admin_link = f"{base_url}/web/reset_password?{urlencode({'db': dbname, 'token': token})}"
        outcome.executed.append("auth_signup reset token for the admin")
