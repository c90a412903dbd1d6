-- Statement-trigger variants on public.app_charge for triggerab, each
-- created disabled; triggerab enables one at a time. They are the shapes
-- measured in docs/change-detection.md ("What writers pay"): the shipped
-- notify trigger, the one before it (ab_log_doorbell), and what that one
-- would be without each of its parts.
CREATE UNLOGGED TABLE refresherd.ab_changelog_oid (
    source     regclass NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- No body at all: the floor of any PL/pgSQL statement trigger.
CREATE FUNCTION refresherd.ab_empty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NULL;
END $$;
CREATE FUNCTION refresherd.ab_empty_sd() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    RETURN NULL;
END $$;
-- The doorbell without the change log: what a notify trigger whose
-- lossless fallback is off the writer's path would cost.
CREATE FUNCTION refresherd.ab_doorbell() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF pg_catalog.pg_sequence_last_value('refresherd.doorbell'::regclass) IS NULL THEN
        PERFORM pg_catalog.nextval('refresherd.doorbell'::regclass);
        PERFORM pg_catalog.pg_notify('refresherd_changes', '{"op":"doorbell"}');
    END IF;
    RETURN NULL;
END $$;
-- The doorbell alone, one doorbell per table named in the trigger's
-- argument (so a ring says which table changed): the sequence is looked up
-- by name at every statement instead of being a constant of the plan.
CREATE UNLOGGED SEQUENCE refresherd.ab_doorbell_app_charge;
CREATE FUNCTION refresherd.ab_doorbell_arg() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF pg_catalog.pg_sequence_last_value(TG_ARGV[0]::regclass) IS NULL THEN
        PERFORM pg_catalog.nextval(TG_ARGV[0]::regclass);
        PERFORM pg_catalog.pg_notify('refresherd_changes', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    END IF;
    RETURN NULL;
END $$;
-- The shipped function with a narrower log row (the table's OID).
CREATE FUNCTION refresherd.ab_notify_oid() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO refresherd.ab_changelog_oid (source) VALUES (TG_RELID);
    IF pg_catalog.pg_sequence_last_value('refresherd.doorbell'::regclass) IS NULL THEN
        PERFORM pg_catalog.nextval('refresherd.doorbell'::regclass);
        PERFORM pg_catalog.pg_notify('refresherd_changes', '{"op":"doorbell"}');
    END IF;
    RETURN NULL;
END $$;

-- The shipped trigger, as the daemon creates it (refresh/setup.go), with
-- this file's doorbell (the daemon names it by a hash of the table's name).
CREATE TRIGGER refresherd_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.app_charge
    FOR EACH STATEMENT
    WHEN (pg_catalog.pg_sequence_last_value('refresherd.ab_doorbell_app_charge'::pg_catalog.regclass) IS NULL)
    EXECUTE FUNCTION refresherd.notify_ring('refresherd.ab_doorbell_app_charge');
-- The same without the WHEN condition: every writer calls the function.
CREATE TRIGGER ab_ring_nowhen AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.app_charge
    FOR EACH STATEMENT EXECUTE FUNCTION refresherd.notify_ring('refresherd.ab_doorbell_app_charge');
-- The trigger of the versions before per-table doorbells: the change log
-- and one doorbell.
CREATE TRIGGER ab_log_doorbell AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.app_charge
    FOR EACH STATEMENT EXECUTE FUNCTION refresherd.notify_change();
CREATE TRIGGER ab_empty AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.app_charge
    FOR EACH STATEMENT EXECUTE FUNCTION refresherd.ab_empty();
CREATE TRIGGER ab_empty_sd AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.app_charge
    FOR EACH STATEMENT EXECUTE FUNCTION refresherd.ab_empty_sd();
CREATE TRIGGER ab_doorbell AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.app_charge
    FOR EACH STATEMENT EXECUTE FUNCTION refresherd.ab_doorbell();
CREATE TRIGGER ab_doorbell_arg AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.app_charge
    FOR EACH STATEMENT EXECUTE FUNCTION refresherd.ab_doorbell_arg('refresherd.ab_doorbell_app_charge');
-- BEFORE STATEMENT: the same effect (the row commits or rolls back with
-- the statement) without the after-trigger event queue.
CREATE TRIGGER ab_before BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.app_charge
    FOR EACH STATEMENT EXECUTE FUNCTION refresherd.notify_change();
CREATE TRIGGER ab_oid_before BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.app_charge
    FOR EACH STATEMENT EXECUTE FUNCTION refresherd.ab_notify_oid();

ALTER TABLE public.app_charge DISABLE TRIGGER USER;
