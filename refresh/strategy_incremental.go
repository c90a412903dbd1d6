package refresh

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh/incremental"
)

// IncrementalStrategy keeps a summary as a plain table the daemon owns,
// exact by recomputing only the groups whose keys the capture triggers
// logged (package incremental). A round is one REPEATABLE READ transaction:
// the drained keys and the recomputed groups see one snapshot.
type IncrementalStrategy struct {
	Pool      *pgxpool.Pool
	Refresher *Refresher // failure records and vacuum, shared with the full strategy
	Identity  string

	mu    sync.Mutex
	plans map[string]incremental.Plan // by view name, set by Setup
}

// NewIncrementalStrategy returns the incremental strategy over pool.
func NewIncrementalStrategy(pool *pgxpool.Pool, identity string) *IncrementalStrategy {
	return &IncrementalStrategy{
		Pool:      pool,
		Refresher: &Refresher{Pool: pool, Identity: identity},
		Identity:  identity,
		plans:     map[string]incremental.Plan{},
	}
}

// Analyze decides whether v qualifies, in a transaction that is rolled
// back (it creates a temporary view).
func Analyze(ctx context.Context, pool *pgxpool.Pool, v *config.View) (incremental.Plan, error) {
	ctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	defer cancel()
	var plan incremental.Plan
	conn, err := acquire(ctx, pool)
	if err != nil {
		return plan, err
	}
	defer conn.Release()
	tx, err := begin(ctx, conn)
	if err != nil {
		return plan, err
	}
	defer rollback(ctx, tx)
	if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, pgDuration(SetupTimeout)); err != nil {
		return plan, fmt.Errorf("analyze %s: set timeout: %w", v.Name, err)
	}
	plan, err = incremental.Analyze(ctx, tx, v, v.GroupKey)
	if err != nil {
		return plan, fmt.Errorf("analyze %s: %w", v.Name, err)
	}
	return plan, nil
}

// plan returns the plan Setup made for v.
func (s *IncrementalStrategy) plan(v *config.View) (incremental.Plan, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.plans[v.Name.String()]
	return p, ok
}

// Setup implements Strategy: analyze the query (a view that does not
// qualify is an error naming why) and install the capture objects. The
// summary itself is built by the first round (a rebuild), side by side with
// whatever has the view's name (a materialized view when switching from
// full), so readers never see it half-done.
func (s *IncrementalStrategy) Setup(ctx context.Context, v *config.View, _ Fence) (SetupResult, error) {
	var res SetupResult
	plan, err := Analyze(ctx, s.Pool, v)
	if err != nil {
		return res, err
	}
	err = withSetupLock(ctx, s.Pool, func(ctx context.Context, tx pgx.Tx) error {
		if err := incremental.Install(ctx, tx, plan); err != nil {
			return fmt.Errorf("install capture for %s: %w", v.Name, err)
		}
		// An old definition's capture: its rounds are over (the next one
		// rebuilds), but its triggers would tax writers for ever.
		removed, err := incremental.UninstallOthers(ctx, tx, v.Name, incremental.LogTable(plan).Name)
		if err != nil {
			return err
		}
		res.RemovedCapture = removed
		var kind string
		err = tx.QueryRow(ctx, `SELECT coalesce((SELECT c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)), '')`,
			v.Name.Sanitized()).Scan(&kind)
		if err != nil {
			return fmt.Errorf("look up %s: %w", v.Name, err)
		}
		switch kind {
		case "":
			res.Created = true
			return nil
		case "r", "m":
		default:
			return fmt.Errorf("%s exists but is neither a table nor a materialized view (relkind %q): refresherd will not replace it", v.Name, kind)
		}
		// A summary of another definition or strategy (or a lost log) is
		// rebuilt by the next round: run it now, not at the next change.
		reason, err := s.rebuildReason(ctx, tx, v, plan)
		if err != nil {
			return err
		}
		res.RebuildDue = reason != ""
		return nil
	})
	if err != nil {
		return res, err
	}
	s.mu.Lock()
	s.plans[v.Name.String()] = plan
	s.mu.Unlock()
	return res, nil
}

