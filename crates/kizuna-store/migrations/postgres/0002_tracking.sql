-- 0002: behaviour tracking (issue 3): identities, message keys for dedupe, Segment groups, and
-- the context of tracked events.

-- Which contact an identifier belongs to: a first-party cookie id (`anonymous_id`) or the
-- application's own user id (`user_id`, also previousIds named by an alias). A merge moves the
-- identities of the merged contact to the survivor and lists them in the merge record, so that
-- an undo moves them back.
CREATE TABLE identities (
    kind        TEXT NOT NULL,            -- anonymous_id | user_id
    value       TEXT NOT NULL,
    contact_id  UUID NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX identities_contact ON identities (contact_id);

-- R-TRACK-5: one row per accepted message. The key is the first 16 bytes of SHA-256 over the
-- source (write key id, or `offline` for imports) and the messageId (or a content hash when
-- the sender set none), so a retried message is stored and counted once. Written in the same
-- transaction as the event, so a rolled-back attempt leaves no key behind.
CREATE TABLE event_keys (
    key          BYTEA PRIMARY KEY,
    received_at  BIGINT NOT NULL
);

-- Segment `group` calls: the sender's group id → the company it stands for.
CREATE TABLE company_groups (
    group_id    TEXT PRIMARY KEY,
    company_id  UUID NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL
);
CREATE INDEX company_groups_company ON company_groups (company_id);

-- Tracked events keep the message's context (page, campaign, user agent, library), its ids and
-- the client's own times here; `properties` holds what rules match on. NULL for events Kizuna
-- raises itself.
ALTER TABLE events ADD COLUMN context JSONB;
