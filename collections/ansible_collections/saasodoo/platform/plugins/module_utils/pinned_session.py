"""How a privileged session inside a tenant's database is opened: what it pins, and how it keeps a secret out
of the server's log."""

from __future__ import annotations

# Every tenant is hostile: it owns its database and can plant functions, operators, casts and per-database
# settings (ALTER DATABASE ... SET search_path, role, default_transaction_read_only) there. Every session the
# collection's modules open there (db_migrate's, a superuser's, above all) pins those settings (a startup option
# outranks the database's settings), resolves names in pg_catalog only and calls functions by their qualified
# names on top of that (CVE-2018-1058). It reads no view or foreign table of the tenant's either: a session that
# lists the tenant's tables and then reads each by name would run the tenant's function if the tenant swapped a table
# for a view in between (restrict_nonsystem_relation_kind, PostgreSQL 15.8 and later: postgres_server refuses an
# older server). roles/odoo_template and the backup/restore playbooks pin the same (tests/unit/test_migration.py keeps
# them equal).
PINNED_SESSION = (
    "-c search_path=pg_catalog,pg_temp -c role=none -c default_transaction_read_only=off"
    " -c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0"
    " -c restrict_nonsystem_relation_kind=view,foreign-table"
)
# For a session about to send a statement that holds a secret: none of it reaches the server's log.
QUIET_STATEMENT_LOGGING = (
    "SET log_statement = 'none'; SET log_min_duration_statement = -1; SET log_min_error_statement = panic"
)

# The login of a module that works on a server as its superuser, over the server's Unix socket (peer authentication):
# doc fragment saasodoo.platform.superuser_login.
SUPERUSER_LOGIN_OPTIONS = dict(
    login_user=dict(type="str", default="postgres"),
    login_unix_socket=dict(type="path", required=True),
    login_port=dict(type="int", required=True),
)
