"""tenant_provision.yml on the local platform: pools fill 3+3, the fleet grows, premium gets its own
server, every tenant's credentials open its own database only, and failures leave nothing behind."""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
import pytest
from tenant_web import opener, tenant_url

from .conftest import (
    LOCAL_STATE,
    VENV_BIN,
    LocalPlatform,
    PlaybookRun,
    ansible_env,
    assert_nothing_changed,
    run_ansible_tool,
    run_playbook,
    superuser,
)
from conftest import REPO

BASIC_TENANTS = [f"t{n:02d}" for n in range(1, 10)]  # 9: fills pool-shared-01..03
RETRIED_TENANT = "t09"  # its first run breaks midway, a second run succeeds
PREMIUM_TENANT = "p01"


def provision(tenant_id: str, plan: str, *extra: str) -> PlaybookRun:
    return run_playbook(
        "tenant_provision.yml",
        "-e",
        f"tenant_id={tenant_id}",
        "-e",
        f"plan={plan}",
        "-e",
        f"customer_id=acct-{tenant_id}",
        "-e",
        f"subscription_id=sub-{tenant_id}",
        *extra,
    )


@dataclass
class Tenant:
    tenant_id: str
    db_name: str
    server: str
    status: str
    port: int
    pgbouncer_port: int | None
    credential_version: int


@dataclass
class BrokenRun:
    run: PlaybookRun
    tenant_status: str
    tenant_server: str | None
    leftovers: dict[str, tuple[int, int]]  # per server: databases and roles named after the tenant


@dataclass
class Fleet:
    platform: LocalPlatform
    runs: dict[str, PlaybookRun]
    broken: BrokenRun | None = None

    def registry(self) -> psycopg.Connection:
        return self.platform.connect(
            self.platform.servers["platform-db"].port,
            "saasodoo_registry",
            self.platform.password("registry@saasodoo_registry"),
            dbname="saasodoo_registry",
        )

    def tenants(self) -> dict[str, Tenant]:
        with self.registry() as conn:
            rows = conn.execute(
                "SELECT t.tenant_id, t.db_name, t.db_server, t.status, s.port, s.pgbouncer_port, t.credential_version"
                " FROM registry.tenants t LEFT JOIN registry.db_servers s ON s.name = t.db_server ORDER BY t.tenant_id"
            ).fetchall()
        return {row[0]: Tenant(*row) for row in rows}

    def password(self, tenant: Tenant) -> str:
        return self.platform.password(f"tenant:{tenant.tenant_id}:v{tenant.credential_version}")


def leftovers(platform: LocalPlatform, db_name: str) -> dict[str, tuple[int, int]]:
    found = {}
    for name, server in platform.servers.items():
        with platform.connect(server.port, "saasodoo_monitor", platform.password(f"monitor@{name}")) as conn:
            found[name] = conn.execute(
                "SELECT (SELECT count(*) FROM pg_database WHERE datname = %s),"
                " (SELECT count(*) FROM pg_roles WHERE rolname = %s)",
                (db_name, db_name),
            ).fetchone()
    return found


def opens(fleet: Fleet, port: int, tenant: Tenant, dbname: str) -> bool:
    """Whether the tenant's credentials open dbname on port. PgBouncer may let a client in on its auth file alone
    and log in to the server at the first query: a query proves the way in."""
    try:
        with fleet.platform.connect(port, tenant.db_name, fleet.password(tenant), dbname=dbname) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture(scope="module")
