"""The demo's audit print (tests/e2e/demo.py audit_line): one line per registry.audit row of each shape its
writers use, with the row's key facts and never a "None" for a fact the row does not hold."""

from __future__ import annotations

import pytest

from tests.e2e.demo import audit_line

TRACEBACK = "Traceback (most recent call last):\n  File \"worker.py\", line 80\nKeyError: 'planName'\n"

ROWS = {
    "runner event": (
        {"kind": "event", "detail": {"event_type": "SUBSCRIPTION_CREATION", "object_type": "SUBSCRIPTION",
                                     "object_id": "sub-1", "action_type": "EFFECTIVE"}},
        ["SUBSCRIPTION_CREATION", "EFFECTIVE"],
    ),
    "runner event without an action type": (
        {"kind": "event", "detail": {"event_type": "INVOICE_PAYMENT_FAILED", "object_type": "PAYMENT",
                                     "object_id": "pay-1", "action_type": None}},
        ["INVOICE_PAYMENT_FAILED"],
    ),
    "runner decision": (
        {"kind": "decision", "detail": {"killbill": {"state": "ACTIVE", "planName": "standard-monthly",
                                                     "phaseType": "EVERGREEN"},
                                        "blocked": True, "actions": ["suspend"]}},
        ["Kill Bill says ACTIVE standard-monthly EVERGREEN (blocked) -> suspend"],
    ),
    "runner decision on a subscription Kill Bill no longer has": (
        {"kind": "decision", "detail": {"killbill": {"state": None, "planName": None, "phaseType": None},
                                        "blocked": False, "actions": []}},
        ["Kill Bill says nothing -> nothing to do"],
    ),
    "db_placement decision": (
        {"kind": "decision", "detail": {"chosen": "pool-shared-02", "reason": "least loaded shared pool",
                                        "db_type": "shared"}},
        ["place on pool-shared-02 (shared): least loaded shared pool"],
    ),
    "db_migrate decision": (
        {"kind": "decision", "detail": {"action": "move", "from": "pool-shared-01", "to": "dedicated-acme",
                                        "plan": "premium-monthly", "method": "logical",
                                        "reason": "plan needs dedicated"}},
        ["move pool-shared-01 -> dedicated-acme", "logical, premium-monthly", "plan needs dedicated"],
    ),
    "runner job": (
        {"kind": "job", "detail": {"action": "provision", "playbook": "tenant_provision.yml",
                                   "extravars": {"tenant_id": "acme"}, "attempt": 1}},
        ["provision run tenant_provision.yml (attempt 1)"],
    ),
    "runner result": (
        {"kind": "result", "detail": {"state": "succeeded", "rc": 0, "error": None, "seconds": 12.34}},
        ["succeeded in 12.34 s"],
    ),
    "runner result that failed to start": (
        {"kind": "result", "detail": {"state": "queued", "rc": None, "error": "ansible-runner: boom",
                                      "seconds": 0.1}},
        ["queued in 0.1 s: ansible-runner: boom"],
    ),
    "registry_tenant result": (
        {"kind": "result", "detail": {"action": "suspend", "reason": "payment failed", "run": "run-7",
                                      "changes": {"status": {"before": "active", "after": "suspended"},
                                                  "runtime_port": {"before": 8070, "after": None}}}},
        ["suspend: status active -> suspended, runtime_port 8070 -> unset", "reason=payment failed"],
    ),
    "db_migrate repointed": (
        {"kind": "result", "detail": {"action": "move", "phase": "repointed", "from": "pool-shared-01",
                                      "to": "dedicated-acme", "plan": "premium-monthly", "db_type": "dedicated"}},
        ["move repointed pool-shared-01 -> dedicated-acme (premium-monthly, dedicated)"],
    ),
    "db_migrate done": (
        {"kind": "result", "detail": {"action": "move", "phase": "done", "retained_db": "t_acme_old3",
                                      "write_downtime_ms": None}},
        ["move done retained_db=t_acme_old3"],
    ),
    "db_migrate rolled back": (
        {"kind": "result", "detail": {"action": "move", "phase": "rolled_back", "reason": "verification failed"}},
        ["move rolled_back: verification failed"],
    ),
    "run start": (
        {"kind": "run", "detail": {"run": "9f2c", "phase": "start", "playbook": "playbooks/tenant_change_plan.yml",
                                   "user": "alice", "job": None, "inventory": ["inventories/local"], "limit": None,
                                   "check_mode": True, "extra_vars": ["plan", "tenant_id"]}},
        ["start playbooks/tenant_change_plan.yml by alice in check mode with plan, tenant_id"],
    ),
    "run end of a runner job": (
        {"kind": "run", "detail": {"run": "job-7-1", "phase": "end", "playbook": "playbooks/tenant_suspend.yml",
                                   "user": "saasodoo", "job": "7", "inventory": ["inventories/local"],
                                   "limit": "acme", "check_mode": False, "extra_vars": [],
                                   "hosts": {"pool-shared-01": {"ok": 5, "changed": 1, "failed": 1, "unreachable": 0,
                                                                "skipped": 0, "rescued": 0},
                                             "runtime-01": {"ok": 3, "changed": 0, "failed": 0, "unreachable": 0,
                                                            "skipped": 2, "rescued": 0}},
                                   "seconds": 8.52, "outcome": "failed"}},
        ["end playbooks/tenant_suspend.yml -> failed (pool-shared-01) in 8.52 s by saasodoo (job 7) limit acme"],
    ),
    "run end recorded without its start": (
        {"kind": "run", "detail": {"run": "9f2d", "phase": "end", "playbook": "playbooks/site.yml", "hosts": {},
                                   "seconds": 61.0, "outcome": "ok"}},
        ["end playbooks/site.yml -> ok in 61.0 s"],
    ),
    "backup result": (
        {"kind": "result", "detail": {"action": "backup", "kind": "manual", "bytes": 123456,
                                      "manifest_sha256": "ab" * 4}},
        ["backup: kind=manual bytes=123456 manifest_sha256=abababab"],
    ),
    "restore result": (
        {"kind": "result", "detail": {"action": "restore", "from_tenant": "acme", "forced": False}},
        ["restore: from_tenant=acme forced=False"],
    ),
    "replay": (
        {"kind": "replay", "detail": {"action": "provision"}},
        ["provision"],
    ),
    "error": (
        {"kind": "error", "detail": {"events": [4, 5], "jobs_parked": [], "traceback": TRACEBACK}},
        ["2 events failed, 0 jobs parked: KeyError: 'planName'"],
    ),
    "probe with an empty detail": (
        {"kind": "probe", "detail": {}},
        ["(no detail)"],
    ),
}  # fmt: skip


@pytest.mark.parametrize(("row", "facts"), ROWS.values(), ids=ROWS.keys())
def test_each_audit_row_shows_its_facts_and_never_none(row: dict, facts: list[str]):
    line = audit_line(row)
    assert "None" not in line and "null" not in line
    for fact in facts:
        assert fact in line, f"{fact!r} not in {line!r}"


def test_the_run_link_and_long_values_stay_out_of_the_line():
    row = {"kind": "job", "detail": {"action": "provision", "playbook": "tenant_provision.yml", "attempt": 2,
                                     "extravars": {"customer_b64": "x" * 500}, "run": "run-7"}}  # fmt: skip
    line = audit_line(row)
    assert "customer_b64" not in line and "run-7" not in line
    assert len(audit_line({"kind": "error", "detail": {"traceback": "E" * 500}})) <= 110
