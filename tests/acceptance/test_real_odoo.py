"""make acceptance ODOO_BIN=<a real odoo-bin>: customers' lives against a real Odoo 18, not the stand-in.

The local platform is reset and converged with SAASODOO_ODOO_BIN pointing at that Odoo (its golden templates are
built by it), then, the way an operator types them: three customers sign up (two on shared pools, one on its own
server); each one's login page answers through nginx; the admin's one-time link, from the welcome e-mail the
runner sent (the customers' accounts in the Kill Bill stand-in, where the local inventory says Kill Bill is), sets
a password and logs in, once;
a plan change moves one database to a dedicated server and a suspension and a resumption stop and start another,
and both still log in afterwards; the first moves on to a server under Patroni, whose primary is then lost, and
its same Odoo answers and logs in after the replica takes over; a third is terminated and reactivated, and logs in
as before; the second is brought back to a moment before its company was renamed, and logs in as before; its pool
is drained under its running Odoo, whose open session goes on working; one customer's Odoo is updated to another
build of this Odoo, and another's rolled back from a build whose update fails for it. Beside that, the -i path: a
database initialised by odoo-bin itself, timed against a clone. Nothing here runs without ODOO_BIN: the run is
skipped, never faked.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.killbill_api import KillBillAPI
from tests.ha_cluster import Cluster
from tests.integration.conftest import (
    LOCAL_STATE,
    LocalPlatform,
    assert_nothing_changed,
    run_playbook,
    superuser,
    supervisor_pid,
    wait_until,
)
from tests.integration.runner_stack import MailCatcher
from tests.standins.killbill.killbill_standin import KillBillStandin
from tests.tenant_web import opener, tenant_url

ODOO_BIN = os.environ.get("SAASODOO_ODOO_BIN", "")
pytestmark = pytest.mark.skipif(not ODOO_BIN, reason="set ODOO_BIN=<a real odoo-bin> (make acceptance says how)")

CUSTOMERS = {  # tenant id: (plan, company, admin e-mail, time zone, country)
    "acme": ("basic-monthly", "Acme Corp", "admin@acme.example", "America/New_York", "US"),
    "globex": ("standard-monthly", "Globex", "it@globex.example", "Europe/Paris", "FR"),
    "initech": ("premium-monthly", "Initech", "bill@initech.example", "America/Chicago", "US"),
}
PASSWORD = "a long passphrase nobody guesses"
LINK = re.compile(r"signs in at (https://\S+/web/reset_password\?\S+)")
MAILED_LINK = re.compile(r"https://\S+/web/reset_password\?\S+")


@dataclass
class Signed:
    provision_seconds: float
    link: str


class Browser:
    """One customer's browser on their tenant's URL (HTTPS through nginx, its certificate checked), with cookies."""

    def __init__(self, tenant_id: str):
        self.tenant_id = tenant_id
        self.opener = opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect())

    def request(self, path: str, form: dict | None = None) -> tuple[int, str, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(tenant_url(self.tenant_id, path), data=data)
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, response.headers.get("Location", ""), response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Location", ""), error.read().decode(errors="replace")

    def csrf(self, page: str) -> str:
        found = re.search(r'name="csrf_token"\s+value="([^"]*)"', page)
        return found[1] if found else ""

    def login(self, login: str, password: str) -> tuple[int, str]:
        status, _, page = self.request("/web/login")
        assert status == 200 and "oe_login_form" in page, (status, page[:300])
        status, location, _ = self.request(
            "/web/login", {"login": login, "password": password, "csrf_token": self.csrf(page), "redirect": ""}
        )
        return status, location


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 303 after a login is the answer itself
        return None


def login_page(tenant_id: str) -> int:
    status, _, page = Browser(tenant_id).request("/web/login")
    return status if "oe_login_form" in page else -status


@pytest.fixture(scope="module")
def killbill(fresh_local_platform: LocalPlatform):
    """The Kill Bill the local runner reads accounts from (its address and credentials in the local inventory)."""
    secret = {
        name: (LOCAL_STATE / "secrets" / name).read_text().strip()
        for name in ("killbill_password", "killbill_api_secret")
    }
    credentials = {"username": "admin", "password": secret["killbill_password"], "api_key": "saasodoo",
                   "api_secret": secret["killbill_api_secret"]}  # fmt: skip
    standin = KillBillStandin(**credentials).start(port=58180)
    yield KillBillAPI(standin.url, **credentials)
    standin.stop()


@pytest.fixture(scope="module")
def signed_up(fresh_local_platform: LocalPlatform, killbill: KillBillAPI) -> dict[str, Signed]:
    signed, mails = {}, MailCatcher()
    for tenant_id, (plan, company, email, tz, country) in CUSTOMERS.items():
        started = time.monotonic()
        # An account with no subscription: nothing for the runner to converge, only an address to write to.
        account = killbill.call("POST", "/1.0/kb/accounts", {"name": company, "email": email, "currency": "USD"})
        run = run_playbook(
            "tenant_provision.yml",
            *("-e", f"tenant_id={tenant_id}", "-e", f"plan={plan}"),
            *("-e", f"customer_id={account}", "-e", f"subscription_id=sub-{tenant_id}"),
            *("-e", f"customer_name={company}", "-e", f"customer_email={email}"),
            *("-e", f"customer_time_zone={tz}", "-e", f"customer_country={country}"),
        )
        assert run.returncode == 0, run.output[-4000:]
        link = LINK.search(run.output)
        assert link, run.output[-2000:]
        signed[tenant_id] = Signed(time.monotonic() - started, link[1])
        print(f"\n{tenant_id}: provisioned with a real Odoo in {signed[tenant_id].provision_seconds:.1f} s")
    # The customer's welcome holds the link the operator's run printed: the tests sign in with the mail's.
    for tenant_id, signed_one in signed.items():
        found = mails.wait_for(CUSTOMERS[tenant_id][2], {"welcome": 1})
        (welcome,) = [mail for mail in found if mail["X-SaaSOdoo-Message"] == "welcome"]
        mailed = MAILED_LINK.search(welcome.get_body(("plain",)).get_content())
        assert mailed and signed_one.link.startswith(mailed[0]), (tenant_id, signed_one.link)
        signed_one.link = mailed[0]
    return signed


def test_every_customer_gets_a_login_page_through_nginx(signed_up):
    assert {tenant_id: login_page(tenant_id) for tenant_id in signed_up} == dict.fromkeys(signed_up, 200)


def test_the_admins_one_time_link_sets_a_password_that_logs_in_and_is_dead_afterwards(signed_up):
    for tenant_id, signed in signed_up.items():
        email = CUSTOMERS[tenant_id][2]
        browser = Browser(tenant_id)
        link = urllib.parse.urlsplit(signed.link)
        assert f"{link.scheme}://{link.netloc}" == tenant_url(tenant_id, ""), signed.link  # the tenant's HTTPS URL
        path = f"{link.path}?{link.query}"
        status, _, page = browser.request(path)
        assert status == 200 and "Invalid signup token" not in page, (tenant_id, page[:500])
        token = urllib.parse.parse_qs(link.query)["token"][0]
        form = {"token": token, "login": email, "password": PASSWORD, "confirm_password": PASSWORD,
                "csrf_token": browser.csrf(page)}  # fmt: skip
        status, _, page = browser.request(path.split("?")[0], form)
        assert status in (302, 303), (tenant_id, status, page[:500])
        assert Browser(tenant_id).login(email, PASSWORD)[0] in (302, 303)
        assert Browser(tenant_id).login(email, "admin")[0] == 200  # the template's password opens nothing
        status, _, page = Browser(tenant_id).request(path)
        assert "Invalid signup token" in page, (tenant_id, status)


def test_two_tenants_have_their_own_identity_and_own_every_object(signed_up, fresh_local_platform):
    identities = {}
    for tenant_id in signed_up:
        with fresh_local_platform.registry() as conn:
            server, port = conn.execute(
                "SELECT s.name, s.port FROM registry.tenants t JOIN registry.db_servers s ON s.name = t.db_server"
                " WHERE t.tenant_id = %s",
                (tenant_id,),
            ).fetchone()
        with superuser(server, port, f"t_{tenant_id}") as conn:
            identities[tenant_id] = conn.execute(
                "SELECT string_agg(value, ' ' ORDER BY key) FROM public.ir_config_parameter"
                " WHERE key IN ('database.uuid', 'database.secret')"
            ).fetchone()[0]
            owners = conn.execute(
                "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = relnamespace"
                " WHERE n.nspname = 'public'"
            ).fetchall()
            assert owners == [(f"t_{tenant_id}",)]
    assert len(set(identities.values())) == len(identities)


def test_an_upgrade_installs_its_modules_while_the_customers_odoo_serves(signed_up, fresh_local_platform):
    """Basic up to standard adds contacts (and mail, which it depends on): the real Odoo installs them beside the
    one that serves, which answers every login page asked every 0.5 s until they are installed, the same process;
    the restart for the new plan's workers comes after, and its failed answers are counted and printed."""
    with fresh_local_platform.registry() as conn:
        server, port = conn.execute(
            "SELECT s.name, s.port FROM registry.tenants t JOIN registry.db_servers s ON s.name = t.db_server"
            " WHERE t.tenant_id = 'acme'"
        ).fetchone()

    def contacts_installed() -> bool:
        with superuser(server, port, "t_acme") as conn:
            state = conn.execute("SELECT state FROM public.ir_module_module WHERE name = 'contacts'").fetchone()
        return state == ("installed",)

    assert not contacts_installed()
    serving = supervisor_pid("odoo-acme")
    probes: list[tuple[float, int]] = []
    installed_at = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        upgrade = pool.submit(
            run_playbook, "tenant_change_plan.yml", "-e", "tenant_id=acme", "-e", "plan=standard-monthly"
        )
        while not upgrade.done():
            asked = time.monotonic()
            probes.append((asked, login_page("acme")))
            if installed_at is None and contacts_installed():
                installed_at = time.monotonic()
                assert supervisor_pid("odoo-acme") == serving
            time.sleep(max(0.0, 0.5 - (time.monotonic() - asked)))  # the probe's pace, not a wait for anything
        upgraded = upgrade.result()
    assert upgraded.returncode == 0, upgraded.output[-4000:]
    assert installed_at is not None and contacts_installed()
    during = [status for asked, status in probes if asked < installed_at]
    after = [status for asked, status in probes if asked >= installed_at]
    print(f"live install: {len(during)} probes until installed, {sum(s != 200 for s in during)} failed; "
          f"{len(after)} after (the restart for the new limits), {sum(s != 200 for s in after)} failed")  # fmt: skip
    assert during and all(status == 200 for status in during), during
    assert login_page("acme") == 200
    assert Browser("acme").login(CUSTOMERS["acme"][2], PASSWORD)[0] in (302, 303)