def fleet(fresh_local_platform: LocalPlatform) -> Fleet:
    """Each pool's three tenants provisioned at once (placement fills pool-shared-01, then 02); the seventh and
    eighth at once with the premium one: both are placed on the pool the seventh grows, so two runs find one
    server to bring up. The ninth breaks midway, then succeeds."""
    local_platform = fresh_local_platform
    fleet = Fleet(local_platform, {})
    batches = [BASIC_TENANTS[0:3], BASIC_TENANTS[3:6], [*BASIC_TENANTS[6:8], PREMIUM_TENANT]]
    with ThreadPoolExecutor(max_workers=3) as pool:
        for batch in batches:
            plans = ["premium-monthly" if t == PREMIUM_TENANT else "basic-monthly" for t in batch]
            fleet.runs.update(zip(batch, pool.map(provision, batch, plans), strict=True))
    # Break the step after its database and role are made (PgBouncer's auth file refresh), on a pool with room,
    # then look at what is left before running it again.
    run = provision(RETRIED_TENANT, "basic-monthly", "-e", "pgbouncer_server_socket_dir=/nonexistent")
    tenant = fleet.tenants()[RETRIED_TENANT]
    fleet.broken = BrokenRun(run, tenant.status, tenant.server, leftovers(local_platform, tenant.db_name))
    fleet.runs[RETRIED_TENANT] = provision(RETRIED_TENANT, "basic-monthly")
    for tenant_id, done in fleet.runs.items():
        assert done.returncode == 0, f"{tenant_id}: {done.output[-4000:]}"
    return fleet


def test_pools_fill_three_by_three_and_the_seventh_tenant_grows_the_fleet(fleet: Fleet):
    tenants = fleet.tenants()
    servers = [tenants[t].server for t in BASIC_TENANTS]
    assert servers == ["pool-shared-01"] * 3 + ["pool-shared-02"] * 3 + ["pool-shared-03"] * 3
    assert all(tenants[t].status == "active" for t in BASIC_TENANTS)


def test_the_grown_pool_is_up_with_its_pgbouncer(fleet: Fleet):
    with fleet.registry() as conn:
        status, port, pgbouncer_port, ha = conn.execute(
            "SELECT status, port, pgbouncer_port, ha FROM registry.db_servers WHERE name = 'pool-shared-03'"
        ).fetchone()
    # Grown as saasodoo_pool_ha says: a single server locally.
    assert (status, port, pgbouncer_port, ha) == ("active", 55440, 56440, "none")
    # t07 and t08 were placed on it at once: one run brought it up (and made its template), the other waited.
    builders = [t for t in ("t07", "t08") if re.search(r"tpl_\w+ on pool-shared-03: ", fleet.runs[t].output)]
    assert len(builders) == 1, builders
    tenant = fleet.tenants()["t07"]
    with fleet.platform.connect(pgbouncer_port, tenant.db_name, fleet.password(tenant), dbname=tenant.db_name) as c:
        assert c.execute("SELECT current_user, inet_server_port()").fetchone() == (tenant.db_name, 55440)


def test_premium_gets_a_dedicated_server(fleet: Fleet):
    tenant = fleet.tenants()[PREMIUM_TENANT]
    with fleet.registry() as conn:
        kind, dedicated_to, status = conn.execute(
            "SELECT kind, dedicated_to, status FROM registry.db_servers WHERE name = %s", (tenant.server,)
        ).fetchone()
    assert (kind, dedicated_to, status) == ("dedicated", PREMIUM_TENANT, "active")
    assert tenant.server == "pool-dedicated-01"