// Refresh implements Strategy: one round, or a rebuild when one is due.
func (s *IncrementalStrategy) Refresh(ctx context.Context, v *config.View, trigger Trigger, fence Fence) (Outcome, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, RefreshBound(v))
	defer cancel()
	out, err := s.round(ctx, v, trigger, fence)
	if errors.Is(err, incremental.ErrNoRoundLock) {
		// Dropped since set-up (or made by an older version): put it back.
		err = withSetupLock(ctx, s.Pool, func(ctx context.Context, tx pgx.Tx) error {
			return incremental.EnsureRoundLock(ctx, tx, v.Name)
		})
		if err == nil {
			out, err = s.round(ctx, v, trigger, fence)
		}
	}
	// A round that waited for the full strategy's view lock (a switch in
	// progress) has a snapshot older than that refresh's commit, and
	// touching its rows fails with a serialization error. Nothing was
	// applied; run it again with a fresh snapshot.
	for try := 1; isSerializationFailure(err) && try < roundRetries && ctx.Err() == nil; try++ {
		out, err = s.round(ctx, v, trigger, fence)
	}
	out.Duration = time.Since(start)
	if err != nil {
		return out, fmt.Errorf("refresh %s: %w", v.Name, err)
	}
	// What arrived during the round, read now that its drain committed: a
	// poll during the round still saw the keys it drained.
	owed, oldest, perr := s.Pending(ctx, v, true)
	if perr == nil {
		out.Backlog = &Backlog{Owed: owed, Oldest: oldest}
	}
	return out, nil
}

// rebuildReason says why the summary must be rebuilt, "" when a round
// will do. Reasons are metric label values: keep them few.
func (s *IncrementalStrategy) rebuildReason(ctx context.Context, tx pgx.Tx, v *config.View, plan incremental.Plan) (string, error) {
	var kind, hash, strategy string
	err := tx.QueryRow(ctx, `SELECT coalesce((SELECT c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)), ''),
			coalesce((SELECT definition_hash FROM refresherd.view_status WHERE view_name = $2), ''),
			coalesce((SELECT strategy FROM refresherd.view_status WHERE view_name = $2), '')`,
		v.Name.Sanitized(), v.Name.String()).Scan(&kind, &hash, &strategy)
	if err != nil {
		return "", fmt.Errorf("read view state: %w", err)
	}
	switch {
	case kind == "":
		return RebuildInitial, nil
	case kind == "m" || strategy != config.StrategyIncremental:
		return RebuildStrategy, nil
	case hash != plan.Hash:
		return RebuildDefinition, nil
	}
	reason, err := incremental.NeedsRebuild(ctx, tx, plan)
	if err != nil {
		return "", fmt.Errorf("check capture: %w", err)
	}
	return rebuildLabel(reason), nil
}

// Rebuild reasons (refresherd_rebuilds_total{reason}).
const (
	RebuildInitial    = "initial"    // the summary did not exist
	RebuildStrategy   = "strategy"   // converted from a materialized view
	RebuildDefinition = "definition" // the query or keys changed
	RebuildTruncate   = "truncate"   // the source was truncated
	RebuildLogLost    = "log_lost"   // the key log was emptied by a crash or promotion
	RebuildTrigger    = "trigger"    // a capture trigger was missing or disabled
	RebuildOther      = "other"
)

// rebuildLabel maps incremental.NeedsRebuild's reason to a label value.
func rebuildLabel(reason string) string {
	switch {
	case reason == "":
		return ""
	case reason == incremental.ReasonTruncated:
		return RebuildTruncate
	case reason == incremental.ReasonLogLost:
		return RebuildLogLost
	case strings.HasPrefix(reason, incremental.ReasonTriggerMissing), reason == incremental.ReasonNotInstalled:
		return RebuildTrigger
	case reason == incremental.ReasonSummaryMissing:
		return RebuildInitial
	case reason == incremental.ReasonMatview:
		return RebuildStrategy
	}
	return RebuildOther
}

