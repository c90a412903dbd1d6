package refresh

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
)

// ArmBellsSQL (exported for the benchmark) arms the doorbells named in $1 (see notify_ring() in
// sql/schema.sql) and returns, for each found disarmed, its 1-based
// position in $1 and the value its ringer wrote (microseconds since the
// epoch, -1 for a doorbell that does not exist). MATERIALIZED: each
// doorbell is read once, then armed.
const ArmBellsSQL = `WITH found AS MATERIALIZED (
	SELECT d.i, r.bell, CASE WHEN r.bell IS NULL THEN -1 ELSE pg_catalog.pg_sequence_last_value(r.bell) END AS v
	FROM unnest($1::text[]) WITH ORDINALITY AS d(seq, i)
	CROSS JOIN LATERAL (SELECT pg_catalog.to_regclass(d.seq) AS bell) AS r
), armed AS MATERIALIZED (
	SELECT i, v, CASE WHEN bell IS NOT NULL THEN pg_catalog.setval(bell, 1, false) END AS armed
	FROM found WHERE v IS NOT NULL
)
SELECT coalesce(array_agg(i::int4 ORDER BY i), '{}'), coalesce(array_agg(v ORDER BY i), '{}') FROM armed`

// WatchXactsSQL (exported for the benchmark) lists, after the arm, the transactions of this database
// that may have written a table of $2 without ringing: those whose backend
// holds a write lock on it (an INSERT, UPDATE, DELETE or TRUNCATE holds one
// to the end of its transaction), as pairs of 64-bit transaction ID (each
// 32-bit one is taken to be within 2^31 of the snapshot's xmin) and 1-based
// table position in $2, 0 for a prepared transaction (which may have
// written any). A backend's transaction ID and locks are readable by every
// role. It also returns, of the watched transactions $1, those that have
// ended committed (or too long ago to tell, counted as committed) and those
// still running. Ended is judged by a snapshot, not by pg_xact_status
// alone: a commit is recorded a moment before it becomes visible, and the
// refresh that follows the report must see it.
const WatchXactsSQL = `WITH s AS MATERIALIZED (
	SELECT snap, greatest(pg_catalog.pg_snapshot_xmin(snap)::text::int8 - 2147483648, 0) AS ref,
		(SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) AS db
	FROM pg_catalog.pg_current_snapshot() AS snap
), watched AS MATERIALIZED (
	SELECT w.x, pg_catalog.pg_visible_in_snapshot(w.x::text::xid8, s.snap) AS ended
	FROM s, unnest($1::int8[]) AS w(x)
), src AS (
	SELECT pg_catalog.to_regclass(t.name) AS rel, t.i FROM unnest($2::text[]) WITH ORDINALITY AS t(name, i)
), running AS MATERIALIZED (
	SELECT DISTINCT a.backend_xid::text::int8 AS x, src.i
	FROM s, pg_catalog.pg_locks l
	JOIN src ON src.rel = l.relation
	JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
	WHERE l.locktype = 'relation' AND l.granted AND l.database = s.db
		AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
		AND a.backend_xid IS NOT NULL AND a.pid <> pg_catalog.pg_backend_pid()
	UNION ALL
	SELECT p.transaction::text::int8, 0 FROM pg_catalog.pg_prepared_xacts p WHERE p.database = pg_catalog.current_database()
)
SELECT
	(SELECT coalesce(array_agg(s.ref + ((r.x - s.ref) % 4294967296 + 4294967296) % 4294967296 ORDER BY r.x, r.i), '{}') FROM running r),
	(SELECT coalesce(array_agg(r.i::int4 ORDER BY r.x, r.i), '{}') FROM running r),
	(SELECT coalesce(array_agg(w.x), '{}') FROM watched w
		WHERE w.ended AND pg_catalog.pg_xact_status(w.x::text::xid8) IS DISTINCT FROM 'aborted'),
	(SELECT coalesce(array_agg(w.x), '{}') FROM watched w WHERE NOT w.ended)
FROM s`

// doorbellDetector is the poll of the notify mode: at each ring, and every
// poll_interval as the fallback, it arms every watched table's doorbell and
// works out, without a log, which tables may have been written since the
// last arm:
//   - A table whose doorbell it finds disarmed was written by its ringer,
//     and maybe by writers that found it disarmed after; these did not
//     ring. Their trigger ran after their statement's rows, so each already
//     had a transaction ID, and a write lock on the table, when it read the
//     doorbell, before this arm: it has either ended by the time the poll
//     lists the transactions holding such a lock, just after the arm, and
//     the table is reported now, or it is on that list.
//   - So the detector watches the listed transactions of each table it
//     found disarmed until they end: one that commits is reported as a
//     change to those tables.
//
// A writer that finds the doorbell armed rings it, for the next poll.
// Changes are dated at the ringer's transaction start (clamped to the
// previous arm, after which the doorbell was disarmed) or, for a watched
// transaction, at the start of the poll that first saw it running: never
// after the commit. A ringer that rolled back, or a ring lost while the
// listener reconnected, leaves the doorbell disarmed for the next poll to
// report (one spurious refresh, or a ring's latency of poll_interval).
// The detector also drains the change log and arms the single doorbell of
// the trigger function of earlier versions (see changelogDetector), whose
// replicas may run during a rolling upgrade.
type doorbellDetector struct {
	// legacy is the change log's drain; its pool and logger are the
	// detector's.
	legacy *changelogDetector
	// armedAt is, per watched table, the start of the last poll that armed
	// its doorbell.
	armedAt map[config.QualifiedName]time.Time
	// watch holds the transactions running at an arm that found doorbells
	// disarmed, until they end.
	watch map[int64]*watchedXact
	// failed: the last poll failed, maybe after its arm (a sequence is not
	// transactional), so what it found disarmed is unknown.
	failed bool
}

