"""tenant_change_plan.yml across db_types on the local platform (README: Moving a tenant's database).

A tenant with an Odoo-shaped database and a client writing throughout (tests/integration/movers.py) is upgraded
basic -> premium (shared pool -> its dedicated server) and downgraded back; a suspend and a resume arrive while it
is being moved; its pool is drained. Every time: the tenant on exactly one server, the registry pointing at it,
every committed row there, verification clean, nothing of the move left behind. The kill points and a copy found
different after the switch: test_tenant_move_faults.py.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ansible_collections.saasodoo.platform.plugins.modules.registry_tenant import waiting_for_run

from .conftest import LocalPlatform, assert_nothing_changed, run_playbook
from .movers import PLANS, RUNTIME_NONE, Mover, provision_mover, wait_for_file


@pytest.fixture(scope="module")
def mover(local_platform: LocalPlatform) -> Mover:
    return provision_mover(local_platform, "mover")


def test_upgrade_moves_the_tenant_to_its_dedicated_server_and_downgrade_brings_it_back(mover: Mover):
    source = mover.record()["db_server"]
    for plan, kind in (("premium-monthly", "dedicated"), ("basic-monthly", "shared")):
        writer = mover.writer()
        writer.start()
        run = mover.change_plan(plan)
        report = writer.stop()
        assert run.returncode == 0, run.output[-5000:]
        mover.assert_moved_cleanly(report, kind)
        move = mover.last_move()
        assert move["plan_name"] == plan and move["method"] == "logical"
        assert move["write_downtime_ms"] is not None and move["write_downtime_ms"] < 30_000
        assert "write downtime" in run.output
        assert_nothing_changed(mover.change_plan(plan))
    # Back on a shared pool; the old copies are kept, renamed, until their retention ends.
    with mover.admin(source) as conn:
        retained = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 't_mover_old%'")]
    assert retained, "the source copy was not kept"


def test_a_suspend_and_a_resume_during_a_move_act_where_the_move_leaves_the_tenant(mover: Mover, tmp_path: Path):
    """One run per tenant at a time. A suspend, then a resume, started while a move is held after its switch (before
    the registry points at the target) wait for the whole plan change, move and resize, and act where it leaves the
    tenant: the source never lets the tenant in again (a resume acting at once re-opened it, and the writes made
    there were left in the copy the move then retired), the target's login is what the operation made it (the
    resize after the move, reading the status before the operation ran, undid it), and every committed write is
    on the target."""
    for action, status in (("tenant_suspend.yml", "suspended"), ("tenant_resume.yml", "active")):
        source = mover.record()["db_server"]
        held = tmp_path / f"turned-{status}"
        writer = mover.writer()
        writer.start()
        move = mover.start_change_plan(PLANS[mover.record()["db_type"]][0], f"pause-turned:{held}")
        try:
            wait_for_file(move, held, "turned")
            with mover.registry() as conn:  # held by its run: the runner's recovery pass leaves it alone
                assert conn.execute("SELECT registry.move_is_held(%s) AS held", (mover.tenant,)).fetchone()["held"]
            operation = mover.start_playbook(action)
            wait_until_waiting(operation, mover)
        finally:
            held.unlink(missing_ok=True)  # the move goes on, to its end: the next test finds no open move
        moved, operated = move.communicate()[0], operation.communicate()[0]
        report = writer.stop()
        assert move.returncode == 0, moved[-5000:]
        assert operation.returncode == 0, operated[-5000:]
        record = mover.record()
        assert record["db_server"] != source and record["status"] == status, record
        for name, copy in mover.copies().items():
            if copy["can_login"] is not None:
                assert copy["can_login"][0] == (name == record["db_server"] and status == "active"), (name, copy)
        with mover.admin(record["db_server"], mover.db) as conn:  # the tenant's own login is refused while suspended
            kept = {r[0] for r in conn.execute("SELECT id FROM public.bench_writer")}
        missing = set(report.committed_ids) - kept
        assert not missing, f"{len(missing)} committed rows lost"


def wait_until_waiting(operation: subprocess.Popen, mover: Mover) -> None:
    """Until the operation's registry session says it waits for the run that has the tenant; it must not end
    first."""
    deadline = time.monotonic() + 120
    with mover.registry() as conn:
        while not conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (waiting_for_run(mover.tenant),)
        ).fetchone():
            if operation.poll() is not None:
                pytest.fail(f"it did not wait for the plan change:\n{operation.stdout.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("it was not waiting for the plan change after 120 s")
            time.sleep(0.1)  # the playbook is another process: poll the registry


def test_draining_a_pool_moves_its_tenants_to_other_pools(mover: Mover):
    if mover.record()["db_type"] != "shared":
        assert mover.change_plan("basic-monthly").returncode == 0
    pool = mover.record()["db_server"]
    writer = mover.writer()
    writer.start()
    run = run_playbook("pool_drain.yml", "-e", f"server={pool}", *RUNTIME_NONE)
    report = writer.stop()
    assert run.returncode == 0, run.output[-5000:]
    assert mover.record()["db_server"] != pool
    mover.assert_moved_cleanly(report, "shared")
    assert mover.last_move()["plan_name"] == "basic-monthly"
    with mover.registry() as conn:
        status = conn.execute("SELECT status FROM registry.db_servers WHERE name = %s", (pool,)).fetchone()["status"]
    assert status == "draining"  # placement no longer picks it
    assert_nothing_changed(run_playbook("pool_drain.yml", "-e", f"server={pool}", *RUNTIME_NONE))
    unknown = run_playbook("pool_drain.yml", "-e", "server=no-such-pool", *RUNTIME_NONE)
    assert unknown.returncode != 0 and "not a server the registry knows" in unknown.output
    with mover.registry() as conn:
        dedicated = conn.execute("SELECT name FROM registry.db_servers WHERE kind = 'dedicated' LIMIT 1").fetchone()
    if dedicated:  # the premium tenants of other tests made one
        refused = run_playbook("pool_drain.yml", "-e", f"server={dedicated['name']}", *RUNTIME_NONE)
        assert refused.returncode != 0 and "its tenant moves with its plan" in refused.output
