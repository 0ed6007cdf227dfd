-- 0001: the unified lead database.
-- Times are INTEGER microseconds since the Unix epoch (sortable, same on both backends).
-- Ids are UUIDv7 (time-ordered, so appends stay at the right edge of every B-tree).
-- Every hot table carries contact_id, so PostgreSQL/Citus can later shard by it.

CREATE TABLE users (
    id          BLOB PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,            -- admin | marketer | sales
    territory   TEXT,                     -- for owner-assignment rules
    created_at  INTEGER NOT NULL
);

CREATE TABLE companies (
    id              BLOB PRIMARY KEY,
    name            TEXT NOT NULL,
    name_key        TEXT NOT NULL,        -- 名寄せ key: legal forms, widths, spaces folded
    domain          TEXT,
    industry        TEXT,
    employee_count  INTEGER,
    annual_revenue  INTEGER,
    website         TEXT,
    phone           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX companies_name_key ON companies (name_key);
CREATE UNIQUE INDEX companies_domain ON companies (domain) WHERE domain IS NOT NULL;
CREATE INDEX companies_updated ON companies (updated_at, id);

CREATE TABLE contacts (
    id               BLOB PRIMARY KEY,
    email            TEXT UNIQUE,         -- normalized (NFKC, trimmed, lower case)
    first_name       TEXT,
    last_name        TEXT,
    phone            TEXT,
    job_title        TEXT,
    department       TEXT,
    company_id       BLOB REFERENCES companies (id) ON DELETE SET NULL,
    lifecycle_stage  TEXT NOT NULL,
    temperature      TEXT NOT NULL,
    owner_id         BLOB REFERENCES users (id) ON DELETE SET NULL,
    source           TEXT NOT NULL DEFAULT '{}',
    address          TEXT NOT NULL DEFAULT '{}',
    custom           TEXT NOT NULL DEFAULT '{}',
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX contacts_updated ON contacts (updated_at, id);
CREATE INDEX contacts_stage ON contacts (lifecycle_stage, id);
CREATE INDEX contacts_owner ON contacts (owner_id, id);
CREATE INDEX contacts_company ON contacts (company_id);

CREATE TABLE fields (
    name        TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    type        TEXT NOT NULL,
    options     TEXT NOT NULL DEFAULT '[]',
    created_at  INTEGER NOT NULL
);

-- Static lists (a trade show, an import, a hand-picked list).
CREATE TABLE lists (
    id           BLOB PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    description  TEXT,
    created_at   INTEGER NOT NULL
);
CREATE TABLE list_members (
    contact_id  BLOB NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    list_id     BLOB NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    added_at    INTEGER NOT NULL,
    PRIMARY KEY (contact_id, list_id)
);
CREATE INDEX list_members_list ON list_members (list_id, contact_id);

-- The event log: everything that happened to a contact, in one place (the timeline).
CREATE TABLE events (
    id           BLOB PRIMARY KEY,        -- UUIDv7
    contact_id   BLOB NOT NULL,
    type         TEXT NOT NULL,           -- noun.verb, e.g. contact.created, stage.changed
    occurred_at  INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    source       TEXT NOT NULL,           -- api | import | sdk | snippet | kizuna | …
    message_id   TEXT,
    properties   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_contact_time ON events (contact_id, occurred_at, id);

-- Merges, kept so that each can be explained and undone.
CREATE TABLE merges (
    id              BLOB PRIMARY KEY,
    survivor_id     BLOB NOT NULL,
    merged_id       BLOB NOT NULL,
    survivor_before TEXT NOT NULL,
    merged_before   TEXT NOT NULL,
    conflicts       TEXT NOT NULL,
    moved           TEXT NOT NULL,
    merged_at       INTEGER NOT NULL,
    undone_at       INTEGER
);
CREATE INDEX merges_survivor ON merges (survivor_id);

-- Addresses that must never be mailed (erased, unsubscribed, bounced…), kept as fingerprints.
CREATE TABLE suppressions (
    email_fingerprint  TEXT PRIMARY KEY,
    reason             TEXT NOT NULL,
    created_at         INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id            BLOB PRIMARY KEY,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL UNIQUE,
    secret_hash   BLOB NOT NULL,          -- SHA-256 of the whole key
    scopes        TEXT NOT NULL,          -- comma-separated: read,write,admin
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);

-- Tracking write keys identify a source; they are public by design (they sit in web pages).
CREATE TABLE write_keys (
    id          BLOB PRIMARY KEY,
    name        TEXT NOT NULL,
    key         TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE imports (
    id           BLOB PRIMARY KEY,
    status       TEXT NOT NULL,           -- succeeded | failed
    file_name    TEXT,
    list_id      BLOB,
    options      TEXT NOT NULL,
    summary      TEXT NOT NULL,
    errors       TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER NOT NULL
);
