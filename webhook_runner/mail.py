"""E-mail to customers: the registry's outbox (registry.customer_mail), sent over SMTP (docs/mail.md).

What a customer hears of is queued where it happens, once per cause: the registry queues a tenant's welcome,
suspension, resume, cancellation and plan change in the transaction that writes the change (migration 0024), and
the worker queues a failed payment and a trial's end from what Kill Bill says, and a purge's warning from the
tenant's retention. A worker's mail pass sends what is due, one message at a time: it locks the row (another
worker skips it), hands the message to the SMTP relay and records it sent in that one transaction. A worker killed
between the relay's acceptance and the commit sends it again at its next pass, with the same Message-ID, by which
mail systems drop the copy.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from datetime import datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import jinja2
import psycopg
from cryptography.fernet import Fernet, InvalidToken
from markupsafe import Markup, escape
from psycopg.types.json import Jsonb

from . import store
from .config import MailSettings, fernet_key, tenant_login_url
from .desired import customer_profile
from .killbill import KillBill, KillBillError

log = logging.getLogger("webhook_runner.mail")

MESSAGES = (
    "welcome", "trial_ending", "payment_failed", "suspended", "resumed", "plan_changed", "cancelled", "purge_soon",
)  # fmt: skip
TEMPLATES = Path(__file__).with_name("mail_templates")
DEFAULT_LANGUAGE = "en"
PER_PASS = 20  # messages a pass sends before the worker looks at its inbox again
_URL = re.compile(r"https?://[^\s<>\"]+")


def language_of(locale: str | None) -> str:
    """The templates' language for a Kill Bill account's locale (fr_FR: fr), English when there are none in it."""
    code = (locale or "").split("_")[0].lower()
    return code if code.isalpha() and (TEMPLATES / code).is_dir() else DEFAULT_LANGUAGE


# The text part is plain text, escaped nowhere; the HTML part's layout escapes what it is given.
_TEXT = jinja2.Environment(  # noqa: S701
    loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
)
_HTML = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, autoescape=True)


def render(message: str, language: str, params: dict) -> tuple[str, str, str]:
    """(subject, text, HTML) of a message: its template `<language>/<message>.txt` (a Subject: line, a blank line,
    the text), and the same words in the HTML layout, each paragraph a <p>, each URL a link."""
    rendered = _TEXT.get_template(f"{language}/{message}.txt").render(**params)
    head, _, text = rendered.partition("\n\n")
    if not head.startswith("Subject: ") or "\n" in head:
        raise ValueError(f"{language}/{message}.txt must begin with one 'Subject: ' line and a blank line")
    subject = head.removeprefix("Subject: ").strip()
    paragraphs = [_linked(paragraph) for paragraph in text.strip().split("\n\n")]
    html = _HTML.get_template("layout.html").render(subject=subject, paragraphs=paragraphs, language=language)
    return subject, text.strip() + "\n", html


def _linked(paragraph: str) -> Markup:
    """A paragraph as HTML: escaped, its URLs made links, its lines joined (the text wraps them)."""
    parts, last = [], 0
    for found in _URL.finditer(paragraph):
        parts += [escape(paragraph[last : found.start()]), Markup('<a href="{0}">{0}</a>').format(found.group())]
        last = found.end()
    parts.append(escape(paragraph[last:]))
    return Markup(" ").join(part for part in Markup("").join(parts).split("\n"))


def compose(settings: MailSettings, row: dict, recipient: str, name: str | None, rendered) -> EmailMessage:
    subject, text, html = rendered
    domain = settings.sender.rpartition("@")[2].strip("> ")
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = Address(display_name=name or "", addr_spec=recipient)
    if settings.reply_to:
        message["Reply-To"] = settings.reply_to
    message["Subject"] = subject
    # For the operator's mail filters and the tests: which message, about which tenant.
    message["X-SaaSOdoo-Message"] = row["message"]
    message["X-SaaSOdoo-Tenant"] = row["tenant_id"]
    message["Date"] = formatdate(localtime=False)
    # The same for every attempt at this message: a copy sent again after a crash is known as one.
    message["Message-ID"] = f"<customer-mail-{row['id']}.{row['queued_at']:%Y%m%d%H%M%S}@{domain}>"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def deliver(settings: MailSettings, message: EmailMessage) -> None:
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.timeout_seconds) as smtp:
        if settings.starttls:
            smtp.starttls(context=ssl.create_default_context(cafile=settings.ca_file or None))
        if settings.username:
            smtp.login(settings.username, settings.password)
        smtp.send_message(message)


# -- queueing (what the registry does not queue itself) ----------------------------------------------------------


def queue(conn: psycopg.Connection, tenant_id: str, message: str, cause: str, params: dict, send_after=None) -> bool:
    """Queue a message for a tenant the registry has, once per cause, to go at `send_after` (at once when that has
    passed); whether it is new."""
    return bool(
        conn.execute(
            """INSERT INTO registry.customer_mail (tenant_id, message, cause, params, send_after)
               SELECT t.tenant_id, %s, %s, %s, greatest(coalesce(%s, now()), now())
                 FROM registry.tenants AS t WHERE t.tenant_id = %s
               ON CONFLICT DO NOTHING""",
            (message, cause, Jsonb(params), send_after, tenant_id),
        ).rowcount
    )


def queue_payment_failures(conn: psycopg.Connection, account: str, events: list[dict]) -> int:
    """A failed payment's e-mail for each of the account's live tenants, once per payment (a notification Kill
    Bill sends again names the same payment)."""
    failures = [event for event in events if event["event_type"] == "INVOICE_PAYMENT_FAILED"]
    if not failures:
        return 0
    tenants = conn.execute(
        "SELECT tenant_id FROM registry.tenants WHERE customer_id = %s AND status IN ('active', 'suspended')",
        (account,),
    ).fetchall()
    queued = 0
    for event in failures:
        meta = event["meta_data"] or {}
        cause = f"payment {meta.get('paymentId') or event['object_id']}"
        params = {"invoice": event["object_id"], "amount": str(meta.get("amount") or ""),
                  "currency": str(meta.get("currency") or "")}  # fmt: skip
        queued += sum(queue(conn, row["tenant_id"], "payment_failed", cause, params) for row in tenants)
    return queued


def trial_end(subscription: dict) -> datetime | None:
    """When a subscription in its trial leaves it: its PHASE event (Kill Bill's EventSubscriptionJson), which Kill
    Bill schedules with the subscription and moves with a plan change; on Kill Bill's clock, not this host's."""
    if subscription.get("phaseType") != "TRIAL":
        return None
    for event in subscription.get("events") or []:
        if event.get("eventType") == "PHASE" and isinstance(event.get("effectiveDate"), str):
            try:
                when = datetime.fromisoformat(event["effectiveDate"].replace("Z", "+00:00"))
            except ValueError:
                return None
            return when if when.tzinfo is not None else None
    return None


def queue_trial_ending(conn: psycopg.Connection, tenant_id: str, subscription: dict, warning_days: int) -> bool:
    """The trial's end, told `warning_days` before it (at once when it is nearer): once per subscription and date."""
    ends = trial_end(subscription)
    if ends is None:
        return False
    cause = f"trial {subscription.get('subscriptionId')} ends {ends:%Y-%m-%d}"
    params = {"trial_ends": f"{ends:%Y-%m-%d}", "plan": subscription.get("planName") or ""}
    return queue(conn, tenant_id, "trial_ending", cause, params, ends - timedelta(days=warning_days))


def queue_purge_warnings(conn: psycopg.Connection, warning_days: int) -> int:
    """A terminated tenant's purge, told `warning_days` before it: once per retention end."""
    return conn.execute(
        """INSERT INTO registry.customer_mail (tenant_id, message, cause, params)
           SELECT tenant_id, 'purge_soon', 'purge at ' || retain_until::text,
                  jsonb_build_object('retain_until', retain_until)
             FROM registry.tenants
            WHERE status = 'terminated' AND customer_id IS NOT NULL AND retain_until > now()
              AND retain_until <= now() + make_interval(days => %s)
           ON CONFLICT DO NOTHING""",
        (warning_days,),
    ).rowcount


# -- sending ---------------------------------------------------------------------------------------------------------


def moot(row: dict, settings: MailSettings) -> str | None:
    """Why a due message should not go out any more, or None."""
    if row["send_after"] < row["now"] - timedelta(days=settings.stale_days):
        return f"not sent within {settings.stale_days:g} days of its time: dropped, never sent late"
    if not row["customer_id"]:
        return "the tenant has no Kill Bill account any more"
    if row["message"] == "trial_ending" and (row["status"] != "active" or row["billing_status"] not in (None, "trial")):
        return f"the trial is over (tenant {row['status']}, billing {row['billing_status']})"
    if row["message"] == "purge_soon" and row["status"] != "terminated":
        return f"the tenant is {row['status']}: no purge coming"
    if row["message"] == "payment_failed" and row["status"] not in ("active", "suspended"):
        return f"the tenant is {row['status']}"
    return None


def send_due(conn, settings, killbill: KillBill, actor: str) -> list[str]:
    """One mail pass: queue the purge warnings now due, then send what is due (at most PER_PASS); a line for each
    message sent, dropped or put off."""
    mail: MailSettings = settings.mail
    queue_purge_warnings(conn, mail.purge_warning_days)
    lines = []
    for _ in range(PER_PASS):
        line = _send_one(conn, settings, killbill, actor)
        if line is None:
            break
        lines.append(line)
    return lines


def _send_one(conn, settings, killbill: KillBill, actor: str) -> str | None:
    mail: MailSettings = settings.mail
    with conn.transaction():
        row = conn.execute(
            """SELECT m.id, m.tenant_id, m.message, m.cause, m.params, m.sealed_link, m.send_after, m.queued_at,
                      now() AS now,
                      t.customer_id, t.status, t.billing_status, t.plan_name, t.retain_until
                 FROM registry.customer_mail AS m JOIN registry.tenants AS t ON t.tenant_id = m.tenant_id
                WHERE m.state = 'queued' AND m.send_after <= now()
                ORDER BY m.send_after, m.id LIMIT 1
                  FOR UPDATE OF m SKIP LOCKED"""
        ).fetchone()
        if row is None:
            return None
        name = f"mail {row['id']} ({row['message']} to tenant {row['tenant_id']})"
        if reason := moot(row, mail):
            _finish(conn, row, "dropped", reason)
            return f"{name}: dropped: {reason}"
        try:
            profile = customer_profile(killbill.account(row["customer_id"]))
        except KillBillError as error:
            return _put_off(conn, row, mail, f"Kill Bill: {error}", name)
        if not profile.get("email"):
            _finish(conn, row, "dropped", "the Kill Bill account has no e-mail address")
            return f"{name}: dropped: the Kill Bill account has no e-mail address"
        language = language_of(profile.get("locale"))
        params = _params(row, profile, settings)
        try:
            rendered = render(row["message"], language, params)
        except jinja2.TemplateError as error:  # a template bug: every attempt would fail the same way
            _finish(conn, row, "dropped", f"its template failed: {error}")
            log.error("%s: template %s/%s failed: %s", name, language, row["message"], error)
            return f"{name}: dropped: its template failed: {error}"
        message = compose(mail, row, profile["email"], profile.get("name"), rendered)
        try:
            deliver(mail, message)
        except (OSError, smtplib.SMTPException) as error:
            return _put_off(conn, row, mail, f"SMTP {mail.smtp_host}:{mail.smtp_port}: {error}", name)
        _finish(conn, row, "sent", None, recipient=profile["email"], language=language)
        store.audit(
            conn, actor=actor, tenant_id=row["tenant_id"], kind="mail", subject=f"mail:{row['id']}",
            detail={"message": row["message"], "cause": row["cause"], "to": profile["email"], "language": language,
                    "message_id": message["Message-ID"]},
        )  # fmt: skip
        return f"{name}: sent to {profile['email']} ({language})"


def _params(row: dict, profile: dict, settings) -> dict:
    """What a template may show: the tenant, its URL, the customer's name, the row's params and the link."""
    link = None
    if row["sealed_link"]:
        try:
            link = Fernet(fernet_key(settings.mail.link_key)).decrypt(row["sealed_link"].encode()).decode()
        except InvalidToken:  # sealed with another key (rotated since): the welcome says how to get a new one
            log.warning("mail %s: its sign-in link was sealed with another key; sent without it", row["id"])
    retain_until = row["params"].get("retain_until") or row["retain_until"]
    return {
        **dict.fromkeys(("previous_plan", "trial_ends", "amount", "currency", "invoice"), ""),
        **{key: value for key, value in row["params"].items() if value is not None},
        "tenant_id": row["tenant_id"],
        "name": profile.get("name") or "",
        "url": tenant_login_url(settings.tenant_url, row["tenant_id"]) if settings.tenant_url else "",
        "link": link,
        "retain_until": str(retain_until)[:10] if retain_until else "",
        "plan": row["params"].get("plan") or row["plan_name"],
        "reply_to": settings.mail.reply_to or settings.mail.sender,
    }


def _put_off(conn, row: dict, mail: MailSettings, error: str, name: str) -> str:
    conn.execute(
        """UPDATE registry.customer_mail SET attempts = attempts + 1, last_error = %s,
                  send_after = now() + make_interval(secs => %s) WHERE id = %s""",
        (error[:2000], mail.retry_seconds, row["id"]),
    )
    log.warning("%s: not sent (%s); tried again in %g s", name, error, mail.retry_seconds)
    return f"{name}: put off: {error}"


def _finish(conn, row: dict, state: str, reason: str | None, recipient=None, language=None) -> None:
    conn.execute(
        """UPDATE registry.customer_mail SET state = %s, last_error = %s, recipient = %s, language = %s,
                  sealed_link = NULL, attempts = attempts + 1, sent_at = CASE WHEN %s = 'sent' THEN now() END
            WHERE id = %s""",
        (state, reason, recipient, language, state, row["id"]),
    )
