"""The monitoring's configurations as the role writes them, checked by the programs that read them: Prometheus'
by `promtool check config` (its rules with it), Alertmanager's by `amtool check-config`, the blackbox exporter's
by its own --config.check. Rendered with the local platform's kind of inputs and with production's (mail and a
webhook), so a template change that breaks either fails here, in `make lint` and `make unit`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible.template import trust_as_template

from conftest import ROLES, role_templar

TEMPLATES = ROLES / "monitoring/templates"
INPUTS = {
    "local": {
        "monitoring_dir": "/srv/monitoring",
        "monitoring_runner_url": "http://127.0.0.1:58190",
        "monitoring_runner_metrics_token": "t0ken",
        "monitoring_tenant_ca_certificate": "-----BEGIN CERTIFICATE-----",
    },
    "production": {
        "monitoring_dir": "/srv/monitoring",
        "monitoring_runner_url": "https://runner.example.internal:8443",
        "monitoring_runner_metrics_token": "t0ken",
        "monitoring_alert_email": {
            "smarthost": "smtp.example.com:587",
            "from": "am@example.com",
            "to": "ops@example.com",
        },
        "monitoring_alert_webhooks": [{"url": "https://chat.example.com/hooks/ops"}],
        "monitoring_node_hosts": {"pool-shared-02": "10.20.1.12", "ceph-osd-01": "ceph-osd-01.example.internal"},
    },
}


def check(argv: list[str], cwd: Path) -> None:
    run = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 0, f"{' '.join(argv)}:\n{run.stdout}{run.stderr}"


@pytest.fixture(params=sorted(INPUTS))
def rendered(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The role's configuration files as it writes them into monitoring_dir, here into tmp_path."""
    templar = role_templar("monitoring", INPUTS[request.param] | {"monitoring_dir": str(tmp_path)})
    for name in ("prometheus.yml", "alerts.yml", "alertmanager.yml", "blackbox.yml"):
        (tmp_path / name).write_text(templar.template(trust_as_template((TEMPLATES / f"{name}.j2").read_text())))
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/runner_metrics_token").write_text("t0ken\n")  # promtool checks the credentials file is there
    (tmp_path / "tenant-ca.crt").write_text("")
    return tmp_path


def test_prometheus_accepts_its_configuration_and_rules(rendered: Path):
    check(["promtool", "check", "config", "prometheus.yml"], rendered)


def test_alertmanager_accepts_its_configuration(rendered: Path):
    check(["amtool", "check-config", "alertmanager.yml"], rendered)


def test_the_blackbox_exporter_accepts_its_modules(rendered: Path):
    check(["prometheus-blackbox-exporter", "--config.check", "--config.file=blackbox.yml"], rendered)


def test_prometheus_scrapes_every_hosts_node_exporter(rendered: Path, request: pytest.FixtureRequest):
    """This host's node exporter, and each of monitoring_node_hosts' at its address, labelled with its name."""
    (node,) = [job for job in yaml.safe_load((rendered / "prometheus.yml").read_text())["scrape_configs"]
               if job["job_name"] == "node"]  # fmt: skip
    targets = {config["labels"]["host"]: config["targets"] for config in node["static_configs"]}
    others = INPUTS[request.node.callspec.params["rendered"]].get("monitoring_node_hosts", {})
    assert {host: targets[host] for host in others} == {host: [f"{address}:9100"] for host, address in others.items()}
    assert len(targets) == len(others) + 1, targets


def test_a_server_whose_exporters_run_beside_it_is_scraped_there():
    """templates/server_files.json.j2: a server with monitoring_postgres_exporter_address (production: every server on
    5432, on hosts of their own) has no exporter program on the monitoring host, its target at that address on 9187,
    no share in the port check, and its host's node exporter among the targets."""
    hostvars = {
        name: {
            "postgres_server_listen_addresses": address, "postgres_server_port": 5432,
            "saasodoo_monitor_password": "pw", "monitoring_postgres_exporter_address": address,
            "monitoring_node_exporter_address": address, "inventory_hostname": name,
        }
        for name, address in (("pool-shared-01", "10.20.1.11"), ("pool-dedicated-acme", "10.20.1.21"))
    }  # fmt: skip
    templar = role_templar("monitoring", {
        "hostvars": hostvars, "groups": {"pools_dedicated": ["pool-dedicated-acme"]},
        "monitoring_postgres_servers": list(hostvars), "__monitoring_servers": list(hostvars), "monitoring_dir": "/m",
    })  # fmt: skip
    files = json.loads(templar.template(trust_as_template((TEMPLATES / "server_files.json.j2").read_text())))
    root = {Path(f["path"]).name: f["content"] for f in files["root"]}
    assert not [name for name in root if name.endswith(".conf")], root  # no exporter program here
    assert json.loads(root["postgres-pool-dedicated-acme.json"])[0]["targets"] == ["10.20.1.21:9187"]
    assert json.loads(root["node-pool-shared-01.json"]) == [{"targets": ["10.20.1.11:9100"],
                                                             "labels": {"host": "pool-shared-01"}}]  # fmt: skip
    assert files["exporter_ports"] == {} and files["shared_exporter_ports"] == []
    assert templar.template(trust_as_template("{{ __monitoring_exporter_programs }}")) == []
