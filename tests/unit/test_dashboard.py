"""The Grafana dashboard (roles/monitoring/files/dashboards/saasodoo.json) as Grafana and Prometheus would take it:
panels laid out without overlap, every query valid PromQL (promtool) and reading only metrics the platform exports,
so a renamed metric shows up here rather than as an empty panel."""

from __future__ import annotations

import json
import re
import subprocess
from itertools import combinations

import pytest
import yaml
from ansible.template import trust_as_template

from conftest import REPO, ROLES, role_templar

DASHBOARD = ROLES / "monitoring/files/dashboards/saasodoo.json"

# The standard exporters' metrics the dashboard reads: prometheus-postgres-exporter 0.11.1 (its built-in queries,
# without --extend.query-path), prometheus-blackbox-exporter 0.23, and Prometheus' own (up, ALERTS).
EXPORTERS = {
    "pg_up",
    "pg_stat_database_numbackends",
    "pg_stat_database_xact_commit",
    "pg_database_size_bytes",
    "pg_stat_archiver_failed_count",
    "pg_stat_replication_pg_wal_lsn_diff",
    "probe_success",
    "probe_duration_seconds",
    "probe_ssl_earliest_cert_expiry",
    "up",
    "ALERTS",
}
# Words of PromQL that stand where a metric name could (grouping clauses are taken out before).
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# prometheus_client writes a histogram as <name>_bucket, _sum and _count, and a counter as <name>_total.
SUFFIXES = re.compile(r"_(bucket|sum|count|total)$")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def query_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def exprs(dashboard: dict) -> list[str]:
    """Every query, with Grafana's interval variables as promtool cannot read them."""
    found = [target["expr"] for panel in query_panels(dashboard) for target in panel["targets"]]
    return [expr.replace("$__rate_interval", "5m").replace("$__interval", "1m") for expr in found]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not functions (no `(` after them), once strings,
    label matchers and by/without/on/ignoring/group_* label lists are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?=[{\[)\s,]|$)(?!\s*\()", expr)
    return set(names) - KEYWORDS


def exported_metrics() -> set[str]:
    """What the platform exports: the PgBouncer exporter's and the runner's names, and those the alert rules read."""
    names = set(EXPORTERS)
    for source in (ROLES / "monitoring/files/pgbouncer_exporter.py", REPO / "webhook_runner/metrics.py"):
        names |= set(re.findall(r"\"((?:pgbouncer|saasodoo)_\w+)\"", source.read_text()))
    template = (ROLES / "monitoring/templates/alerts.yml.j2").read_text()
    alerts = yaml.safe_load(role_templar("monitoring", {}).template(trust_as_template(template)))
    for group in alerts["groups"]:
        for rule in group["rules"]:
            names |= metric_names(rule["expr"])
    return names


def test_identity_and_datasource_variable(dashboard):
    """Links and provisioning find the dashboard by its uid; every panel asks the chosen Prometheus."""
    assert (dashboard["uid"], dashboard["title"]) == ("saasodoo-fleet", "SaaSOdoo fleet")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    for panel in query_panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panel_ids_are_unique_and_panels_do_not_overlap(dashboard):
    """Grafana keys panels by id, and moves overlapping ones about when it loads the dashboard."""
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for a, b in combinations(dashboard["panels"], 2):
        ga, gb = a["gridPos"], b["gridPos"]
        apart = (
            ga["x"] + ga["w"] <= gb["x"]
            or gb["x"] + gb["w"] <= ga["x"]
            or ga["y"] + ga["h"] <= gb["y"]
            or gb["y"] + gb["h"] <= ga["y"]
        )
        assert apart, f"{a['title']!r} overlaps {b['title']!r}"
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dashboard["panels"])


def test_every_panel_has_queries(dashboard):
    """A panel without an expr shows nothing."""
    for panel in query_panels(dashboard):
        assert panel["targets"], panel["title"]
        assert all(target.get("expr") for target in panel["targets"]), panel["title"]


def test_every_expr_is_valid_promql(dashboard, tmp_path):
    """promtool parses each query as a recording rule's expression, as Prometheus would parse it."""
    rules = [{"record": f"dashboard:expr_{n}", "expr": expr} for n, expr in enumerate(exprs(dashboard))]
    path = tmp_path / "dashboard.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_metric_is_one_the_platform_exports(dashboard):
    """A misspelt or renamed metric would leave its panel empty without an error."""
    known = exported_metrics()
    for expr in exprs(dashboard):
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        unknown = {name for name in names if name not in known and SUFFIXES.sub("", name) not in known}
        assert not unknown, f"{expr!r} reads {sorted(unknown)}, which nothing exports"
