-- The job store's schema on PostgreSQL 15+ (serve_app/jobs/postgres_store.py): the same tables
-- as sqlite_schema.sql (see the comments there). Every statement is idempotent: it runs at every
-- start, under an advisory lock so that runners starting together do not race.
CREATE TABLE IF NOT EXISTS jobs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT,
    tenant TEXT NOT NULL,
    rate_key TEXT,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    cancelled_at DOUBLE PRECISION,
    request TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    callback_url TEXT,
    metadata TEXT,
    idempotency_key TEXT,
    chunk_texts INTEGER NOT NULL,
    total_texts INTEGER NOT NULL,
    total_chunks INTEGER NOT NULL,
    next_chunk INTEGER NOT NULL DEFAULT 0,
    completed_texts INTEGER NOT NULL DEFAULT 0,
    completed_chunks INTEGER NOT NULL DEFAULT 0,
    stored_bytes BIGINT NOT NULL DEFAULT 0,
    error TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (tenant, seq) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs ((coalesce(finished_at, cancelled_at)))
    WHERE state IN ('succeeded', 'failed', 'cancelled');
CREATE OR REPLACE FUNCTION zsc_jobs_terminal_is_final() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'a job in a terminal state never changes';
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER jobs_terminal_is_final
    BEFORE UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.state IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION zsc_jobs_terminal_is_final();

CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    chunk_index INTEGER NOT NULL,
    texts TEXT NOT NULL,
    results TEXT,
    recorded_at DOUBLE PRECISION,
    PRIMARY KEY (job_id, chunk_index)
);

CREATE TABLE IF NOT EXISTS leases (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    chunk_index INTEGER NOT NULL,
    runner_id TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, chunk_index)
);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_at);

CREATE TABLE IF NOT EXISTS tenants (
    tenant TEXT PRIMARY KEY,
    last_turn BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS expired (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    expired_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    body BYTEA NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    next_attempt_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_job ON outbox (job_id);

CREATE TABLE IF NOT EXISTS attempts (
    event_id TEXT NOT NULL REFERENCES outbox (event_id),
    attempt INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    status_code INTEGER,
    error TEXT,
    PRIMARY KEY (event_id, attempt)
);