def test_each_tenant_opens_its_own_database_and_postgres_and_none_of_the_others(fleet: Fleet):
    tenants = [fleet.tenants()[t] for t in [*BASIC_TENANTS, PREMIUM_TENANT]]
    assert len(tenants) == 10
    for tenant in tenants:
        # Directly, and through the pool's PgBouncer where it has one: the way its Odoo comes in.
        for port in {tenant.port, tenant.pgbouncer_port} - {None}:
            with fleet.platform.connect(port, tenant.db_name, fleet.password(tenant), dbname=tenant.db_name) as c:
                assert c.execute("SELECT current_user, current_database()").fetchone() == (tenant.db_name,) * 2
            # Odoo opens `postgres` at every start to look its database up: it may, and may make nothing there.
            with fleet.platform.connect(port, tenant.db_name, fleet.password(tenant), dbname="postgres") as c:
                for statement in (
                    "CREATE SCHEMA planted",
                    "CREATE TEMPORARY TABLE planted (id int)",
                    "CREATE TABLE public.planted (id int)",
                    "CREATE FUNCTION public.planted() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                ):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege), c.transaction():
                        c.execute(statement)
    # The other tenant's database with this tenant's credentials: on the other's server, and through the PgBouncer
    # they share (a pool's tenants reach their databases through one). PgBouncer holds a refused client until its
    # connect timeout (it retries the server login): the attempts run at once.
    attempts = [
        (tenant, port, other)
        for tenant in tenants
        for other in tenants
        if other is not tenant
        for port in {other.port} | ({tenant.pgbouncer_port} if other.server == tenant.server else set()) - {None}
    ]
    with ThreadPoolExecutor(max_workers=32) as pool:
        opened = list(pool.map(lambda a: opens(fleet, a[1], a[0], a[2].db_name), attempts))
    assert len(attempts) > 90
    assert [(t.tenant_id, o.tenant_id, port) for (t, port, o), ok in zip(attempts, opened, strict=True) if ok] == []


def test_tenant_roles_are_unprivileged_and_public_has_nothing(fleet: Fleet):
    tenant = fleet.tenants()["t01"]
    with fleet.platform.connect(tenant.port, tenant.db_name, fleet.password(tenant), dbname=tenant.db_name) as c:
        role = c.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolconnlimit"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        public = c.execute(
            "SELECT has_database_privilege('public', current_database(), 'CONNECT'),"
            " has_database_privilege('public', current_database(), 'TEMP'),"
            " has_schema_privilege('public', 'public', 'USAGE'), has_schema_privilege('public', 'public', 'CREATE')"
        ).fetchone()
    assert role == (False, False, False, False, False, 10)  # basic-monthly's db_connection_limit
    assert public == (False, False, False, False)


def test_a_second_run_changes_nothing(fleet: Fleet):
    tenants, plans = ("t01", "t07", PREMIUM_TENANT), ("basic-monthly", "basic-monthly", "premium-monthly")
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(provision, tenants, plans))
    for again in runs:
        assert_nothing_changed(again)


def test_with_growth_off_a_full_fleet_refuses_with_every_reason(fleet: Fleet):
    run = provision("t10", "basic-monthly", "-e", "saasodoo_pool_auto_grow=false")
    assert run.returncode != 0
    assert (
        "no shared server can take tenant t10 (plan basic-monthly): pool-shared-01: full: 3/3 tenants; "
        "pool-shared-02: full: 3/3 tenants; pool-shared-03: full: 3/3 tenants. Pool growth is off"
    ) in run.output
    assert "t10" not in fleet.tenants()


def test_an_unknown_plan_fails_clearly(fleet: Fleet):
    run = provision("t11", "gold-monthly")
    assert run.returncode != 0
    assert "unknown plan 'gold-monthly' (known: basic-immediate, basic-monthly, basic-test-trial" in run.output
    assert "t11" not in fleet.tenants()


def test_a_provision_that_fails_midway_leaves_nothing_and_can_be_retried(fleet: Fleet):
    broken = fleet.broken
    assert broken.run.returncode != 0
    assert f"Provisioning tenant {RETRIED_TENANT} on pool-shared-03 failed at" in broken.run.output
    assert "Nothing was left behind" in broken.run.output
    assert (broken.tenant_status, broken.tenant_server) == ("failed", None)
    assert set(broken.leftovers.values()) == {(0, 0)}, broken.leftovers
    # The failure is on the record as a row of that run, though it was written from the pool's play.
    with fleet.registry() as conn:
        failed_rows = conn.execute(
            "SELECT count(*) FROM registry.audit WHERE tenant_id = %s AND detail ->> 'run' = %s"
            " AND detail -> 'changes' -> 'status' ->> 'after' = 'failed'",
            (RETRIED_TENANT, broken.run.run_id),
        ).fetchone()[0]
    assert failed_rows == 1
    # The retry in the fixture succeeded: the tenant is active where the failed run had placed it.
    tenant = fleet.tenants()[RETRIED_TENANT]
    assert (tenant.status, tenant.server) == ("active", "pool-shared-03")