def test_a_move_and_a_suspension_keep_the_customers_odoo_working(signed_up):
    moved = run_playbook("tenant_change_plan.yml", "-e", "tenant_id=acme", "-e", "plan=premium-monthly")
    assert moved.returncode == 0, moved.output[-4000:]
    assert login_page("acme") == 200
    assert Browser("acme").login(CUSTOMERS["acme"][2], PASSWORD)[0] in (302, 303)

    suspended = run_playbook("tenant_suspend.yml", "-e", "tenant_id=globex")
    assert suspended.returncode == 0, suspended.output[-3000:]
    assert abs(login_page("globex")) == 503
    resumed = run_playbook("tenant_resume.yml", "-e", "tenant_id=globex")
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert login_page("globex") == 200
    assert Browser("globex").login(CUSTOMERS["globex"][2], PASSWORD)[0] in (302, 303)


def test_a_server_that_outlives_its_primary_keeps_the_customers_odoo_answering(signed_up, fresh_local_platform):
    """Premium up to premium-ha (ha: sync): the database moves to a server under Patroni while the real Odoo runs.
    Then that server's primary is lost (its Patroni and PostgreSQL frozen): the replica takes over, and the same Odoo
    process answers its login page again and logs the admin in, with a company name written before the loss."""
    moved = run_playbook("tenant_change_plan.yml", "-e", "tenant_id=acme", "-e", "plan=premium-ha-monthly")
    assert moved.returncode == 0, moved.output[-4000:]
    with fresh_local_platform.registry() as conn:
        server, port, ha = conn.execute(
            "SELECT s.name, s.port, s.ha FROM registry.tenants t JOIN registry.db_servers s ON s.name = t.db_server"
            " WHERE t.tenant_id = 'acme'"
        ).fetchone()
    assert ha == "sync"
    cluster = Cluster(server, port, fresh_local_platform.password(f"patroni-restapi@{server}"))
    wait_until(lambda: sorted(cluster.roles().values()) == ["leader", "sync_standby"], "a synchronous replica", 60)
    serving = supervisor_pid("odoo-acme")
    with superuser(server, port, "t_acme") as conn:
        conn.execute("UPDATE public.res_company SET name = 'Acme, before the loss' WHERE id = 1")
    lost = cluster.leader()
    lost_at = time.monotonic()
    cluster.lose(lost)
    probes: list[int] = []
    try:
        while True:
            asked = time.monotonic()
            probes.append(login_page("acme"))
            if probes[-1] == 200 and cluster.leader() not in (None, lost):
                break
            assert asked - lost_at < 120, f"no other member led within 2 minutes: {cluster.members()}"
            time.sleep(max(0.0, 0.5 - (time.monotonic() - asked)))  # the probe's pace, not a wait for anything
    finally:
        cluster.revive(lost)
    print(f"failover: the login page answered again {time.monotonic() - lost_at:.1f} s after the primary was lost; "
          f"{len(probes)} probes, {sum(status != 200 for status in probes)} failed")  # fmt: skip
    assert supervisor_pid("odoo-acme") == serving
    assert Browser("acme").login(CUSTOMERS["acme"][2], PASSWORD)[0] in (302, 303)
    with superuser(server, port, "t_acme") as conn:
        assert conn.execute("SELECT name FROM public.res_company WHERE id = 1").fetchone() == ("Acme, before the loss",)
    wait_until(lambda: sorted(cluster.roles().values()) == ["leader", "sync_standby"], f"{lost} back", 120)


