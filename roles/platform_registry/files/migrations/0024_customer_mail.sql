-- 0024_customer_mail: the e-mails that tell a customer what happened to their tenant, as an outbox. Each is queued in
-- the transaction of what it tells of (a tenant's status or plan written here, a failed payment or a trial's end the
-- runner read from Kill Bill), once per cause, and the runner's workers send it (webhook_runner/mail.py).
CREATE TABLE registry.customer_mail (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES registry.tenants (tenant_id) ON DELETE CASCADE,
    message     text NOT NULL CHECK (message IN ('welcome', 'trial_ending', 'payment_failed', 'suspended', 'resumed',
                                                 'plan_changed', 'cancelled', 'purge_soon')),
    cause       text NOT NULL CHECK (cause <> ''),  -- what it tells of: one mail per tenant, message and cause
    customer_id text NOT NULL,                       -- the Kill Bill account it is for (a transfer moots it)
    params      jsonb NOT NULL DEFAULT '{}',         -- what its template shows (a plan, a date); never a secret
    -- The welcome's one-time sign-in link, encrypted with the platform's mail key (never stored in clear); cleared
    -- once the mail is sent or dropped.
    sealed_link text,
    queued_at   timestamptz NOT NULL DEFAULT now(),
    send_after  timestamptz NOT NULL DEFAULT now(),  -- its time; a message unsent long after it is dropped
    retry_at    timestamptz,                         -- after a failed attempt, when the next may go
    state       text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'dropped')),
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,                                -- why the last attempt failed, or why it was dropped
    recipient   text,                                -- the address it went to
    language    text,                                -- the language it was written in
    sent_at     timestamptz,
    UNIQUE (tenant_id, message, cause)
);
COMMENT ON TABLE registry.customer_mail IS
    'E-mails to customers: queued with what they tell of, sent by the webhook runner, each once per cause.';
CREATE INDEX customer_mail_queued_idx ON registry.customer_mail (send_after) WHERE state = 'queued';

-- What a tenant's row changing tells its customer, queued in the same transaction as the change, whichever playbook
-- or module makes it: a change that commits is told once, one that rolls back never. A tenant with no Kill Bill
-- account (made by hand) has nobody to tell.
CREATE FUNCTION registry.queue_tenant_mail() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    message text := CASE
        WHEN OLD.status = 'provisioning' AND NEW.status = 'active' THEN 'welcome'
        WHEN OLD.status = 'active' AND NEW.status = 'suspended' THEN 'suspended'
        WHEN OLD.status IN ('suspended', 'terminated') AND NEW.status = 'active' THEN 'resumed'
        WHEN OLD.status IN ('active', 'suspended') AND NEW.status = 'terminated' THEN 'cancelled'
        WHEN OLD.status = NEW.status AND NEW.status IN ('active', 'suspended')
             AND OLD.plan_name IS DISTINCT FROM NEW.plan_name THEN 'plan_changed'
    END;
BEGIN
    IF message IS NULL OR NEW.customer_id IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO registry.customer_mail (tenant_id, message, cause, customer_id, params)
    VALUES (NEW.tenant_id, message, 'transaction ' || pg_catalog.pg_current_xact_id()::text, NEW.customer_id,
            pg_catalog.jsonb_build_object('plan', NEW.plan_name, 'previous_plan', OLD.plan_name,
                                          'retain_until', NEW.retain_until))
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER queue_mail AFTER UPDATE OF status, plan_name ON registry.tenants FOR EACH ROW
    EXECUTE FUNCTION registry.queue_tenant_mail();

INSERT INTO registry.schema_migrations (version, name) VALUES (24, '0024_customer_mail');
