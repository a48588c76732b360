"""The one way the collection (its modules, the inventory plugin, the audit callback) connects to the registry
database."""

from __future__ import annotations

import re

from ansible_collections.saasodoo.platform.plugins.module_utils.files import certificate_file

# Options every registry-backed module takes; documented by the saasodoo.platform.registry_login fragment.
REGISTRY_LOGIN_OPTIONS = dict(
    login_host=dict(type="str", default="127.0.0.1"),
    login_port=dict(type="int", default=5432),
    login_db=dict(type="str", default="saasodoo_registry"),
    login_user=dict(type="str", default="saasodoo_registry"),
    login_password=dict(type="str", required=True, no_log=True),
    login_sslmode=dict(
        type="str", default="prefer", choices=["disable", "prefer", "require", "verify-ca", "verify-full"]
    ),
    login_ca_certificate=dict(type="str", default=""),
    audit_run=dict(type="str", default=""),
    lease=dict(type="str", default=""),
)


# What a playbook run's id may be: it travels in a connection option (-c saasodoo.audit_run=<id>).
AUDIT_RUN_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


# A tenant's move lock: a session advisory lock on the registry that db_migrate holds for as long as it runs, so
# two runs never move one tenant and a move row no session holds is one whose run died. Its key is the registry's
# move_lock_key(tenant) (migration 0014), which the webhook runner's recovery pass asks about too.


def try_move_lock(conn, tenant_id: str) -> bool:
    taken = conn.execute("SELECT pg_catalog.pg_try_advisory_lock(registry.move_lock_key(%s))", (tenant_id,))
    return taken.fetchone()[0]


def release_move_lock(conn, tenant_id: str) -> None:
    conn.execute("SELECT pg_catalog.pg_advisory_unlock(registry.move_lock_key(%s))", (tenant_id,))


# A tenant as the playbooks use it (registry_tenant's `tenant`): its row, its plan's entitlements, its server; or,
# with at_server, the server a move is taking it to (db_server and server that one's).
TENANT_QUERY = """
SELECT t.tenant_id, t.customer_id, t.subscription_id, t.plan_name, t.plan_version, t.db_type,
       coalesce(%(at_server)s::text, t.db_server) AS db_server,
       t.db_name, t.db_role, t.status, t.billing_status, t.storage_path, t.quotas, t.extra_modules,
       t.credential_version, t.http_port, t.os_id, t.odoo_build, t.odoo_build_since::text AS odoo_build_since,
       extract(epoch FROM t.odoo_build_since)::float8 AS odoo_build_since_epoch,
       t.odoo_update_backup, t.created_at::text AS created_at,
       t.updated_at::text AS updated_at,
       t.retain_until::text AS retain_until, (t.retain_until > now()) AS retention_running,
       p.entitlements AS plan,
       CASE WHEN s.name IS NULL THEN NULL ELSE jsonb_build_object(
           'name', s.name, 'kind', s.kind, 'host', s.host, 'port', s.port, 'pgbouncer_host', s.pgbouncer_host,
           'pgbouncer_port', s.pgbouncer_port, 'pg_major', s.pg_major, 'status', s.status) END AS server
FROM registry.tenants AS t
JOIN registry.plans AS p ON (p.name, p.version) = (t.plan_name, t.plan_version)
LEFT JOIN registry.db_servers AS s ON s.name = coalesce(%(at_server)s::text, t.db_server)
WHERE t.tenant_id = %(tenant_id)s
"""


def read_tenant(conn, tenant_id: str, lock: bool = False, at_server: str | None = None) -> dict | None:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            TENANT_QUERY + (" FOR UPDATE OF t" if lock else ""), {"tenant_id": tenant_id, "at_server": at_server}
        ).fetchone()


