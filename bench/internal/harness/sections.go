package harness

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/bench/internal/fresh"
	"github.com/refresherd/refresherd/bench/internal/pgtools"
	"github.com/refresherd/refresherd/bench/internal/results"
	"github.com/refresherd/refresherd/bench/internal/stats"
	"github.com/refresherd/refresherd/bench/internal/sysinfo"
	"github.com/refresherd/refresherd/internal/demodata"
)

// costSection times the ways of computing the summary: the bare aggregate
// (every column computed: the sums are summed and the id's length added,
// so the planner cannot drop them), a plain REFRESH, then REFRESH
// CONCURRENTLY from psql (a new session each time, as a cron job runs it),
// refresherd's refresh (SIGUSR1; duration from its histogram) and
// CONCURRENTLY on a warm session (the server's work alone), rotating which
// goes first each round, so that drift and order hit them alike.
func (s *sizeEnv) costSection(ctx context.Context) error {
	aggSQL := "SELECT sum(hardware), sum(software), sum(length(id)), count(*) FROM (" + oneLine(s.view.Query) + ") s"
	plainSQL := "REFRESH MATERIALIZED VIEW " + s.viewSQL
	concSQL := "REFRESH MATERIALIZED VIEW CONCURRENTLY " + s.viewSQL
	rows := []results.CostRow{
		{Method: results.MethodAggregate, Command: s.srv.PsqlCommand(s.db, aggSQL)},
		{Method: results.MethodPlain, Command: s.srv.PsqlCommand(s.db, plainSQL)},
		{Method: results.MethodPsqlConc, Command: s.srv.PsqlCommand(s.db, concSQL)},
		{Method: results.MethodDaemon, Command: "kill -USR1 <daemon pid>; refresh time = delta of refresherd_refresh_duration_seconds_sum (count +1) from /metrics"},
		{Method: results.MethodWarmConc, Command: "REFRESH MATERIALIZED VIEW CONCURRENTLY " + s.viewSQL + " in autocommit on one long-lived pgx connection (warmed up once), timed around Exec"},
	}
	warm, err := pgx.Connect(ctx, s.cluster.URL(s.db))
	if err != nil {
		return fmt.Errorf("refresh cost: %w", err)
	}
	defer warm.Close(context.WithoutCancel(ctx))
	warmConc := func() error {
		t0 := time.Now()
		if _, err := warm.Exec(ctx, concSQL); err != nil {
			return fmt.Errorf("refresh cost: warm session: %w", err)
		}
		rows[4].Seconds = append(rows[4].Seconds, time.Since(t0).Seconds())
		return nil
	}
	psql := func(i int, sql string) error {
		d, err := s.srv.Timed(ctx, s.db, sql)
		if err != nil {
			return fmt.Errorf("refresh cost: %w", err)
		}
		rows[i].Seconds = append(rows[i].Seconds, d.Seconds())
		return nil
	}
	daemon := func() error {
		secs, err := s.d.manualRefresh(ctx, 30*time.Minute)
		if err != nil {
			return fmt.Errorf("refresh cost: %w", err)
		}
		rows[3].Seconds = append(rows[3].Seconds, secs)
		return nil
	}
	if err := s.d.waitSettled(ctx, 30*time.Minute); err != nil {
		return err
	}
	for r := 0; r < s.o.CostRounds; r++ {
		if err := psql(0, aggSQL); err != nil {
			return err
		}
	}
	for r := 0; r < s.o.CostRounds; r++ {
		if err := psql(1, plainSQL); err != nil {
			return err
		}
	}
	// A plain REFRESH leaves a new file, written around shared buffers and
	// without hint bits, that the next reader pays for. Vacuum it and run one
	// untimed CONCURRENTLY, so that each timed CONCURRENTLY follows another,
	// as in production.
	if _, err := s.pool.Exec(ctx, "VACUUM "+s.viewSQL); err != nil {
		return fmt.Errorf("refresh cost: warm-up vacuum: %w", err)
	}
	if _, err := warm.Exec(ctx, concSQL); err != nil { // untimed: warms the session and the view
		return fmt.Errorf("refresh cost: warm-up: %w", err)
	}
	for r := 0; r < s.o.CostRounds; r++ {
		trio := []func() error{func() error { return psql(2, concSQL) }, daemon, warmConc}
		// Rotate which goes first.
		trio = append(trio[r%3:], trio[:r%3]...)
		for _, f := range trio {
			if err := f(); err != nil {
				return err
			}
		}
		s.logf("round %d: psql concurrently %.3f s, refresherd %.3f s, warm session %.3f s", r+1, last(rows[2].Seconds), last(rows[3].Seconds), last(rows[4].Seconds))
	}
	s.logf("aggregate %v s, plain %v s", rows[0].Seconds, rows[1].Seconds)
	for i := range rows {
		rows[i].Summary = stats.Summarize(rows[i].Seconds)
	}
	s.sz.Cost = rows
	s.refresh = rows[3].Summary.Median
	return nil
}

