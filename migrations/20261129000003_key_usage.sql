-- Which HMAC key ids verified a request recently, per tenant. The ingest pods upsert a
-- row when a signature verifies, at most once per key id per interval per pod (see
-- ingest/src/key_usage.rs); the operator reads the rows to warn before a key still in
-- use stops verifying. Only verified signatures write, so a stranger's traffic causes
-- no writes, and a tenant has one row per key id it ever used.
CREATE TABLE key_usage (
    tenant           text        NOT NULL,
    key_id           text        NOT NULL CHECK (length(key_id) BETWEEN 1 AND 253),
    last_verified_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key_id)
);

ALTER TABLE key_usage ENABLE ROW LEVEL SECURITY;

-- The pods insert their own tenant's rows and move last_verified_at forward
-- (INSERT … ON CONFLICT DO UPDATE, which needs SELECT and UPDATE on the row too).
CREATE POLICY key_usage_select ON key_usage FOR SELECT TO anchorpipe_tenant
    USING (tenant = (SELECT anchorpipe_tenant()));
CREATE POLICY key_usage_insert ON key_usage FOR INSERT TO anchorpipe_tenant
    WITH CHECK (tenant = (SELECT anchorpipe_tenant()));
CREATE POLICY key_usage_update ON key_usage FOR UPDATE TO anchorpipe_tenant
    USING (tenant = (SELECT anchorpipe_tenant()))
    WITH CHECK (tenant = (SELECT anchorpipe_tenant()));

-- The time is the server's (the column default and now() in the update), never the
-- pod's, so the insert grant leaves last_verified_at out.
GRANT SELECT ON key_usage TO anchorpipe_tenant;
GRANT INSERT (tenant, key_id) ON key_usage TO anchorpipe_tenant;
GRANT UPDATE (last_verified_at) ON key_usage TO anchorpipe_tenant;
