"""Customer e-mail (webhook_runner/mail.py): the templates of every language, the settings, the sealed link, what
makes a message moot, and the message as a mail client gets it."""

from __future__ import annotations

import email
import email.errors
import email.policy
import smtplib
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from cryptography.fernet import Fernet, InvalidToken

from ansible_collections.saasodoo.platform.plugins.module_utils.secrets import derive_password
from ansible_collections.saasodoo.platform.plugins.modules import registry_tenant
from webhook_runner import mail
from webhook_runner.config import ConfigError, MailSettings, fernet_key, mail_settings

LANGUAGES = sorted(path.name for path in mail.TEMPLATES.iterdir() if path.is_dir())
KEY = derive_password("s" * 64, "customer-mail-links")
PARAMS = {
    "tenant_id": "acme", "name": "Jo <script>alert(1)</script> & Co", "plan": "premium-monthly",
    "previous_plan": "basic-monthly", "url": "https://acme.odoo.example.com/web/login", "retain_until": "2026-12-30",
    "trial_ends": "2026-12-01", "amount": "49.00", "currency": "USD", "invoice": "inv-1", "reply_to": "s@x.example",
    "link": "https://acme.odoo.example.com/web/reset_password?db=t_acme&token=abc",
}  # fmt: skip


def test_every_language_has_every_message():
    assert "en" in LANGUAGES and len(LANGUAGES) >= 2
    for language in LANGUAGES:
        found = {path.stem for path in (mail.TEMPLATES / language).glob("*.txt")}
        assert found == set(mail.MESSAGES), language


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("message", mail.MESSAGES)
def test_each_template_renders_a_subject_text_and_escaped_html(language, message):
    subject, text, html = mail.render(message, language, PARAMS)
    assert subject and "\n" not in subject and "acme" in subject
    assert "{{" not in text and "acme" in text
    assert "<script>" not in html and "&lt;script&gt;" in html  # the name, escaped
    assert "<script>" in text  # the text part is text: nothing to escape
    if message == "welcome":
        assert PARAMS["link"] in text
        assert f'<a href="{PARAMS["link"].replace("&", "&amp;")}">' in html


def test_only_the_platforms_own_urls_become_links():
    """A customer's name is theirs to choose: a URL in it stays text in a mail from the platform's domain."""
    name = "Visit https://evil.example/login?acme,"
    _, text, html = mail.render("resumed", "en", {**PARAMS, "name": name})
    assert "https://evil.example/login?acme," in text
    assert 'href="https://evil' not in html and "https://evil.example/login?acme," in html
    assert f'<a href="{PARAMS["url"]}">{PARAMS["url"]}</a>' in html  # no trailing full stop in it


def test_a_welcome_without_its_link_says_how_to_get_one():
    for language in LANGUAGES:
        _, text, _ = mail.render("welcome", language, {**PARAMS, "link": None})
        assert "token=" not in text and PARAMS["url"] in text


def test_the_language_follows_the_accounts_locale_with_english_otherwise():
    assert mail.language_of("fr_FR") == "fr"
    assert mail.language_of("de_DE") == "en"
    assert mail.language_of(None) == mail.language_of("") == "en"
    assert mail.language_of("../en_US") == "en"  # no path from a locale


def test_the_settings_refuse_what_would_fail_later():
    good = {"sender": "Odoo <support@x.example>", "link_key": KEY}
    assert mail_settings(good, "s").smtp_port == 25
    for raw, problem in (
        ({**good, "smtp_hots": "x"}, "unknown keys: mail.smtp_hots"),
        ({"sender": "a@b"}, "lacks mail.link_key"),
        ({**good, "link_key": "short"}, "Fernet key"),
        ({**good, "sender": "nobody"}, "must be an address"),
        ({**good, "username": "u", "password": "p"}, "needs mail.starttls"),
        ({**good, "starttls": True, "username": "u"}, "go together"),
        ({**good, "smtp_port": "587"}, "smtp_port must be a whole number"),
        ({**good, "starttls": "false"}, "starttls must be true or false"),
        ({**good, "trial_warning_days": "3"}, "trial_warning_days must be a whole number"),
        ({**good, "retry_seconds": 0}, "retry_seconds must be above 0"),
        ([], "must be an object"),
    ):
        with pytest.raises(ConfigError, match=problem):
            mail_settings(raw, "s")


def test_a_link_the_module_seals_only_the_runner_key_opens():
    class Recorder:
        def execute(self, query, params):
            self.params = params

    conn = Recorder()
    registry_tenant.seal_welcome_link(conn, "acme", PARAMS["link"], KEY)
    sealed, tenant = conn.params
    assert tenant == "acme" and PARAMS["link"] not in sealed and "token" not in sealed
    assert Fernet(fernet_key(KEY)).decrypt(sealed.encode()).decode() == PARAMS["link"]
    other = derive_password("t" * 64, "customer-mail-links")
    with pytest.raises(InvalidToken):
        Fernet(fernet_key(other)).decrypt(sealed.encode())


def test_a_link_older_than_its_life_is_left_out_of_the_welcome():
    settings = SimpleNamespace(mail=MailSettings(sender="s@x.example", link_key=KEY, link_hours=24), tenant_url="")
    key = Fernet(fernet_key(KEY))
    fresh = key.encrypt(PARAMS["link"].encode()).decode()
    old = key.encrypt_at_time(PARAMS["link"].encode(), int(time.time()) - 23 * 3600 - 60).decode()
    assert mail._params(row(sealed_link=fresh, retain_until=None), {}, settings)["link"] == PARAMS["link"]
    assert mail._params(row(sealed_link=old, retain_until=None), {}, settings)["link"] is None


