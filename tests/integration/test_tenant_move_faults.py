"""tenant_change_plan.yml killed mid-move, and a move whose copies differ after the switch (README: Moving a tenant's
database), on a tenant of its own with a client writing throughout (tests/integration/movers.py).

The move is SIGKILLed at each point of FAULT_CASES and the playbook run again (once per case in `make test`; `make
soak` three times), or, after one of them, the webhook runner's recovery pass runs it: the next run finishes it or
rolls it back and makes it again, and the tenant ends on exactly one server with every committed row. A copy found
to differ after the switch is switched back, every write the tenant made on the target kept.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from .conftest import REPO, VENV_BIN, LocalPlatform, ansible_env, run_playbook
from .movers import PLANS, RUNTIME_NONE, Mover, provision_mover, wait_for_file
from .runner_stack import pause_deployed_runner, resume_deployed_runner, runner_settings, write_settings

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
# Writes blocked on the source when the run died: the tenant cannot work until the move is finished or rolled back.
# After this kill, the webhook runner's recovery pass does it instead of an operator.
RECOVERED_BY_THE_RUNNER = ("cutover",)


@pytest.fixture(scope="module")
def mover(local_platform: LocalPlatform) -> Mover:
    return provision_mover(local_platform, "mover-faults")


def test_a_move_killed_at_any_point_is_finished_or_rolled_back_by_the_next_run(
    mover: Mover, local_platform: LocalPlatform, tmp_path: Path
):
    for attempt in range(FAULT_ROUNDS):
        for points in FAULT_CASES:
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
    write_settings(state / "settings.json", runner_settings(platform, "http://127.0.0.1:9", state))
    env = {**ansible_env(), "SAASODOO_RUNNER_CONFIG": str(state / "settings.json")}

    def runner(*args: str) -> str:
        done = subprocess.run([str(VENV_BIN / "python"), "-m", "webhook_runner", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    deployed = pause_deployed_runner()  # its worker's recovery pass would queue the same job; one runner is enough
    try:
        with mover.registry() as conn:
            move = conn.execute(
                "SELECT id, registry.move_is_held(tenant_id) AS held FROM registry.migrations"
                " WHERE tenant_id = %s AND finished_at IS NULL",
                (mover.tenant,),
            ).fetchone()
            assert move is not None and not move["held"]  # its run was killed
            assert f"move {move['id']} " not in runner("recover")  # not stuck yet: a live run may rest between steps
            conn.execute(
                """UPDATE registry.migrations SET started_at = started_at - interval '1 hour',
                          phase_history = jsonb_set(phase_history, '{-1,at}', to_jsonb(now() - interval '1 hour'))
                    WHERE id = %s""",
                (move["id"],),
            )
        found = runner("recover")
        assert re.search(rf"{mover.tenant}: move {move['id']} .* no run finishing it: job \d+ queued", found), found
        runner("worker", "--drain", "--account", mover.record()["customer_id"])  # nobody else's work
    finally:
        resume_deployed_runner(deployed)
    with mover.registry() as conn:
        return conn.execute(
            "SELECT id, action, state, attempts, error, account_id FROM registry.jobs"
            " WHERE tenant_id = %s AND action = 'recover_move' ORDER BY id DESC LIMIT 1",
            (mover.tenant,),
        ).fetchone()


def test_a_copy_found_different_after_the_switch_is_switched_back_with_every_write(mover: Mover, tmp_path: Path):
    """The verification after the switch finds the copies differ: the tenant goes back to the source, nothing lost.

    The run is paused once replication is turned round and both copies are frozen, and the source is spoiled
    behind the move's back (a table that only it has), as a faulty copy would differ.
    """
    plan = PLANS[mover.record()["db_type"]][0]
    source = mover.record()["db_server"]
    turned, verifying = tmp_path / "turned", tmp_path / "verifying"
    writer = mover.writer()
    writer.start()
    run = mover.start_change_plan(plan, f"pause-turned:{turned},pause-verifying:{verifying}")
    wait_for_file(run, turned, "turned")
    with mover.admin(source, mover.db) as conn:
        conn.execute("CREATE TABLE public.spoiled_by_the_test (id integer PRIMARY KEY)")
        conn.execute("INSERT INTO public.spoiled_by_the_test VALUES (1)")
        frozen = {r[0] for r in conn.execute("SELECT id FROM bench_writer")}  # every write before the switch
    turned.unlink()
    wait_for_file(run, verifying, "verifying")
    target = mover.record()["db_server"]  # switched: the tenant works there while the copies are compared
    assert target != source
    deadline = time.monotonic() + 60
    with mover.admin(target, mover.db) as conn:
        while not conn.execute("SELECT 1 FROM bench_writer WHERE id > %s", (max(frozen),)).fetchone():
            if time.monotonic() > deadline:
                pytest.fail(f"the writer wrote nothing on {target} in 60 s: {writer.error_count} errors")
            time.sleep(0.1)  # the writer commits every 100 ms: poll for one of its rows on the target
    # The tenant owns the target's catalog by now, but may not change it until the copies are verified: the way
    # back carries rows, not DDL, and the verification must read the tables it listed.
    refused = pytest.raises(psycopg.errors.RaiseException, match="schema changes wait until the move is verified")
    with mover.as_tenant(target) as conn, refused:
        conn.execute("ALTER TABLE bench_writer RENAME TO bench_writer_elsewhere")
    verifying.unlink()
    output = run.communicate()[0]
    report = writer.stop()
    try:
        assert run.returncode != 0 and "Switched back" in output, output[-5000:]
        assert mover.record()["db_server"] == source
        move = mover.last_move()
        assert move["phase"] == "rolled_back" and "verification failed" in move["error"], move
        assert move["verification"]["differing_tables"] == ["public.spoiled_by_the_test"]
        assert [p["phase"] for p in move["phase_history"]][-3:] == ["repointed", "switching_back", "rolled_back"]
        missing = set(report.committed_ids) - mover.rows()
        assert not missing, f"{len(missing)} committed rows lost"
        assert set(report.committed_ids) - frozen, "the writer committed nothing on the target"
        copies = mover.copies()
        assert [name for name, c in copies.items() if c["live"]] == [source]
        for name, c in copies.items():
            assert not (c["slots"] or c["move_roles"] or c["subscriptions"] or c.get("publications")), (name, c)
            assert not c.get("event_triggers"), (name, c)
            if c["can_login"] is not None:
                assert c["can_login"][0] == (name == source), (name, c)
    finally:
        with mover.admin(source, mover.db) as conn:
            conn.execute("DROP TABLE IF EXISTS public.spoiled_by_the_test")
