-- 0003: email — templates, senders, subscription types, the consent ledger, the durable outbox,
-- engagement (opens and clicks), broadcasts and mail settings.
-- Times are INTEGER microseconds since the epoch; ids UUIDv7; flags are INTEGER 0/1. Every hot
-- table carries contact_id. The consent ledger and the engagement log are append-only.

CREATE TABLE email_templates (
    id          BLOB PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,            -- marketing | transactional
    subject     TEXT NOT NULL,
    mjml        TEXT,
    html        TEXT,
    text        TEXT,
    version     INTEGER NOT NULL,         -- bumped on every change (compiled-template caches)
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Named sender identities with the legal footer's details.
CREATE TABLE senders (
    id              BLOB PRIMARY KEY,
    name            TEXT NOT NULL,
    email           TEXT NOT NULL,
    organization    TEXT NOT NULL,
    postal_address  TEXT NOT NULL,
    reply_to        TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- What a contact can subscribe to (newsletter, seminar invitations, product news…).
CREATE TABLE subscription_types (
    name         TEXT PRIMARY KEY,
    label        TEXT NOT NULL,
    description  TEXT,
    created_at   INTEGER NOT NULL
);

-- The consent ledger: append-only, never updated or deleted (except by erasure).
CREATE TABLE consents (
    id                 BLOB PRIMARY KEY,  -- UUIDv7
    contact_id         BLOB NOT NULL,
    channel            TEXT NOT NULL,     -- email
    subscription_type  TEXT NOT NULL,
    status             TEXT NOT NULL,     -- granted | withdrawn | requested
    source             TEXT NOT NULL,     -- form | api | import | double_opt_in | one_click | unsubscribe_page | preference_center | complaint
    wording            TEXT,
    wording_version    TEXT,
    ip                 TEXT,
    user_agent         TEXT,
    request_id         BLOB,              -- double opt-in request
    message_id         BLOB,              -- the e-mail an unsubscribe came from
    occurred_at        INTEGER NOT NULL,
    recorded_at        INTEGER NOT NULL
);
CREATE INDEX consents_contact ON consents (contact_id, occurred_at, id);

-- The current consent per contact, channel and type: derived from the ledger in the same
-- transaction as each ledger row, so sends and segments read one row.
CREATE TABLE consent_state (
    contact_id         BLOB NOT NULL,
    channel            TEXT NOT NULL,
    subscription_type  TEXT NOT NULL,
    status             TEXT NOT NULL,
    consent_id         BLOB NOT NULL,
    updated_at         INTEGER NOT NULL,
    PRIMARY KEY (contact_id, channel, subscription_type)
);

-- Double opt-in: a pending request, confirmed by a signed link.
CREATE TABLE consent_requests (
    id                 BLOB PRIMARY KEY,
    contact_id         BLOB NOT NULL,
    channel            TEXT NOT NULL,
    subscription_type  TEXT NOT NULL,
    source             TEXT NOT NULL,
    wording            TEXT,
    wording_version    TEXT,
    ip                 TEXT,
    user_agent         TEXT,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    confirmed_at       INTEGER
);
CREATE INDEX consent_requests_contact ON consent_requests (contact_id);

-- Newsletters to a list (or, with the engine, a segment): expanded into the outbox in batches;
-- `cursor` is the last contact id enqueued in the current phase, committed with each batch.
CREATE TABLE broadcasts (
    id                   BLOB PRIMARY KEY,
    name                 TEXT NOT NULL,
    status               TEXT NOT NULL,   -- draft | scheduled | sending | paused | sent | cancelled
    template_id          BLOB NOT NULL,
    sender_id            BLOB NOT NULL,
    author               TEXT NOT NULL,   -- identity | owner
    subscription_type    TEXT NOT NULL,
    audience             TEXT NOT NULL,   -- JSON: {"list_id": …}
    throttle_per_minute  INTEGER,
    ab                   TEXT,            -- JSON: variants and winner rule, or NULL
    winner               TEXT,
    phase                INTEGER NOT NULL DEFAULT 0, -- 0 not started, 1 A/B test group, 2 all/remainder, 3 expanded
    cursor               BLOB,
    next_due_at          INTEGER,
    enqueued             INTEGER NOT NULL DEFAULT 0,
    test_expanded_at     INTEGER,
    scheduled_at         INTEGER,
    started_at           INTEGER,
    paused_at            INTEGER,
    finished_at          INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
CREATE INDEX broadcasts_status ON broadcasts (status, scheduled_at);

-- The durable outbox: one row per message, unique per idempotency key (who, what, which
-- step or broadcast). state: queued | held (broadcast paused) | sending | sent | deferred |
-- failed | ambiguous | skipped. A `sending` row with handed_at NULL was claimed but never given
-- to SMTP (safe to requeue); with handed_at set, its SMTP result may be unknown (ambiguous).
CREATE TABLE email_messages (
    id                    BLOB PRIMARY KEY,
    idempotency_key       TEXT NOT NULL UNIQUE,
    contact_id            BLOB NOT NULL,
    template_id           BLOB NOT NULL,
    sender_id             BLOB,
    author                TEXT NOT NULL,
    kind                  TEXT NOT NULL,  -- marketing | transactional
    subscription_type     TEXT,
    broadcast_id          BLOB,
    variant               TEXT,
    subject_override      TEXT,
    source                TEXT NOT NULL,  -- broadcast | program | api | consent
    payload               TEXT NOT NULL DEFAULT '{}',
    state                 TEXT NOT NULL,
    due_at                INTEGER NOT NULL,
    attempts              INTEGER NOT NULL DEFAULT 0,
    lease_owner           TEXT,
    lease_until           INTEGER,
    handed_at             INTEGER,
    to_address            TEXT,
    subject               TEXT,
    link_count            INTEGER,
    skip_reason           TEXT,
    last_error            TEXT,
    smtp_reply            TEXT,
    created_at            INTEGER NOT NULL,
    sent_at               INTEGER,
    delivered_at          INTEGER,
    failed_at             INTEGER,
    bounced_at            INTEGER,
    bounce_type           TEXT,
    soft_bounces          INTEGER NOT NULL DEFAULT 0,
    first_open_at         INTEGER,
    first_human_open_at   INTEGER,
    opens                 INTEGER NOT NULL DEFAULT 0,
    human_opens           INTEGER NOT NULL DEFAULT 0,
    first_click_at        INTEGER,
    first_human_click_at  INTEGER,
    clicks                INTEGER NOT NULL DEFAULT 0,
    human_clicks          INTEGER NOT NULL DEFAULT 0,
    unsubscribed_at       INTEGER,
    complained_at         INTEGER,
    resolved_at           INTEGER,
    resolution            TEXT
);
CREATE INDEX email_messages_due ON email_messages (due_at, id) WHERE state IN ('queued', 'deferred');
CREATE INDEX email_messages_lease ON email_messages (lease_until) WHERE state = 'sending';
CREATE INDEX email_messages_contact ON email_messages (contact_id, created_at);
CREATE INDEX email_messages_broadcast ON email_messages (broadcast_id, state);
CREATE INDEX email_messages_template ON email_messages (template_id);

-- Every open and click as seen, machine ones flagged (never dropped).
CREATE TABLE email_engagements (
    id           BLOB PRIMARY KEY,
    message_id   BLOB NOT NULL,
    contact_id   BLOB NOT NULL,
    kind         TEXT NOT NULL,           -- open | click
    link_index   INTEGER,
    url          TEXT,
    machine      INTEGER NOT NULL,
    reason       TEXT,
    ip           TEXT,
    user_agent   TEXT,
    occurred_at  INTEGER NOT NULL
);
CREATE INDEX email_engagements_message ON email_engagements (message_id, kind, occurred_at);
CREATE INDEX email_engagements_contact ON email_engagements (contact_id, occurred_at);

-- Installation-wide mail settings (the link-signing secret, shared by every node).
CREATE TABLE mail_settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
