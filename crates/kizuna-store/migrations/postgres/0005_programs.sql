-- 0005: nurture programs — definitions with their versions, enrollments (one row per contact
-- in a program: where it stands and when to look again), entry schedules (date, inactivity
-- and recurring triggers), the mails programs put in the outbox (frequency cap, duplicates,
-- report) and step counters. Waiting contacts cost rows, not memory: the runner scans
-- `due_at` in order.

CREATE TABLE programs (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    description     TEXT,
    status          TEXT NOT NULL,          -- active | paused | draft
    version         BIGINT NOT NULL,       -- the published version new enrollments use
    activated_seq   BIGINT NOT NULL DEFAULT 0, -- log events after this position may trigger it
    scheduled_version BIGINT NOT NULL DEFAULT 0, -- version whose schedules are built
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE program_versions (
    program_id  UUID NOT NULL REFERENCES programs (id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    definition  TEXT NOT NULL,              -- as written (JSON)
    mapping     TEXT,                       -- step mapping used to move contacts in flight
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (program_id, version)
);

CREATE TABLE program_enrollments (
    id           UUID PRIMARY KEY,          -- UUIDv7
    program_id   UUID NOT NULL REFERENCES programs (id) ON DELETE CASCADE,
    version      BIGINT NOT NULL,
    contact_id   UUID NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    status       TEXT NOT NULL,             -- active | completed | exited
    step_id      TEXT,
    seq          BIGINT NOT NULL DEFAULT 0,
    waiting      BIGINT NOT NULL DEFAULT 0,
    due_at       BIGINT,
    source       TEXT NOT NULL,             -- the trigger, api, sales, moved
    by_sales     BIGINT NOT NULL DEFAULT 0,
    goal         TEXT,
    exit_reason  TEXT,
    entered_at   BIGINT NOT NULL,
    ended_at     BIGINT,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX program_enrollments_due ON program_enrollments (due_at) WHERE status = 'active' AND due_at IS NOT NULL;
CREATE INDEX program_enrollments_contact ON program_enrollments (contact_id, program_id);
CREATE INDEX program_enrollments_step ON program_enrollments (program_id, status, step_id);

CREATE TABLE program_schedules (
    program_id  UUID NOT NULL REFERENCES programs (id) ON DELETE CASCADE,
    contact_id  UUID NOT NULL,              -- nil id for a recurring (program-wide) schedule
    trigger_no  BIGINT NOT NULL,
    due_at      BIGINT NOT NULL,
    PRIMARY KEY (program_id, contact_id, trigger_no)
);
CREATE INDEX program_schedules_due ON program_schedules (due_at);

CREATE TABLE program_sends (
    idempotency_key  TEXT PRIMARY KEY,      -- program:{enrollment}:{step}:{seq}
    program_id       UUID NOT NULL,
    step_id          TEXT NOT NULL,
    contact_id       UUID NOT NULL,
    template_id      UUID NOT NULL,
    created_at       BIGINT NOT NULL
);
CREATE INDEX program_sends_contact ON program_sends (contact_id, created_at);
CREATE INDEX program_sends_step ON program_sends (program_id, step_id);

CREATE TABLE program_step_stats (
    program_id  UUID NOT NULL REFERENCES programs (id) ON DELETE CASCADE,
    step_id     TEXT NOT NULL,
    runs        BIGINT NOT NULL DEFAULT 0,
    skipped     BIGINT NOT NULL DEFAULT 0,
    deferred    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (program_id, step_id)
);
