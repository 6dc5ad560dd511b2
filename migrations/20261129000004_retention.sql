-- Retention: the owner can remove old audit and ingestion data; nobody else can, and
-- append-only stays in force for everyone everywhere else.
--
-- anchorpipe_prune(older_than) deletes, in one transaction, with the cutoff
-- now() - older_than:
--   1. outbox rows already sent (sent_at set) created before the cutoff;
--   2. audit_log rows that occurred before the cutoff;
--   3. ingestions received before the cutoff that no remaining outbox row (so never one
--      still unsent or parked) and no remaining audit row references.
--
-- How it gets past audit_log_append_only without a superuser: it runs
-- ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only, deletes, and ENABLEs the
-- trigger again before it returns. ALTER TABLE is allowed only to the table's owner
-- (session_replication_role would need a superuser), and it is transactional: no other
-- session ever sees the trigger disabled, an error anywhere rolls the disable back with
-- the deletes, and the SHARE ROW EXCLUSIVE lock it takes makes concurrent audit inserts
-- wait until the prune commits (run it at a quiet hour). audit_log_no_truncate is never
-- touched. The function is not SECURITY DEFINER: it runs with the caller's rights, so
-- only the owner can use it even if EXECUTE were granted by mistake; EXECUTE is revoked
-- from PUBLIC and granted to nobody.
--
-- A cutoff shorter than one day is refused, so a typo ('90 seconds' for '90 days')
-- cannot wipe the log.
CREATE FUNCTION anchorpipe_prune(older_than interval,
                                 OUT outbox_deleted bigint,
                                 OUT audit_deleted bigint,
                                 OUT ingestions_deleted bigint)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz;
BEGIN
    IF older_than IS NULL OR older_than < interval '1 day' THEN
        RAISE EXCEPTION 'anchorpipe_prune: older_than % is shorter than the floor of 1 day',
            older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := now() - older_than;

    DELETE FROM public.outbox
        WHERE sent_at IS NOT NULL AND created_at < cutoff;
    GET DIAGNOSTICS outbox_deleted = ROW_COUNT;

    ALTER TABLE public.audit_log DISABLE TRIGGER audit_log_append_only;
    DELETE FROM public.audit_log WHERE occurred_at < cutoff;
    GET DIAGNOSTICS audit_deleted = ROW_COUNT;
    ALTER TABLE public.audit_log ENABLE TRIGGER audit_log_append_only;

    DELETE FROM public.ingestions i
        WHERE i.received_at < cutoff
          AND NOT EXISTS (SELECT FROM public.outbox o WHERE o.ingestion_id = i.id)
          AND NOT EXISTS (SELECT FROM public.audit_log a WHERE a.ingestion_id = i.id);
    GET DIAGNOSTICS ingestions_deleted = ROW_COUNT;
END;
$$;

REVOKE ALL ON FUNCTION anchorpipe_prune(interval) FROM PUBLIC;