def open_move(conn, tenant_id: str) -> dict | None:
    """The tenant's unfinished move (registry.migrations allows one), or None."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM registry.migrations WHERE tenant_id = %s AND finished_at IS NULL", (tenant_id,)
        ).fetchone()


# A playbook run's holder session (the saasodoo.platform.audit callback keeps one open for every run, for as long as
# the run lives, named registry.run_holder_name(run)): registry.tenant_runs rows (migration 0015) whose holder is
# gone (registry.run_is_alive, 0016) are free.


def hold_tenant(conn, tenant_id: str, run_id: str) -> dict:
    """Take the tenant for the run, unless another run whose holder session lives has it. {'held': True} once it is
    the run's; {'held': False, 'run_id', 'taken_at'} naming the run that has it; {'held': None} when the run has no
    holder session (the callback is not enabled, or could not reach the registry): nothing to hold it by."""
    me = conn.execute(
        "SELECT min(pid) FROM pg_catalog.pg_stat_activity WHERE application_name = registry.run_holder_name(%s)",
        (run_id,),
    ).fetchone()[0]
    if not run_id or me is None:
        return {"held": None}
    taken = conn.execute(
        """INSERT INTO registry.tenant_runs AS held (tenant_id, run_id, holder_pid)
           VALUES (%(tenant)s, %(run)s, %(pid)s)
           ON CONFLICT (tenant_id) DO UPDATE
                 SET run_id = EXCLUDED.run_id, holder_pid = EXCLUDED.holder_pid, taken_at = now()
               WHERE held.run_id = EXCLUDED.run_id OR NOT registry.run_is_alive(held.holder_pid, held.run_id)
           RETURNING run_id""",
        {"tenant": tenant_id, "run": run_id, "pid": me},
    ).fetchone()
    if taken:
        return {"held": True}
    other = conn.execute(
        "SELECT run_id, taken_at::text FROM registry.tenant_runs WHERE tenant_id = %s", (tenant_id,)
    ).fetchone()
    return {"held": False, "run_id": other[0], "taken_at": other[1]} if other else hold_tenant(conn, tenant_id, run_id)


class RegistryUnreachable(Exception):
    """The registry cannot be reached (or not with these options); the message says where and what to do."""


def run_registry_module(module, run, database_error: str, refusals: tuple = (), **facts) -> None:
    """How a registry module ends: without psycopg it fails with Ansible's message for a missing library; otherwise
    `run(module)` returns its result. A refusal (the registry out of reach, or one of `refusals`) fails it with the
    refusal's own message, a database error with `database_error` before it; `facts` go with either failure (the
    tenant's id, say)."""
    try:
        import psycopg
    except ImportError:
        import traceback

        from ansible.module_utils.basic import missing_required_lib

        module.fail_json(msg=missing_required_lib("psycopg"), exception=traceback.format_exc())
    try:
        result = run(module)
    except (RegistryUnreachable, *refusals) as e:
        module.fail_json(msg=str(e), **facts)
    except psycopg.Error as e:
        module.fail_json(msg=f"{database_error}: {e}", **facts)
    module.exit_json(**result)


def first_line(error: Exception, password: str | None) -> str:
    """A connection error's reason; libpq does not echo passwords, but this text ends up in warnings and CI logs."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0].replace(password, "********") if password else lines[0]


def connect_hint(reason: str) -> str:
    """What to do about a failed connection: the server answered and refused (FATAL), or nothing answered."""
    if "FATAL:" in reason:
        return (
            "The server refused the login: check the user and password the registry login was given (the inventory's"
            " saasodoo_registry_login; the inventory plugin's SAASODOO_REGISTRY_PASSWORD, registry_password or"
            " platform_secret_file); on a fresh install run playbooks/site.yml first"
        )
    return "Is the platform up? Run playbooks/site.yml to create and start the registry"


def connect_registry(params: dict, application_name: str | None = None, read_only: bool = False):
    """An autocommit psycopg connection to the registry; callers open their own transactions. Read-only refuses
    every write (the inventory plugin's).

    With an audit_run (the playbook run's id, set by the saasodoo.platform.audit callback), every audit row this session
    writes names that run: the registry's audit trigger reads it from the session setting saasodoo.audit_run.
    With a lease (the fencing token of the runner's lease on the account the run works for), every write is
    refused once another worker has taken that account over: the registry's lease_fence trigger reads it from
    the session setting saasodoo.lease.
    """
    import psycopg

    run = params.get("audit_run") or ""
    if run and not AUDIT_RUN_ID.fullmatch(run):
        raise RegistryUnreachable(f"audit_run must be a run id (at most 64 letters, digits and _.:-), not {run!r}")
    lease = str(params.get("lease") or "")
    if lease and not lease.isdigit():
        raise RegistryUnreachable(f"lease must be a runner lease's fencing token (digits), not {lease!r}")
    options = [f"-c saasodoo.audit_run={run}"] * bool(run) + [f"-c saasodoo.lease={lease}"] * bool(lease)
    options += ["-c default_transaction_read_only=on"] * read_only

    try:
        # The CA comes as content (the modules) or as a path (the inventory plugin and the audit callback, on the
        # controller).
        with certificate_file(params.get("login_ca_certificate"), "registry-ca-") as ca_file:
            return psycopg.connect(
                host=params["login_host"],
                port=params["login_port"],
                dbname=params["login_db"],
                user=params["login_user"],
                password=params["login_password"],
                sslmode=params.get("login_sslmode") or "prefer",
                sslrootcert=ca_file or params.get("login_sslrootcert") or None,
                connect_timeout=params.get("connect_timeout", 10),
                application_name=application_name,
                # The registry may sit behind PgBouncer in transaction mode.
                prepare_threshold=None,
                autocommit=True,
                options=" ".join(options) or None,
            )
    # The message carries libpq's reason already: chaining would make Ansible print it a second time.
    except psycopg.OperationalError as e:
        reason = first_line(e, params["login_password"])
        raise RegistryUnreachable(
            f"cannot reach the registry {params['login_db']} at {params['login_host']}:{params['login_port']} as "
            f"{params['login_user']}: {reason}. {connect_hint(reason)}"
        ) from None
