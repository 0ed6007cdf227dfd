-- 0003: email — templates, senders, subscription types, the consent ledger, the durable outbox,
-- engagement (opens and clicks), broadcasts and mail settings.
-- Times are BIGINT microseconds since the epoch; ids UUIDv7; flags are BIGINT 0/1. Every hot
-- table carries contact_id. The consent ledger and the engagement log are append-only.

CREATE TABLE email_templates (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,            -- marketing | transactional
    subject     TEXT NOT NULL,
    mjml        TEXT,
    html        TEXT,
    text        TEXT,
    version     BIGINT NOT NULL,         -- bumped on every change (compiled-template caches)
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Named sender identities with the legal footer's details.
CREATE TABLE senders (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL,
    email           TEXT NOT NULL,
    organization    TEXT NOT NULL,
    postal_address  TEXT NOT NULL,
    reply_to        TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- What a contact can subscribe to (newsletter, seminar invitations, product news…).
CREATE TABLE subscription_types (
    name         TEXT PRIMARY KEY,
    label        TEXT NOT NULL,
    description  TEXT,
    created_at   BIGINT NOT NULL
);

-- The consent ledger: append-only, never updated or deleted (except by erasure).
CREATE TABLE consents (
    id                 UUID PRIMARY KEY,  -- UUIDv7
    contact_id         UUID NOT NULL,
    channel            TEXT NOT NULL,     -- email
    subscription_type  TEXT NOT NULL,
    status             TEXT NOT NULL,     -- granted | withdrawn | requested
    source             TEXT NOT NULL,     -- form | api | import | double_opt_in | one_click | unsubscribe_page | preference_center | complaint
    wording            TEXT,
    wording_version    TEXT,
    ip                 TEXT,
    user_agent         TEXT,
    request_id         UUID,              -- double opt-in request
    message_id         UUID,              -- the e-mail an unsubscribe came from
    occurred_at        BIGINT NOT NULL,
    recorded_at        BIGINT NOT NULL
);
CREATE INDEX consents_contact ON consents (contact_id, occurred_at, id);

-- The current consent per contact, channel and type: derived from the ledger in the same
-- transaction as each ledger row, so sends and segments read one row.
CREATE TABLE consent_state (
    contact_id         UUID NOT NULL,
    channel            TEXT NOT NULL,
    subscription_type  TEXT NOT NULL,
    status             TEXT NOT NULL,
    consent_id         UUID NOT NULL,
    updated_at         BIGINT NOT NULL,
    PRIMARY KEY (contact_id, channel, subscription_type)
);

-- Double opt-in: a pending request, confirmed by a signed link.
CREATE TABLE consent_requests (
    id                 UUID PRIMARY KEY,
    contact_id         UUID NOT NULL,
    channel            TEXT NOT NULL,
    subscription_type  TEXT NOT NULL,
    source             TEXT NOT NULL,
    wording            TEXT,
    wording_version    TEXT,
    ip                 TEXT,
    user_agent         TEXT,
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    confirmed_at       BIGINT
);
CREATE INDEX consent_requests_contact ON consent_requests (contact_id);

-- Newsletters to a list (or, with the engine, a segment): expanded into the outbox in batches;
-- `cursor` is the last contact id enqueued in the current phase, committed with each batch.
CREATE TABLE broadcasts (
    id                   UUID PRIMARY KEY,
    name                 TEXT NOT NULL,
    status               TEXT NOT NULL,   -- draft | scheduled | sending | paused | sent | cancelled
    template_id          UUID NOT NULL,
    sender_id            UUID NOT NULL,
    author               TEXT NOT NULL,   -- identity | owner
    subscription_type    TEXT NOT NULL,
    audience             JSONB NOT NULL,   -- JSON: {"list_id": …}
    throttle_per_minute  BIGINT,
    ab                   JSONB,           -- JSON: variants and winner rule, or NULL
    winner               TEXT,
    phase                BIGINT NOT NULL DEFAULT 0, -- 0 not started, 1 A/B test group, 2 all/remainder, 3 expanded
    cursor               UUID,
    next_due_at          BIGINT,
    enqueued             BIGINT NOT NULL DEFAULT 0,
    test_expanded_at     BIGINT,
    scheduled_at         BIGINT,
    started_at           BIGINT,
    paused_at            BIGINT,
    finished_at          BIGINT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
CREATE INDEX broadcasts_status ON broadcasts (status, scheduled_at);

-- The durable outbox: one row per message, unique per idempotency key (who, what, which
-- step or broadcast). state: queued | held (broadcast paused) | sending | sent | deferred |
-- failed | ambiguous | skipped. A `sending` row with handed_at NULL was claimed but never given
-- to SMTP (safe to requeue); with handed_at set, its SMTP result may be unknown (ambiguous).
CREATE TABLE email_messages (
    id                    UUID PRIMARY KEY,
    idempotency_key       TEXT NOT NULL UNIQUE,
    contact_id            UUID NOT NULL,
    template_id           UUID NOT NULL,
    sender_id             UUID,
    author                TEXT NOT NULL,
    kind                  TEXT NOT NULL,  -- marketing | transactional
    subscription_type     TEXT,
    broadcast_id          UUID,
    variant               TEXT,
    subject_override      TEXT,
    source                TEXT NOT NULL,  -- broadcast | program | api | consent
    payload               JSONB NOT NULL DEFAULT '{}',
    state                 TEXT NOT NULL,
    due_at                BIGINT NOT NULL,
    attempts              BIGINT NOT NULL DEFAULT 0,
    lease_owner           TEXT,
    lease_until           BIGINT,
    handed_at             BIGINT,
    to_address            TEXT,
    subject               TEXT,
    link_count            BIGINT,
    skip_reason           TEXT,
    last_error            TEXT,
    smtp_reply            TEXT,
    created_at            BIGINT NOT NULL,
    sent_at               BIGINT,
    delivered_at          BIGINT,
    failed_at             BIGINT,
    bounced_at            BIGINT,
    bounce_type           TEXT,
    soft_bounces          BIGINT NOT NULL DEFAULT 0,
    first_open_at         BIGINT,
    first_human_open_at   BIGINT,
    opens                 BIGINT NOT NULL DEFAULT 0,
    human_opens           BIGINT NOT NULL DEFAULT 0,
    first_click_at        BIGINT,
    first_human_click_at  BIGINT,
    clicks                BIGINT NOT NULL DEFAULT 0,
    human_clicks          BIGINT NOT NULL DEFAULT 0,
    unsubscribed_at       BIGINT,
    complained_at         BIGINT,
    resolved_at           BIGINT,
    resolution            TEXT
);
CREATE INDEX email_messages_due ON email_messages (due_at, id) WHERE state IN ('queued', 'deferred');
CREATE INDEX email_messages_lease ON email_messages (lease_until) WHERE state = 'sending';
CREATE INDEX email_messages_contact ON email_messages (contact_id, created_at);
CREATE INDEX email_messages_broadcast ON email_messages (broadcast_id, state);
CREATE INDEX email_messages_template ON email_messages (template_id);

-- Every open and click as seen, machine ones flagged (never dropped).
CREATE TABLE email_engagements (
    id           UUID PRIMARY KEY,
    message_id   UUID NOT NULL,
    contact_id   UUID NOT NULL,
    kind         TEXT NOT NULL,           -- open | click
    link_index   BIGINT,
    url          TEXT,
    machine      BIGINT NOT NULL,
    reason       TEXT,
    ip           TEXT,
    user_agent   TEXT,
    occurred_at  BIGINT NOT NULL
);
CREATE INDEX email_engagements_message ON email_engagements (message_id, kind, occurred_at);
CREATE INDEX email_engagements_contact ON email_engagements (contact_id, occurred_at);

-- Installation-wide mail settings (the link-signing secret, shared by every node).
CREATE TABLE mail_settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
