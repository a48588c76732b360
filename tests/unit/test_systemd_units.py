"""The systemd units production runs the daemons under (*_service_manager: systemd), rendered as the roles render
them and checked by systemd's own `systemd-analyze verify`. The local platform starts plain processes, and this
machine runs no systemd, so the units are not started here: what can be checked without one is."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from ansible.template import trust_as_template

from ansible_collections.saasodoo.platform.plugins.module_utils.tenant_limits import limits_names

from conftest import ROLES, role_templar

# Each unit: its role, its template, the name the role installs it under, and inputs as production's would be.
UNITS = {
    "saasodoo-pgbouncer-pool-shared-01.service": (
        "pgbouncer",
        "pgbouncer.service.j2",
        {
            "pgbouncer_base_dir": "/var/lib/saasodoo/pgbouncer/pool-shared-01",
            "pgbouncer_listen_port": 6432,
            "pgbouncer_server_host": "10.20.1.11",
            "pgbouncer_server_port": 5432,
            "pgbouncer_max_client_conn": 5000,
        },
    ),
    "saasodoo-webhook-runner.service": (
        "webhook_runner",
        "runner.service.j2",
        {"webhook_runner_dir": "/var/lib/saasodoo/webhook_runner"},
    ),
    "saasodoo-odoo-supervisord.service": (
        "odoo_runtime",
        "process/supervisord.service.j2",
        {"odoo_runtime_process_dir": "/var/lib/saasodoo/runtime", "odoo_runtime_service_manager": "systemd"},
    ),
    "saasodoo-odoo-nginx.service": (
        "odoo_runtime",
        "process/nginx.service.j2",
        {"odoo_runtime_process_dir": "/var/lib/saasodoo/runtime"},
    ),
}


def render(role: str, template: str, inputs: dict) -> str:
    source = (ROLES / role / "templates" / template).read_text()
    return role_templar(role, inputs).template(trust_as_template(source))


def verify(unit: Path) -> str:
    """What systemd-analyze says of the unit: nothing when systemd would load it as it is."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: make setup installs the systemd package")
    run = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    return (run.stdout + run.stderr).strip() or ("" if run.returncode == 0 else f"exit {run.returncode}")


@pytest.mark.parametrize("name", UNITS)
def test_each_unit_is_one_systemd_loads_as_it_is(name: str, tmp_path: Path):
    role, template, inputs = UNITS[name]
    unit = tmp_path / name
    unit.write_text(render(role, template, inputs))
    assert verify(unit) == ""


@pytest.mark.parametrize("name", UNITS)
def test_each_unit_restarts_its_daemon_and_starts_at_boot(name: str):
    role, template, inputs = UNITS[name]
    text = render(role, template, inputs)
    assert "{{" not in text and "{%" not in text, text
    lines = text.splitlines()
    assert "Restart=on-failure" in lines
    assert "WantedBy=multi-user.target" in lines
    # The daemon reads the configuration file the role writes, in this role's directory.
    start = next(line for line in lines if line.startswith("ExecStart="))
    assert next(value for key, value in inputs.items() if key.endswith("_dir")) in start, start


def test_the_roles_install_each_unit_under_the_name_checked_here():
    installed = {
        role_templar("pgbouncer", {}).template(trust_as_template("{{ __pgbouncer_systemd_unit }}")),
        role_templar("webhook_runner", {}).template(trust_as_template("{{ __webhook_runner_systemd_unit }}")),
        *(unit["name"] for unit in role_templar("odoo_runtime", {}).template(
            trust_as_template("{{ __odoo_runtime_systemd_units }}"))),
    }  # fmt: skip
    assert installed == set(UNITS)


def test_pgbouncer_runs_as_its_user_in_the_foreground_with_room_for_its_clients():
    lines = render(*UNITS["saasodoo-pgbouncer-pool-shared-01.service"]).splitlines()
    assert "User=postgres" in lines
    assert "ExecStart=/usr/sbin/pgbouncer /var/lib/saasodoo/pgbouncer/pool-shared-01/pgbouncer.ini" in lines  # no -d
    assert "LimitNOFILE=10000" in lines  # a descriptor per client connection, and one per server connection


def test_supervisord_stays_in_the_foreground_for_systemd():
    for name in ("saasodoo-webhook-runner.service", "saasodoo-odoo-supervisord.service"):
        start = next(line for line in render(*UNITS[name]).splitlines() if line.startswith("ExecStart="))
        assert start.startswith("ExecStart=/usr/bin/supervisord -n -c "), start


def test_verify_reports_a_unit_systemd_would_refuse(tmp_path: Path):
    """The check above can fail: a daemon that is not installed, a setting systemd does not know."""
    text = render(*UNITS["saasodoo-pgbouncer-pool-shared-01.service"])
    unit = tmp_path / "saasodoo-pgbouncer-pool-shared-01.service"
    unit.write_text(text.replace("/usr/sbin/pgbouncer", "/usr/sbin/no-such-pgbouncer"))
    assert "no-such-pgbouncer" in verify(unit)
    unit.write_text(text.replace("Type=simple", "Type=simpel"))
    assert "simpel" in verify(unit)


def test_a_tenants_slice_holds_its_plans_cpu_and_memory_and_systemd_loads_it(tmp_path: Path):
    """odoo_runtime_limits=systemd: the slice the tenant's programs run in (systemd-run --scope --slice=)."""
    inputs = {
        "odoo_runtime_tenant_id": "acme",
        "odoo_runtime_plan_name": "standard-monthly",
        "odoo_runtime_plan": {"cpu": 1.5, "memory_mb": 2048},
        "odoo_runtime_http_port": 20069,
        "odoo_runtime_service_manager": "systemd",
        "odoo_runtime_network_isolation": False,
        # The collection's filters' (a templar here loads no collection).
        "__odoo_runtime_limits_names": limits_names(20069, "/var/lib/saasodoo/runtime"),
        "__odoo_runtime_tenant_user": "odoo_acme",
    }
    templar = role_templar("odoo_runtime", inputs)
    name = inputs["__odoo_runtime_limits_names"]["slice"]
    argv = templar.template(trust_as_template("{{ __odoo_runtime_as_tenant }}"))
    assert argv[:5] == ["/usr/bin/systemd-run", "--scope", "--quiet", "--collect", f"--slice={name}"], argv
    unit = tmp_path / name
    unit.write_text(render("odoo_runtime", "process/tenant.slice.j2", inputs))
    lines = unit.read_text().splitlines()
    assert {"CPUQuota=150%", "MemoryMax=2048M", "MemorySwapMax=0"} <= set(lines), lines
    assert verify(unit) == ""
    # supervisord's unit stops the tenants' slices with it: no Odoo left serving outside it.
    supervisord = render(*UNITS["saasodoo-odoo-supervisord.service"]).splitlines()
    assert "ExecStopPost=-/usr/bin/systemctl stop saasodoo-tenants.slice" in supervisord
