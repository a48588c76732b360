"""E-mail to customers: the registry's outbox (registry.customer_mail), sent over SMTP (docs/mail.md).

What a customer hears of is queued where it happens, once per cause: the registry queues a tenant's welcome,
suspension, resume, cancellation and plan change in the transaction that writes the change (migration 0024), and
the worker queues a failed payment and a trial's end from what Kill Bill says, and a purge's warning from the
tenant's retention. A worker's mail pass sends what is due, one message at a time: it locks the row (another
worker skips it), hands the message to the SMTP relay and records it sent in that one transaction. A worker killed
between the relay's acceptance and the commit sends it again at its next pass (at least once, never lost), with the
same Message-ID, by which a mail client can tell the copy.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
from datetime import datetime, timedelta
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import jinja2
import psycopg
from cryptography.fernet import Fernet, InvalidToken
from markupsafe import Markup, escape
from psycopg.types.json import Jsonb

from ansible_collections.saasodoo.platform.plugins.module_utils.lifecycle import LIVE

from . import store
from .config import MailSettings, fernet_key, tenant_login_url
from .desired import customer_profile
from .killbill import KillBill, KillBillError, KillBillNotFound

log = logging.getLogger("webhook_runner.mail")

MESSAGES = (
    "welcome", "trial_ending", "payment_failed", "suspended", "resumed", "plan_changed", "cancelled", "purge_soon",
)  # fmt: skip
TEMPLATES = Path(__file__).with_name("mail_templates")
DEFAULT_LANGUAGE = "en"
PER_PASS = 20  # messages a pass sends before the worker looks at its inbox again


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
    the text), and the same words in the HTML layout, each paragraph a <p>, escaped. Only the platform's own URLs
    (the tenant's `url` and the welcome's `link`) become links: nothing the customer wrote (their name) does."""
    rendered = _TEXT.get_template(f"{language}/{message}.txt").render(**params)
    head, _, text = rendered.partition("\n\n")
    if not head.startswith("Subject: ") or "\n" in head:
        raise ValueError(f"{language}/{message}.txt must begin with one 'Subject: ' line and a blank line")
    subject = head.removeprefix("Subject: ").strip()
    trusted = [url for url in (params.get("link"), params.get("url")) if url]
    paragraphs = [_linked(paragraph, trusted) for paragraph in text.strip().split("\n\n")]
    html = _HTML.get_template("layout.html").render(subject=subject, paragraphs=paragraphs, language=language)
    return subject, text.strip() + "\n", html


def _linked(paragraph: str, trusted: list[str]) -> Markup:
    """A paragraph as HTML: escaped, each of the `trusted` URLs in it a link, its lines joined (the text wraps)."""
    html = escape(paragraph)
    for url in trusted:  # each an exact URL the platform made, never one found in the text
        html = html.replace(escape(url), Markup('<a href="{0}">{0}</a>').format(url))
    return Markup(" ").join(html.split("\n"))


def compose(settings: MailSettings, row: dict, recipient: str, name: str | None, rendered) -> EmailMessage:
    """The message as it goes out; ValueError or MessageError when the address or name cannot be written in one."""
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
    message.as_bytes()  # every header written now, not half-way through the SMTP dialogue
    return message


def deliver(settings: MailSettings, message: EmailMessage) -> None:
    """Hand the message to the relay: done once it took it (a failed QUIT afterwards changes nothing)."""
    smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.timeout_seconds)
    try:
        if settings.starttls:
            smtp.starttls(context=ssl.create_default_context(cafile=settings.ca_file or None))
        if settings.username:
            smtp.login(settings.username, settings.password)
        smtp.send_message(message)
    finally:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            smtp.quit()


def refused_for_good(error: Exception) -> bool:
    """Whether the relay refused this message's address for good (a 5xx reply with an address status, 5.1.x: no
    such mailbox, a bad address): trying it again would be refused the same way. Any other refusal (a login, the
    sender, relaying denied, 5.7.x) is about the relay or the settings, and every message would get it."""
    if not isinstance(error, smtplib.SMTPRecipientsRefused):
        return False
    return all(code >= 500 and reply.startswith(b"5.1.") for code, reply in error.recipients.values())


