"""The monitoring's configurations as the role writes them, checked by the programs that read them: Prometheus'
by `promtool check config` (its rules with it), Alertmanager's by `amtool check-config`, the blackbox exporter's
by its own --config.check. Rendered with the local platform's kind of inputs and with production's (mail and a
webhook), so a template change that breaks either fails here, in `make lint` and `make unit`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
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