func last(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	return xs[len(xs)-1]
}

func oneLine(q string) string { return strings.Join(strings.Fields(q), " ") }

// readerSample is one app query.
type readerSample struct {
	start time.Time
	lat   time.Duration
}

// startReaders runs the app's query on rel in db from n connections, each
// paced at rate queries per second with a random user each time, until stop
// is called; stop returns every completed query.
func (s *sizeEnv) startReaders(ctx context.Context, db, rel string) (stop func() ([]readerSample, error), err error) {
	n, users := s.o.Readers, s.size.Users
	interval := time.Duration(float64(time.Second) / s.o.ReaderRate)
	sql := "SELECT * FROM " + rel + " WHERE user_id = $1"
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		if conns[i], err = pgx.Connect(ctx, s.cluster.URL(db)); err != nil {
			for _, c := range conns[:i] {
				_ = c.Close(context.WithoutCancel(ctx))
			}
			return nil, fmt.Errorf("start readers: %w", err)
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var all []readerSample
	var firstErr error
	for i, conn := range conns {
		rng := rand.New(rand.NewPCG(uint64(s.size.Seed), uint64(i)))
		wg.Go(func() {
			defer conn.Close(context.WithoutCancel(ctx))
			var mine []readerSample
			next := time.Now()
			for rctx.Err() == nil {
				t0 := time.Now()
				rows, err := conn.Query(rctx, sql, 1+rng.IntN(users))
				if err == nil {
					for rows.Next() {
						if _, err = rows.Values(); err != nil {
							break
						}
					}
					rows.Close()
					if err == nil {
						err = rows.Err()
					}
				}
				if err != nil {
					if rctx.Err() == nil {
						mu.Lock()
						if firstErr == nil {
							firstErr = fmt.Errorf("reader: %w", err)
						}
						mu.Unlock()
					}
					break
				}
				mine = append(mine, readerSample{start: t0, lat: time.Since(t0)})
				next = next.Add(interval)
				if wait := time.Until(next); wait > 0 {
					t := time.NewTimer(wait)
					select {
					case <-rctx.Done():
					case <-t.C:
					}
					t.Stop()
				} else {
					next = time.Now()
				}
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	return func() ([]readerSample, error) {
		cancel()
		wg.Wait()
		return all, firstErr
	}, nil
}

type interval struct{ from, to time.Time }

func latenciesIn(samples []readerSample, ivs []interval) []float64 {
	var out []float64
	for _, smp := range samples {
		for _, iv := range ivs {
			if !smp.start.Before(iv.from) && smp.start.Before(iv.to) {
				out = append(out, float64(smp.lat)/float64(time.Millisecond))
				break
			}
		}
	}
	return out
}

func allLatencies(samples []readerSample) []float64 {
	out := make([]float64, len(samples))
	for i, smp := range samples {
		out[i] = float64(smp.lat) / float64(time.Millisecond)
	}
	return out
}

// readerSection measures the app's query latency: on the materialized view
// with no refresh (the baseline), during refresherd's CONCURRENTLY
// refreshes, during plain REFRESHes (which lock readers out), and on a
// plain view that recomputes the aggregate on each read.
func (s *sizeEnv) readerSection(ctx context.Context) error {
	if err := s.d.waitSettled(ctx, 30*time.Minute); err != nil {
		return err
	}
	query := func(rel string) string {
		return fmt.Sprintf("SELECT * FROM %s WHERE user_id = $1 (random user; %d connections x %g/s)", rel, s.o.Readers, s.o.ReaderRate)
	}
	sleep := func(d time.Duration) error { return sleepCtx(ctx, d) }
	var rows []results.ReaderRow

	plainFor := func(cond, rel string) error {
		stop, err := s.startReaders(ctx, s.db, rel)
		if err != nil {
			return err
		}
		serr := sleep(s.o.ReaderIdle)
		smp, err := stop()
		if err = errors.Join(serr, err); err != nil {
			return fmt.Errorf("reader impact: %w", err)
		}
		rows = append(rows, results.ReaderRow{Condition: cond, Command: query(rel), Summary: stats.Summarize(allLatencies(smp))})
		return nil
	}
	if err := plainFor("materialized view, no refresh running (baseline)", s.viewSQL); err != nil {
		return err
	}

	// During refresherd's refreshes: the windows are the refreshes' own
	// start and end as the daemon logged them in refresherd.refresh_log.
	during := func(cond string, refresh func() (interval, error)) error {
		stop, err := s.startReaders(ctx, s.db, s.viewSQL)
		if err != nil {
			return err
		}
		var ivs []interval
		var runErr error
		for range s.o.ReaderRefreshes {
			if runErr = sleep(300 * time.Millisecond); runErr != nil {
				break
			}
			iv, err := refresh()
			if err != nil {
				runErr = err
				break
			}
			ivs = append(ivs, iv)
		}
		if runErr == nil {
			runErr = sleep(300 * time.Millisecond)
		}
		smp, err := stop()
		if err = errors.Join(runErr, err); err != nil {
			return fmt.Errorf("reader impact: %w", err)
		}
		rows = append(rows, results.ReaderRow{Condition: cond, Command: query(s.viewSQL), Windows: len(ivs),
			Summary: stats.Summarize(latenciesIn(smp, ivs))})
		return nil
	}
	if err := during("materialized view during refresherd's refresh (CONCURRENTLY)", func() (interval, error) {
		if _, err := s.d.manualRefresh(ctx, 30*time.Minute); err != nil {
			return interval{}, err
		}
		var iv interval
		err := s.pool.QueryRow(ctx, `SELECT started_at, finished_at FROM refresherd.refresh_log
			WHERE view_name = $1 AND result = 'success' ORDER BY id DESC LIMIT 1`, s.view.Name.String()).Scan(&iv.from, &iv.to)
		if err != nil {
			return interval{}, fmt.Errorf("read refresh_log: %w", err)
		}
		return iv, nil
	}); err != nil {
		return err
	}
	if err := during("materialized view during plain REFRESH (ACCESS EXCLUSIVE)", func() (interval, error) {
		t0 := time.Now()
		if _, err := s.pool.Exec(ctx, "REFRESH MATERIALIZED VIEW "+s.viewSQL); err != nil {
			return interval{}, fmt.Errorf("plain refresh: %w", err)
		}
		return interval{t0, time.Now()}, nil
	}); err != nil {
		return err
	}
	if err := plainFor("plain view (aggregate recomputed per read)", "public.bench_chargesummary_plain"); err != nil {
		return err
	}
	s.sz.Reader = rows
	return nil
}

// writersFor is how many writer connections sustain rate commits/s with
// fsync on: a commit takes 1-2 ms on a quiet machine, 10 ms or more on a
// busy one; idle connections cost little.
func writersFor(rate float64) int { return max(1, int(math.Ceil(rate/50))) }

// trackSpec is one freshness run: writes at rate into db from now on, with
// lags measured for commits in [start, end).
type trackSpec struct {
	db         string
	rate       float64
	start, end time.Time
	stopAtEnd  bool          // stop writing at end instead of when all are seen
	statusView string        // refresherd's view for claim checks; "" for pg_cron
	wait       time.Duration // after end, how long commits may take to be seen
	// onCommit, when set, is also told of every acknowledged insert.
	onCommit func(id int64, at time.Time)
	// lookup, when set, replaces the tracker's read of a group's total
	// (fresh.Options.Lookup): for a summary without the text id.
	lookup string
}

type trackOut struct {
	res    fresh.Result
	counts demodata.Counts
}

// track writes with demodata.Writer and follows every commit with a
// fresh.Tracker on a connection of its own until all in-window commits are
// visible (or the wait runs out: they are reported unseen).
func (s *sizeEnv) track(ctx context.Context, sp trackSpec) (trackOut, error) {
	conc := writersFor(sp.rate)
	pcfg, err := pgxpool.ParseConfig(s.cluster.URL(sp.db))
	if err != nil {
		return trackOut{}, fmt.Errorf("track: %w", err)
	}
	pcfg.MaxConns = int32(conc + 1)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return trackOut{}, fmt.Errorf("track: %w", err)
	}
	defer pool.Close()
	var baseID int64
	// The sequence's last value, not max(id): ids taken by rolled-back
	// inserts would otherwise never be acknowledged (see fresh.Options).
	if err := pool.QueryRow(ctx, `SELECT greatest(coalesce(max(id), 0),
		coalesce(pg_sequence_last_value(pg_get_serial_sequence('public.app_charge', 'id')::regclass), 0)) FROM public.app_charge`).Scan(&baseID); err != nil {
		return trackOut{}, fmt.Errorf("track: %w", err)
	}
	conn, err := pgx.Connect(ctx, s.cluster.URL(sp.db))
	if err != nil {
		return trackOut{}, fmt.Errorf("track: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	tr := fresh.New(fresh.Options{View: s.viewSQL, BaseID: baseID, WindowStart: sp.start, WindowEnd: sp.end, StatusView: sp.statusView, Lookup: sp.lookup})
	w := demodata.NewWriter(pool, s.size, int64(sp.rate)+s.size.Seed, s.logf)
	w.Concurrency = conc
	w.OnCommit = tr.Commit
	if sp.onCommit != nil {
		w.OnCommit = func(id int64, at time.Time) {
			tr.Commit(id, at)
			sp.onCommit(id, at)
		}
	}

	tctx, tcancel := context.WithCancel(ctx)
	trDone := make(chan error, 1)
	go func() { trDone <- tr.Run(tctx, conn) }()
	wctx, wcancel := context.WithCancel(ctx)
	if sp.stopAtEnd {
		wctx, wcancel = context.WithDeadline(ctx, sp.end)
	}
	var counts demodata.Counts
	var werr error
	wDone := make(chan struct{})
	go func() { counts, werr = w.Run(wctx, sp.rate, demodata.Mix{}); close(wDone) }()

	waitCtx, wait := context.WithDeadline(ctx, sp.end.Add(sp.wait))
	seen := make(chan error, 1)
	go func() {
		if sp.stopAtEnd {
			// A write in flight at the end reports its commit when it
			// returns: every commit must be tracked before "all seen".
			select {
			case <-wDone:
			case <-waitCtx.Done():
			}
		}
		seen <- tr.WaitAllSeen(waitCtx)
	}()
	var runErr error
	select {
	case err := <-seen:
		if err != nil && ctx.Err() == nil {
			s.logf("freshness: %v", err) // reported as unseen
		} else {
			runErr = err
		}
	case err := <-trDone:
		if err == nil {
			err = ctx.Err() // Run returns nil when its context ends
		}
		if err == nil {
			err = errors.New("returned early")
		}
		runErr = fmt.Errorf("track: tracker stopped: %w", err)
		trDone <- nil
	}
	wait()
	wcancel()
	<-wDone
	tcancel()
	if err := <-trDone; err != nil && runErr == nil {
		runErr = fmt.Errorf("track: %w", err)
	}
	if werr != nil && runErr == nil {
		runErr = fmt.Errorf("track: writer: %w", werr)
	}
	if counts.Errors > 0 && runErr == nil {
		runErr = fmt.Errorf("track: %d writes failed", counts.Errors)
	}
	return trackOut{res: tr.Result(), counts: counts}, runErr
}

func freshRow(system string, sp trackSpec, out trackOut) results.FreshRow {
	lags := make([]float64, len(out.res.Lags))
	for i, l := range out.res.Lags {
		lags[i] = l.Seconds()
	}
	win := sp.end.Sub(sp.start)
	return results.FreshRow{
		System: system, TargetRate: sp.rate, Window: win,
		Achieved:    float64(out.res.InWindow) / win.Seconds(),
		Lags:        lags,
		Summary:     stats.Summarize(lags),
		Unseen:      out.res.Unseen,
		Inserts:     out.counts.Inserts,
		Violations:  out.res.ClaimViolations,
		ClaimChecks: out.res.ClaimChecks,
	}
}

// freshRefresherd measures refresherd's freshness lag under sustained
// writes at rate, with the shipped settings.
func (s *sizeEnv) freshRefresherd(ctx context.Context, rate float64) error {
	if err := s.d.waitSettled(ctx, 30*time.Minute); err != nil {
		return err
	}
	n0, sum0, err := s.d.durations(ctx)
	if err != nil {
		return err
	}
	cpu0, err := sysinfo.CPUTicks(s.d.p.PID())
	if err != nil {
		return err
	}
	t0 := time.Now()
	refresh := s.refresh
	if refresh == 0 || math.IsNaN(refresh) {
		refresh = 60
	}
	sp := trackSpec{
		db: s.db, rate: rate, start: t0, end: t0.Add(s.o.FreshWindow), statusView: s.view.Name.String(),
		wait: max(s.view.MaxDelay, s.view.Debounce) + time.Duration(3*refresh*float64(time.Second)) + 30*time.Second,
	}
	out, err := s.track(ctx, sp)
	if err != nil {
		return err
	}
	elapsed := time.Since(t0)
	cpu1, err := sysinfo.CPUTicks(s.d.p.PID())
	if err != nil {
		return err
	}
	n1, sum1, err := s.d.durations(ctx)
	if err != nil {
		return err
	}
	row := freshRow(results.SystemRefresherd, sp, out)
	row.Refreshes = int(n1 - n0)
	if n1 > n0 {
		row.RefreshMean = (sum1 - sum0) / float64(n1-n0)
	}
	row.DaemonCPU = float64(cpu1-cpu0) / float64(s.clk) / elapsed.Seconds()
	row.Command = fmt.Sprintf("demodata.Writer: single-row autocommit INSERTs at %g/s from %d connections, for %s; a separate connection polls the summary every 20 ms", rate, writersFor(rate), s.o.FreshWindow)
	if row.Timeline, err = s.refreshTimeline(ctx, s.db, t0); err != nil {
		return err
	}
	if err := s.d.waitSettled(ctx, 30*time.Minute); err != nil {
		return err
	}
	row.Verified = s.verify(ctx, s.db)
	s.sz.Freshness = append(s.sz.Freshness, row)
	s.logf("refresherd at %g/s: %d commits in window, lag median %.2f s, p99 %.2f s, %d refreshes", rate, out.res.InWindow, row.Summary.Median, row.Summary.P99, row.Refreshes)
	return nil
}

// refreshTimeline reads the view's successful refreshes that finished
// since from refresherd's own log: how long each took and the gaps between
// them, which make a change's worst lag under back-to-back refreshes.
func (s *sizeEnv) refreshTimeline(ctx context.Context, db string, since time.Time) ([]results.Refresh, error) {
	conn, err := pgx.Connect(ctx, s.cluster.URL(db))
	if err != nil {
		return nil, fmt.Errorf("read refresh log: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT started_at, finished_at FROM refresherd.refresh_log
		WHERE view_name = $1 AND result = 'success' AND finished_at >= $2 ORDER BY started_at`, s.view.Name.String(), since)
	if err != nil {
		return nil, fmt.Errorf("read refresh log: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[results.Refresh])
	if err != nil {
		return nil, fmt.Errorf("read refresh log: %w", err)
	}
	return out, nil
}

// verify compares the view with the aggregate in one snapshot.
func (s *sizeEnv) verify(ctx context.Context, db string) string {
	conn, err := pgx.Connect(ctx, s.cluster.URL(db))
	if err != nil {
		return "not checked: " + err.Error()
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return "not checked: " + err.Error()
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	missing, extra, err := demodata.Diff(ctx, tx, s.view.Name.String())
	if err != nil {
		return "not checked: " + err.Error()
	}
	if missing == 0 && extra == 0 {
		return "view = aggregate"
	}
	return fmt.Sprintf("MISMATCH: %d rows missing, %d extra", missing, extra)
}

// cronRun schedules pg_cron's every-minute REFRESH ... CONCURRENTLY in db,
// tracks writes at rate and unschedules the job.
func (s *sizeEnv) cronRun(ctx context.Context, db string, rate float64, sp trackSpec) (results.FreshRow, error) {
	admin, err := pgx.Connect(ctx, s.cluster.URL("postgres"))
	if err != nil {
		return results.FreshRow{}, fmt.Errorf("pg_cron run: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	cmd := "REFRESH MATERIALIZED VIEW CONCURRENTLY " + s.viewSQL
	var job int64
	if err := admin.QueryRow(ctx, `SELECT cron.schedule_in_database($1, '* * * * *', $2, $3)`,
		"bench_"+db+"_"+strconv.Itoa(int(rate)), cmd, db).Scan(&job); err != nil {
		return results.FreshRow{}, fmt.Errorf("pg_cron run: schedule: %w", err)
	}
	defer func() {
		if _, err := admin.Exec(context.WithoutCancel(ctx), `SELECT cron.unschedule($1::bigint)`, job); err != nil {
			s.logf("pg_cron: unschedule %d: %v", job, err)
		}
	}()
	sp.db, sp.rate = db, rate
	out, err := s.track(ctx, sp)
	if err != nil {
		return results.FreshRow{}, fmt.Errorf("pg_cron run: %w", err)
	}
	row := freshRow(results.SystemPgCron, sp, out)
	var failed int
	var msg *string
	if err := admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'),
			coalesce(avg(extract(epoch FROM end_time - start_time)) FILTER (WHERE status = 'succeeded'), 0)::float8,
			string_agg(DISTINCT return_message, '; ') FILTER (WHERE status = 'failed')
		FROM cron.job_run_details WHERE jobid = $1`, job).Scan(&row.Refreshes, &failed, &row.RefreshMean, &msg); err != nil {
		return results.FreshRow{}, fmt.Errorf("pg_cron run: job details: %w", err)
	}
	if failed > 0 {
		row.Note = fmt.Sprintf("%d pg_cron runs failed: %s", failed, deref(msg))
	}
	row.Command = fmt.Sprintf("SELECT cron.schedule_in_database(..., '* * * * *', '%s', '%s'); demodata.Writer at %g/s from %d connections; a separate connection polls the summary every 20 ms", cmd, db, rate, writersFor(rate))
	return row, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// cronFull measures pg_cron at rate in full mode: writes start now, the
// measured window runs from the next minute boundary for CronMinutes
// minutes (so it covers whole minutes in steady state), and writes go on
// until every commit in it is visible.
func (s *sizeEnv) cronFull(ctx context.Context, rate float64) error {
	start := nextMinute(time.Now().Add(2 * time.Second))
	sp := trackSpec{start: start, end: start.Add(time.Duration(s.o.CronMinutes) * time.Minute), wait: s.cronWait()}
	row, err := s.cronRun(ctx, s.cronDBs[0], rate, sp)
	if err != nil {
		return err
	}
	row.Verified = "per-charge content check only (writes continue past the last tick)"
	s.sz.Freshness = append(s.sz.Freshness, row)
	s.logf("pg_cron at %g/s: lag median %.2f s, p99 %.2f s", rate, row.Summary.Median, row.Summary.P99)
	return nil
}

// cronWait is how long after its window a pg_cron commit may take to show:
// the next tick plus a refresh, with room.
func (s *sizeEnv) cronWait() time.Duration {
	r := s.refresh
	if r == 0 || math.IsNaN(r) {
		r = 60
	}
	return time.Minute + time.Duration(3*r*float64(time.Second)) + 30*time.Second
}

// cronStopBefore: quick mode's writes stop this long before pg_cron's tick.
const cronStopBefore = 2 * time.Second

// quickCronAndIdle is quick mode's pg_cron sample: one database per rate,
// written at the same time from now until the next minute boundary, where
// pg_cron's tick refreshes both; the writes stop cronStopBefore the tick, so
// that none is in flight at its snapshot (one that commits after it is seen
// only at the next tick, a minute later). Meanwhile the daemon, whose
// database sees no change, is measured idle.
func (s *sizeEnv) quickCronAndIdle(ctx context.Context) error {
	s.logf("-- pg_cron (one tick) and idle")
	if !s.cronOK {
		return s.idleSection(ctx, s.o.CronMinWindow, nil)
	}
	now := time.Now()
	end := nextMinute(now)
	if end.Add(-cronStopBefore).Sub(now) < s.o.CronMinWindow {
		end = end.Add(time.Minute)
	}
	return s.idleSection(ctx, 0, func(ctx context.Context) error {
		rows := make([]results.FreshRow, len(s.o.Rates))
		errs := make([]error, len(s.o.Rates))
		var wg sync.WaitGroup
		for i, rate := range s.o.Rates {
			wg.Go(func() {
				sp := trackSpec{start: now, end: end.Add(-cronStopBefore), stopAtEnd: true, wait: s.cronWait()}
				rows[i], errs[i] = s.cronRun(ctx, s.cronDBs[i], rate, sp)
				if errs[i] == nil {
					rows[i].Verified = s.verify(ctx, s.cronDBs[i])
					rows[i].Note = strings.TrimPrefix(rows[i].Note+"; quick mode: one tick, written concurrently with the other rate's database", "; ")
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		for _, r := range rows {
			s.logf("pg_cron at %g/s: lag median %.2f s, p99 %.2f s", r.TargetRate, r.Summary.Median, r.Summary.P99)
		}
		s.sz.Freshness = append(s.sz.Freshness, rows...)
		return nil
	})
}

// idleSection measures the settled daemon's refreshes and CPU time over d
// (or while during runs, on other databases) and its memory at the end.
func (s *sizeEnv) idleSection(ctx context.Context, d time.Duration, during func(context.Context) error) error {
	if err := s.d.waitSettled(ctx, 30*time.Minute); err != nil {
		return err
	}
	pid := s.d.p.PID()
	done0, skip0, err := s.d.counts(ctx)
	if err != nil {
		return err
	}
	cpu0, err := sysinfo.CPUTicks(pid)
	if err != nil {
		return err
	}
	t0 := time.Now()
	overlap := ""
	if during != nil {
		overlap = "pg_cron's quick-mode run wrote to other databases of the same server; the daemon's database saw no change"
		if err := during(ctx); err != nil {
			return err
		}
	} else if err := sleepCtx(ctx, d); err != nil {
		return err
	}
	elapsed := time.Since(t0)
	cpu1, err := sysinfo.CPUTicks(pid)
	if err != nil {
		return err
	}
	done1, skip1, err := s.d.counts(ctx)
	if err != nil {
		return err
	}
	mem, err := sysinfo.ProcMemory(pid)
	if err != nil {
		return err
	}
	s.run.Idle = &results.Idle{
		SizeLabel: s.sz.Label, Seconds: elapsed.Seconds(),
		CPUSeconds: float64(cpu1-cpu0) / float64(s.clk),
		Refreshes:  int(done1 - done0), Skipped: int(skip1 - skip0),
		RSSBytes: mem.RSS, PeakRSSBytes: mem.PeakRSS, ClockTicks: s.clk, Overlap: overlap,
	}
	s.logf("idle %.0f s: %.0f refreshes, %.2f s CPU, RSS %d MiB", elapsed.Seconds(), done1-done0, s.run.Idle.CPUSeconds, mem.RSS>>20)
	return nil
}

// writerScript is the pgbench script of the writer test at this size.
func (s *sizeEnv) writerScript() string { return WriterScript(s.size) }

// WriterScript is the writer test's pgbench script for data of size sz: one
// single-row autocommit INSERT of a charge as the app writes it (20%
// without a job), nothing else.
func WriterScript(sz demodata.Size) string {
	return fmt.Sprintf(`\set uid random(1, %d)
\set job random(1, %d)
\set m random(0, %d)
\set nojob random(1, 5)
\if :nojob = 1
INSERT INTO app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 12.34, (DATE '%s' - make_interval(months => :m))::date, :uid, NULL);
\else
INSERT INTO app_charge (type, amount, month, user_id, job_id) VALUES ('sw', 56.78, (DATE '%s' - make_interval(months => :m))::date, :uid, :job);
\endif
`, sz.Users, sz.Jobs, sz.Months-1, demodata.LastMonth, demodata.LastMonth)
}

// writerSteps measure insert throughput per change-detection mode. Each
// mode has its own copy of the data and its own daemon running with that
// change_detection (debounce, max_delay and the schedule raised, target_lag off, so no
// refresh competes with the writers: refresh cost is measured separately),
// all started and settled first and kept running, listening or polling,
// throughout. Then, per round and client count, the modes run back to back
// in an order that rotates with the round: this machine's throughput drifts
// by tens of percent over minutes, so a mode is compared with the baseline
// run next to it in time (the ratio of a round), not with one minutes
// away. The last step stops the daemons and computes the medians.
func (s *sizeEnv) writerSteps() []step {
	wr := &results.Writer{
		SizeLabel: s.sz.Label, Duration: s.o.WriterDuration, Rounds: s.o.WriterRounds,
		Clients: s.o.WriterClients, Script: s.writerScript(),
		Command: pgtools.Pgbench{DB: "writer_MODE_" + strings.ToLower(s.sz.Label), Script: "insert_charge.sql", Duration: s.o.WriterDuration}.Command(),
	}
	modes := make([]*results.WriterMode, len(s.o.Modes))
	for i, m := range s.o.Modes {
		modes[i] = &results.WriterMode{Mode: m, Available: true, TPS: map[int][]float64{}, Median: map[int]float64{},
			Ratios: map[int][]float64{}, MedianRatio: map[int]float64{}}
	}
	script := filepath.Join(s.work, "insert_charge.sql")
	warmUp := max(time.Second, s.o.WriterDuration/3)
	done0 := map[string]float64{}
	steps := []step{{"writer impact: daemons and warm-up", func(ctx context.Context) error {
		if err := os.WriteFile(script, []byte(wr.Script), 0o644); err != nil {
			return fmt.Errorf("writer impact: %w", err)
		}
		for _, m := range modes {
			if err := s.writerDaemon(ctx, m); err != nil {
				return fmt.Errorf("writer impact, mode %s: %w", m.Mode, err)
			}
			if !m.Available {
				continue
			}
			// Each copy starts cold (not in shared buffers): warm it up
			// untimed so that the first run measured does not pay for it.
			warm := pgtools.Pgbench{DB: s.writerDBs[m.Mode], Script: script, Clients: 8, Duration: warmUp}
			if err := warm.Warm(ctx, s.srv); err != nil {
				return fmt.Errorf("writer impact, mode %s: warm-up: %w", m.Mode, err)
			}
			done, _, err := s.writerDaemons[m.Mode].counts(ctx)
			if err != nil {
				return fmt.Errorf("writer impact, mode %s: %w", m.Mode, err)
			}
			done0[m.Mode] = done
		}
		return nil
	}, func() time.Duration {
		return time.Duration(len(modes)) * (warmUp + 3*s.refreshEstimate() + 3*time.Second)
	}}}
	for r := 0; r < s.o.WriterRounds; r++ {
		for _, c := range s.o.WriterClients {
			steps = append(steps, step{fmt.Sprintf("writer impact: round %d, %d clients", r+1, c), func(ctx context.Context) error {
				var base float64
				var measured []*results.WriterMode
				for i := range modes {
					m := modes[(i+r)%len(modes)]
					if !m.Available {
						continue
					}
					pb := pgtools.Pgbench{DB: s.writerDBs[m.Mode], Script: script, Clients: c, Duration: s.o.WriterDuration}
					tps, err := pb.Run(ctx, s.srv)
					if err != nil {
						return fmt.Errorf("writer impact, mode %s: %w", m.Mode, err)
					}
					m.TPS[c] = append(m.TPS[c], tps)
					measured = append(measured, m)
					if m.Mode == results.BaselineMode {
						base = tps
					}
					s.logf("mode %s, %d clients: %.0f TPS", m.Mode, c, tps)
				}
				if base > 0 {
					for _, m := range measured {
						m.Ratios[c] = append(m.Ratios[c], m.TPS[c][len(m.TPS[c])-1]/base)
					}
				}
				return nil
			}, func() time.Duration { return time.Duration(len(modes)) * (s.o.WriterDuration + 500*time.Millisecond) }})
		}
	}
	return append(steps, step{"writer impact: summary", func(ctx context.Context) error {
		for _, m := range modes {
			if d := s.writerDaemons[m.Mode]; d != nil {
				done1, _, err := d.counts(ctx)
				if err != nil {
					return fmt.Errorf("writer impact, mode %s: %w", m.Mode, err)
				}
				m.Refreshes = int(done1 - done0[m.Mode])
			}
			for c, xs := range m.TPS {
				m.Median[c] = stats.Median(xs)
			}
			for c, xs := range m.Ratios {
				m.MedianRatio[c] = stats.Median(xs)
			}
			wr.Modes = append(wr.Modes, *m)
		}
		s.run.Writer = wr
		s.stopWriterDaemons(ctx)
		return nil
	}, func() time.Duration { return time.Second }})
}

// writerDaemon starts mode m's daemon on its copy of the data and waits
// until it has settled; a mode the daemon rejects is marked unavailable.
func (s *sizeEnv) writerDaemon(ctx context.Context, m *results.WriterMode) error {
	db := s.writerDBs[m.Mode]
	ms, err := s.startModeDaemon(ctx, "config-"+m.Mode+".yaml", db, m.Mode, [][2]string{
		{"change_detection", m.Mode}, {"debounce", "1h"}, {"max_delay", "1h"}, {"target_lag", "0s"}, {"schedule", "@every 24h"},
	}, func(d *daemon) { s.writerDaemons[m.Mode] = d })
	m.ConfigDiff = ms.diff
	if err != nil {
		return err
	}
	if ms.d == nil {
		m.Available, m.Unavailable = false, ms.unavailable
		return nil
	}
	return s.triggers(ctx, db, m)
}

// stopWriterDaemons stops the writer test's daemons (also after a failed
// step); they finish exiting in the background, then their copies go.
func (s *sizeEnv) stopWriterDaemons(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	for mode, d := range s.writerDaemons {
		db := s.writerDBs[mode]
		delete(s.writerDaemons, mode)
		delete(s.writerDBs, mode)
		t0, err := d.terminate(ctx)
		if err != nil {
			s.problem("writer test, mode %s: %v", mode, err)
		}
		s.reap(d, t0, "writer test daemon, mode "+mode, func() { s.dropDB(ctx, db) })
	}
}

// waitLeaderLockFree waits until no session holds an advisory lock in db
// (the writer or detection test's copy): the stopping daemon has unlocked
// its leader lock.
func (s *sizeEnv) waitLeaderLockFree(ctx context.Context, db string) error {
	conn, err := pgx.Connect(ctx, s.cluster.URL(db))
	if err != nil {
		return fmt.Errorf("wait for the leader lock: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var n int
		if err := conn.QueryRow(wctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n); err != nil {
			return fmt.Errorf("wait for the leader lock: %w", err)
		}
		if n == 0 {
			return nil
		}
		if err := sleepCtx(wctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("wait for the leader lock: %w", err)
		}
	}
}

// triggers records the user triggers on app_charge in db, where mode m runs.
func (s *sizeEnv) triggers(ctx context.Context, db string, m *results.WriterMode) error {
	conn, err := pgx.Connect(ctx, s.cluster.URL(db))
	if err != nil {
		return fmt.Errorf("list triggers: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.app_charge'::regclass AND NOT tgisinternal ORDER BY tgname`)
	if err != nil {
		return fmt.Errorf("list triggers: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list triggers: %w", err)
	}
	for _, n := range names {
		if !slices.Contains(m.Triggers, n) {
			m.Triggers = append(m.Triggers, n)
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
