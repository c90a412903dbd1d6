package refresh

import (
	"context"
	"fmt"
	"slices"
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

// ChangelogPollSQL drains the change log in one statement and returns, per
// source table, the oldest change time, plus whether the detector's sentinel
// ($1) is still there. A row committed after the statement's snapshot is not
// seen, so not deleted: the next poll gets it. A concurrent drainer (the
// other mode's detector, an outgoing leader) skips the rows this one
// deleted, and the other way round.
const ChangelogPollSQL = `WITH drained AS (
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

// ArmDoorbellSQL arms the one doorbell of the notify trigger function of
// versions before per-table doorbells (notify_change() in sql/schema.sql),
// unless it is armed already: such a trigger may be put back by a replica of
// such a version during a rolling upgrade.
const ArmDoorbellSQL = `SELECT pg_catalog.setval('refresherd.doorbell', 1, false) FROM refresherd.doorbell WHERE is_called`

// logModes are the change detection modes that share what their detectors
// see: changelog's trigger appends to the change log, and so did notify's
// before per-table doorbells (a replica of such a version may put it back
// during a rolling upgrade); a drain takes every row, whichever mode's
// detector runs it. And a table watched in both modes carries only the
// notify trigger, whose doorbell poll then serves changelog's views too.
var logModes = []string{config.DetectNotify, config.DetectChangelog}

// logSink passes what a detector of one of logModes tells it on to every
// mode in logModes: a drain takes the rows of a table watched in either
// mode, a doorbell reports a table that changelog's views may watch too (each
// reaches the views watching that table, whichever mode saw it), and a
// failed poll may have missed changes of either.
type logSink struct{ changeSink }

func (s logSink) SourceChanged(_ string, src config.QualifiedName, at, seen time.Time) bool {
	watched := false
	for _, m := range logModes {
		watched = s.changeSink.SourceChanged(m, src, at, seen) || watched
	}
	return watched
}

func (s logSink) ChangesMissed(_ string, since time.Time) {
	for _, m := range logModes {
		s.changeSink.ChangesMissed(m, since)
	}
}

func (s logSink) ChangesUnseen(_ string, since time.Time) {
	for _, m := range logModes {
		s.changeSink.ChangesUnseen(m, since)
	}
}

// pollerSink is the sink of mode's poller.
func (e *Engine) pollerSink(mode string) changeSink {
	if slices.Contains(logModes, mode) {
		return logSink{e}
	}
	return e
}

// changelogDetector drains refresherd.changelog, which the changelog
// trigger (and notify's of earlier versions) append to (see sql/schema.sql).
// The changelog mode polls it; the notify mode's doorbell detector runs the
// same drain in its poll, arming the earlier versions' doorbell first.
type changelogDetector struct {
	pool *pgxpool.Pool
	log  *zap.Logger
	// detection is the mode the detector serves: its sentinel's name.
	detection string
	// arm: arm the earlier versions' doorbell before each drain (notify).
	arm bool

	drainedSinceVacuum int64
	lastVacuum         time.Time
	vacuumFailing      bool
}

func newChangelogDetector(pool *pgxpool.Pool, log *zap.Logger) *changelogDetector {
	return &changelogDetector{pool: pool, log: log, detection: config.DetectChangelog, lastVacuum: time.Now()}
}

func (d *changelogDetector) mode() string { return d.detection }

// blindSince: a successful poll drained everything committed before its
// snapshot, which is taken after its start.
func (d *changelogDetector) blindSince(lastGood time.Time) time.Time { return lastGood }

func (d *changelogDetector) reset() {}

func (d *changelogDetector) timeout() time.Duration { return changelogPollTimeout }

func (d *changelogDetector) poll(ctx context.Context, _ pollRound, sink changeSink) (pollResult, error) {
	b := &pgx.Batch{}
	var out logDrain
	d.queueDrain(b, &out)
	if err := d.pool.SendBatch(ctx, b).Close(); err != nil {
		return pollResult{}, fmt.Errorf("poll change log: %w", err)
	}
	return d.drained(ctx, &out, time.Now(), sink)
}

// logDrain is what one drain of the change log returned.
type logDrain struct {
	sentinel        bool
	schemas, tables []string
	oldest          []time.Time
	rows            int64
}

// queueDrain adds the drain to b, after the doorbell's arm when d arms it:
// the drain's snapshot is then taken after the arm.
func (d *changelogDetector) queueDrain(b *pgx.Batch, out *logDrain) {
	if d.arm {
		b.Queue(ArmDoorbellSQL)
	}
	b.Queue(ChangelogPollSQL, d.detection).QueryRow(func(row pgx.Row) error {
		return row.Scan(&out.sentinel, &out.schemas, &out.tables, &out.oldest, &out.rows)
	})
}

// drained reports what a drain took from the log (seen: when it returned),
// then puts back a lost sentinel and vacuums when due.
func (d *changelogDetector) drained(ctx context.Context, out *logDrain, seen time.Time, sink changeSink) (pollResult, error) {
	// The rows are gone from the log now: report them before anything else
	// can fail.
	for i := range out.schemas {
		src := config.QualifiedName{Schema: out.schemas[i], Name: out.tables[i]}
		if !sink.SourceChanged(d.detection, src, out.oldest[i], seen) {
			d.log.Debug("change log names a table no notify or changelog view watches", zap.Stringer("table", src))
		}
	}
	var res pollResult
	d.drainedSinceVacuum += out.rows
	if !out.sentinel {
		// Crash recovery empties unlogged tables: the log may have lost
		// rows. Put the sentinel back so the next loss shows too.
		res.lost = true
		if _, err := d.pool.Exec(ctx, `INSERT INTO refresherd.detector_sentinel (detector) VALUES ($1) ON CONFLICT DO NOTHING`,
			d.detection); err != nil {
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
