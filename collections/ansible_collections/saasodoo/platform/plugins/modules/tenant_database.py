#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converge a tenant's database and login role on one PostgreSQL server, in one module call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tenant_database
short_description: Converge a tenant's database and its login role on one server
description:
  - The implementation of C(roles/tenant_database), which is where playbooks call it from. One module call and
    two sessions (C(postgres), then the tenant's database) do what six C(community.postgresql) tasks did, each
    paying ansible's cost per module call.
  - C(present) makes the tenant's login role (no SUPERUSER, CREATEDB, CREATEROLE, REPLICATION, BYPASSRLS; the
    given connection limit; LOGIN or NOLOGIN) and its database, owned by it (UTF8, collation C), cloned from
    I(template) or C(template0). A clone is handed over with C(REASSIGN OWNED) from the template's role (the
    template database and its role share a name), so the tenant owns every object as if its Odoo had made them.
    PUBLIC loses every privilege on the database and on its C(public) schema.
  - The password is sent as a SCRAM-SHA-256 verifier made here, with the statement kept out of the server's log,
    and only when the stored verifier is not it. The verifier is stable (its salt derived from the password), so
    every server the role is on, and every PgBouncer between the tenant's Odoo and its database, holds the same.
  - With I(login=false) the role is NOLOGIN and its open sessions are closed (PgBouncer's server connections too).
  - C(absent) drops the database (closing its connections) and then the role.
  - A database of that name owned by another role was not made for this tenant (another tenant's kept copy, say);
    both states refuse it and leave it as it is, never re-owned or dropped.
  - Every session pins C(search_path) and the settings a tenant could set on its database, and qualifies what
    it calls, since the tenant owns that database and may have planted functions there.
version_added: 0.2.0
author: SaaSOdoo ops maintainers (@saasodoo)
options:
  name:
    description: Name of the database and of its login role (the pools' pg_hba C(sameuser) rule needs one name).
    type: str
    required: true
  state:
    description: Whether the database and role exist.
    type: str
    choices: [present, absent]
    default: present
  password:
    description:
      - The role's password (derived, never stored). Required, and not empty, with I(state=present).
      - It must be a high-entropy secret like the derived ones (43 random characters), since the stable verifier's
        salt is derived from it and a guess can be checked without the 4096 rounds a random salt would cost.
    type: str
  login:
    description: Whether the role may log in.
    type: bool
    default: true
  connection_limit:
    description: The role's CONNECTION LIMIT.
    type: int
    default: 10
  template:
    description: A golden template database to clone from (its role has its name); empty for C(template0).
    type: str
    default: ""
extends_documentation_fragment:
  - saasodoo.platform.attributes
  - saasodoo.platform.superuser_login
"""

EXAMPLES = r"""
- name: Suspend the tenant's database logins
  saasodoo.platform.tenant_database:
    name: t_acme
    password: "{{ tenant_password }}"
    login: false
    login_unix_socket: /run/postgresql
    login_port: 5432
  no_log: true
"""

RETURN = r"""
actions:
  description: What was changed (or would be, in check mode), in order; never a secret.
  returned: always
  type: list
  elements: str
  sample: [role login refused, closed 2 sessions]
sessions_closed:
  description: How many of the role's sessions were closed.
  returned: always
  type: int
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.saasodoo.platform.plugins.module_utils.pinned_session import (
    PINNED_SESSION,
    QUIET_STATEMENT_LOGGING,
    SUPERUSER_LOGIN_OPTIONS,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import stable_scram_sha_256_verifier

PSYCOPG_IMPORT_ERROR = None

try:
    import psycopg
    from psycopg import sql
except ImportError:  # reported by main()
    psycopg = None
    PSYCOPG_IMPORT_ERROR = traceback.format_exc()

# A privileged session waits this long at most for a lock the tenant's own sessions may hold.
LOCK_TIMEOUT = "-c lock_timeout=60s"
# The attributes a tenant's role must not have, as pg_roles names them and as ALTER ROLE writes them.
REFUSED_ATTRIBUTES = {
    "rolsuper": "SUPERUSER",
    "rolcreatedb": "CREATEDB",
    "rolcreaterole": "CREATEROLE",
    "rolreplication": "REPLICATION",
    "rolbypassrls": "BYPASSRLS",
}


def password_matches(stored: str | None, password: str) -> bool:
    """Whether `stored` (pg_authid.rolpassword) is the verifier this module writes: the stable one, the same on
    every server and in the runtime host's PgBouncer. Anything else (a role that set its own password, a verifier
    with a random salt from an earlier release) is written again, never hashed here."""
    return stored == stable_scram_sha_256_verifier(password)


class RefusedError(Exception):
    """Nothing was made: the server is not ready for the tenant (the message says what to run)."""


class TenantDatabase:
    def __init__(self, params: dict, check_mode: bool):
        self.p = params
        self.check_mode = check_mode
        self.actions: list[str] = []
        self.sessions_closed = 0
        self.role = sql.Identifier(params["name"])

    def connect(self, dbname: str) -> psycopg.Connection:
        return psycopg.connect(
            host=self.p["login_unix_socket"],
            port=self.p["login_port"],
            user=self.p["login_user"],
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
            prepare_threshold=None,
            options=f"{PINNED_SESSION} {LOCK_TIMEOUT}",
        )

    def run(self, conn, action: str, statement, params=None) -> None:
        self.actions.append(action)
        if not self.check_mode:
            conn.execute(statement, params)

    def our_database(self, conn) -> bool:
        """Whether the tenant's database exists; one another role owns is refused before anything is made or
        dropped (no role either)."""
        database = conn.execute(
            "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = %s",
            (self.p["name"],),
        ).fetchone()
        if database is not None and database[0] != self.p["name"]:
            raise RefusedError(self.not_ours(database[0]))
        return database is not None

    def present(self) -> None:
        with self.connect("postgres") as conn:
            exists = self.our_database(conn)
            if not exists and self.p["template"]:
                self.require_template(conn)
            self.converge_role(conn)
            if not self.p["login"]:  # before anything that could wait for a lock one of them holds
                self.close_sessions(conn)
            if not exists:
                template = sql.Identifier(self.p["template"] or "template0")
                create = "CREATE DATABASE {} OWNER {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE {}"
                self.run(conn, f"database created from {self.p['template'] or 'template0'}",
                         sql.SQL(create).format(self.role, self.role, template))  # fmt: skip
            if not exists and self.check_mode:
                return  # nothing to look into yet
            if self.p["template"]:
                # REASSIGN OWNED also moves the template database itself (and back): two clones of one template
                # handed over at once update its pg_database row together ("tuple concurrently updated").
                # Advisory locks are per database: this one is taken here, in postgres, by every hand-over.
                conn.execute("SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtextextended(%s, 0))",
                             (f"saasodoo template {self.p['template']}",))  # fmt: skip
            self.converge_inside(self.p["name"])

    def not_ours(self, owner: str) -> str:
        # A database of this name that another role owns was not made for this tenant (a kept copy of another
        # tenant's move, <db>_old<N>, before such names were refused): it is never adopted, re-owned or dropped.
        return (
            f"a database {self.p['name']} owned by {owner} exists on the server on port {self.p['login_port']}: it was "
            "not made for this tenant and is left as it is. Find whose it is (registry.migrations for a kept copy) "
            "before anything else"
        )

    def require_template(self, conn) -> None:
        """A golden template is a template database with its build's comment (roles/odoo_template): one whose build
        did not finish has none. Nothing is made without it."""
        ready = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s AND datistemplate"
            " AND pg_catalog.shobj_description(oid, 'pg_database') IS NOT NULL",
            (self.p["template"],),
        ).fetchone()
        if ready is None:
            raise RefusedError(
                f"the server on port {self.p['login_port']} has no golden template {self.p['template']}: run "
                "playbooks/site.yml, which builds the templates the plan catalog needs, then run this again"
            )

    def converge_role(self, conn) -> None:
        p = self.p
        row = conn.execute(
            "SELECT rolcanlogin, rolconnlimit, rolpassword, rolsuper, rolcreatedb, rolcreaterole, rolreplication,"
            " rolbypassrls FROM pg_catalog.pg_authid WHERE rolname = %s",
            (p["name"],),
        ).fetchone()
        wanted = sql.SQL("{} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {}").format(
            sql.SQL("LOGIN" if p["login"] else "NOLOGIN"), sql.Literal(p["connection_limit"])
        )
        if row is None:
            self.set_password(conn, "role created", sql.SQL("CREATE ROLE {} WITH {} PASSWORD {}"), wanted)
            return
        can_login, limit, stored, *refused = row
        if can_login != p["login"] or limit != p["connection_limit"] or any(refused):
            if can_login != p["login"]:
                action = "role login allowed" if p["login"] else "role login refused"
            else:
                action = "role attributes set"
            self.run(conn, action, sql.SQL("ALTER ROLE {} WITH {}").format(self.role, wanted))
        if not password_matches(stored, p["password"]):
            self.set_password(conn, "role password set", sql.SQL("ALTER ROLE {} WITH {} PASSWORD {}"), sql.SQL(""))

    def set_password(self, conn, action: str, template, attributes) -> None:
        # The verifier, not the password, goes to the server; the statement stays out of its log all the same
        # (this session is the module's own and ends with it).
        verifier = sql.Literal(stable_scram_sha_256_verifier(self.p["password"]))
        statement = template.format(self.role, attributes, verifier)
        self.actions.append(action)
        if not self.check_mode:
            conn.execute(QUIET_STATEMENT_LOGGING)
            conn.execute(statement)

    def converge_inside(self, name: str) -> None:
        """Inside the tenant's database: hand a clone over, take PUBLIC's privileges away."""
        template = self.p["template"]
        with self.connect(name) as conn:
            if template:
                owned = conn.execute(
                    "SELECT count(*) FROM pg_catalog.pg_shdepend d"
                    " JOIN pg_catalog.pg_database db ON db.oid = d.dbid AND db.datname = pg_catalog.current_database()"
                    " WHERE d.deptype = 'o' AND d.refobjid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = %s)",
                    (template,),
                ).fetchone()[0]
                if owned:
                    # REASSIGN OWNED also takes shared objects, the template database among them: it goes back to
                    # its role in the same transaction.
                    self.actions.append(f"{owned} objects of {template} handed over")
                    if not self.check_mode:
                        with conn.transaction():
                            t = sql.Identifier(template)
                            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(t, self.role))
                            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(t, t))
            public_on_database = conn.execute(
                "SELECT datacl IS NULL OR EXISTS (SELECT FROM pg_catalog.aclexplode(datacl) WHERE grantee = 0)"
                " FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()"
            ).fetchone()[0]
            if public_on_database:
                self.run(conn, "PUBLIC's privileges on the database revoked",
                         sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(self.role))  # fmt: skip
            # A tenant may have dropped its public schema (it owns the database): nothing to revoke then.
            public_on_schema = conn.execute(
                "SELECT nspacl IS NULL OR EXISTS (SELECT FROM pg_catalog.aclexplode(nspacl) WHERE grantee = 0)"
                " FROM pg_catalog.pg_namespace WHERE nspname = 'public'"
            ).fetchone()
            if public_on_schema and public_on_schema[0]:
                self.run(conn, "PUBLIC's privileges on the public schema revoked",
                         "REVOKE ALL ON SCHEMA public FROM PUBLIC")  # fmt: skip

    def close_sessions(self, conn) -> None:
        # NOLOGIN refuses new sessions only. The call sits in the select list so it runs only on the rows the
        # WHERE kept (a qual could run first).
        query = (
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE usename = %s AND pid <> pg_catalog.pg_backend_pid()"
            if self.check_mode
            else "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = %s AND pid <> pg_catalog.pg_backend_pid()"
        )
        self.sessions_closed = len(conn.execute(query, (self.p["name"],)).fetchall())
        if self.sessions_closed:
            self.actions.append(f"closed {self.sessions_closed} sessions")

    def absent(self) -> None:
        with self.connect("postgres") as conn:
            if self.our_database(conn):
                self.run(conn, "database dropped", sql.SQL("DROP DATABASE {} WITH (FORCE)").format(self.role))
            if conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (self.p["name"],)).fetchone():
                self.run(conn, "role dropped", sql.SQL("DROP ROLE {}").format(self.role))


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            password=dict(type="str", no_log=True),
            login=dict(type="bool", default=True),
            connection_limit=dict(type="int", default=10),
            template=dict(type="str", default=""),
            **SUPERUSER_LOGIN_OPTIONS,
        ),
        required_if=[("state", "present", ["password"])],
        supports_check_mode=True,
    )
    if module.params["state"] == "present" and not module.params["password"]:
        module.fail_json(msg=f"tenant database {module.params['name']}: a password is required to create it")
    if psycopg is None:
        module.fail_json(msg=missing_required_lib("psycopg"), exception=PSYCOPG_IMPORT_ERROR)
    tenant = TenantDatabase(module.params, module.check_mode)
    try:
        tenant.present() if module.params["state"] == "present" else tenant.absent()
    except (psycopg.Error, RefusedError) as error:
        module.fail_json(msg=f"tenant database {module.params['name']}: {error}", actions=tenant.actions)
    module.exit_json(changed=bool(tenant.actions), actions=tenant.actions, sessions_closed=tenant.sessions_closed)


if __name__ == "__main__":
    main()
