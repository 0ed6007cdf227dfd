-- 0004: the real-time engine — its position in the event log, per-contact state (behaviour
-- features, scores, segment memberships, timers), definitions (segments, scoring models),
-- the sales handoff (handoffs, tasks, owner notifications) and an idempotency ledger.

-- The log position on PostgreSQL is (txid, seq). A sequence alone is not enough: two
-- transactions can take seq 10 and 11 and commit 11 first, so a reader that saw 11 and
-- checkpointed it would skip 10. Each row also records its writing transaction's id. The
-- reader works on one snapshot: it reads rows after its position in (txid, seq) order, and
-- remembers the transactions that snapshot saw still running below the position (their rows
-- can only appear later); it reads those transactions' rows once they have committed. Nothing
-- is skipped, and a long-running transaction holds up nothing but its own rows.
ALTER TABLE events ADD COLUMN txid BIGINT;
ALTER TABLE events ADD COLUMN seq BIGINT;
CREATE SEQUENCE events_seq_seq OWNED BY events.seq;
UPDATE events e SET txid = 0, seq = o.n
  FROM (SELECT id, row_number() OVER (ORDER BY received_at, id) AS n FROM events) o
 WHERE e.id = o.id;
SELECT setval('events_seq_seq', COALESCE((SELECT MAX(seq) FROM events), 0) + 1, false);
ALTER TABLE events
    ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint),
    ALTER COLUMN txid SET NOT NULL,
    ALTER COLUMN seq SET DEFAULT nextval('events_seq_seq'),
    ALTER COLUMN seq SET NOT NULL;
CREATE INDEX events_log_position ON events (txid, seq);

-- Where the engine is in the log, and which node holds the lease to advance it.
CREATE TABLE engine_checkpoints (
    name         TEXT PRIMARY KEY,
    tx           BIGINT NOT NULL,       -- the writing transaction's id
    seq          BIGINT NOT NULL,
    pending      TEXT NOT NULL DEFAULT '[]', -- PostgreSQL: ids of transactions still running
                                             -- below the position when it was read (JSON)
    holder       TEXT,
    lease_until  BIGINT NOT NULL DEFAULT 0,
    updated_at   BIGINT NOT NULL
);

-- Small settings: the handoff policy, the round-robin cursor, the definitions version.
CREATE TABLE engine_settings (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
INSERT INTO engine_settings (name, value, updated_at) VALUES ('definitions_version', '0', 0);

CREATE TABLE segments (
    id             UUID PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    description    TEXT,
    definition     TEXT NOT NULL,        -- the filter, as written (JSON)
    version        BIGINT NOT NULL,
    built_version  BIGINT NOT NULL DEFAULT 0,
    status         TEXT NOT NULL,        -- building | active | failed
    error          TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    built_at       BIGINT
);

CREATE TABLE segment_members (
    segment_id  UUID NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    contact_id  UUID NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    entered_at  BIGINT NOT NULL,
    PRIMARY KEY (segment_id, contact_id)
);
CREATE INDEX segment_members_contact ON segment_members (contact_id);

CREATE TABLE scoring_models (
    id             UUID PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    description    TEXT,
    definition     TEXT NOT NULL,
    version        BIGINT NOT NULL,
    built_version  BIGINT NOT NULL DEFAULT 0,
    status         TEXT NOT NULL,
    error          TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    built_at       BIGINT
);

-- Per contact and model: the score (as of as_of; decay is applied on read) and its state.
CREATE TABLE contact_scores (
    contact_id  UUID NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    model_id    UUID NOT NULL REFERENCES scoring_models (id) ON DELETE CASCADE,
    score       DOUBLE PRECISION NOT NULL,
    behaviour   DOUBLE PRECISION NOT NULL,
    fit         DOUBLE PRECISION NOT NULL,
    grade       TEXT NOT NULL,
    as_of       BIGINT NOT NULL,
    state       TEXT NOT NULL,
    PRIMARY KEY (contact_id, model_id)
);
CREATE INDEX contact_scores_grade ON contact_scores (model_id, grade, contact_id);

-- Per contact and behaviour feature: counts, first/last time, recent times (JSON).
CREATE TABLE engine_features (
    contact_id  UUID NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    feature     TEXT NOT NULL,
    state       TEXT NOT NULL,
    PRIMARY KEY (contact_id, feature)
);
CREATE INDEX engine_features_feature ON engine_features (feature, contact_id);

-- One durable timer per contact: the earliest instant at which time alone changes something.
CREATE TABLE engine_timers (
    contact_id  UUID PRIMARY KEY REFERENCES contacts (id) ON DELETE CASCADE,
    due_at      BIGINT NOT NULL
);
CREATE INDEX engine_timers_due ON engine_timers (due_at);

-- Every effect the engine has had, by idempotency key: a replay never repeats one.
CREATE TABLE engine_effects (
    key         TEXT PRIMARY KEY,
    contact_id  UUID NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE tasks (
    id            UUID PRIMARY KEY,
    contact_id    UUID NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    owner_id      UUID REFERENCES users (id) ON DELETE SET NULL,
    kind          TEXT NOT NULL,         -- follow_up | call | other
    title         TEXT NOT NULL,
    notes         TEXT,
    status        TEXT NOT NULL,         -- open | done | canceled
    due_at        BIGINT,
    source        TEXT NOT NULL,         -- handoff | api
    handoff_id    UUID,
    created_at    BIGINT NOT NULL,
    completed_at  BIGINT
);
CREATE INDEX tasks_owner ON tasks (owner_id, status, due_at);
CREATE INDEX tasks_contact ON tasks (contact_id);

CREATE TABLE handoffs (
    id          UUID PRIMARY KEY,
    contact_id  UUID NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    model_id    UUID,
    owner_id    UUID REFERENCES users (id) ON DELETE SET NULL,
    status      TEXT NOT NULL,           -- pending | accepted | rejected | closed
    effect_key  TEXT NOT NULL UNIQUE,
    task_id     UUID,
    score       DOUBLE PRECISION,
    grade       TEXT,
    assigned_by TEXT NOT NULL,           -- existing_owner | rule | round_robin | none
    bant        TEXT,
    reason      TEXT,
    note        TEXT,
    created_at  BIGINT NOT NULL,
    decided_at  BIGINT
);
CREATE INDEX handoffs_contact ON handoffs (contact_id, created_at);
CREATE INDEX handoffs_status ON handoffs (status, created_at);

-- Owner notifications (signed webhooks), delivered at least once with a stable delivery id.
CREATE TABLE notification_outbox (
    id               UUID PRIMARY KEY,
    contact_id       UUID NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    url              TEXT NOT NULL,
    body             TEXT NOT NULL,
    status           TEXT NOT NULL,      -- pending | delivered | failed
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    delivered_at     BIGINT
);
CREATE INDEX notification_outbox_due ON notification_outbox (status, next_attempt_at);
CREATE INDEX notification_outbox_contact ON notification_outbox (contact_id);