def test_a_downgrade_keeps_the_modules_the_smaller_plan_lacks(signed_up, fresh_local_platform):
    """Standard (contacts) down to basic: the real Odoo keeps contacts installed with its data, the registry records
    it as the tenant's extra module, and the customer's Odoo logs the admin in on its new plan."""
    downgraded = run_playbook("tenant_change_plan.yml", "-e", "tenant_id=globex", "-e", "plan=basic-monthly")
    assert downgraded.returncode == 0, downgraded.output[-4000:]
    with fresh_local_platform.registry() as conn:
        plan, extra, server, port = conn.execute(
            "SELECT t.plan_name, t.extra_modules, s.name, s.port FROM registry.tenants t"
            " JOIN registry.db_servers s ON s.name = t.db_server WHERE t.tenant_id = 'globex'"
        ).fetchone()
    assert (plan, extra) == ("basic-monthly", ["contacts"])
    with superuser(server, port, "t_globex") as conn:
        assert conn.execute("SELECT state FROM public.ir_module_module WHERE name = 'contacts'").fetchone() == (
            "installed",
        )
    assert login_page("globex") == 200
    assert Browser("globex").login(CUSTOMERS["globex"][2], PASSWORD)[0] in (302, 303)


def test_a_customer_who_cancelled_and_comes_back_finds_their_odoo_as_they_left_it(signed_up):
    """Terminated: Odoo stopped, the login refused. Reactivated (the runner's reactivate job, by hand here): the
    same Odoo answers and the password the admin set before the termination still logs in."""
    email = CUSTOMERS["initech"][2]
    terminated = run_playbook("tenant_terminate.yml", "-e", "tenant_id=initech")
    assert terminated.returncode == 0, terminated.output[-3000:]
    assert login_page("initech") != 200
    reactivated = run_playbook(
        "tenant_resume.yml", "-e", "tenant_id=initech", "-e", "reactivate=true", "-e", "subscription_id=sub-initech-2"
    )
    assert reactivated.returncode == 0, reactivated.output[-3000:]
    assert login_page("initech") == 200
    assert Browser("initech").login(email, PASSWORD)[0] in (302, 303)


