"""The local platform's Prometheus and Alertmanager as an operator asks them (their HTTP APIs), for the tests and
bench/alerting.py: inventories/local/group_vars/all/monitoring.yml puts them on 127.0.0.1:19090 and :19093."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

PROMETHEUS = "http://127.0.0.1:19090"
ALERTMANAGER = "http://127.0.0.1:19093"


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def query(expr: str) -> list[dict]:
    """Prometheus' instant vector for `expr` now."""
    return get_json(f"{PROMETHEUS}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")["data"]["result"]


def alertmanager_alerts(name: str, **labels: str) -> list[dict]:
    """The active, unsilenced alerts Alertmanager holds named `name` with these labels."""
    matchers = [f'alertname="{name}"', *(f'{key}="{value}"' for key, value in labels.items())]
    params = urllib.parse.urlencode([("filter", m) for m in matchers] + [("active", "true"), ("silenced", "false")])
    return get_json(f"{ALERTMANAGER}/api/v2/alerts?{params}")


def prometheus_alerts(name: str, **labels: str) -> list[dict]:
    """The alerts Prometheus' rules hold now (pending or firing) named `name` with these labels."""
    return [
        alert for alert in get_json(f"{PROMETHEUS}/api/v1/alerts")["data"]["alerts"]
        if alert["labels"]["alertname"] == name and labels.items() <= alert["labels"].items()
    ]  # fmt: skip
