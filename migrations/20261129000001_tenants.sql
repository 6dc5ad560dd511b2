-- Tenant isolation in the database.
--
-- Each tenant's ingest pods connect with their own minted login (created by the operator,
-- recorded in tenant_logins, member of the NOLOGIN group role anchorpipe_tenant). The
-- group gets exactly the privileges the ingest service's SQL needs, and row-level
-- security limits every one of them to the rows of the login's own tenant; an ingestion
-- can only be stored for a repository that tenant owns (repository_owners, written by
-- the operator). Runtime roles own nothing, so they cannot change the schema, drop the
-- audit log's append-only triggers or switch row-level security off.
--
-- RLS is ENABLEd, not FORCEd: the owner (migrations, the operator, tests, local demo
-- runs) is unaffected. Any role other than the owner and the group sees no rows at all.

-- Which IngestionEndpoint holds a tenant id. The id is unique in the cluster; the first
-- endpoint to claim it keeps it until it releases it.
CREATE TABLE tenants (
    tenant             text        PRIMARY KEY,
    endpoint_namespace text        NOT NULL,
    endpoint_name      text        NOT NULL,
    endpoint_uid       text        NOT NULL,
    claimed_at         timestamptz NOT NULL DEFAULT now()
);

-- The logins minted for a tenant. A login's tenant is what the row-level security
-- policies see (through anchorpipe_tenant()), so a login not listed here sees nothing.
CREATE TABLE tenant_logins (
    login      text        PRIMARY KEY,
    tenant     text        NOT NULL REFERENCES tenants (tenant) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tenant_logins_tenant ON tenant_logins (tenant);

-- Each repository belongs to at most one tenant; releasing the tenant releases them.
CREATE TABLE repository_owners (
    repo_id    uuid        PRIMARY KEY,
    tenant     text        NOT NULL REFERENCES tenants (tenant) ON DELETE CASCADE,
    claimed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX repository_owners_tenant ON repository_owners (tenant);

-- The group role of every tenant login. Roles are cluster-wide and #[sqlx::test] runs
-- this migration in many databases at once, so creating it must tolerate a concurrent
-- creator: IF NOT EXISTS covers the sequential case, the handler the race (CREATE ROLE
-- then fails with unique_violation on pg_authid, or duplicate_object).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anchorpipe_tenant') THEN
        CREATE ROLE anchorpipe_tenant NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The tenant of the session's login, or NULL for any other role. session_user (not
-- current_user) is the role that authenticated; a tenant login cannot change it (SET
-- SESSION AUTHORIZATION needs a superuser), and SET ROLE leaves it unchanged.
-- SECURITY DEFINER because the group cannot read tenant_logins itself.
CREATE FUNCTION anchorpipe_tenant() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT tenant FROM public.tenant_logins WHERE login = session_user::text
$$;

-- Whether the session's tenant owns the repository.
CREATE FUNCTION anchorpipe_owns_repository(repo uuid) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT FROM public.repository_owners o
        JOIN public.tenant_logins l ON l.tenant = o.tenant
        WHERE o.repo_id = repo AND l.login = session_user::text)
$$;

