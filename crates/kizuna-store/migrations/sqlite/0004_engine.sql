-- 0004: the real-time engine — its position in the event log, per-contact state (behaviour
-- features, scores, segment memberships, timers), definitions (segments, scoring models),
-- the sales handoff (handoffs, tasks, owner notifications) and an idempotency ledger.

-- A monotonic sequence over the event log, in commit order. SQLite has one writer at a time,
-- so a number taken inside the writing transaction is in commit order. events::append takes a
-- block of numbers per statement; the trigger numbers rows inserted any other way.
ALTER TABLE events ADD COLUMN seq INTEGER;
CREATE TABLE event_log_seq (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    last  INTEGER NOT NULL
);
UPDATE events SET seq = rowid;
INSERT INTO event_log_seq (id, last) VALUES (1, COALESCE((SELECT MAX(seq) FROM events), 0));
CREATE UNIQUE INDEX events_seq ON events (seq);
CREATE TRIGGER events_assign_seq AFTER INSERT ON events FOR EACH ROW WHEN NEW.seq IS NULL
BEGIN
    UPDATE event_log_seq SET last = last + 1 WHERE id = 1;
    UPDATE events SET seq = (SELECT last FROM event_log_seq WHERE id = 1) WHERE rowid = NEW.rowid;
END;

-- Where the engine is in the log, and which node holds the lease to advance it.
CREATE TABLE engine_checkpoints (
    name         TEXT PRIMARY KEY,
    tx           INTEGER NOT NULL,       -- 0 on SQLite
    seq          INTEGER NOT NULL,
    pending      TEXT NOT NULL DEFAULT '[]', -- PostgreSQL: ids of transactions still running
                                             -- below the position when it was read (JSON)
    holder       TEXT,
    lease_until  INTEGER NOT NULL DEFAULT 0,
    updated_at   INTEGER NOT NULL
);

-- Small settings: the handoff policy, the round-robin cursor, the definitions version.
CREATE TABLE engine_settings (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
INSERT INTO engine_settings (name, value, updated_at) VALUES ('definitions_version', '0', 0);

CREATE TABLE segments (
    id             BLOB PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    description    TEXT,
    definition     TEXT NOT NULL,        -- the filter, as written (JSON)
    version        INTEGER NOT NULL,
    built_version  INTEGER NOT NULL DEFAULT 0,
    status         TEXT NOT NULL,        -- building | active | failed
    error          TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    built_at       INTEGER
);

CREATE TABLE segment_members (
    segment_id  BLOB NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    contact_id  BLOB NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    entered_at  INTEGER NOT NULL,
    PRIMARY KEY (segment_id, contact_id)
);
CREATE INDEX segment_members_contact ON segment_members (contact_id);

CREATE TABLE scoring_models (
    id             BLOB PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    description    TEXT,
    definition     TEXT NOT NULL,
    version        INTEGER NOT NULL,
    built_version  INTEGER NOT NULL DEFAULT 0,
    status         TEXT NOT NULL,
    error          TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    built_at       INTEGER
);

-- Per contact and model: the score (as of as_of; decay is applied on read) and its state.
CREATE TABLE contact_scores (
    contact_id  BLOB NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    model_id    BLOB NOT NULL REFERENCES scoring_models (id) ON DELETE CASCADE,
    score       REAL NOT NULL,
    behaviour   REAL NOT NULL,
    fit         REAL NOT NULL,
    grade       TEXT NOT NULL,
    as_of       INTEGER NOT NULL,
    state       TEXT NOT NULL,
    PRIMARY KEY (contact_id, model_id)
);
CREATE INDEX contact_scores_grade ON contact_scores (model_id, grade, contact_id);

-- Per contact and behaviour feature: counts, first/last time, recent times (JSON).
CREATE TABLE engine_features (
    contact_id  BLOB NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    feature     TEXT NOT NULL,
    state       TEXT NOT NULL,
    PRIMARY KEY (contact_id, feature)
);
CREATE INDEX engine_features_feature ON engine_features (feature, contact_id);

-- One durable timer per contact: the earliest instant at which time alone changes something.
CREATE TABLE engine_timers (
    contact_id  BLOB PRIMARY KEY REFERENCES contacts (id) ON DELETE CASCADE,
    due_at      INTEGER NOT NULL
);
CREATE INDEX engine_timers_due ON engine_timers (due_at);

-- Every effect the engine has had, by idempotency key: a replay never repeats one.
CREATE TABLE engine_effects (
    key         TEXT PRIMARY KEY,
    contact_id  BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE tasks (
    id            BLOB PRIMARY KEY,
    contact_id    BLOB NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    owner_id      BLOB REFERENCES users (id) ON DELETE SET NULL,
    kind          TEXT NOT NULL,         -- follow_up | call | other
    title         TEXT NOT NULL,
    notes         TEXT,
    status        TEXT NOT NULL,         -- open | done | canceled
    due_at        INTEGER,
    source        TEXT NOT NULL,         -- handoff | api
    handoff_id    BLOB,
    created_at    INTEGER NOT NULL,
    completed_at  INTEGER
);
CREATE INDEX tasks_owner ON tasks (owner_id, status, due_at);
CREATE INDEX tasks_contact ON tasks (contact_id);

CREATE TABLE handoffs (
    id          BLOB PRIMARY KEY,
    contact_id  BLOB NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    model_id    BLOB,
    owner_id    BLOB REFERENCES users (id) ON DELETE SET NULL,
    status      TEXT NOT NULL,           -- pending | accepted | rejected | closed
    effect_key  TEXT NOT NULL UNIQUE,
    task_id     BLOB,
    score       REAL,
    grade       TEXT,
    assigned_by TEXT NOT NULL,           -- existing_owner | rule | round_robin | none
    bant        TEXT,
    reason      TEXT,
    note        TEXT,
    created_at  INTEGER NOT NULL,
    decided_at  INTEGER
);
CREATE INDEX handoffs_contact ON handoffs (contact_id, created_at);
CREATE INDEX handoffs_status ON handoffs (status, created_at);

-- Owner notifications (signed webhooks), delivered at least once with a stable delivery id.
CREATE TABLE notification_outbox (
    id               BLOB PRIMARY KEY,
    contact_id       BLOB NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    url              TEXT NOT NULL,
    body             TEXT NOT NULL,
    status           TEXT NOT NULL,      -- pending | delivered | failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER
);
CREATE INDEX notification_outbox_due ON notification_outbox (status, next_attempt_at);
CREATE INDEX notification_outbox_contact ON notification_outbox (contact_id);
