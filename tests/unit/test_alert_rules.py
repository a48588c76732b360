"""The alert rules (roles/monitoring/templates/alerts.yml.j2) as the role writes them with production's durations and
thresholds, checked by promtool and run through its unit tests (tests/monitoring/*_test.yml): each alert fires on
the trouble it names and stays quiet otherwise, and leads the operator to its section of the runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible.template import trust_as_template

from conftest import REPO, ROLES, load_yaml, role_templar

ALERTS_TEMPLATE = ROLES / "monitoring/templates/alerts.yml.j2"
PROMTOOL_CASE_FILES = sorted((REPO / "tests/monitoring").glob("*_test.yml"))
RUNBOOK = REPO / "docs/operations/runbook.md"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: make setup installs the prometheus package")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=300)


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alerts.yml rendered with the role's defaults, and the promtool case files beside it (their rule_files names
    alerts.yml relative to themselves)."""
    directory = tmp_path_factory.mktemp("monitoring")
    rendered = role_templar("monitoring", {}).template(trust_as_template(ALERTS_TEMPLATE.read_text()))
    (directory / "alerts.yml").write_text(rendered)
    for case_file in PROMTOOL_CASE_FILES:
        shutil.copy(case_file, directory)
    return directory


@pytest.fixture(scope="module")
def alert_rules(rules_dir: Path) -> list[dict]:
    groups = load_yaml(rules_dir / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool_cases() -> list[dict]:
    """Every alert_rule_test of the case files: an alert name, a time and the alerts expected firing then."""
    return [
        case
        for case_file in PROMTOOL_CASE_FILES
        for group in load_yaml(case_file)["tests"]
        for case in group.get("alert_rule_test") or []
    ]


def test_promtool_accepts_the_rendered_rules(rules_dir: Path, alert_rules: list[dict]):
    """The role's `promtool check config` reads the rules too: a broken expression fails here before a run."""
    run = promtool("check", "rules", "alerts.yml", cwd=rules_dir)
    assert run.returncode == 0, run.stdout + run.stderr
    assert alert_rules, "the rendered alerts.yml holds no alert"


def test_every_alert_behaves_as_its_promtool_cases_expect(rules_dir: Path):
    assert PROMTOOL_CASE_FILES, "tests/monitoring has no *_test.yml"
    run = promtool("test", "rules", *(case_file.name for case_file in PROMTOOL_CASE_FILES), cwd=rules_dir)
    assert run.returncode == 0, f"promtool test rules failed:\n{run.stdout}{run.stderr}"


def test_every_alert_has_a_promtool_case_where_it_fires_and_one_where_it_does_not(alert_rules: list[dict]):
    """A new rule without cases fails here, rather than reaching production untested."""
    alerts = {rule["alert"] for rule in alert_rules}
    cases = promtool_cases()
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert sorted(alerts - firing) == [], "alerts no promtool case sees firing"
    assert sorted(alerts - quiet) == [], "alerts no promtool case sees quiet"


def test_every_promtool_case_names_an_alert_of_the_rules(alert_rules: list[dict]):
    """A case of a renamed or removed alert would pass for nothing: no alert of that name ever fires."""
    alerts = {rule["alert"] for rule in alert_rules}
    assert sorted({case["alertname"] for case in promtool_cases()} - alerts) == []


def test_every_alert_links_its_runbook_section(alert_rules: list[dict]):
    """The link an operator follows from the alert: the runbook's heading of the alert's name, as its anchor."""
    wrong = {
        rule["alert"]: rule.get("annotations", {}).get("runbook")
        for rule in alert_rules
        if rule.get("annotations", {}).get("runbook") != f"docs/operations/runbook.md#{rule['alert'].lower()}"
    }
    assert wrong == {}


def test_every_alert_has_a_section_in_the_runbook(alert_rules: list[dict]):
    """What the alert means and what to run lives in the runbook, under `## <AlertName>`."""
    assert RUNBOOK.exists(), f"{RUNBOOK.relative_to(REPO)} is missing"
    headings = set(re.findall(r"^## +(\S+) *$", RUNBOOK.read_text(), re.MULTILINE))
    assert sorted({rule["alert"] for rule in alert_rules} - headings) == [], "alerts without a section in the runbook"
