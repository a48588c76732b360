"""The webhook runner as it runs in production, started by the tests: gunicorn serving the app and worker
processes, each in its own process group so a test can SIGKILL it the way a crash would, against the
real registry and the Kill Bill stand-in (tests/standins/killbill)."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import mailbox
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from ansible_collections.saasodoo.platform.plugins.module_utils.supervisor import ACTIVE_STATES
from webhook_runner.schedules import SCHEDULES

from .conftest import LOCAL_STATE, VENV_BIN, LocalPlatform, ansible_env, load_yaml, wait_until
from conftest import REPO

RUNNER_STATE = LOCAL_STATE / "runner"  # the site-deployed runner (roles/webhook_runner)
INBOUND_TOKEN = "test-inbound-token-0123456789"
ADMIN_TOKEN = "test-admin-token-9876543210"
METRICS_TOKEN = "test-metrics-token-5647382910"
# The platform's mail catcher (roles/webhook_runner), and the Maildir it keeps what it takes in.
MAIL_CATCHER_PORT = load_yaml(REPO / "inventories/local/group_vars/webhook_runner/webhook_runner.yml")[
    "webhook_runner_mail_catcher_port"
]
MAILDIR = RUNNER_STATE / "mail"


@dataclass
class RunnerStack:
    settings_path: Path
    port: int
    workers: int
    registry_conninfo: str
    log_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def callback(self) -> str:
        return f"{self.url}/killbill/{INBOUND_TOKEN}"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the process's life
        return subprocess.Popen(
            argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "SAASODOO_RUNNER_CONFIG": str(self.settings_path),
                 "PATH": f"{VENV_BIN}:{os.environ['PATH']}"},
        )  # fmt: skip

    def start(self) -> None:
        self.processes = [
            self._spawn("web", [str(VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--workers", "2",
                                "webhook_runner.app:create_app()"]),
            *(self._spawn(f"worker-{n}", [str(VENV_BIN / "python"), "-m", "webhook_runner", "worker",
                                          "--name", f"test-worker-{n}"]) for n in range(1, self.workers + 1)),
        ]  # fmt: skip
        self.wait_healthy()

    def kill(self) -> None:
        """SIGKILL every process group (gunicorn and its workers, each worker and its playbook): a crash."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        self.processes = []

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        self.processes = []

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the runner did not answer /healthz within {timeout:.0f} s")
            time.sleep(0.1)  # gunicorn is binding: nothing to wait on but the port

    def registry(self) -> psycopg.Connection:
        return psycopg.connect(self.registry_conninfo, autocommit=True, row_factory=dict_row)

    def settle(self, timeout: float = 900.0) -> None:
        """Until no stored event is pending, no job is running or queued (a retry due later counts), and every
        customer e-mail due was tried at least once, when this runner sends e-mail (what a step told is sent before
        the next step makes it moot)."""
        deadline = time.monotonic() + timeout
        sends_mail = "mail" in json.loads(self.settings_path.read_text())
        with self.registry() as conn:
            while True:
                busy = conn.execute(
                    """SELECT (SELECT count(*) FROM registry.events WHERE processed_at IS NULL)
                            + (SELECT count(*) FROM registry.jobs WHERE state IN ('queued', 'running'))
                            + (SELECT count(*) FROM registry.customer_mail
                                WHERE %s AND state = 'queued' AND attempts = 0 AND send_after <= now()) AS n""",
                    (sends_mail,),
                ).fetchone()["n"]
                if not busy:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the runner did not settle within {timeout:.0f} s ({busy} items)")
                time.sleep(0.2)  # the workers are separate processes: poll the registry they write

    def admin(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)


