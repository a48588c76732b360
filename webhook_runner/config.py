"""The runner's settings: one JSON file (mode 0600, written by roles/webhook_runner), named by the
environment variable SAASODOO_RUNNER_CONFIG. It holds the runner's secrets (the callback token, the admin
token, Kill Bill's credentials, the registry login), so it is read, never logged."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path

from cryptography.fernet import Fernet

from .desired import PLAYBOOKS, BillingRules
from .schedules import DEFAULT_INTERVALS, intervals_problem

CONFIG_ENV = "SAASODOO_RUNNER_CONFIG"


class ConfigError(Exception):
    """The settings file is missing, unreadable or incomplete; the message says which key."""


@dataclass(frozen=True)
class KillBillSettings:
    url: str  # e.g. http://killbill:8080 (the /1.0/kb prefix is added by the client)
    username: str
    password: str = field(repr=False)
    api_key: str
    api_secret: str = field(repr=False)
    timeout_seconds: float = 10.0


def fernet_key(key: str) -> bytes:
    """A Fernet key from the inventory's: the platform derives 32 bytes in URL-safe base64 without its padding
    (saasodoo.platform.derived_password), which registry_tenant pads the same way when it seals a link."""
    return (key + "=" * (-len(key) % 4)).encode()


@dataclass(frozen=True)
class MailSettings:
    """E-mail to customers (webhook_runner/mail.py); without it nothing is sent, and mails wait in the outbox."""

    sender: str  # From:, e.g. "Example Odoo <support@odoo.example.com>"
    link_key: str = field(repr=False)  # seals the welcome's sign-in link (the inventory's saasodoo_customer_mail_key)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    starttls: bool = False  # STARTTLS first, the relay's certificate checked (against ca_file, else the system's CAs)
    ca_file: str = ""
    username: str = ""  # an SMTP login, when the relay wants one (over STARTTLS only)
    password: str = field(default="", repr=False)
    timeout_seconds: float = 30.0
    reply_to: str = ""  # where customers' answers go, when not to the sender
    link_hours: int = 24  # a sign-in link lives this long (saasodoo_admin_link_hours): a later welcome goes without
    trial_warning_days: int = 3  # a trial's end is told this many days before
    purge_warning_days: int = 7  # a terminated tenant's purge is told this many days before
    retry_seconds: float = 300.0  # a message the relay or Kill Bill failed is tried again after this long
    stale_days: float = 7.0  # a message still unsent this long after its time is dropped, never sent late

    def problem(self) -> str | None:
        """What is wrong with these settings, or None."""
        if not self.sender or "@" not in self.sender:
            return f"mail.sender must be an address (a name may go before it: Name <address>): {self.sender!r}"
        try:
            Fernet(fernet_key(self.link_key))
        except (ValueError, TypeError):
            return "mail.link_key must be a Fernet key or the 43-character key the platform derives"
        if self.username and not self.starttls:
            return "mail.username needs mail.starttls: an SMTP login never goes over a plain connection"
        if bool(self.username) != bool(self.password):
            return "mail.username and mail.password go together"
        if not 0 < self.smtp_port < 65536:
            return f"mail.smtp_port must be a port: {self.smtp_port!r}"
        positive = ("timeout_seconds", "retry_seconds", "stale_days", "link_hours")
        if bad := [f"mail.{key}" for key in positive if getattr(self, key) <= 0]:
            return f"{', '.join(bad)} must be above 0"
        if self.trial_warning_days < 0 or self.purge_warning_days < 0:
            return "mail.trial_warning_days and mail.purge_warning_days must be 0 or more"
        return None


@dataclass(frozen=True)
class RunnerSettings:
    registry_conninfo: str = field(repr=False)  # libpq conninfo of the registry database
    inbound_token: str = field(repr=False)  # the secret in Kill Bill's callback URL
    admin_token: str = field(repr=False)  # bearer token of the admin API
    metrics_token: str = field(repr=False)  # bearer token of /metrics (Prometheus' `authorization` config)
    killbill: KillBillSettings
    project_dir: Path  # the checkout holding playbooks/ and ansible.cfg
    inventory: Path
    artifacts_dir: Path
    artifacts_keep: int = 200  # newest job artifact directories kept
    playbook_extravars: dict = field(default_factory=dict)  # added to every run, e.g. a runtime override
    max_body_bytes: int = 65536
    max_attempts: int = 5  # a job failing this many times is parked
    backoff_seconds: tuple[float, ...] = (5, 30, 120, 600)
    job_timeout_seconds: int = 3600
    reconcile_interval_seconds: float = 300  # the periodic reconcile pass; 0 turns it off
    retention_days: float = 90  # finished jobs, processed events and old placements kept this long; 0: forever
    housekeeping_interval_seconds: float = 3600  # the periodic pass that prunes them; 0 turns it off
    recovery_interval_seconds: float = 60  # the periodic pass recovering stuck moves; 0 turns it off
    # Seconds between runs of each periodic job (webhook_runner/schedules.py); 0 turns one off. Given, it is laid
    # over the defaults: a schedule it does not name keeps its default.
    schedules: dict = field(default_factory=lambda: dict(DEFAULT_INTERVALS))
    move_stuck_seconds: float = 900  # an open move no run holds, in one phase this long, is recovered
    poll_seconds: float = 5.0  # a worker wakes at least this often (NOTIFY wakes it sooner)
    # A worker holds an account this long past its last renewal (it renews every third of it): how long an
    # account waits after its worker died, and how long a stalled worker may go unheard before losing it.
    lease_seconds: float = 30.0
    # At most this many jobs of an action run at once per PostgreSQL server (the tenant's when the job starts;
    # new tenants count together); an action not named has no limit. Sized for 2 cores.
    job_limits: dict = field(default_factory=lambda: {"provision": 4, "change_plan": 2})
    limit_wait_seconds: float = 2.0  # a job a limit holds back is tried again after this long
    # A tenant's public URL, {tenant} standing for its DNS label (e.g. https://{tenant}.odoo.example.com): GET
    # /sd/tenants names each active tenant's login page with it, for the monitoring to probe. Empty: no such list.
    tenant_url: str = ""
    mail: MailSettings | None = None  # e-mail to customers; None: nothing is sent
    # The key of the hashes of customers' e-mail addresses kept for one trial per e-mail (desired.email_hash); empty:
    # one trial per account only.
    customer_email_key: str = field(default="", repr=False)
    # The seeds' billing rules (webhook_runner/desired.py BillingRules), each true unless turned off here.
    billing_rules: BillingRules = field(default_factory=BillingRules)

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number `attempts` (1-based); the last step repeats."""
        steps = self.backoff_seconds or (0,)
        return float(steps[min(attempts, len(steps)) - 1])


