-- refresherd's own objects. Idempotent: run at every start-up, serialised
-- between replicas by an advisory lock taken by the caller.
CREATE SCHEMA IF NOT EXISTS refresherd;

-- One row per managed view, written in the same transaction as the refresh
-- it describes (success) or in a transaction of its own (failure), so it
-- never claims a refresh that did not commit.
CREATE TABLE IF NOT EXISTS refresherd.view_status (
    view_name             text PRIMARY KEY,          -- canonical schema.name
    data_as_of            timestamptz,               -- every change committed before this is in the view
    last_success_at       timestamptz,
    last_attempt_at       timestamptz,
    last_result           text,                      -- success | error
    last_error            text,
    last_trigger          text,
    last_duration_seconds double precision,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    refreshed_by          text,                      -- host/pod of the refresher
    definition_hash       text
);

-- History of attempts, for operators and to check that refreshes of a view
-- never overlap. Pruned to a week per view by the daemon.
CREATE TABLE IF NOT EXISTS refresherd.refresh_log (
    id           bigserial PRIMARY KEY,
    view_name    text NOT NULL,
    trigger      text NOT NULL,
    result       text NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    data_as_of   timestamptz,
    error        text,
    refreshed_by text
);
CREATE INDEX IF NOT EXISTS refresh_log_view_finished_idx
    ON refresherd.refresh_log (view_name, finished_at);

-- Statement-level change trigger function: one notification per statement,
-- deduplicated by PostgreSQL within a transaction because the payload (table
-- and transaction start time) is the same. The time is the transaction's
-- start, never later than its commit, so staleness computed from it never
-- under-reports.
CREATE OR REPLACE FUNCTION refresherd.notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('refresherd_changes', json_build_object(
        'schema', TG_TABLE_SCHEMA,
        'table', TG_TABLE_NAME,
        'ts', extract(epoch FROM now()))::text);
    RETURN NULL;
END
$$;

-- For apps: the time a managed view's data is as of (NULL if never refreshed).
-- SELECT refresherd.data_as_of('public.app_chargesummary');
CREATE OR REPLACE FUNCTION refresherd.data_as_of(p_view text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT data_as_of FROM refresherd.view_status WHERE view_name = p_view
$$;
