package refresh

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
)

const (
	// changelogPollTimeout bounds one drain. It is generous because the
	// first poll after a long stop drains the whole backlog (the log grows
	// by one row per writing statement while no one drains it;
	// measured about 0.4 s per million rows), in one statement: batching
	// would rescan the dead rows of earlier batches each time.
	changelogPollTimeout = 5 * time.Minute
	// changelogVacuumEvery is how often, at most, the daemon vacuums the log
	// when it drained something: every drained row is a dead tuple that each
	// later poll would scan until vacuumed, and autovacuum looks only once a
	// minute by default.
	changelogVacuumEvery = 10 * time.Second
	// changelogVacuumRows triggers a vacuum sooner after a large drain.
	changelogVacuumRows = 100000
)

// changelogPollSQL drains the change log in one statement and returns, per
// source table, the oldest change time, plus whether the detector's sentinel
// ($1) is still there. A row committed after the statement's snapshot is not
// seen, so not deleted: the next poll gets it. A concurrent drainer (an
// outgoing leader) skips the rows this one deleted, and the other way round.
const changelogPollSQL = `WITH drained AS (
	DELETE FROM refresherd.changelog
	RETURNING source_schema, source_table, changed_at
), per_table AS (
	SELECT source_schema, source_table, min(changed_at) AS oldest, count(*) AS n
	FROM drained GROUP BY source_schema, source_table
)
SELECT EXISTS (SELECT FROM refresherd.detector_sentinel WHERE detector = $1),
	coalesce(array_agg(source_schema), '{}'),
	coalesce(array_agg(source_table), '{}'),
	coalesce(array_agg(oldest), '{}'),
	coalesce(sum(n), 0)::int8
FROM per_table`

// changelogDetector drains refresherd.changelog, which the changelog trigger
// appends to (see sql/schema.sql).
type changelogDetector struct {
	pool *pgxpool.Pool
	log  *zap.Logger

	drainedSinceVacuum int64
	lastVacuum         time.Time
	vacuumFailing      bool
}

func newChangelogDetector(pool *pgxpool.Pool, log *zap.Logger) *changelogDetector {
	return &changelogDetector{pool: pool, log: log, lastVacuum: time.Now()}
}

func (d *changelogDetector) mode() string { return config.DetectChangelog }

// blindSince: a successful poll drained everything committed before its
// snapshot, which is taken after its start.
func (d *changelogDetector) blindSince(lastGood time.Time) time.Time { return lastGood }

func (d *changelogDetector) reset() {}

func (d *changelogDetector) timeout() time.Duration { return changelogPollTimeout }

func (d *changelogDetector) poll(ctx context.Context, r pollRound, sink changeSink) (pollResult, error) {
	var (
		sentinel        bool
		schemas, tables []string
		oldest          []time.Time
		drained         int64
	)
	if err := d.pool.QueryRow(ctx, changelogPollSQL, config.DetectChangelog).
		Scan(&sentinel, &schemas, &tables, &oldest, &drained); err != nil {
		return pollResult{}, fmt.Errorf("poll change log: %w", err)
	}
	seen := time.Now()
	// The rows are gone from the log now: report them before anything else
	// can fail.
	for i := range schemas {
		src := config.QualifiedName{Schema: schemas[i], Name: tables[i]}
		if !sink.SourceChanged(config.DetectChangelog, src, oldest[i], seen) {
			d.log.Debug("change log names a table no changelog view watches", zap.Stringer("table", src))
		}
	}
	var res pollResult
	d.drainedSinceVacuum += drained
	if !sentinel {
		// Crash recovery empties unlogged tables: the log may have lost
		// rows. Put the sentinel back so the next loss shows too.
		res.lost = true
		if _, err := d.pool.Exec(ctx, `INSERT INTO refresherd.detector_sentinel (detector) VALUES ($1) ON CONFLICT DO NOTHING`,
			config.DetectChangelog); err != nil {
			return res, fmt.Errorf("poll change log: set sentinel: %w", err)
		}
	}
	if d.drainedSinceVacuum > 0 &&
		(d.drainedSinceVacuum >= changelogVacuumRows || time.Since(d.lastVacuum) >= changelogVacuumEvery) {
		d.vacuum(ctx)
	}
	return res, nil
}

// vacuum reclaims the drained rows. A failure is logged (once until it
// works again), never a poll failure: the log still works, only slower.
// SKIP_LOCKED: if autovacuum is at it already, there is nothing to add.
// TRUNCATE false: truncating the table's end takes an ACCESS EXCLUSIVE
// lock that would stall writers' triggers, and the space is reused anyway.
func (d *changelogDetector) vacuum(ctx context.Context) {
	_, err := d.pool.Exec(ctx, `VACUUM (SKIP_LOCKED, TRUNCATE false) refresherd.changelog`, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		d.lastVacuum = time.Now() // retry at the normal pace, not every poll
		if ctx.Err() == nil && !d.vacuumFailing {
			d.log.Warn("could not vacuum the change log; its dead rows slow the polls down until it works", zap.Error(err))
		}
		d.vacuumFailing = true
		return
	}
	if d.vacuumFailing {
		d.log.Info("vacuumed the change log again")
	}
	d.vacuumFailing = false
	d.drainedSinceVacuum = 0
	d.lastVacuum = time.Now()
}
