"""Running a job: its playbook through ansible-runner, with the account's lease renewed meanwhile, its artifacts
kept, its outcome read."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ansible_runner
import psycopg

from . import logs, store
from .schedules import GROWS_POOLS, SCHEDULES, TENANT_ACTIONS

log = logging.getLogger("webhook_runner.worker")  # the worker's log, whichever file writes to it


PLAYBOOK_COMMAND = Path(__file__).with_name("ansible-playbook")  # dies with the worker (see the script)
# The niceness of the schedules' jobs (a pool grown ahead, a probe, a night's backup): on the runner's host, and on a
# one-machine platform, they yield the CPU to a customer's sign-up or plan change running beside them.
BACKGROUND_NICENESS = 10


def is_schedule_run(job: dict) -> bool:
    """A schedule's own run (no Kill Bill account): not a job it queued in a tenant's account."""
    return job["account_id"] is None and job["action"] in SCHEDULES


def niceness_environment(job: dict) -> dict[str, str]:
    """What the runner's ansible-playbook wrapper nices a job's run by: a schedule's own run, or a tenant job of the
    kind the schedules queue (a backup, a purge); nothing for a customer's job."""
    schedule_run = is_schedule_run(job)
    if not schedule_run and job["action"] not in TENANT_ACTIONS:
        return {}
    niceness = {"SAASODOO_SESSION_NICENESS": str(BACKGROUND_NICENESS)}
    if not (schedule_run and SCHEDULES[job["action"]].starts_servers):
        niceness["SAASODOO_NICENESS"] = str(BACKGROUND_NICENESS)
    return niceness