def test_a_point_in_time_restore_brings_the_customers_odoo_back_to_that_moment(signed_up, fresh_local_platform):
    """The company renamed after a moment: tenant_restore.yml -e at=<that moment> from the offsite repository (the
    server's base backup and archived WAL in S3) brings back the name it had, and the same Odoo logs the admin in as
    before."""
    with fresh_local_platform.registry() as conn:
        server, port = conn.execute(
            "SELECT s.name, s.port FROM registry.tenants t JOIN registry.db_servers s ON s.name = t.db_server"
            " WHERE t.tenant_id = 'globex'"
        ).fetchone()
    based = run_playbook("servers_base_backup.yml", "--limit", server)
    assert based.returncode == 0, based.output[-3000:]
    with superuser(server, port, "t_globex") as conn:
        moment = conn.execute("SELECT clock_timestamp()").fetchone()[0].isoformat()
        conn.execute("UPDATE public.res_company SET name = 'Globex, renamed after the moment' WHERE id = 1")
    restored = run_playbook("tenant_restore.yml", "-e", "tenant_id=globex", "-e", f"at={moment}", "-e", "repository=2")
    assert restored.returncode == 0, restored.output[-4000:]
    assert "to recover to the moment - repo2 " in restored.output
    with superuser(server, port, "t_globex") as conn:
        assert conn.execute("SELECT name FROM public.res_company WHERE id = 1").fetchone() == ("Globex",)
    assert login_page("globex") == 200
    assert Browser("globex").login(CUSTOMERS["globex"][2], PASSWORD)[0] in (302, 303)