def relay_failed(error: Exception) -> bool:
    """Whether the failure is the relay's or the settings' (every message would meet it: the pass ends), rather
    than this message's (a 4xx for its address, its content refused: the others go on)."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return any(reply.startswith(b"5.7.") for _, reply in error.recipients.values())
    return not isinstance(error, smtplib.SMTPDataError)


# -- queueing (what the registry does not queue itself) ----------------------------------------------------------


def queue(conn, tenant_id: str, account: str, message: str, cause: str, params: dict, send_after=None, *,
          subscription: str | None = None) -> bool:  # fmt: skip
    """Queue a message for a tenant that belongs to `account` (and to `subscription`, when given: a tenant acts for
    no other, desired.foreign_claim), once per cause, to go at `send_after` (at once when that has passed); whether
    it is new."""
    return bool(
        conn.execute(
            """INSERT INTO registry.customer_mail (tenant_id, message, cause, customer_id, params, send_after)
               SELECT t.tenant_id, %(message)s, %(cause)s, t.customer_id, %(params)s,
                      greatest(coalesce(%(send_after)s, now()), now())
                 FROM registry.tenants AS t
                WHERE t.tenant_id = %(tenant)s AND t.customer_id = %(account)s
                  AND (%(subscription)s::text IS NULL OR t.subscription_id IS NULL
                       OR t.subscription_id = %(subscription)s)
               ON CONFLICT DO NOTHING""",
            {"message": message, "cause": cause, "params": Jsonb(params), "send_after": send_after,
             "tenant": tenant_id, "account": account, "subscription": subscription},
        ).rowcount
    )  # fmt: skip


def queue_payment_failures(conn: psycopg.Connection, account: str, events: list[dict]) -> int:
    """A failed payment's e-mail for each of the account's live tenants, once per payment (a notification Kill
    Bill sends again names the same payment)."""
    failures = [event for event in events if event["event_type"] == "INVOICE_PAYMENT_FAILED"]
    if not failures:
        return 0
    tenants = conn.execute(
        "SELECT tenant_id FROM registry.tenants WHERE customer_id = %s AND status = ANY(%s)",
        (account, list(LIVE)),
    ).fetchall()
    queued = 0
    for event in failures:
        meta = event["meta_data"] or {}
        cause = f"payment {meta.get('paymentId') or event['object_id']}"
        params = {"invoice": event["object_id"], "amount": str(meta.get("amount") or ""),
                  "currency": str(meta.get("currency") or "")}  # fmt: skip
        queued += sum(queue(conn, row["tenant_id"], account, "payment_failed", cause, params) for row in tenants)
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
    """The trial's end, told `warning_days` before it (at once when it is nearer), once per subscription and end
    date; a message for an end date a plan change moved is dropped when its time comes (moot)."""
    ends = trial_end(subscription)
    if ends is None:
        return False
    cause = f"trial {subscription.get('subscriptionId')} ends {ends:%Y-%m-%d}"
    params = {"trial_ends": f"{ends:%Y-%m-%d}", "plan": subscription.get("planName") or "",
              "subscription": subscription.get("subscriptionId")}  # fmt: skip
    queued = queue(
        conn, tenant_id, subscription.get("accountId"), "trial_ending", cause, params,
        ends - timedelta(days=warning_days), subscription=subscription.get("subscriptionId"),
    )  # fmt: skip
    if queued:  # the end a plan change moved: its message is no longer so
        conn.execute(
            """UPDATE registry.customer_mail SET state = 'dropped', sealed_link = NULL,
                      last_error = 'the trial''s end moved (a plan change): ' || %s
                WHERE tenant_id = %s AND message = 'trial_ending' AND state = 'queued' AND cause <> %s
                  AND params ->> 'subscription' = %s""",
            (cause, tenant_id, cause, subscription.get("subscriptionId")),
        )
    return queued


def queue_purge_warnings(conn: psycopg.Connection, warning_days: int) -> int:
    """A terminated tenant's purge, told `warning_days` before it: once per retention end."""
    return conn.execute(
        """INSERT INTO registry.customer_mail (tenant_id, message, cause, customer_id, params)
           SELECT tenant_id, 'purge_soon',
                  'purge at ' || to_char(retain_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), customer_id,
                  jsonb_build_object('retain_until', retain_until)
             FROM registry.tenants
            WHERE status = 'terminated' AND customer_id IS NOT NULL AND retain_until > now()
              AND retain_until <= now() + make_interval(days => %s)
           ON CONFLICT DO NOTHING""",
        (warning_days,),
    ).rowcount