REVOKE ALL ON FUNCTION anchorpipe_tenant() FROM PUBLIC;
REVOKE ALL ON FUNCTION anchorpipe_owns_repository(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION anchorpipe_tenant() TO anchorpipe_tenant;
GRANT EXECUTE ON FUNCTION anchorpipe_owns_repository(uuid) TO anchorpipe_tenant;

-- A report is a duplicate only of the same tenant's report: a tenant can never make
-- another tenant's report a duplicate (nor learn through a conflict that it exists).
-- The constraint keeps its name: the service inserts ON CONFLICT ON CONSTRAINT it.
ALTER TABLE ingestions
    DROP CONSTRAINT ingestions_duplicate_key,
    ADD CONSTRAINT ingestions_duplicate_key
        UNIQUE (tenant, repo_id, commit_sha, run_id, framework);

ALTER TABLE ingestions ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;

-- In the policies, (SELECT anchorpipe_tenant()) is an init plan: evaluated once per
-- statement, and usable as an index condition on tenant, instead of once per row.

-- ingestions: store.rs inserts (ON CONFLICT … RETURNING id) and reads the stored
-- response of a duplicate.
CREATE POLICY ingestions_select ON ingestions FOR SELECT TO anchorpipe_tenant
    USING (tenant = (SELECT anchorpipe_tenant()));
CREATE POLICY ingestions_insert ON ingestions FOR INSERT TO anchorpipe_tenant
    WITH CHECK (tenant = (SELECT anchorpipe_tenant()) AND anchorpipe_owns_repository(repo_id));

-- audit_log: store.rs and audit.rs insert; nothing in the service reads it, so the group
-- cannot either. A row may point only at the tenant's own ingestion (the subquery runs
-- under the ingestions SELECT policy).
CREATE POLICY audit_log_insert ON audit_log FOR INSERT TO anchorpipe_tenant
    WITH CHECK (
        tenant = (SELECT anchorpipe_tenant())
        AND (ingestion_id IS NULL
             OR EXISTS (SELECT FROM ingestions i WHERE i.id = ingestion_id)));

-- outbox: store.rs inserts; relay.rs claims (SELECT … FOR UPDATE SKIP LOCKED), marks
-- sent or schedules a retry (UPDATE), reads the backlog, and its retention sweep deletes
-- rows already delivered (sent_at set) — the only DELETE a tenant login has.
CREATE POLICY outbox_select ON outbox FOR SELECT TO anchorpipe_tenant
    USING (tenant = (SELECT anchorpipe_tenant()));
CREATE POLICY outbox_insert ON outbox FOR INSERT TO anchorpipe_tenant
    WITH CHECK (
        tenant = (SELECT anchorpipe_tenant())
        AND EXISTS (SELECT FROM ingestions i WHERE i.id = ingestion_id));
CREATE POLICY outbox_update ON outbox FOR UPDATE TO anchorpipe_tenant
    USING (tenant = (SELECT anchorpipe_tenant()))
    WITH CHECK (tenant = (SELECT anchorpipe_tenant()));
CREATE POLICY outbox_delete_sent ON outbox FOR DELETE TO anchorpipe_tenant
    USING (tenant = (SELECT anchorpipe_tenant()) AND sent_at IS NOT NULL);

-- Grants: exactly what the service's statements need. INSERT is column-level so that
-- the server-set columns (received_at, occurred_at, created_at, delivery state) keep
-- their defaults; the identity columns need no sequence privilege. UPDATE on outbox is
-- limited to the delivery-state columns the relay writes (SELECT … FOR UPDATE needs an
-- UPDATE privilege too). No TRUNCATE, REFERENCES or TRIGGER anywhere, no UPDATE or
-- DELETE on ingestions or audit_log, nothing on tenants, tenant_logins,
-- repository_owners or _sqlx_migrations.
GRANT USAGE ON SCHEMA public TO anchorpipe_tenant;

GRANT SELECT ON ingestions TO anchorpipe_tenant;
GRANT INSERT (id, tenant, repo_id, commit_sha, run_id, framework, branch, pull_request,
              idempotency_key, test_count, payload, response, request_id)
    ON ingestions TO anchorpipe_tenant;

GRANT INSERT (tenant, action, repo_id, ingestion_id, reason, request_id, source_ip,
              user_agent, occurrences, first_seen)
    ON audit_log TO anchorpipe_tenant;

GRANT SELECT, DELETE ON outbox TO anchorpipe_tenant;
GRANT INSERT (ingestion_id, tenant, exchange, routing_key, message, request_id, traceparent)
    ON outbox TO anchorpipe_tenant;
GRANT UPDATE (sent_at, attempts, next_attempt_at, last_error) ON outbox TO anchorpipe_tenant;

-- Tenant logins may connect to this database, through the group, so a login holds no
-- privilege of its own and DROP ROLE needs no cleanup first. TEMPORARY is taken from
-- PUBLIC (the service uses no temporary tables): a login could otherwise create tables
-- after all, and a session's temporary table would make its login impossible to drop.
-- The owner keeps both as the database's owner.
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO anchorpipe_tenant', current_database());
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;
