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

-- Change log for change_detection changelog (and notify before per-table
-- doorbells). A statement trigger on each watched table appends one row per
-- statement; the daemon drains the log with one DELETE ... RETURNING per
-- poll, so a row committed after the poll's snapshot stays for the next
-- poll. The changelog trigger never notifies.
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

-- The doorbell of change_detection notify before per-table doorbells (kept
-- for the triggers of such a version; the per-table ones, refresherd.
-- doorbell_<hash>, work the same way, see notify_ring() below): armed while
-- the sequence is not "called" (pg_sequence_last_value() is NULL). The
-- daemon arms it before each drain of the log; the notify trigger of a
-- writer that finds it armed
-- disarms it (nextval) and notifies, so between two drains only the few
-- writers that find it armed at about the same moment notify, and the
-- others pay one read of the sequence for it. A sequence because it is not
-- transactional: reading it needs no snapshot and takes no row lock, so a
-- writer never waits for another and no isolation level turns it into a
-- serialization failure (a flag row would do both). The price: the disarm
-- of a writer that rolls back stays, so until the next drain (at the
-- latest poll_interval later) writers do not notify; their rows wait in the
-- log for it. UNLOGGED (PostgreSQL 15) for no WAL at every arm; crash
-- recovery resets it to its initial state, armed. Before 15 it is logged.
DO $$
BEGIN
    IF to_regclass('refresherd.doorbell') IS NULL THEN
        IF current_setting('server_version_num')::int >= 150000 THEN
            EXECUTE 'CREATE UNLOGGED SEQUENCE refresherd.doorbell';
        ELSE
            EXECUTE 'CREATE SEQUENCE refresherd.doorbell';
        END IF;
    END IF;
END
$$;

-- The notify trigger function of earlier versions (before per-table
-- doorbells), kept for a replica of such a version during a rolling upgrade,
-- whose triggers call it; the daemon drains the log it appends to and arms
-- its doorbell (refresherd.doorbell above) as long as the notify mode is in
-- use, and replaces its triggers by notify_ring's when it leads.
-- It appends to the change log as changelog_append does, and rings the
-- doorbell when it is armed. Same constraints as
-- changelog_append: SECURITY DEFINER (writers need no grant on this
-- schema; the owner may read and advance the sequence), no SET search_path
-- and nothing resolved through it (functions are called schema-qualified,
-- the sequence is a regclass constant, IS NULL is no operator). Disarmed,
-- the doorbell costs a writer one pg_sequence_last_value() call (about
-- 1 us; a SELECT from the sequence would cost 8). Several writers finding
-- it armed at once each notify: the channel and payload are the same, so a
-- transaction notifies once, and a writer whose commit comes after the
-- drain its ring caused still rings the daemon for its own row.
-- Replaces the function of earlier versions (pg_notify per statement, no
-- log) in place, so the triggers already installed on tables use it at once.
CREATE OR REPLACE FUNCTION refresherd.notify_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO refresherd.changelog (source_schema, source_table)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME);
    IF pg_catalog.pg_sequence_last_value('refresherd.doorbell'::regclass) IS NULL THEN
        PERFORM pg_catalog.nextval('refresherd.doorbell'::regclass);
        PERFORM pg_catalog.pg_notify('refresherd_changes', '{"op":"doorbell"}');
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION refresherd.notify_change() FROM PUBLIC;

-- The notify trigger function since the per-table doorbells: it only rings.
-- Its argument names the doorbell of its table, an UNLOGGED sequence the
-- daemon creates with the trigger (refresh/setup.go) and arms (setval to
-- not called) at each poll. The trigger's WHEN condition calls it only
-- when the doorbell is armed, so every other writer pays one read of the
-- sequence, by the executor, and neither this PL/pgSQL call nor an insert:
-- the change log and the call were most of what writers paid
-- (docs/change-detection.md). Here, a writer that still finds it armed
-- disarms it, writing its transaction's start in microseconds since the
-- epoch (a lower bound of the commit of every writer that finds it disarmed
-- after, which the daemon dates the change at), and notifies.
-- No write is lost without a log: a writer that found the doorbell disarmed
-- either committed before the daemon's next arm, which reports the table
-- because it finds the doorbell disarmed, or was running then, and the
-- daemon watches its transaction ID until it ends (refresh/detect_doorbell.go).
-- A missing doorbell (its sequence dropped) rings at every statement rather
-- than fail the writer's statement.
-- Same constraints as changelog_append: SECURITY DEFINER, no SET search_path,
-- every function called schema-qualified, the cast to int8 found by type OIDs.
CREATE OR REPLACE FUNCTION refresherd.notify_ring() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    bell regclass := pg_catalog.to_regclass(TG_ARGV[0]);
BEGIN
    IF bell IS NULL THEN
        PERFORM pg_catalog.pg_notify('refresherd_changes', '{"op":"doorbell"}');
    ELSIF pg_catalog.pg_sequence_last_value(bell) IS NULL THEN
        PERFORM pg_catalog.setval(bell, pg_catalog.float8mul(
            pg_catalog.date_part('epoch', pg_catalog.now()), 1000000)::int8);
        PERFORM pg_catalog.pg_notify('refresherd_changes', '{"op":"doorbell"}');
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION refresherd.notify_ring() FROM PUBLIC;

-- For apps: the time a managed view's data is as of (NULL if never refreshed).
-- SELECT refresherd.data_as_of('public.app_chargesummary');
CREATE OR REPLACE FUNCTION refresherd.data_as_of(p_view text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT data_as_of FROM refresherd.view_status WHERE view_name = p_view
$$;