_REQUIRED = (
    "registry_conninfo", "inbound_token", "admin_token", "metrics_token", "killbill", "project_dir", "inventory",
    "artifacts_dir",
)  # fmt: skip
_KILLBILL_REQUIRED = ("url", "username", "password", "api_key", "api_secret")


def load_settings(path: str | os.PathLike | None = None) -> RunnerSettings:
    """Read the settings file (default: $SAASODOO_RUNNER_CONFIG), refusing one others can read."""
    path = Path(path or os.environ.get(CONFIG_ENV) or "")
    if not str(path):
        raise ConfigError(f"no settings file: set {CONFIG_ENV} to the runner's JSON settings")
    try:
        mode = path.stat().st_mode
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read the runner settings {path}: {error}") from error
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} holds secrets: make it readable by its owner only (chmod 0600)")
    return settings_from_dict(raw, source=str(path))


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def settings_from_dict(raw: dict, source: str = "settings") -> RunnerSettings:
    unknown = sorted(set(raw) - set(RunnerSettings.__dataclass_fields__))
    unknown += [
        f"killbill.{key}" for key in sorted(set(raw.get("killbill") or {}) - set(KillBillSettings.__dataclass_fields__))
    ]
    if unknown:
        raise ConfigError(f"{source} has unknown keys: {', '.join(unknown)}")
    missing = [key for key in _REQUIRED if not raw.get(key)]
    missing += [f"killbill.{key}" for key in _KILLBILL_REQUIRED if not (raw.get("killbill") or {}).get(key)]
    if missing:
        raise ConfigError(f"{source} lacks {', '.join(missing)}")
    optional = {key: raw[key] for key in RunnerSettings.__dataclass_fields__ if key in raw and key not in _REQUIRED}
    limits = optional.get("job_limits", {})
    bad = (
        [f"{action}={n!r}" for action, n in limits.items() if action not in PLAYBOOKS or not _positive_int(n)]
        if isinstance(limits, dict)
        else [json.dumps(limits)]
    )
    if bad:
        raise ConfigError(
            f"{source}: job_limits maps actions ({', '.join(PLAYBOOKS)}) to a number of jobs of at least 1;"
            f" not {', '.join(bad)}"
        )
    if "schedules" in optional:
        if problem := intervals_problem(optional["schedules"]):
            raise ConfigError(f"{source}: {problem}")
        optional["schedules"] = {**DEFAULT_INTERVALS, **optional["schedules"]}
    if optional.get("move_stuck_seconds", 900) < 60:
        raise ConfigError(
            f"{source}: move_stuck_seconds must be at least 60 (a live plan change may rest between its steps)"
        )
    if optional.get("lease_seconds", 30) < 3:
        raise ConfigError(f"{source}: lease_seconds must be at least 3 (renewed every third of it)")
    if optional.get("limit_wait_seconds", 1) <= 0:
        raise ConfigError(f"{source}: limit_wait_seconds must be above 0 (a held-back job would be retried at once)")
    tenant_url = optional.get("tenant_url", "")
    if tenant_url and not (tenant_url.startswith(("https://", "http://")) and "{tenant}" in tenant_url):
        raise ConfigError(
            f"{source}: tenant_url must be an http(s) URL naming the tenant as {{tenant}}: {tenant_url!r}"
        )
    try:
        tenant_url.format(tenant="t")
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(f"{source}: tenant_url may hold {{tenant}} and no other field: {tenant_url!r}") from error
    key = optional.get("customer_email_key", "")
    if not isinstance(key, str) or 0 < len(key) < 32:
        raise ConfigError(f"{source}: customer_email_key must be a string of at least 32 characters, or empty")
    if "mail" in optional:
        optional["mail"] = mail_settings(optional["mail"], source)
    if "billing_rules" in optional:
        optional["billing_rules"] = billing_rules(optional["billing_rules"], source)
    if "backoff_seconds" in optional:
        optional["backoff_seconds"] = tuple(float(step) for step in optional["backoff_seconds"])
    return RunnerSettings(
        registry_conninfo=raw["registry_conninfo"],
        inbound_token=raw["inbound_token"],
        admin_token=raw["admin_token"],
        metrics_token=raw["metrics_token"],
        killbill=KillBillSettings(**raw["killbill"]),
        project_dir=Path(raw["project_dir"]),
        inventory=Path(raw["inventory"]),
        artifacts_dir=Path(raw["artifacts_dir"]),
        **optional,
    )


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool}  # the JSON types of MailSettings' fields
_TYPE_NAMES = {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false"}


def mail_settings(raw, source: str) -> MailSettings:
    """The `mail` object: its keys checked, the sender an address, the link key one Fernet takes."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: mail must be an object (docs/mail.md)")
    unknown = sorted(set(raw) - set(MailSettings.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{source} has unknown keys: {', '.join('mail.' + key for key in unknown)}")
    missing = [f"mail.{key}" for key in ("sender", "link_key") if not raw.get(key)]
    if missing:
        raise ConfigError(f"{source} lacks {', '.join(missing)}")
    for setting in fields(MailSettings):  # a "587" or a "false" would only fail (or mislead) when a mail goes
        value = raw.get(setting.name)
        if setting.name in raw and (isinstance(value, bool) != (setting.type == "bool")
                                    or not isinstance(value, _TYPES[setting.type])):  # fmt: skip
            raise ConfigError(f"{source}: mail.{setting.name} must be {_TYPE_NAMES[setting.type]}: {value!r}")
    mail = MailSettings(**raw)
    if problem := mail.problem():
        raise ConfigError(f"{source}: {problem}")
    return mail


def billing_rules(raw, source: str) -> BillingRules:
    """The `billing_rules` object: the rules it names, each true or false."""
    names = [rule.name for rule in fields(BillingRules)]
    if not isinstance(raw, dict) or any(key not in names or not isinstance(raw[key], bool) for key in raw):
        raise ConfigError(f"{source}: billing_rules maps {', '.join(names)} to true or false: {json.dumps(raw)}")
    return BillingRules(**raw)


def tenant_login_url(tenant_url: str, tenant_id: str) -> str:
    """A tenant's login page: its DNS label is its id in lower case, `_` made `-` (as its Odoo's web.base.url)."""
    return tenant_url.format(tenant=tenant_id.lower().replace("_", "-")).rstrip("/") + "/web/login"