def job_environment(project_dir: Path) -> dict[str, str]:
    """The environment of every job's ansible-playbook (bench/lifecycle.py runs its playbooks with it too)."""
    return {
        "ANSIBLE_CONFIG": str(project_dir / "ansible.cfg"),
        # No tenant hosts in the inventory (saasodoo.platform.registry's `tenants`): no playbook targets one, and
        # each would cost every job's start.
        "SAASODOO_INVENTORY_TENANTS": "false",
        # ansible-playbook from this venv, whatever PATH the worker was started with
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


class Execution:
    """A Worker's running of one job: its playbook through ansible-runner, under the account's lease (worker.py)."""

    def _execute(self, job: dict, retry: bool = True) -> dict:
        """Run the job's playbook with ansible-runner; record success, a retry with backoff, or parking (without
        `retry`: failure, for a periodic pass's job, which the next pass runs again). Every line logged meanwhile
        names the job, its tenant and the run."""
        run_id = f"job-{job['id']}-{job['attempts']}"  # the playbook run's id in the audit chain
        with logs.context(job=job["id"], tenant=job["tenant_id"], run=run_id):
            return self._run_job(job, run_id, retry)

    def _run_job(self, job: dict, run_id: str, retry: bool) -> dict:
        settings = self.settings
        private_dir = self._artifacts_home(job) / f"job-{job['id']:08d}"
        store.record_audit(
            self.conn, actor=self.actor, tenant_id=job["tenant_id"], kind="job", subject=f"job:{job['id']}",
            detail={"action": job["action"], "playbook": job["playbook"], "extravars": job["extravars"],
                    "attempt": job["attempts"], "run": run_id},
        )  # fmt: skip
        log.info("job %s: %s %s (attempt %s)", job["id"], job["playbook"], job["tenant_id"], job["attempts"])
        started = time.monotonic()
        try:
            private_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            result = ansible_runner.run(
                private_data_dir=str(private_dir),
                project_dir=str(settings.project_dir),
                # ansible-runner adds no playbook to a `binary`: it goes first on the command line
                binary=str(PLAYBOOK_COMMAND),
                cmdline=shlex.quote(str(settings.project_dir / "playbooks" / job["playbook"])),
                inventory=str(settings.inventory),
                envvars={
                    **job_environment(settings.project_dir),
                    # the run is recorded as this job's attempt
                    "SAASODOO_AUDIT_JOB": str(job["id"]),
                    "SAASODOO_AUDIT_RUN": run_id,
                    **niceness_environment(job),
                },
                ident=f"attempt-{job['attempts']}",
                rotate_artifacts=settings.max_attempts,
                suppress_env_files=True,  # no copy of the environment or the extra vars in the artifacts
                timeout=settings.job_timeout_seconds,
                quiet=True,
                # Stop the run once another worker has taken the account over (its writes are fenced anyway).
                # With no cancel_callback, ansible-runner would also install its own SIGTERM handler for good:
                # the worker's own (finish this job, then stop) would be lost after the first job.
                cancel_callback=lambda: self.lease is not None and self.lease.lost.is_set(),
                extravars={**settings.playbook_extravars, **job["extravars"], **self._lease_vars()},
            )
            rc, error = result.rc, None if result.status == "successful" else _failure(result)
            parked_because = None if error is None else park_reason(result)
        except Exception as exc:  # ansible-runner could not start the run at all
            rc, error, parked_because = None, f"ansible-runner: {exc}", None
        seconds = time.monotonic() - started
        self._reconnect_if_dropped()
        outcome = {"rc": rc, "error": error, "artifacts_dir": str(private_dir)}
        if error is None:
            finished = store.finish_job(self.conn, job["id"], state="succeeded", **outcome)
            if job["action"] in GROWS_POOLS and settings.schedules.get("pools_grow"):
                store.bring_schedule_forward(self.conn, "pools_grow")  # the room it took, made again at once
        elif not retry:
            finished = store.finish_job(self.conn, job["id"], state="failed", **outcome)
        elif parked_because is not None:  # the playbook says that running it again would fail the same way
            outcome["error"] = parked_because
            finished = store.finish_job(self.conn, job["id"], state="parked", **outcome)
        elif job["attempts"] >= settings.max_attempts:
            finished = store.finish_job(self.conn, job["id"], state="parked", **outcome)
        else:
            finished = store.finish_job(
                self.conn, job["id"], state="queued", run_after_seconds=settings.backoff(job["attempts"]), **outcome
            )
        log.info("job %s: %s in %.1f s%s", job["id"], finished["state"], seconds, f" ({error})" if error else "")
        store.record_audit(
            self.conn, actor=self.actor, tenant_id=job["tenant_id"], kind="result", subject=f"job:{job['id']}",
            detail={"state": finished["state"], "rc": rc, "error": error, "seconds": round(seconds, 2)},
        )  # fmt: skip
        self._rotate_artifacts(private_dir.parent)
        return finished

    def _lease_vars(self) -> dict:
        """What passes the lease's fencing token to the playbook's registry modules (saasodoo_registry_login)."""
        return {"saasodoo_lease": self.lease.token} if self.lease else {}

    def _reconnect_if_dropped(self) -> None:
        """After a playbook run, which may take an hour: a registry restart meanwhile dropped the worker's
        connection. Connect again, carrying the lease (its fencing decides whether this worker may still write)."""
        try:
            self.conn.execute("SELECT 1")
        except psycopg.OperationalError as error:
            log.warning("registry connection lost during the run (%s): connecting again", error)
            self.conn.close()
            self.conn = self._connect("worker")
            store.carry_lease(self.conn, self.lease.token if self.lease else None)

    def _artifacts_home(self, job: dict) -> Path:
        """Where a job's artifacts go: a schedule's runs (servers_probe alone makes 288 a day) apart from the
        tenants' jobs, so that they never push a parked tenant job's artifacts out."""
        if is_schedule_run(job):
            return self.settings.artifacts_dir / "schedules" / job["action"]
        return self.settings.artifacts_dir

    def _rotate_artifacts(self, home: Path) -> None:
        """Keep the newest `artifacts_keep` job directories in home (names sort by job id)."""
        directories = sorted(home.glob("job-*"))
        for old in directories[: max(0, len(directories) - self.settings.artifacts_keep)]:
            shutil.rmtree(old, ignore_errors=True)


class AccountLease:
    """The renewal of a taken lease: a thread on a connection of its own renews it every third of lease_seconds
    while the worker works, riding out short registry outages (a lease outlives its sessions). `lost` is set, and
    the worker's run cancelled, when another worker has taken the account over, and also when no renewal has
    succeeded for two thirds of lease_seconds: the lease may expire before this worker hears of it, and the run
    must stop before another worker may start the job again."""

    def __init__(self, connect: Callable[[], psycopg.Connection], account: str, token: int, seconds: float):
        self.account, self.token, self.seconds = account, token, seconds
        self.lost, self._stopped = threading.Event(), threading.Event()
        self._connect = connect
        self._thread = threading.Thread(target=self._renew, name=f"lease-{token}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        conn, renewed = None, time.monotonic()
        while not self._stopped.wait(self.seconds / 3):
            try:
                conn = conn or self._connect()
                if not store.renew_lease(conn, self.token, self.seconds):
                    log.warning("account %s: lease %s was taken over: cancelling the run", self.account, self.token)
                    self.lost.set()
                    break
                renewed = time.monotonic()
            except Exception as error:  # any failure is a missed renewal; the thread must go on renewing
                log.warning("account %s: cannot renew lease %s: %s", self.account, self.token, error)
                if conn is not None:
                    conn.close()
                conn = None
                if time.monotonic() - renewed >= self.seconds * 2 / 3:
                    log.warning("account %s: lease %s not renewed for %.0f s: cancelling the run", self.account,
                                self.token, time.monotonic() - renewed)  # fmt: skip
                    self.lost.set()
                    break
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def park_reason(result) -> str | None:
    """Why the failed run needs the operator, when its playbook said so: `set_stats` of park_reason (ansible-runner
    passes what set_stats gathered as the playbook_on_stats event's artifact_data). None for any other failure."""
    for event in result.events:
        if event.get("event") == "playbook_on_stats":
            reason = (event.get("event_data", {}).get("artifact_data") or {}).get("park_reason")
            return str(reason)[:2000] if reason else None
    return None


def _failure(result) -> str:
    """The message of the task that failed (no_log tasks show only 'censored'), else the run's status."""
    message = None
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            res = data.get("res") or {}
            message = f"{data.get('task', '?')}: {res.get('msg') or res.get('stderr') or 'failed'}"
    return (message or f"ansible-runner status {result.status}, rc {result.rc}")[:2000]
