"""tenant_change_plan.yml killed mid-move (docs/moves.md), on a tenant of its own with a client
writing throughout (tests/integration/movers.py).

The move is SIGKILLed at each point of FAULT_CASES and the playbook run again (`make soak`: three times each; `make
test`: once at each of TEST_FAULT_CASES), or, after one of them, the webhook runner's recovery pass runs it: the
next run finishes it or rolls it back and makes it again, and the tenant ends on exactly one server with every
committed row. A playbook run killed alone (its async move lives on) has its move roll itself back.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from .conftest import LOCAL_STATE, LocalPlatform, run_playbook
from .movers import PLANS, RUNTIME_NONE, Mover, provision_mover, wait_for_file
from .runner_stack import (
    pause_deployed_runner,
    resume_deployed_runner,
    runner_command,
    runner_settings,
    write_settings,
)

# The points successive runs are SIGKILLed at, before one more runs through. A logical move switches first
# (turned: replication runs target -> source; repointed: the tenant works on the target) and verifies after.
FAULT_CASES = (
    ("copying",),
    ("catching_up",),
    ("cutover",),
    ("turned",),
    ("repointed",),
    ("verifying",),
    ("verified",),
    ("repointed", "switching_back"),  # and again while the next run switches back
)
FAULT_ROUNDS = int(os.environ.get("FAULT_ROUNDS", "1"))  # kills per point
# `make test` leaves out the three points whose next run takes the same path as a neighbour's (`make soak`,
# FAULT_ROUNDS=3, kills at every point): catching_up rolls back as copying does (nothing turned round yet), cutover
# as turned does (writes blocked, not switched), and verifying switches back as repointed does (switched,
# unverified).
TEST_FAULT_CASES = tuple(case for case in FAULT_CASES if case not in (("catching_up",), ("cutover",), ("verifying",)))
# Writes blocked on the source when the run died: the tenant cannot work until the move is finished or rolled back.
# After this kill, the webhook runner's recovery pass does it instead of an operator.
RECOVERED_BY_THE_RUNNER = ("turned",)


# Odoo's own tables without test_tenant_move.py's custom models (133 model tables instead of 300): each case copies
# the tenant once or twice, and what a kill proves does not grow with the tables.
@pytest.fixture(scope="module")
def mover(local_platform: LocalPlatform) -> Mover:
    return provision_mover(local_platform, "mover-faults", custom_models=False)


def test_a_move_killed_at_any_point_is_finished_or_rolled_back_by_the_next_run(
    mover: Mover, local_platform: LocalPlatform, tmp_path: Path
):
    for attempt in range(FAULT_ROUNDS):
        for points in FAULT_CASES if FAULT_ROUNDS > 1 else TEST_FAULT_CASES:
            plan, kind = PLANS[mover.record()["db_type"]]
            writer = mover.writer()
            writer.start()
            killed = [mover.kill_at(point, tmp_path / f"{point}-{attempt}-{len(points)}", plan) for point in points]
            if points == FAULT_CASES[0] and attempt == 0:
                # Another operation does not wait for a move whose run died: it refuses, naming what finishes it.
                refused = run_playbook("tenant_suspend.yml", "-e", f"tenant_id={mover.tenant}", *RUNTIME_NONE)
                assert refused.returncode != 0, refused.output[-3000:]
                assert f"tenant_change_plan.yml -e tenant_id={mover.tenant} -e plan={plan}" in refused.output
            if points == RECOVERED_BY_THE_RUNNER and attempt == 0:
                job = recovered_by_the_runner(mover, local_platform, tmp_path / "runner")
                report = writer.stop()
                assert job["state"] == "succeeded", f"after kills at {points}:\n{killed}\n{job}"
            else:
                rerun = mover.change_plan(plan)
                report = writer.stop()
                assert rerun.returncode == 0, f"after kills at {points}:\n{killed}\n{rerun.output[-5000:]}"
            mover.assert_moved_cleanly(report, kind)


def recovered_by_the_runner(mover: Mover, platform: LocalPlatform, state: Path) -> dict:
    """The webhook runner's recovery pass (`python -m webhook_runner recover`) finds the move no run finishes, once
    it has rested in its phase past move_stuck_seconds (aged here rather than waited for), and queues a job in the
    tenant's account that a worker (`worker --drain --account`) runs: tenant_change_plan.yml with the move's plan.
    The job as it ended."""
    state.mkdir()
    settings = state / "settings.json"
    write_settings(settings, runner_settings(platform, "http://127.0.0.1:9", state))

    deployed = pause_deployed_runner()  # its worker's recovery pass would queue the same job; one runner is enough
    try:
        with mover.registry() as conn:
            move = conn.execute(
                "SELECT id, registry.move_is_held(tenant_id) AS held FROM registry.migrations"
                " WHERE tenant_id = %s AND finished_at IS NULL",
                (mover.tenant,),
            ).fetchone()
            assert move is not None and not move["held"]  # its run was killed
            assert f"move {move['id']} " not in runner_command(
                settings, "recover"
            )  # not stuck yet: a live run may rest between steps
            conn.execute(
                """UPDATE registry.migrations SET started_at = started_at - interval '1 hour',
                          phase_history = jsonb_set(phase_history, '{-1,at}', to_jsonb(now() - interval '1 hour'))
                    WHERE id = %s""",
                (move["id"],),
            )
        found = runner_command(settings, "recover")
        assert re.search(rf"{mover.tenant}: move {move['id']} .* no run finishing it: job \d+ queued", found), found
        runner_command(settings, "worker", "--drain", "--account", mover.record()["customer_id"])  # nobody else's work
    finally:
        resume_deployed_runner(deployed)
    return last_recovery_job(mover)


def last_recovery_job(mover: Mover) -> dict:
    """The tenant's last recover_move job, once it has ended. The drained worker ends it; should another worker
    have taken it (a deployed one some other test started again), its end is still the runner's answer."""
    deadline = time.monotonic() + 600
    while True:
        with mover.registry() as conn:
            job = conn.execute(
                "SELECT id, action, state, attempts, error, account_id FROM registry.jobs"
                " WHERE tenant_id = %s AND action = 'recover_move' ORDER BY id DESC LIMIT 1",
                (mover.tenant,),
            ).fetchone()
        if job["state"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def test_a_move_whose_playbook_run_is_killed_rolls_itself_back_before_the_block(mover: Mover, tmp_path: Path):
    """The move runs as an async task, which a killed playbook does not take down with it: before blocking writes it
    finds that no live run holds its tenant any more, and rolls back, the tenant never blocked and nothing lost."""
    plan = PLANS[mover.record()["db_type"]][0]
    source, held = mover.record()["db_server"], tmp_path / "catching_up"
    writer = mover.writer()
    writer.start()
    run = mover.start_change_plan(plan, f"pause-catching_up:{held}")
    wait_for_file(run, held, "catching_up")
    module_pid = int(held.read_text().split()[0])
    os.killpg(run.pid, signal.SIGKILL)  # the playbook run only
    run.communicate()
    os.kill(module_pid, 0)  # its move lives on, detached by Ansible's async wrapper
    held.unlink()
    deadline = time.monotonic() + 120
    while (move := mover.last_move())["finished_at"] is None:
        if time.monotonic() > deadline:
            pytest.fail(f"the move did not end on its own: {move}")
        time.sleep(0.2)  # the move is another process: poll the registry row it writes
    report = writer.stop()
    assert move["phase"] == "rolled_back" and "the playbook run that started the move is gone" in move["error"], move
    assert "cutover" not in [p["phase"] for p in move["phase_history"]]  # writes were never blocked
    assert mover.record()["db_server"] == source
    missing = set(report.committed_ids) - mover.rows()
    assert not missing and report.commits > 0, f"{len(missing)} committed rows lost"


def test_a_switch_that_fails_once_its_run_is_gone_is_left_for_the_recovery_pass(
    mover: Mover, local_platform: LocalPlatform, tmp_path: Path
):
    """The tenant's runtime follows a logical move from its block, and the move goes on through its switch when the
    playbook run is killed there. If the switch then fails, the tenant is back on its source, but nobody would point
    its runtime back from the target: the move is left open, rolled back, and the recovery pass takes it up at once;
    its job's run points the runtime back (runtime none: odoo.conf) and moves the tenant."""
    plan, kind = PLANS[mover.record()["db_type"]]
    source, held, planted = mover.record()["db_server"], tmp_path / "cutover", "planted_by_the_test"
    state = tmp_path / "runner"
    state.mkdir()
    settings = state / "settings.json"
    write_settings(settings, runner_settings(local_platform, "http://127.0.0.1:9", state))
    deployed = pause_deployed_runner()  # its recovery pass would take the move up too; one runner is enough
    try:
        run = mover.start_change_plan(plan, f"pause-cutover:{held}")
        wait_for_file(run, held, "cutover")
        target = mover.last_move()["target_server"]
        wait_for_odoo_conf(mover, target)  # the runtime followed the move from its block
        os.killpg(run.pid, signal.SIGKILL)  # the playbook run only: its async move lives on, writes blocked
        run.communicate()
        with mover.admin(source, mover.db) as conn:  # what the switch refuses to run in the way back's apply
            conn.execute(
                f"CREATE FUNCTION public.{planted}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;"
                f" CREATE TRIGGER {planted} BEFORE INSERT ON bench_writer FOR EACH ROW"
                f" EXECUTE FUNCTION public.{planted}(); ALTER TABLE bench_writer ENABLE ALWAYS TRIGGER {planted}"
            )
        held.unlink()
        deadline = time.monotonic() + 120
        while (move := mover.last_move())["phase"] != "rolled_back" or mover.move_is_held():
            if time.monotonic() > deadline:
                pytest.fail(f"the switch did not fail, roll back and end: {move}")
            time.sleep(0.2)  # the move is another process: poll the registry it writes
        assert "the tenant's own code would run" in move["error"] and move["finished_at"] is None, move
        assert mover.record()["db_server"] == source
        assert odoo_conf_port(mover) == server_port(mover, target)  # stranded there until the recovery
        with mover.as_tenant(source) as conn:  # open again where it stays
            conn.execute("SELECT 1")
        found = runner_command(settings, "recover")  # at once, not after move_stuck_seconds
        assert re.search(rf"{mover.tenant}: move {move['id']} .* in rolled_back .*: job \d+ queued", found), found
        with mover.admin(source, mover.db) as conn:
            conn.execute(f"DROP TRIGGER {planted} ON bench_writer; DROP FUNCTION public.{planted}()")
        writer = mover.writer()
        writer.start()
        runner_command(settings, "worker", "--drain", "--account", mover.record()["customer_id"])
        job = last_recovery_job(mover)
        report = writer.stop()
    finally:
        resume_deployed_runner(deployed)
    assert job["state"] == "succeeded", job
    mover.assert_moved_cleanly(report, kind)
    assert odoo_conf_port(mover) == server_port(mover, mover.record()["db_server"])


def server_port(mover: Mover, server: str) -> int:
    """Where a client of the tenant reaches `server`: its PgBouncer, or the server itself without one."""
    with mover.registry() as conn:
        return conn.execute(
            "SELECT coalesce(pgbouncer_port, port) AS port FROM registry.db_servers WHERE name = %s", (server,)
        ).fetchone()["port"]


def odoo_conf_port(mover: Mover) -> int:
    """The database port the tenant's odoo.conf names (runtime none: its runtime is that file)."""
    odoo_conf = (LOCAL_STATE / "runtime/tenants" / mover.tenant / "odoo.conf").read_text()
    return int(re.search(r"^db_port = (\d+)$", odoo_conf, re.MULTILINE).group(1))


def wait_for_odoo_conf(mover: Mover, server: str) -> None:
    deadline = time.monotonic() + 60
    while odoo_conf_port(mover) != server_port(mover, server):
        if time.monotonic() > deadline:
            pytest.fail(f"the tenant's odoo.conf never named {server}")
        time.sleep(0.1)  # the playbook is another process: poll the file it writes
