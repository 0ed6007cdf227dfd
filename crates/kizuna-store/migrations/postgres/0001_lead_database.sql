-- 0001: the unified lead database.
-- Times are BIGINT microseconds since the Unix epoch (sortable, same on both backends).
-- Ids are UUIDv7 (time-ordered, so appends stay at the right edge of every B-tree).
-- Every hot table carries contact_id, so PostgreSQL/Citus can later shard by it.

CREATE TABLE users (
    id          UUID PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,            -- admin | marketer | sales
    territory   TEXT,                     -- for owner-assignment rules
    created_at  BIGINT NOT NULL
);

CREATE TABLE companies (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL,
    name_key        TEXT NOT NULL,        -- 名寄せ key: legal forms, widths, spaces folded
    domain          TEXT,
    industry        TEXT,
    employee_count  BIGINT,
    annual_revenue  BIGINT,
    website         TEXT,
    phone           TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX companies_name_key ON companies (name_key);
CREATE UNIQUE INDEX companies_domain ON companies (domain) WHERE domain IS NOT NULL;
CREATE INDEX companies_updated ON companies (updated_at, id);

CREATE TABLE contacts (
    id               UUID PRIMARY KEY,
    email            TEXT UNIQUE,         -- normalized (NFKC, trimmed, lower case)
    first_name       TEXT,
    last_name        TEXT,
    phone            TEXT,
    job_title        TEXT,
    department       TEXT,
    company_id       UUID REFERENCES companies (id) ON DELETE SET NULL,
    lifecycle_stage  TEXT NOT NULL,
    temperature      TEXT NOT NULL,
    owner_id         UUID REFERENCES users (id) ON DELETE SET NULL,
    source           JSONB NOT NULL DEFAULT '{}',
    address          JSONB NOT NULL DEFAULT '{}',
    custom           JSONB NOT NULL DEFAULT '{}',
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX contacts_updated ON contacts (updated_at, id);
CREATE INDEX contacts_stage ON contacts (lifecycle_stage, id);
CREATE INDEX contacts_owner ON contacts (owner_id, id);
CREATE INDEX contacts_company ON contacts (company_id);

CREATE TABLE fields (
    name        TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    type        TEXT NOT NULL,
    options     JSONB NOT NULL DEFAULT '[]',
    created_at  BIGINT NOT NULL
);

-- Static lists (a trade show, an import, a hand-picked list).
CREATE TABLE lists (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    description  TEXT,
    created_at   BIGINT NOT NULL
);
CREATE TABLE list_members (
    contact_id  UUID NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    list_id     UUID NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    added_at    BIGINT NOT NULL,
    PRIMARY KEY (contact_id, list_id)
);
CREATE INDEX list_members_list ON list_members (list_id, contact_id);

-- The event log: everything that happened to a contact, in one place (the timeline).
CREATE TABLE events (
    id           UUID PRIMARY KEY,        -- UUIDv7
    contact_id   UUID NOT NULL,
    type         TEXT NOT NULL,           -- noun.verb, e.g. contact.created, stage.changed
    occurred_at  BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    source       TEXT NOT NULL,           -- api | import | sdk | snippet | kizuna | …
    message_id   TEXT,
    properties   JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX events_contact_time ON events (contact_id, occurred_at, id);

-- Merges, kept so that each can be explained and undone.
CREATE TABLE merges (
    id              UUID PRIMARY KEY,
    survivor_id     UUID NOT NULL,
    merged_id       UUID NOT NULL,
    survivor_before JSONB NOT NULL,
    merged_before   JSONB NOT NULL,
    conflicts       JSONB NOT NULL,
    moved           JSONB NOT NULL,
    merged_at       BIGINT NOT NULL,
    undone_at       BIGINT
);
CREATE INDEX merges_survivor ON merges (survivor_id);

-- Addresses that must never be mailed (erased, unsubscribed, bounced…), kept as fingerprints.
CREATE TABLE suppressions (
    email_fingerprint  TEXT PRIMARY KEY,
    reason             TEXT NOT NULL,
    created_at         BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id            UUID PRIMARY KEY,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL UNIQUE,
    secret_hash   BYTEA NOT NULL,          -- SHA-256 of the whole key
    scopes        TEXT NOT NULL,          -- comma-separated: read,write,admin
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    revoked_at    BIGINT
);

-- Tracking write keys identify a source; they are public by design (they sit in web pages).
CREATE TABLE write_keys (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    key         TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE imports (
    id           UUID PRIMARY KEY,
    status       TEXT NOT NULL,           -- succeeded | failed
    file_name    TEXT,
    list_id      UUID,
    options      JSONB NOT NULL,
    summary      JSONB NOT NULL,
    errors       JSONB NOT NULL,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT NOT NULL
);