def test_the_trial_ends_at_its_phase_event_on_kill_bills_clock():
    phase = {"eventType": "PHASE", "effectiveDate": "2020-09-01T10:00:00.000Z", "phase": "basic-monthly-evergreen"}
    start = {"eventType": "START_ENTITLEMENT", "effectiveDate": "2020-08-18T10:00:00.000Z"}
    trial = {"phaseType": "TRIAL", "events": [start, phase]}
    assert mail.trial_end(trial) == datetime(2020, 9, 1, 10, tzinfo=UTC)  # in this host's past: Kill Bill's clock
    assert mail.trial_end({**trial, "phaseType": "EVERGREEN"}) is None
    assert mail.trial_end({"phaseType": "TRIAL"}) is None
    assert mail.trial_end({**trial, "events": [{**phase, "effectiveDate": "tomorrow"}]}) is None


def row(**fields) -> dict:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    return {"id": 7, "tenant_id": "acme", "message": "welcome", "send_after": now, "queued_at": now, "now": now,
            "customer_id": "acct", "owner": "acct", "subscription_id": "sub", "status": "active",
            "billing_status": "trial", "plan_name": "basic-monthly", "params": {}, **fields}  # fmt: skip


def test_a_message_no_longer_true_is_dropped():
    settings = MailSettings(sender="s@x.example", link_key=KEY)
    assert mail.moot(row(), settings) is None
    assert "7 days" in mail.moot(row(send_after=row()["now"] - timedelta(days=8)), settings)
    assert "another Kill Bill account" in mail.moot(row(owner="acct-2"), settings)  # transferred since
    assert mail.moot(row(message="trial_ending", billing_status="paid"), settings)
    assert mail.moot(row(message="trial_ending"), settings) is None
    assert mail.moot(row(message="purge_soon", status="active"), settings)  # the customer came back
    assert mail.moot(row(message="purge_soon", status="terminated"), settings) is None
    assert mail.moot(row(message="payment_failed", status="terminated"), settings)
    assert mail.moot(row(message="trial_ending", params={"subscription": "sub-old"}), settings)
    assert mail.moot(row(message="suspended"), settings)  # resumed meanwhile
    assert mail.moot(row(message="resumed", status="suspended"), settings)
    assert mail.moot(row(message="plan_changed", params={"plan": "premium-monthly"}), settings)  # switched back
    assert mail.moot(row(message="plan_changed", params={"plan": "basic-monthly"}), settings) is None
    assert mail.moot(row(message="cancelled"), settings)  # the customer came back before it went
    assert mail.moot(row(message="cancelled", status="terminated"), settings) is None


def test_only_a_refused_address_drops_a_message_and_only_the_relays_failures_end_the_pass():
    unknown = smtplib.SMTPRecipientsRefused({"a@x": (550, b"5.1.1 <a@x>: Recipient address rejected: User unknown")})
    assert mail.refused_for_good(unknown) and not mail.relay_failed(unknown)
    greylisted = smtplib.SMTPRecipientsRefused({"a@x": (450, b"4.7.1 greylisted, try later")})
    assert not mail.refused_for_good(greylisted) and not mail.relay_failed(greylisted)  # this message's, later
    denied = smtplib.SMTPRecipientsRefused({"a@x": (554, b"5.7.1 <a@x>: Relay access denied")})
    assert not mail.refused_for_good(denied) and mail.relay_failed(denied)  # every message would get it
    for error in (smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials"),
                  smtplib.SMTPSenderRefused(553, b"5.7.1 sender not owned", "s@x"),
                  smtplib.SMTPServerDisconnected("gone"), ConnectionRefusedError()):  # fmt: skip
        assert not mail.refused_for_good(error) and mail.relay_failed(error), error
    content = smtplib.SMTPDataError(554, b"5.6.0 message refused")
    assert not mail.refused_for_good(content) and not mail.relay_failed(content)


def test_an_address_no_mail_can_carry_fails_before_the_relay():
    settings = MailSettings(sender="s@x.example", link_key=KEY)
    rendered = mail.render("resumed", "en", PARAMS)
    for address in ("a,b@evil.example", "x<y@evil.example", "a@c..example"):
        with pytest.raises((ValueError, email.errors.MessageError)):
            mail.compose(settings, row(message="resumed"), address, "Jo", rendered)


def test_the_message_as_a_mail_client_gets_it():
    settings = MailSettings(sender="Example Odoo <support@odoo.example.com>", link_key=KEY, reply_to="help@x.example")
    rendered = mail.render("suspended", "en", PARAMS)
    first = mail.compose(settings, row(message="suspended"), "jo@acme.example", "Jo, \u00c9ric & Co", rendered)
    again = mail.compose(settings, row(message="suspended"), "jo@acme.example", "Jo, \u00c9ric & Co", rendered)
    assert first["Message-ID"] == again["Message-ID"]  # a copy sent again after a crash is known as one
    assert first["Message-ID"].endswith("@odoo.example.com>")
    parsed = email.message_from_bytes(first.as_bytes(), policy=email.policy.default)
    assert parsed["To"].addresses[0].addr_spec == "jo@acme.example"
    assert parsed["To"].addresses[0].display_name == "Jo, \u00c9ric & Co"
    assert (parsed["Reply-To"], parsed["X-SaaSOdoo-Message"], parsed["X-SaaSOdoo-Tenant"]) == (
        "help@x.example", "suspended", "acme",
    )  # fmt: skip
    assert parsed.get_body(("plain",)).get_content().startswith("Hello Jo <script>")
    assert "&lt;script&gt;" in parsed.get_body(("html",)).get_content()