// watchedXact is a transaction that may have written tables without
// ringing: reported as changes to them, dated since, if it commits.
type watchedXact struct {
	tables map[config.QualifiedName]bool
	since  time.Time
}

// newDoorbellDetector is the poll of the notify mode.
func newDoorbellDetector(pool *pgxpool.Pool, log *zap.Logger) *doorbellDetector {
	legacy := newChangelogDetector(pool, log)
	legacy.detection, legacy.arm = config.DetectNotify, true
	d := &doorbellDetector{legacy: legacy}
	d.reset()
	return d
}

func (d *doorbellDetector) mode() string { return config.DetectNotify }

// blindSince: a successful poll armed every doorbell at its start.
func (d *doorbellDetector) blindSince(lastGood time.Time) time.Time { return lastGood }

func (d *doorbellDetector) reset() {
	d.armedAt = map[config.QualifiedName]time.Time{}
	d.watch = map[int64]*watchedXact{}
	d.failed = false
}

func (d *doorbellDetector) timeout() time.Duration { return d.legacy.timeout() }

func (d *doorbellDetector) poll(ctx context.Context, r pollRound, sink changeSink) (pollResult, error) {
	bells := make([]string, len(r.sources))
	tables := make([]string, len(r.sources))
	for i, src := range r.sources {
		bells[i] = doorbellName(src).Sanitize()
		tables[i] = src.Sanitized()
	}
	watched := slices.Collect(maps.Keys(d.watch))
	var (
		found            []int32
		values           []int64
		writers          []int64
		locked           []int32
		ended, unchanged []int64
		drain            logDrain
	)
	// One round trip, in this order: the arm, then the list of writers.
	b := &pgx.Batch{}
	b.Queue(ArmBellsSQL, bells).QueryRow(func(row pgx.Row) error { return row.Scan(&found, &values) })
	b.Queue(WatchXactsSQL, watched, tables).QueryRow(func(row pgx.Row) error {
		return row.Scan(&writers, &locked, &ended, &unchanged)
	})
	d.legacy.queueDrain(b, &drain)
	if err := d.legacy.pool.SendBatch(ctx, b).Close(); err != nil {
		d.failed = true
		return pollResult{}, fmt.Errorf("poll doorbells: %w", err)
	}
	seen := time.Now()

	// Every report comes first: nothing said here can be lost to a later
	// error.
	for _, x := range ended {
		w := d.watch[x]
		for _, src := range slices.SortedFunc(maps.Keys(w.tables), compareNames) {
			sink.SourceChanged(config.DetectNotify, src, w.since, seen)
		}
	}
	rung := map[config.QualifiedName]bool{}
	var missing []config.QualifiedName
	for k, i := range found {
		src := r.sources[i-1]
		rung[src] = true
		if values[k] < 0 {
			missing = append(missing, src)
		}
		if !sink.SourceChanged(config.DetectNotify, src, d.ringAt(src, values[k], r.start, seen), seen) {
			d.legacy.log.Debug("doorbell of a table no notify or changelog view watches", zap.Stringer("table", src))
		}
	}
	res, err := d.legacy.drained(ctx, &drain, seen, sink)
	for _, src := range missing {
		d.legacy.log.Warn("the doorbell sequence of a table was missing (its trigger notified at every statement meanwhile); recreating it",
			zap.Stringer("table", src), zap.String("sequence", doorbellName(src).Sanitize()))
		if cerr := ensureDoorbell(ctx, d.legacy.pool, src); cerr != nil {
			err = errors.Join(err, fmt.Errorf("poll doorbells: %w", cerr))
		}
	}

	still := make(map[int64]*watchedXact, len(unchanged))
	for _, x := range unchanged {
		still[x] = d.watch[x]
	}
	d.watch = still
	if r.prev.IsZero() || d.failed {
		// A writer may have found a doorbell disarmed before this watch
		// began, and the arm that re-armed it (by an earlier leader, or a
		// poll of ours that failed after it) be gone with its findings:
		// every table may have such a writer. The poller catches up for
		// one that committed before this poll (for a failed poll, it
		// declared the views blind).
		res.lost = res.lost || r.prev.IsZero()
		for _, src := range r.sources {
			rung[src] = true
		}
	}
	d.failed = false
	for k, x := range writers {
		var wrote []config.QualifiedName
		if i := locked[k]; i > 0 {
			if src := r.sources[i-1]; rung[src] {
				wrote = append(wrote, src)
			}
		} else { // a prepared transaction
			wrote = slices.Collect(maps.Keys(rung))
		}
		if len(wrote) == 0 {
			continue
		}
		w := d.watch[x]
		if w == nil {
			w = &watchedXact{tables: map[config.QualifiedName]bool{}, since: r.start}
			d.watch[x] = w
		}
		for _, src := range wrote {
			w.tables[src] = true
		}
	}
	armedAt := make(map[config.QualifiedName]time.Time, len(r.sources))
	for _, src := range r.sources {
		armedAt[src] = r.start
	}
	d.armedAt = armedAt
	return res, err
}

// ringAt dates the writes behind a doorbell found disarmed, rung with value
// (its ringer's transaction start in microseconds since the epoch, -1 for a
// missing doorbell): every one committed after the previous arm of src.
func (d *doorbellDetector) ringAt(src config.QualifiedName, value int64, start, seen time.Time) time.Time {
	prev, armed := d.armedAt[src]
	if value < 0 {
		if armed {
			return prev
		}
		return start
	}
	at := time.UnixMicro(value)
	if armed && at.Before(prev) {
		at = prev
	}
	if at.After(seen) {
		return seen // clock skew
	}
	return at
}
