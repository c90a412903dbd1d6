-- refresherd's own objects. Idempotent: run at every start-up, serialised
-- between replicas by an advisory lock taken by the caller.
-- The schema itself is created by the daemon only when missing (CREATE
-- SCHEMA IF NOT EXISTS would need CREATE on the database even then), so a
-- DBA may pre-create it and give the daemon's role just that schema.

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
-- Added with incremental summaries: which strategy built the view's data.
ALTER TABLE refresherd.view_status ADD COLUMN IF NOT EXISTS strategy text;

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

-- Change log for change_detection: changelog. A statement trigger on each
-- watched table appends one row per statement; the daemon drains
-- the log with one DELETE ... RETURNING per poll, so a row committed after
-- the poll's snapshot stays for the next poll. No NOTIFY: committing writers
-- do not serialise on the notification queue's global lock.
-- UNLOGGED: no WAL for writers to pay; the price is that crash recovery
-- empties it, which the daemon detects (detector_sentinel below) and answers
-- with a catch-up refresh.
-- No id column and no index: the poller takes every row, order does not
-- matter, and an index would be one more write per statement for writers.
-- changed_at is now(), the writing transaction's start: never later than its
-- commit, so staleness computed from it never under-reports.
-- It is a queue: every row becomes a dead tuple once drained. The daemon
-- vacuums it itself every few seconds; autovacuum is told to act on a few
-- thousand dead rows rather than a fraction of the table, and never to
-- truncate it (truncation takes a lock that would block the trigger's
-- inserts, and the space is reused at once anyway).
CREATE UNLOGGED TABLE IF NOT EXISTS refresherd.changelog (
    source_schema text NOT NULL,
    source_table  text NOT NULL,
    changed_at    timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000, vacuum_truncate = false);

-- One row per polling detector, written by the daemon. UNLOGGED like the
-- change log, so crash recovery (or promotion of a standby) empties it too:
-- a poller that finds its row gone knows that changes may have been lost and
-- catches up.
CREATE UNLOGGED TABLE IF NOT EXISTS refresherd.detector_sentinel (
    detector text PRIMARY KEY,
    set_at   timestamptz NOT NULL DEFAULT now()
);

-- The changelog trigger function. SECURITY DEFINER so that the app's writers
-- need no privileges on the refresherd schema (a missing grant would make
-- their writes fail).
-- It is on every writer's path, so it does the least that works, one insert
-- per statement (measured in docs/change-detection.md):
-- - No SET search_path: a function-level SET costs every call a GUC save and
--   restore and two search-path recomputations (about 4 us, as much as the
--   insert). It is safe without one because nothing in the body is looked up
--   by search_path: the table is schema-qualified, TG_* are plpgsql
--   variables, name-to-text is a cast found by type OIDs, and the column
--   default was bound when the table was created.
-- - No once-per-transaction flag: a transaction-local setting costs about as
--   much as the insert it would save, and the common writer (autocommit, one
--   statement) never benefits. A transaction of many statements adds one row
--   per statement; the poll collapses them per table.
CREATE OR REPLACE FUNCTION refresherd.changelog_append() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO refresherd.changelog (source_schema, source_table)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME);
    RETURN NULL;
END
$$;
-- Writers reach the function only through the trigger.
REVOKE ALL ON FUNCTION refresherd.changelog_append() FROM PUBLIC;

-- For apps: the time a managed view's data is as of (NULL if never refreshed).
-- SELECT refresherd.data_as_of('public.app_chargesummary');
CREATE OR REPLACE FUNCTION refresherd.data_as_of(p_view text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT data_as_of FROM refresherd.view_status WHERE view_name = p_view
$$;
