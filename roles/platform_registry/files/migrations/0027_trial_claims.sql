-- 0027_trial_claims: one trial per customer counts e-mail addresses as well as Kill Bill accounts. The first
-- account whose tenant has a trial under an address claims that address's trial, as a keyed hash (never the
-- address); an account taking another address later claims nothing, so it cannot block that address's owner.
CREATE TABLE registry.trial_claims (
    email_hash text PRIMARY KEY,
    account_id text NOT NULL,
    tenant_id  text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE registry.trial_claims IS
    'Per e-mail address (a keyed HMAC-SHA256 of it): the Kill Bill account and tenant that had its one trial.';

INSERT INTO registry.schema_migrations (version, name) VALUES (27, '0027_trial_claims');