def test_the_inventory_graph_shows_the_live_fleet(fleet: Fleet):
    graph = run_ansible_tool("ansible-inventory", "-i", "inventories/local", "--graph")
    sections = {}
    for line in graph.splitlines():
        name = line.strip(" |-")
        if name.startswith("@"):
            group = name[1:].rstrip(":")
            sections[group] = []
        elif name:
            sections[group].append(name)
    assert set(sections["pools_shared"]) == {"pool-shared-01", "pool-shared-02", "pool-shared-03"}
    assert sections["pools_dedicated"] == ["pool-dedicated-01"]
    assert set(sections["tenants"]) >= {f"tenant-{t}" for t in [*BASIC_TENANTS, PREMIUM_TENANT]}
    assert set(sections["pool_pool_shared_03"]) == {"tenant-t07", "tenant-t08", "tenant-t09"}
    assert sections["plan_premium_monthly"] == [f"tenant-{PREMIUM_TENANT}"]
    assert set(sections["status_active"]) >= {f"tenant-{t}" for t in [*BASIC_TENANTS, PREMIUM_TENANT]}


def test_platform_status_shows_servers_and_tenants(fleet: Fleet):
    status = run_playbook("platform_status.yml")
    assert status.returncode == 0, status.output[-3000:]
    lines = status.output.splitlines()

    def row(first_column: str) -> list[str]:
        return next(line.strip(" -'").split() for line in lines if line.strip(" -'").startswith(first_column + " "))

    # HEALTH: as the registry records it (servers_probe.yml's verdict, or the bring-up's, or a placement's probe)
    assert row("pool-shared-03")[1:] == [
        "shared", "pool", "127.0.0.1:55440", "up", "127.0.0.1:56440", "up", "3/3", "healthy"
    ]  # fmt: skip
    assert row("pool-dedicated-01")[-2:] == ["1/1", "healthy"]
    assert row("t07")[1:] == ["basic-monthly", "v1", "shared", "pool-shared-03", "t_t07", "active"]
    assert row(PREMIUM_TENANT)[3:5] == ["dedicated", "pool-dedicated-01"]
    # The fleet's plans on a line of their own, the monitoring's URLs on the next.
    plans = next(line for line in lines if "Plans: " in line)
    assert "basic-monthly v1 (shared)" in plans and "Monitoring" not in plans, plans
    assert any(line.strip(" -'").startswith("Monitoring: Prometheus http://") for line in lines), status.output[-2000:]


def tenant_database(fleet: Fleet, tenant_id: str) -> psycopg.Connection:
    tenant = fleet.tenants()[tenant_id]
    return superuser(tenant.server, tenant.port, tenant.db_name)


def test_clones_of_one_template_each_have_their_own_identity(fleet: Fleet):
    identities = {}
    for tenant_id in ("t01", "t02", "t03"):  # one pool, one plan: one template
        with tenant_database(fleet, tenant_id) as conn:
            params = dict(conn.execute("SELECT key, value FROM public.ir_config_parameter").fetchall())
            admin = conn.execute(
                "SELECT u.login, u.password FROM public.res_users u JOIN public.ir_model_data d"
                " ON d.res_id = u.id AND d.module = 'base' AND d.name = 'user_admin'"
            ).fetchone()
        identities[tenant_id] = (params["database.uuid"], params["database.secret"])
        assert params["web.base.url"] == tenant_url(tenant_id, "")
        assert params["web.base.url.freeze"] == "True"
        assert admin == (f"admin@{tenant_id}.odoo.localhost", None)  # the template's password gone, none in its place
    for column in range(2):  # uuid and secret: three of each
        assert len({identity[column] for identity in identities.values()}) == 3, column