def test_a_drain_moves_the_customers_database_under_its_running_odoo(signed_up, fresh_local_platform):
    """Its pool drained: the database moves to the other pool, and the same Odoo process (its own PgBouncer reloaded,
    pointing there) serves the customer's open session, which needs the database, without a new login."""
    with fresh_local_platform.registry() as conn:
        (pool,) = conn.execute("SELECT db_server FROM registry.tenants WHERE tenant_id = 'globex'").fetchone()
    browser = Browser("globex")
    assert browser.login(CUSTOMERS["globex"][2], PASSWORD)[0] in (302, 303)
    assert browser.request("/odoo")[0] == 200  # the web client: a logged-in session, read from the database
    pid = supervisor_pid("odoo-globex")
    drained = run_playbook("pool_drain.yml", "-e", f"server={pool}")
    assert drained.returncode == 0, drained.output[-4000:]
    with fresh_local_platform.registry() as conn:
        assert conn.execute("SELECT db_server FROM registry.tenants WHERE tenant_id = 'globex'").fetchone() != (pool,)
    assert supervisor_pid("odoo-globex") == pid
    assert browser.request("/odoo")[0] == 200


def odoo_build(name: str, failing_module: str | None = None) -> str:
    """Another build of this Odoo 18 (a patch release, as an operator installs one beside the running one): a copy of
    its tree, run by the same virtualenv, where the tenants' OS users can read it. With failing_module, the module's
    version is bumped and its migration to it raises, as a broken release would: every tenant that has the module
    fails its update part-way."""
    python, odoo_bin = ODOO_BIN.split()
    root = LOCAL_STATE / "odoo-builds" / name
    subprocess.run(["rm", "-rf", str(root)], check=True)
    root.mkdir(parents=True)
    # Hard links where it is the same as this one (on one file system, as /srv and the checkout here); a module
    # that changes is a copy of its own.
    subprocess.run(["cp", "-al", odoo_bin, str(Path(odoo_bin).parent / "odoo"), str(root)], check=True)
    if failing_module:
        addon = root / "odoo/addons" / failing_module
        subprocess.run(["rm", "-rf", str(addon)], check=True)
        subprocess.run(
            ["cp", "-a", str(Path(odoo_bin).parent / "odoo/addons" / failing_module), str(addon)], check=True
        )
        manifest = (addon / "__manifest__.py").read_text()
        version = re.search(r"""['"]version['"]\s*:\s*['"]([^'"]+)['"]""", manifest)
        bumped = f"{version[1] if version else '1.0'}.1"
        if version:
            manifest = manifest.replace(version[0], f"'version': '{bumped}'")
        else:
            manifest = manifest.replace("{", f"{{'version': '{bumped}',", 1)
        (addon / "__manifest__.py").write_text(manifest)
        script = addon / "migrations" / f"18.0.{bumped}" / "pre-fail.py"
        script.parent.mkdir(parents=True)
        script.write_text(
            f"def migrate(cr, version):\n    raise RuntimeError('{name} cannot migrate {failing_module}')\n"
        )
    subprocess.run(["chmod", "-R", "o+rX", str(root.parent)], check=True)
    return f"{python} {root / 'odoo-bin'}"