def runner_settings(platform: LocalPlatform, killbill_url: str, state_dir: Path, **overrides) -> dict:
    registry = platform.servers["platform-db"]
    password = platform.password("registry@saasodoo_registry")
    return {
        "registry_conninfo": f"host=127.0.0.1 port={registry.port} dbname=saasodoo_registry user=saasodoo_registry"
        f" password={password}",
        "inbound_token": INBOUND_TOKEN,
        "admin_token": ADMIN_TOKEN,
        "metrics_token": METRICS_TOKEN,
        "killbill": {"url": killbill_url, "username": "admin", "password": "kb-password", "api_key": "saasodoo",
                     "api_secret": "kb-api-secret", "timeout_seconds": 5},
        "project_dir": str(REPO),
        "inventory": str(REPO / "inventories/local"),
        "artifacts_dir": str(state_dir / "artifacts"),
        # Database and storage only: the runner's contract is the same for every runtime.
        "playbook_extravars": {"saasodoo_runtime_backend": "none"},
        "max_body_bytes": 8192,
        "max_attempts": 3,
        "backoff_seconds": [0.5, 1],
        "reconcile_interval_seconds": 0,
        "recovery_interval_seconds": 0,  # tests run the recovery pass themselves (python -m webhook_runner recover)
        "schedules": dict.fromkeys(SCHEDULES, 0),  # the same: python -m webhook_runner schedule
        "poll_seconds": 0.5,
        "lease_seconds": 3,  # a killed worker's accounts wait this long for the next
        # E-mail to customers into the platform's mail catcher, every reminder at once: a trial's end and a purge are
        # told as soon as they are known, and what failed is tried again within a second.
        "mail": {"sender": "SaaSOdoo <support@odoo.localhost>", "link_key": platform.password("customer-mail-links"),
                 "smtp_port": MAIL_CATCHER_PORT, "trial_warning_days": 3650, "purge_warning_days": 3650,
                 "retry_seconds": 1},
        "customer_email_key": platform.password("customer-emails"),
        **overrides,
    }  # fmt: skip


def runner_command(settings_path: Path, *args: str) -> str:
    """`python -m webhook_runner <args>` with these settings, as an operator runs it: its output (it must succeed)."""
    done = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "webhook_runner", *args], cwd=REPO, capture_output=True, text=True,
        env={**ansible_env(), "SAASODOO_RUNNER_CONFIG": str(settings_path)}, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def write_settings(path: Path, settings: dict) -> None:
    path.write_text(json.dumps(settings))
    path.chmod(0o600)


def deployed_supervisorctl(conf: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "supervisorctl"), "-c", str(conf), *args], capture_output=True, text=True, check=False
    )


# The deployed runner's programs that take the inbox (its mail catcher keeps running: the tests' runners send to it).
DEPLOYED_RUNNER_PROGRAMS = ("webhook-runner-web", "webhook-runner-worker:*")


def pause_deployed_runner():
    """The runner site.yml deploys takes the same inbox: stop its workers while a test runs its own."""
    conf = RUNNER_STATE / "supervisord.conf"
    if conf.exists():
        deployed_supervisorctl(conf, "stop", *DEPLOYED_RUNNER_PROGRAMS)
        # Checked, not assumed: a worker of the deployed runner left running takes the test's jobs from under it.
        status = deployed_supervisorctl(conf, "status").stdout
        running = [
            line
            for line in status.splitlines()
            if line.startswith("webhook-runner") and line.split()[1:2] in ([state] for state in ACTIVE_STATES)
        ]
        assert not running, f"the deployed runner did not stop:\n{status}"
    return conf


def resume_deployed_runner(conf: Path) -> None:
    if conf.exists():
        deployed_supervisorctl(conf, "start", *DEPLOYED_RUNNER_PROGRAMS)


class MailCatcher:
    """The e-mails the platform's mail catcher took in since this was made, read from its Maildir as a mail client
    reads them."""

    def __init__(self):
        self.before = set(mailbox.Maildir(MAILDIR, create=False).keys())

    def messages(self, to: str | None = None) -> list[email.message.EmailMessage]:
        box = mailbox.Maildir(MAILDIR, create=False)
        found = [
            email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
            for key in sorted(set(box.keys()) - self.before)
        ]
        return [message for message in found if to is None or to in str(message["To"])]

    def wait_for(self, to: str, expected: dict[str, int], timeout: float = 60.0) -> list[email.message.EmailMessage]:
        """The messages to `to` once at least `expected` of each kind (X-SaaSOdoo-Message) have come (the workers'
        mail pass runs on its own: the Maildir is polled)."""

        def arrived() -> list[email.message.EmailMessage] | None:
            found = self.messages(to)
            kinds = Counter(str(message["X-SaaSOdoo-Message"]) for message in found)
            return found if all(kinds[kind] >= count for kind, count in expected.items()) else None

        return wait_until(arrived, f"mail to {to}: at least {expected}", timeout, every=0.2)