# -- sending ---------------------------------------------------------------------------------------------------------


def moot(row: dict, settings: MailSettings) -> str | None:
    """Why a due message should not go out any more (what it tells is no longer so), or None."""
    if row["send_after"] < row["now"] - timedelta(days=settings.stale_days):
        return f"not sent within {settings.stale_days:g} days of its time: dropped, never sent late"
    if row["customer_id"] != row["owner"]:
        return "the tenant belongs to another Kill Bill account now (transferred)"
    message, status, params = row["message"], row["status"], row["params"]
    if message == "trial_ending":
        if status != "active" or row["billing_status"] not in (None, "trial"):
            return f"the trial is over (tenant {status}, billing {row['billing_status']})"
        if params.get("subscription") and row["subscription_id"] not in (None, params["subscription"]):
            return "the tenant belongs to another subscription now"
    wanted = {"purge_soon": ("terminated",), "cancelled": ("terminated",), "suspended": ("suspended",),
              "resumed": ("active",),
              "payment_failed": LIVE, "plan_changed": LIVE}  # fmt: skip
    if message in wanted and status not in wanted[message]:
        return f"the tenant is {status} now"
    if message == "plan_changed" and params.get("plan") != row["plan_name"]:
        return f"the tenant is on {row['plan_name']} now (the change was undone)"
    return None


def send_due(conn, settings, killbill: KillBill, actor: str) -> tuple[list[str], bool]:
    """One mail pass: queue the purge warnings now due, then send what is due (at most PER_PASS): a line for each
    message sent, dropped or put off, and whether the relay or Kill Bill was out of reach. The pass ends there: the
    rest would wait for the same timeouts."""
    mail: MailSettings = settings.mail
    queue_purge_warnings(conn, mail.purge_warning_days)
    lines: list[str] = []
    for _ in range(PER_PASS):
        outcome = _send_one(conn, settings, killbill, actor)
        if outcome is None:
            break
        line, unreachable = outcome
        lines.append(line)
        if unreachable:
            return lines, True
    return lines, False


def _send_one(conn, settings, killbill: KillBill, actor: str) -> tuple[str, bool] | None:
    """Send, drop or put off the next due message: (what happened, whether the relay or Kill Bill was out of
    reach); None when nothing is due."""
    mail: MailSettings = settings.mail
    with conn.transaction():
        row = conn.execute(
            """SELECT m.id, m.tenant_id, m.message, m.cause, m.customer_id, m.params, m.sealed_link, m.send_after,
                      m.queued_at, now() AS now, t.customer_id AS owner, t.subscription_id, t.status,
                      t.billing_status, t.plan_name, t.retain_until
                 FROM registry.customer_mail AS m JOIN registry.tenants AS t ON t.tenant_id = m.tenant_id
                WHERE m.state = 'queued' AND m.send_after <= now() AND (m.retry_at IS NULL OR m.retry_at <= now())
                ORDER BY coalesce(m.retry_at, m.send_after), m.id LIMIT 1
                  FOR UPDATE OF m SKIP LOCKED"""
        ).fetchone()
        if row is None:
            return None
        name = f"mail {row['id']} ({row['message']} to tenant {row['tenant_id']})"
        try:
            with conn.transaction():  # a savepoint: whatever fails in it, the row is still put off below
                return _attempt(conn, row, name, settings, killbill, actor)
        except Exception as error:  # a bug, or an answer nobody foresaw: this message waits, the others go on
            log.exception("%s: failed", name)
            return _put_off(conn, row, mail, f"{type(error).__name__}: {error}", name), False


