-- Ingestions: one row per accepted report, kept in full. The duplicate key is enforced
-- here, by the unique constraint, so concurrent identical reports cannot both be stored.
CREATE TABLE ingestions (
    id              uuid PRIMARY KEY,
    tenant          text        NOT NULL,
    repo_id         uuid        NOT NULL,
    commit_sha      text        NOT NULL,
    run_id          text        NOT NULL,
    framework       text        NOT NULL,
    branch          text,
    pull_request    text,
    idempotency_key text,
    test_count      integer     NOT NULL CHECK (test_count >= 1),
    payload         jsonb       NOT NULL,
    -- The response the client got, replayed verbatim (plus isDuplicate) for duplicates.
    response        jsonb       NOT NULL,
    request_id      text        NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ingestions_duplicate_key UNIQUE (repo_id, commit_sha, run_id, framework)
);

CREATE INDEX ingestions_tenant_received ON ingestions (tenant, received_at);

-- The audit log is append-only: every accepted, duplicate, rejected, rate-limited and
-- unauthenticated request leaves a trace. Unauthenticated traffic is aggregated by the
-- service (one row per reason and source per flush, with a count), so it cannot turn
-- into unbounded writes.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    tenant       text        NOT NULL,
    action       text        NOT NULL CHECK (action IN
                   ('accepted', 'duplicate', 'rejected', 'auth_failed', 'rate_limited')),
    repo_id      uuid,
    ingestion_id uuid REFERENCES ingestions (id),
    reason       text,
    request_id   text,
    source_ip    text,
    user_agent   text,
    -- How many requests this row stands for (more than one for aggregated rows).
    occurrences  integer     NOT NULL DEFAULT 1 CHECK (occurrences >= 1),
    -- Start of the aggregation window for aggregated rows.
    first_seen   timestamptz
);

CREATE INDEX audit_log_tenant_time ON audit_log (tenant, occurred_at);
CREATE INDEX audit_log_ingestion ON audit_log (ingestion_id) WHERE ingestion_id IS NOT NULL;

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END;
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

-- The transactional outbox: written in the same transaction as the ingestion, drained
-- by the relay, which marks a row sent only after the broker confirmed it.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ingestion_id    uuid        NOT NULL REFERENCES ingestions (id),
    tenant          text        NOT NULL,
    exchange        text        NOT NULL,
    routing_key     text        NOT NULL,
    message         jsonb       NOT NULL,
    request_id      text        NOT NULL,
    traceparent     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    sent_at         timestamptz
);

-- The relay's work queue and the backlog figures read only unsent rows.
CREATE INDEX outbox_unsent ON outbox (tenant, next_attempt_at, id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Wakes the relay right after a commit, so delivery does not wait for a poll.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('anchorpipe_outbox', NEW.tenant);
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_notify();
