-- 0027_customer_emails: one trial per customer counts e-mail addresses as well as Kill Bill accounts. The runner
-- records, for each account it reads, a keyed hash of its e-mail address (never the address): every address an
-- account has had, so changing it after a trial does not open another.
CREATE TABLE registry.customer_emails (
    account_id text NOT NULL,
    email_hash text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, email_hash)
);
CREATE INDEX customer_emails_email_hash ON registry.customer_emails (email_hash);
COMMENT ON TABLE registry.customer_emails IS
    'Kill Bill accounts and the keyed hashes (HMAC-SHA256) of the e-mail addresses they have had.';

INSERT INTO registry.schema_migrations (version, name) VALUES (27, '0027_customer_emails');
