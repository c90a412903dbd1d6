package refresh

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
)

// statsFlushDelay bounds how late a committed change shows in the table
// statistics counters. A backend flushes its counters when it goes idle
// after a transaction, if its last flush was at least 1 s ago; otherwise a
// timer flushes them after 10 s of idleness (PGSTAT_MIN_INTERVAL and
// PGSTAT_IDLE_INTERVAL in PostgreSQL 15's pgstat.c; measured: 0 s or ~10 s
// for a single insert). A change first seen by a poll is therefore dated
// this much before the previous poll, so staleness never under-reports.
// Beyond the bound: a backend that starts another transaction at once and
// keeps it open flushes only when it next goes idle (see
// docs/change-detection.md).
const statsFlushDelay = 10 * time.Second

// statsPollTimeout bounds one poll: it reads a few counters.
const statsPollTimeout = 30 * time.Second

// statsPollSQL reads, for each source ($2, sanitized names, in order), the
// counters that pg_stat_user_tables shows as n_tup_ins, n_tup_upd and
// n_tup_del (through the same functions: the view itself would compute every
// column for every table of the database), summed over the leaf partitions
// of a partitioned table, and each leaf's relfilenode: TRUNCATE moves no
// n_tup_* counter (PostgreSQL 15 zeroes the truncating transaction's
// counts) but gives the table a new relfilenode, visible at commit without
// any flush delay. Also read: the database's stats_reset (set by
// pg_stat_reset() and pg_stat_reset_single_table_counters()), whether the
// sentinel ($1) survived (crash recovery discards statistics and empties
// unlogged tables alike), and track_counts, without which the counters
// never move.
const statsPollSQL = `SELECT
	current_setting('track_counts')::bool,
	EXISTS (SELECT FROM refresherd.detector_sentinel WHERE detector = $1),
	(SELECT d.stats_reset FROM pg_catalog.pg_stat_database d WHERE d.datname = current_database()),
	s.rel IS NOT NULL,
	coalesce(string_agg(l.relid::oid::text || ':' || coalesce(pg_catalog.pg_relation_filenode(l.relid)::text, '-'), ',' ORDER BY l.relid), ''),
	coalesce(sum(pg_catalog.pg_stat_get_tuples_inserted(l.relid)), 0)::int8,
	coalesce(sum(pg_catalog.pg_stat_get_tuples_updated(l.relid)), 0)::int8,
	coalesce(sum(pg_catalog.pg_stat_get_tuples_deleted(l.relid)), 0)::int8
FROM (SELECT u.ord, to_regclass(u.name) AS rel FROM unnest($2::text[]) WITH ORDINALITY AS u(name, ord)) s
LEFT JOIN LATERAL (
	SELECT t.relid FROM pg_catalog.pg_partition_tree(s.rel) t WHERE t.isleaf
	UNION -- pg_partition_tree lists nothing for a table outside any partition tree
	SELECT c.oid FROM pg_catalog.pg_class c WHERE c.oid = s.rel AND c.relkind = 'r'
) l ON true
GROUP BY s.ord, s.rel
ORDER BY s.ord`

// tableCounters is what the stats detector compares between polls.
type tableCounters struct {
	exists        bool
	files         string // leaf:relfilenode,...
	ins, upd, del int64
}

// statsDetector polls the statistics counters of the watched tables: no
// trigger, so writers pay nothing, at the price of the flush delay.
// Any difference counts as a change (a decrease too: a reset or a crash).
// The counters include rolled-back work: a false positive costs one
// refresh, which is the safe side.
type statsDetector struct {
	pool *pgxpool.Pool

	known      map[config.QualifiedName]tableCounters
	statsReset *time.Time
}

func newStatsDetector(pool *pgxpool.Pool) *statsDetector { return &statsDetector{pool: pool} }

func (d *statsDetector) mode() string { return config.DetectStats }

func (d *statsDetector) timeout() time.Duration { return statsPollTimeout }

// blindSince: a change not yet flushed at the last good poll may have been
// committed up to the flush delay before it.
func (d *statsDetector) blindSince(lastGood time.Time) time.Time {
	return lastGood.Add(-statsFlushDelay)
}

func (d *statsDetector) reset() { d.known, d.statsReset = nil, nil }

func (d *statsDetector) poll(ctx context.Context, r pollRound, sink changeSink) (pollResult, error) {
	names := make([]string, len(r.sources))
	for i, s := range r.sources {
		names[i] = s.Sanitized()
	}
	rows, err := d.pool.Query(ctx, statsPollSQL, config.DetectStats, names)
	if err != nil {
		return pollResult{}, fmt.Errorf("poll table statistics: %w", err)
	}
	var (
		trackCounts, sentinel bool
		statsReset            *time.Time
		now                   = make(map[config.QualifiedName]tableCounters, len(r.sources))
		i                     int
	)
	for rows.Next() {
		if i >= len(r.sources) {
			rows.Close()
			return pollResult{}, errors.New("poll table statistics: more rows than sources")
		}
		var c tableCounters
		if err := rows.Scan(&trackCounts, &sentinel, &statsReset, &c.exists, &c.files, &c.ins, &c.upd, &c.del); err != nil {
			rows.Close()
			return pollResult{}, fmt.Errorf("poll table statistics: %w", err)
		}
		now[r.sources[i]] = c
		i++
	}
	if err := rows.Err(); err != nil {
		return pollResult{}, fmt.Errorf("poll table statistics: %w", err)
	}
	if i != len(r.sources) {
		return pollResult{}, fmt.Errorf("poll table statistics: %d rows for %d sources", i, len(r.sources))
	}
	if !trackCounts {
		// Counters frozen: changes would go unseen. Failing makes the views
		// blind (staleness grows) and the log says why.
		return pollResult{}, errors.New("poll table statistics: track_counts is off, so table statistics do not change: turn it on or use another change_detection")
	}

	var res pollResult
	if !sentinel {
		res.lost = true
		if _, err := d.pool.Exec(ctx, `INSERT INTO refresherd.detector_sentinel (detector) VALUES ($1) ON CONFLICT DO NOTHING`,
			config.DetectStats); err != nil {
			return pollResult{}, fmt.Errorf("poll table statistics: set sentinel: %w", err)
		}
	}
	first := d.known == nil || r.prev.IsZero()
	if first {
		// The baseline: nothing to compare with. What it hides is the
		// poller's concern (pollResult.lost).
		res.lost = true
	} else {
		// A change first seen now was flushed after the previous poll read
		// the counters, so committed no earlier than that minus the flush
		// delay.
		at := r.prev.Add(-statsFlushDelay)
		seen := time.Now()
		resetMoved := !sameTime(statsReset, d.statsReset)
		for _, src := range r.sources {
			before, known := d.known[src]
			c := now[src]
			switch {
			case !known:
				// Newly watched (a reload): what the baseline hides is
				// unknown, so one refresh makes sure.
				sink.SourceChanged(config.DetectStats, src, r.start, seen)
			case resetMoved || c != before:
				sink.SourceChanged(config.DetectStats, src, at, seen)
			}
		}
	}
	d.known, d.statsReset = now, statsReset
	return res, nil
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}