def test_an_odoo_update_moves_a_customer_to_a_new_build_and_rolls_back_the_one_it_fails_for(
    signed_up, fresh_local_platform
):
    """tenant_update.yml with a second build of this Odoo: acme's database is updated by it (-u all) and its Odoo runs
    it, the admin logging in as before, and a second run changes nothing. A build whose contacts migration fails
    leaves globex (which has contacts) on the backup taken before, on its first build, logging in as before."""

    def build_of(tenant_id: str) -> str:
        with fresh_local_platform.registry() as conn:
            return conn.execute(
                "SELECT odoo_build FROM registry.tenants WHERE tenant_id = %s", (tenant_id,)
            ).fetchone()[0]

    def serving(tenant_id: str) -> str:
        return " ".join(Path(f"/proc/{supervisor_pid(f'odoo-{tenant_id}')}/cmdline").read_text().split("\0")[:2])

    patched = odoo_build("patched")
    started = time.monotonic()
    updated = run_playbook("tenant_update.yml", "-e", "tenant_id=acme", "-e", json.dumps({"build": patched}))
    assert updated.returncode == 0, updated.output[-4000:]
    print(f"\nacme updated to another build (-u all) in {time.monotonic() - started:.1f} s")
    assert build_of("acme") == patched and serving("acme") == patched
    assert Browser("acme").login(CUSTOMERS["acme"][2], PASSWORD)[0] in (302, 303)
    again = run_playbook("tenant_update.yml", "-e", "tenant_id=acme", "-e", json.dumps({"build": patched}))
    assert_nothing_changed(again)

    broken = odoo_build("broken", failing_module="contacts")
    failed = run_playbook("tenant_update.yml", "-e", "tenant_id=globex", "-e", json.dumps({"build": broken}))
    assert failed.returncode != 0
    assert "broken cannot migrate contacts" in failed.output, failed.output[-4000:]
    assert "was restored" in failed.output, failed.output[-4000:]
    assert build_of("globex") == ODOO_BIN and serving("globex") == ODOO_BIN
    assert login_page("globex") == 200
    assert Browser("globex").login(CUSTOMERS["globex"][2], PASSWORD)[0] in (302, 303)


def test_the_template_path_beside_the_i_path(signed_up, fresh_local_platform, tmp_path):
    """The same modules into a fresh database by odoo-bin -i, against cloning the template (both timed)."""
    server = fresh_local_platform.servers["pool-shared-01"]
    with superuser(server.name, server.port) as conn:
        template, label = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
            " WHERE datistemplate AND datname LIKE 'tpl\\_%' ORDER BY datname LIMIT 1"
        ).fetchone()
        started = time.monotonic()
        conn.execute(f"CREATE DATABASE acceptance_clone TEMPLATE {template}")
        clone_seconds = time.monotonic() - started
        conn.execute("DROP DATABASE acceptance_clone")

    modules = ",".join(json.loads(label)["modules"])
    # Odoo refuses to run as postgres: a scratch role of the database's name, which pg_hba's sameuser lets in.
    with superuser(server.name, server.port) as conn:
        conn.execute("DROP DATABASE IF EXISTS acceptance_init")
        conn.execute("DROP ROLE IF EXISTS acceptance_init")
        conn.execute("CREATE ROLE acceptance_init LOGIN PASSWORD 'acceptance-init'")
        conn.execute("CREATE DATABASE acceptance_init OWNER acceptance_init ENCODING 'UTF8' TEMPLATE template0")
    started = time.monotonic()
    init = subprocess.run(
        [*ODOO_BIN.split(), "-d", "acceptance_init", "-r", "acceptance_init", "-w", "acceptance-init",
         "--db_host", "127.0.0.1", "--db_port", str(server.port), "-i", modules, "--without-demo=all",
         "--stop-after-init", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    init_seconds = time.monotonic() - started
    with superuser(server.name, server.port) as conn:
        conn.execute("DROP DATABASE IF EXISTS acceptance_init")
        conn.execute("DROP ROLE IF EXISTS acceptance_init")
    assert init.returncode == 0, init.stderr[-3000:]
    print(f"\n-i {modules}: {init_seconds:.1f} s; CREATE DATABASE … TEMPLATE {template}: {clone_seconds:.2f} s")
    assert clone_seconds < init_seconds