func (s *IncrementalStrategy) round(ctx context.Context, v *config.View, trigger Trigger, fence Fence) (Outcome, error) {
	var out Outcome
	plan, ok := s.plan(v)
	if !ok {
		return out, errors.New("not set up")
	}
	conn, err := acquire(ctx, s.Pool)
	if err != nil {
		return out, err
	}
	defer conn.Release()
	// One snapshot for the drained keys and the recomputed groups: a key
	// committed after it is invisible to the drain and stays for the next
	// round.
	bctx, cancel := context.WithTimeout(ctx, BeginTimeout)
	tx, err := conn.BeginTx(bctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	cancel()
	if err != nil {
		return out, fmt.Errorf("begin: %w", err)
	}
	defer rollback(ctx, tx)
	// Nothing before the round lock may take a snapshot: SET (not
	// set_config) and LOCK take none, so the snapshot of the first SELECT
	// sees every round committed before this one got the lock.
	if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = '"+pgDuration(v.StatementTimeout)+
		"'; SET LOCAL lock_timeout = '"+pgDuration(v.LockTimeout)+"'"); err != nil {
		return out, fmt.Errorf("set timeouts: %w", err)
	}
	if err := incremental.LockRound(ctx, tx, v.Name); err != nil {
		return out, err
	}
	// The snapshot is taken by this statement; statement_timestamp() is
	// when it began, so every change committed before the as-of is in the
	// snapshot. Simple protocol: with the extended one the snapshot is
	// taken at Parse or Bind but statement_timestamp() is reset by Execute. The view lock also serialises with the full strategy (a
	// switch); waiting for it makes the snapshot older than that refresh's
	// commit, which the retry on serialization failure covers.
	if err := tx.QueryRow(ctx, `SELECT statement_timestamp() FROM (SELECT pg_advisory_xact_lock($1)) l`,
		pgx.QueryExecModeSimpleProtocol, lockKey("view", v.Name.String())).Scan(&out.AsOf); err != nil {
		return out, fmt.Errorf("take view lock: %w", err)
	}
	reason, err := s.rebuildReason(ctx, tx, v, plan)
	if err != nil {
		return out, err
	}
	if reason != "" {
		if _, err := incremental.Rebuild(ctx, tx, plan); err != nil {
			return out, fmt.Errorf("rebuild (%s): %w", reason, err)
		}
		out.Rebuilt = reason
	} else {
		r, err := incremental.Apply(ctx, tx, plan)
		if err != nil {
			return out, fmt.Errorf("apply: %w", err)
		}
		out.Touched = r.Touched
	}
	if out.Rebuilt != "" {
		if _, err := tx.Exec(ctx, `INSERT INTO refresherd.view_status (view_name, definition_hash) VALUES ($1, $2)
			ON CONFLICT (view_name) DO UPDATE SET definition_hash = excluded.definition_hash`,
			v.Name.String(), plan.Hash); err != nil {
			return out, fmt.Errorf("record definition: %w", err)
		}
	}
	if err := recordAndCommit(ctx, tx, v, &out, trigger, s.Identity, config.StrategyIncremental, fence); err != nil {
		return out, err
	}
	return out, nil
}

// roundRetries bounds a round's attempts after serialization failures.
const roundRetries = 3

// isSerializationFailure reports a REPEATABLE READ conflict (40001) or a
// deadlock (40P01): the transaction did nothing and may run again.
func isSerializationFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}

// RecordFailure implements Strategy.
func (s *IncrementalStrategy) RecordFailure(ctx context.Context, v *config.View, trigger Trigger, dur time.Duration, err error) error {
	return s.Refresher.RecordFailure(ctx, v, trigger, dur, err)
}

// Maintain implements Strategy: rounds update and delete rows, so the
// summary collects dead rows like a concurrent refresh does.
func (s *IncrementalStrategy) Maintain(ctx context.Context, v *config.View, _ Outcome) (Maintenance, error) {
	if v.VacuumThreshold <= 0 {
		return Maintenance{}, nil
	}
	dead, vacuumed, err := s.Refresher.MaybeVacuum(ctx, v)
	return Maintenance{Vacuumed: vacuumed, DeadRows: dead}, err
}

// Pending reports whether v's key log holds keys and, if oldest is asked
// for, the oldest one's data time: the daemon's change detection for
// incremental views.
func (s *IncrementalStrategy) Pending(ctx context.Context, v *config.View, oldest bool) (bool, time.Time, error) {
	plan, ok := s.plan(v)
	if !ok {
		return false, time.Time{}, nil
	}
	owed, at, err := incremental.Pending(ctx, s.Pool, plan, oldest)
	if err != nil {
		return false, time.Time{}, fmt.Errorf("check key log of %s: %w", v.Name, err)
	}
	return owed, at, nil
}

// Verify compares v's incremental summary with a fresh full aggregate in one
// snapshot (groups still pending in the key log are not mismatches) and
// returns up to limit mismatched rows.
func Verify(ctx context.Context, pool *pgxpool.Pool, v *config.View, limit int) (incremental.Verification, error) {
	var res incremental.Verification
	plan, err := Analyze(ctx, pool, v)
	if err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(ctx, RefreshBound(v))
	defer cancel()
	conn, err := acquire(ctx, pool)
	if err != nil {
		return res, err
	}
	defer conn.Release()
	bctx, bcancel := context.WithTimeout(ctx, BeginTimeout)
	tx, err := conn.BeginTx(bctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	bcancel()
	if err != nil {
		return res, fmt.Errorf("verify %s: begin: %w", v.Name, err)
	}
	defer rollback(ctx, tx)
	if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, pgDuration(v.StatementTimeout)); err != nil {
		return res, fmt.Errorf("verify %s: set timeout: %w", v.Name, err)
	}
	res, err = incremental.Verify(ctx, tx, plan, limit)
	if err != nil {
		return res, fmt.Errorf("verify %s: %w", v.Name, err)
	}
	return res, nil
}