def _attempt(conn, row: dict, name: str, settings, killbill: KillBill, actor: str) -> tuple[str, bool]:
    mail: MailSettings = settings.mail
    if reason := moot(row, mail):
        _finish(conn, row, "dropped", reason)
        return f"{name}: dropped: {reason}", False
    try:
        profile = customer_profile(killbill.account(row["customer_id"]))
    except KillBillNotFound as error:
        _finish(conn, row, "dropped", f"the account is unknown to Kill Bill: {error}")
        return f"{name}: dropped: the account is unknown to Kill Bill", False
    except KillBillError as error:
        return _put_off(conn, row, mail, f"Kill Bill: {error}", name), True
    if not profile.get("email"):
        _finish(conn, row, "dropped", "the Kill Bill account has no e-mail address")
        return f"{name}: dropped: the Kill Bill account has no e-mail address", False
    language = language_of(profile.get("locale"))
    try:
        rendered = render(row["message"], language, _params(row, profile, settings))
        message = compose(mail, row, profile["email"], profile.get("name"), rendered)
    except jinja2.TemplateError as error:  # a template bug: every attempt would fail the same way
        log.error("%s: template %s/%s failed: %s", name, language, row["message"], error)
        _finish(conn, row, "dropped", f"its template failed: {error}")
        return f"{name}: dropped: its template failed: {error}", False
    except (ValueError, MessageError) as error:  # an address or a name no e-mail can carry
        _finish(conn, row, "dropped", f"no e-mail can be written to this account: {error}")
        return f"{name}: dropped: no e-mail can be written to {profile['email']!r}", False
    relay = f"SMTP {mail.smtp_host}:{mail.smtp_port}"
    try:
        deliver(mail, message)
    except (OSError, smtplib.SMTPException) as error:
        if refused_for_good(error):
            _finish(conn, row, "dropped", f"{relay} refused its address: {error}")
            return f"{name}: dropped: {relay} refused its address: {error}", False
        return _put_off(conn, row, mail, f"{relay}: {error}", name), relay_failed(error)
    _finish(conn, row, "sent", None, recipient=profile["email"], language=language)
    store.record_audit(
        conn, actor=actor, tenant_id=row["tenant_id"], kind="mail", subject=f"mail:{row['id']}",
        detail={"message": row["message"], "cause": row["cause"], "to": profile["email"], "language": language,
                "message_id": message["Message-ID"]},
    )  # fmt: skip
    return f"{name}: sent to {profile['email']} ({language})", False


def _params(row: dict, profile: dict, settings) -> dict:
    """What a template may show: the tenant, its URL, the customer's name, the row's params and the link."""
    link = None
    if row["sealed_link"]:
        # A Fernet token carries the time it was sealed, minutes after Odoo issued the link (the provision's last
        # step): a link with less than an hour of its life left is left out, as one sealed with another key (the
        # platform secret rotated since). The welcome then says how to get a new one.
        try:
            sealed = Fernet(fernet_key(settings.mail.link_key))
            ttl = max(settings.mail.link_hours - 1, 0) * 3600
            link = sealed.decrypt(row["sealed_link"].encode(), ttl=ttl).decode()
        except InvalidToken:
            log.warning("mail %s: its sign-in link expired or was sealed with another key; sent without it", row["id"])
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
    """Try it again after retry_seconds; its time stays, so a message unsent for long is seen (metrics, alert)
    and dropped as stale."""
    conn.execute(
        """UPDATE registry.customer_mail SET attempts = attempts + 1, last_error = %s,
                  retry_at = now() + make_interval(secs => %s) WHERE id = %s""",
        (error[:2000], mail.retry_seconds, row["id"]),
    )
    log.warning("%s: not sent (%s); tried again in %g s", name, error, mail.retry_seconds)
    return f"{name}: put off: {error}"


def _finish(conn, row: dict, state: str, reason: str | None, recipient=None, language=None) -> None:
    conn.execute(
        """UPDATE registry.customer_mail SET state = %s, last_error = %s, recipient = %s, language = %s,
                  sealed_link = NULL, retry_at = NULL, attempts = attempts + 1,
                  sent_at = CASE WHEN %s = 'sent' THEN now() END
            WHERE id = %s""",
        (state, reason, recipient, language, state, row["id"]),
    )
