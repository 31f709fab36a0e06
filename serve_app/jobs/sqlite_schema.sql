-- The job store's schema on SQLite (serve_app/jobs/sqlite_store.py). Every statement is
-- idempotent: it runs at every start. postgres_schema.sql is the same schema for PostgreSQL.
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: newest first, list cursors
    id TEXT NOT NULL UNIQUE,
    owner TEXT,                             -- API key name (the tenant); NULL for anonymous
    tenant TEXT NOT NULL,                   -- owner, or '' for anonymous: whose turn it is
    rate_key TEXT,                          -- whose rate-limit bucket the job's chunks draw on
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    cancelled_at REAL,
    request TEXT NOT NULL,                  -- JSON: labels, hypothesis_template, multi_label, top_k
    request_hash TEXT NOT NULL,             -- tells a replayed Idempotency-Key from a reused one
    callback_url TEXT,
    metadata TEXT,
    idempotency_key TEXT,
    chunk_texts INTEGER NOT NULL,           -- fixed per job, so chunk keys survive config changes
    total_texts INTEGER NOT NULL,
    total_chunks INTEGER NOT NULL,
    next_chunk INTEGER NOT NULL DEFAULT 0,  -- the first chunk never handed out (leases below)
    completed_texts INTEGER NOT NULL DEFAULT 0,
    completed_chunks INTEGER NOT NULL DEFAULT 0,
    stored_bytes INTEGER NOT NULL DEFAULT 0,  -- what the job's rows hold, for jobs.max_store_bytes
    error TEXT                              -- JSON {type, message}
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (tenant, seq) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (coalesce(finished_at, cancelled_at))
    WHERE state IN ('succeeded', 'failed', 'cancelled');
CREATE TRIGGER IF NOT EXISTS jobs_terminal_is_final
    BEFORE UPDATE ON jobs WHEN OLD.state IN ('succeeded', 'failed', 'cancelled')
    BEGIN SELECT RAISE(ABORT, 'a job in a terminal state never changes'); END;

-- One row per chunk from submission on: its texts, and its results once recorded (once).
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    chunk_index INTEGER NOT NULL,
    texts TEXT NOT NULL,                    -- JSON list of the chunk's texts
    results TEXT,                           -- JSON list, one result per text; NULL until recorded
    recorded_at REAL,
    PRIMARY KEY (job_id, chunk_index)
) WITHOUT ROWID;

-- A chunk a runner is working on, until expires_at; an expired lease goes back to the pool.
CREATE TABLE IF NOT EXISTS leases (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    chunk_index INTEGER NOT NULL,
    runner_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (job_id, chunk_index)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_at);

-- Round robin over tenants: the tenant served longest ago goes next.
CREATE TABLE IF NOT EXISTS tenants (
    tenant TEXT PRIMARY KEY,
    last_turn INTEGER NOT NULL
) WITHOUT ROWID;

-- What is left of an expired job: enough to answer "expired" rather than "no such job".
CREATE TABLE IF NOT EXISTS expired (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    expired_at REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY,              -- the webhook-id: the same on every attempt
    job_id TEXT NOT NULL REFERENCES jobs (id),
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,                     -- serialized once: every attempt signs the same bytes
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL,                   -- NULL once delivered or given up; a lease in flight
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_job ON outbox (job_id);

CREATE TABLE IF NOT EXISTS attempts (
    event_id TEXT NOT NULL REFERENCES outbox (event_id),
    attempt INTEGER NOT NULL,               -- 1 for the first attempt
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    PRIMARY KEY (event_id, attempt)
) WITHOUT ROWID;