def test_a_clone_is_the_tenants_and_its_template_stays_its_own_roles(fleet: Fleet):
    tenant = fleet.tenants()["t01"]
    with superuser(tenant.server, tenant.port) as conn:
        templates = conn.execute(
            "SELECT datname, pg_get_userbyid(datdba), datallowconn, r.rolcanlogin FROM pg_database"
            " JOIN pg_roles r ON r.rolname = datname WHERE datistemplate AND left(datname, 4) = 'tpl_'"
        ).fetchall()
    assert templates and all(owner == name and not conn and not login for name, owner, conn, login in templates)
    with tenant_database(fleet, "t01") as conn:
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public'"
        ).fetchall()
        owned_by_templates = conn.execute(
            "SELECT count(*) FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid"
            " WHERE d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND d.deptype = 'o' AND left(r.rolname, 4) = 'tpl_'"
        ).fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
    assert owners == [(tenant.db_name,)] and tables > 5
    assert owned_by_templates == 0


def test_the_tenants_filestore_starts_as_its_templates(fleet: Fleet):
    tenant = fleet.tenants()["t01"]
    with tenant_database(fleet, "t01") as conn:
        attachments = [row[0] for row in conn.execute("SELECT store_fname FROM public.ir_attachment")]
    data_dir = LOCAL_STATE / f"storage/odoo_instances/odoo_data_{tenant.db_name}_t01"
    assert attachments and all((data_dir / "filestore" / tenant.db_name / name).is_file() for name in attachments)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # the 303 after a sign-in is the answer
        return None


def test_the_admins_one_time_link_sets_a_password_once_and_nothing_else_opens(fleet: Fleet):
    link = re.search(r"signs in at (https://\S+/web/reset_password\?\S+)", fleet.runs["t02"].output)
    assert link, fleet.runs["t02"].output[-2000:]
    url = urllib.parse.urlsplit(link[1])
    token = urllib.parse.parse_qs(url.query)["token"][0]

    def post(path: str, form: dict) -> int:
        """Through nginx, over HTTPS by the tenant's host name, as the customer's browser."""
        request = urllib.request.Request(f"https://{url.netloc}{path}", data=urllib.parse.urlencode(form).encode())
        try:
            with opener(NoRedirect()).open(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    admin = "admin@t02.odoo.localhost"
    for password in ("admin", ""):  # before the link, the admin has no password: neither the template's nor none opens
        assert post("/web/login", {"login": admin, "password": password}) == 200
    reset = {"token": token, "password": "first password", "confirm_password": "first password"}
    assert post(url.path, reset) == 303
    assert post(url.path, {**reset, "password": "again", "confirm_password": "again"}) == 200  # the link is dead
    assert post("/web/login", {"login": admin, "password": "first password"}) == 303
    assert post("/web/login", {"login": admin, "password": "admin"}) == 200  # the template's password opens nothing


def test_a_server_without_the_plans_template_refuses_and_makes_nothing(fleet: Fleet):
    server = fleet.platform.servers["pool-shared-01"]
    args = (
        "name=t_untemplated password=not-used template=tpl_missing"
        f" login_unix_socket={(LOCAL_STATE / 'pg/pool-shared-01/run').resolve()} login_port={server.port}"
    )
    result = subprocess.run(
        [str(VENV_BIN / "ansible"), "pool-shared-01", "-m", "saasodoo.platform.tenant_database", "-a", args],
        cwd=REPO, env=ansible_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "has no golden template tpl_missing: run playbooks/site.yml" in " ".join(result.stdout.split())
    with superuser("pool-shared-01", server.port) as conn:
        made = conn.execute(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = 't_untemplated'),"
            " (SELECT count(*) FROM pg_roles WHERE rolname = 't_untemplated')"
        ).fetchone()
    assert made == (0, 0)
