package harness

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/refresherd/refresherd/bench/internal/detect"
	"github.com/refresherd/refresherd/bench/internal/results"
	"github.com/refresherd/refresherd/bench/internal/stats"
	"github.com/refresherd/refresherd/bench/internal/sysinfo"
	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/internal/demodata"
)

// statsFlushDelay is how late PostgreSQL 15 may publish a backend's table
// statistics (PGSTAT_IDLE_INTERVAL; refresh/detect_stats.go's bound).
const statsFlushDelay = 10 * time.Second

// detectTail is how long writes go on after the last commit whose
// detection is measured: a backend that keeps writing publishes its
// statistics at most 1 s apart (PGSTAT_MIN_INTERVAL), and a poll follows
// within the poll interval; twice that for room.
func detectTail(poll time.Duration) time.Duration { return time.Second + 2*poll }

// postWrites is how long the reads go on, in stats mode, after the
// writers' connections closed (they publish their statistics as they exit):
// a poll and room.
func postWrites(poll time.Duration) time.Duration { return poll + 100*time.Millisecond }

// probeQuiet is how long the daemon must show no change event before a
// probe: longer than an event of an earlier write can take to show (for
// notify, the drain its ring causes follows at once; a change-log row or
// published statistics at the next poll). Each probe waits for its own
// event, so no probe leaves notify a row for its fallback poll.
func probeQuiet(mode string, poll time.Duration) time.Duration {
	if mode == config.DetectNotify {
		return 100 * time.Millisecond
	}
	return poll + 50*time.Millisecond
}

// detectSteps measure change detection at this size, one step per mode
// (but none): the daemon with that change_detection (the shipped config
// otherwise) on the detection test's own copy of the data, isolated probe
// commits, then sustained writes at each detection rate.
func (s *sizeEnv) detectSteps() []step {
	window := s.o.DetectWindow
	dt := &results.Detect{
		SizeLabel: s.sz.Label, PollInterval: s.view.PollInterval, Debounce: s.view.Debounce, MaxDelay: s.view.MaxDelay,
		Scrape: s.o.DetectScrape, Window: window, Tail: min(detectTail(s.view.PollInterval), window/2),
		StopAtEnd: s.o.Quick(), StatsGrace: postWrites(s.view.PollInterval), Probes: s.o.DetectProbes,
	}
	var periods []float64
	var steps []step
	for _, mode := range s.o.Modes {
		if mode == config.DetectNone {
			continue
		}
		steps = append(steps, step{"change detection: mode " + mode, func(ctx context.Context) error {
			s.run.Detect = dt // partial results show if a later step fails
			dt.Modes = append(dt.Modes, results.DetectMode{Mode: mode, Available: true})
			m := &dt.Modes[len(dt.Modes)-1]
			err := s.detectMode(ctx, dt, m, func(p time.Duration) {
				if p > 0 {
					periods = append(periods, p.Seconds())
					dt.ScrapeMedian = time.Duration(stats.Median(periods) * float64(time.Second))
				}
			})
			if err != nil {
				return fmt.Errorf("change detection, mode %s: %w", mode, err)
			}
			return nil
		}, func() time.Duration {
			// Start-up, probes, per rate the window, the refresh that shows
			// it and a settle, the content check.
			r := s.refreshEstimate()
			probes := time.Duration(dt.Probes) * (probeQuiet(mode, dt.PollInterval) + 200*time.Millisecond)
			drain := dt.MaxDelay // writes go on until a max_delay refresh shows them all
			if dt.StopAtEnd {
				drain = dt.Debounce
			}
			sustained := time.Duration(len(s.o.DetectRates)) * (window + drain + 3*r + 1500*time.Millisecond)
			return time.Second + 3*r + probes + sustained
		}})
	}
	return steps
}

// detectMode runs one mode: start the daemon, probes, sustained writes at
// each rate, a content check, stop.
func (s *sizeEnv) detectMode(ctx context.Context, dt *results.Detect, m *results.DetectMode, period func(time.Duration)) error {
	var d *daemon
	defer func() {
		if d == nil {
			return
		}
		ctx := context.WithoutCancel(ctx)
		t0, err := d.terminate(ctx)
		if err != nil {
			s.problem("detection test, mode %s: %v", m.Mode, err)
		}
		s.reap(d, t0, "detection test daemon, mode "+m.Mode, nil)
		if err := s.waitLeaderLockFree(ctx, s.detectDB); err != nil {
			s.problem("detection test, mode %s: %v", m.Mode, err)
		}
	}()
	ms, err := s.startModeDaemon(ctx, "config-detect-"+m.Mode+".yaml", s.detectDB, m.Mode,
		// target_lag off: this measures when the daemon learns of a change;
		// a refresh planned for the target can start in the same read
		// interval and hide the event (stats dates its changes up to 10 s
		// back, so its target is always due at once).
		[][2]string{{"change_detection", m.Mode}, {"target_lag", "0s"}}, func(started *daemon) { d = started })
	m.ConfigDiff = ms.diff
	if err != nil {
		return err
	}
	if ms.d == nil {
		m.Available, m.Unavailable = false, ms.unavailable
		return nil
	}

	if dt.Probes > 0 {
		row, p, err := s.detectProbes(ctx, d, m)
		if err != nil {
			return err
		}
		m.Rows = append(m.Rows, row)
		period(p)
		s.logf("mode %s, isolated probes: detection median %s, p99 %s (%d undetected, %d discarded)", m.Mode,
			fmtSecs(row.Delay.Median), fmtSecs(row.Delay.P99), row.Undetected, row.Discarded)
	}
	for _, rate := range s.o.DetectRates {
		if err := s.settleNow(ctx, d); err != nil {
			return err
		}
		row, p, err := s.detectSustained(ctx, d, m.Mode, rate, dt)
		if err != nil {
			return err
		}
		m.Rows = append(m.Rows, row)
		period(p)
		s.logf("mode %s at %g/s: detection median %s, p99 %s (%d commits, %d undetected); freshness median %s, p99 %s", m.Mode, rate,
			fmtSecs(row.Delay.Median), fmtSecs(row.Delay.P99), row.Delay.N, row.Undetected, fmtSecs(row.Fresh.Median), fmtSecs(row.Fresh.P99))
	}
	if err := s.settleNow(ctx, d); err != nil {
		return err
	}
	m.Verified = s.verify(ctx, s.detectDB)
	return nil
}

func fmtSecs(x float64) string {
	if math.IsNaN(x) {
		return "n/a"
	}
	return fmt.Sprintf("%.3f s", x)
}

// settleNow ends what a measurement left pending: a change still waiting
// for its debounce is refreshed at once (SIGUSR1) rather than after it; then
// it waits until the daemon is settled.
func (s *sizeEnv) settleNow(ctx context.Context, d *daemon) error {
	st, err := d.status(ctx)
	if err != nil {
		return err
	}
	if st.PendingChanges > 0 && !st.InProgress {
		if err := d.p.Signal(syscall.SIGUSR1); err != nil {
			return fmt.Errorf("settle: %w", err)
		}
	}
	return d.waitSettled(ctx, 30*time.Minute)
}

// scrape starts reading the daemon's /status every DetectScrape and waits
// for the first two reads.
func (s *sizeEnv) scrape(ctx context.Context, d *daemon) (*detect.Scraper, error) {
	sc := detect.Start(ctx, s.o.DetectScrape, func(ctx context.Context) (int64, bool, error) {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := d.status(ctx)
		return st.PendingChanges, st.InProgress, err
	})
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for len(sc.Samples()) < 2 {
		if err := sc.Wait(wctx, len(sc.Samples())); err != nil {
			_, failed, lastErr := sc.Stop()
			return nil, fmt.Errorf("read /status: %d failed reads (%v): %w", failed, lastErr, err)
		}
	}
	return sc, nil
}

// stopScrape stops the reads and records failed ones as a problem.
func (s *sizeEnv) stopScrape(sc *detect.Scraper, what string) []detect.Sample {
	samples, failed, lastErr := sc.Stop()
	if failed > 0 {
		s.problem("detection test, %s: %d of %d reads of /status failed (last: %v); the delays span the gaps", what, failed, failed+len(samples), lastErr)
	}
	return samples
}

// detectProbes writes isolated probe commits: each one INSERT on a new
// connection, after the daemon has shown no change event for probeQuiet,
// and waits for its change event before the next.
func (s *sizeEnv) detectProbes(ctx context.Context, d *daemon, m *results.DetectMode) (results.DetectRow, time.Duration, error) {
	quiet := probeQuiet(m.Mode, s.view.PollInterval)
	m.ProbeQuiet = quiet
	sc, err := s.scrape(ctx, d)
	if err != nil {
		return results.DetectRow{}, 0, err
	}
	defer sc.Stop()
	rng := rand.New(rand.NewPCG(uint64(s.size.Seed), 0xde7ec7))
	insert := `INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 12.34, $1::date, $2, NULL)`
	// A stats probe may be published only after the flush delay; the
	// others are seen within a poll.
	timeout := statsFlushDelay + s.view.PollInterval + 5*time.Second
	row := results.DetectRow{Command: fmt.Sprintf("%d x: on a new connection, `%s` (random user, month %s), once the daemon has shown no change event for %s; the next once this one's event is seen",
		s.o.DetectProbes, insert, demodata.LastMonth, quiet)}
	var delays []float64
	t0 := time.Now()
	for range s.o.DetectProbes {
		if err := waitQuiet(ctx, sc, quiet, time.Minute); err != nil {
			return row, 0, fmt.Errorf("probes: %w", err)
		}
		conn, err := pgx.Connect(ctx, s.cluster.URL(s.detectDB))
		if err != nil {
			return row, 0, fmt.Errorf("probes: %w", err)
		}
		send := time.Now()
		_, err = conn.Exec(ctx, insert, demodata.LastMonth, 1+rng.IntN(s.size.Users))
		ack := time.Now()
		_ = conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return row, 0, fmt.Errorf("probes: insert: %w", err)
		}
		row.Inserts++
		deadline := ack.Add(timeout)
	wait:
		for {
			samples, n := sc.Since(send)
			delay, st := detect.ProbeDelay(samples, send, ack)
			switch st {
			case detect.Seen:
				delays = append(delays, delay.Seconds())
				break wait
			case detect.Ambiguous:
				row.Discarded++
				break wait
			}
			if time.Now().After(deadline) {
				row.Undetected++
				break wait
			}
			wctx, cancel := context.WithDeadline(ctx, deadline)
			err := sc.Wait(wctx, n)
			cancel()
			if err != nil && ctx.Err() != nil {
				return row, 0, ctx.Err()
			}
		}
	}
	row.Window = time.Since(t0)
	samples := s.stopScrape(sc, "mode "+m.Mode+", probes")
	row.Delays = delays
	row.Delay = stats.Summarize(delays)
	return row, detect.Period(samples), nil
}

// waitQuiet waits until the reads show no change event for d.
func waitQuiet(ctx context.Context, sc *detect.Scraper, d, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	for {
		samples, n := sc.Since(t0)
		if detect.QuietFor(samples, t0, d) {
			return nil
		}
		if err := sc.Wait(ctx, n); err != nil {
			return fmt.Errorf("wait for %s without a change event: %w", d, err)
		}
	}
}

// detectSustained writes at rate for the window, as the freshness section
// does (demodata.Writer; fresh.Tracker on a connection of its own), while
// the daemon's state is read every DetectScrape. Detection is measured for
// the commits acknowledged before the window's last Tail; freshness for
// all in the window.
func (s *sizeEnv) detectSustained(ctx context.Context, d *daemon, mode string, rate float64, dt *results.Detect) (results.DetectRow, time.Duration, error) {
	n0, sum0, err := d.durations(ctx)
	if err != nil {
		return results.DetectRow{}, 0, err
	}
	cpu0, err := sysinfo.CPUTicks(d.p.PID())
	if err != nil {
		return results.DetectRow{}, 0, err
	}
	sc, err := s.scrape(ctx, d)
	if err != nil {
		return results.DetectRow{}, 0, err
	}
	defer sc.Stop()
	refresh := s.refresh
	if refresh == 0 || math.IsNaN(refresh) {
		refresh = 60
	}
	t0 := time.Now()
	detectEnd := t0.Add(dt.Window - dt.Tail)
	var mu sync.Mutex
	var acks []time.Time
	sp := trackSpec{
		db: s.detectDB, rate: rate, start: t0, end: t0.Add(dt.Window), stopAtEnd: dt.StopAtEnd, statusView: s.view.Name.String(),
		wait: max(s.view.MaxDelay, s.view.Debounce) + time.Duration(3*refresh*float64(time.Second)) + 30*time.Second,
		onCommit: func(_ int64, at time.Time) {
			if !at.Before(t0) && at.Before(detectEnd) {
				mu.Lock()
				acks = append(acks, at)
				mu.Unlock()
			}
		},
	}
	out, err := s.track(ctx, sp)
	if err != nil {
		return results.DetectRow{}, 0, err
	}
	// The writers' connections are closed: a backend publishes the
	// statistics it still held as it exits. Let the daemon poll that
	// before the reads stop, so the next run starts quiet. (The other
	// modes saw every commit when it committed, or at the next poll: long
	// before the last one was visible.)
	if mode == config.DetectStats {
		if err := sleepCtx(ctx, dt.StatsGrace); err != nil {
			return results.DetectRow{}, 0, err
		}
	}
	samples := s.stopScrape(sc, fmt.Sprintf("%g/s", rate))
	elapsed := time.Since(t0)
	cpu1, err := sysinfo.CPUTicks(d.p.PID())
	if err != nil {
		return results.DetectRow{}, 0, err
	}
	n1, sum1, err := d.durations(ctx)
	if err != nil {
		return results.DetectRow{}, 0, err
	}
	mu.Lock()
	acks = slices.Clone(acks)
	mu.Unlock()
	slices.SortFunc(acks, time.Time.Compare)
	delays, undetected := detect.Delays(samples, acks)
	fr := freshRow(results.SystemRefresherd, sp, out)
	row := results.DetectRow{
		Rate: rate, Achieved: fr.Achieved, Window: dt.Window,
		Delays: secsOf(delays), Undetected: undetected,
		Lags: fr.Lags, Fresh: fr.Summary, Unseen: fr.Unseen, Violations: fr.Violations, ClaimChecks: fr.ClaimChecks,
		Refreshes: int(n1 - n0), DaemonCPU: float64(cpu1-cpu0) / float64(s.clk) / elapsed.Seconds(),
		Inserts: out.counts.Inserts,
	}
	row.Delay = stats.Summarize(row.Delays)
	if n1 > n0 {
		row.RefreshMean = (sum1 - sum0) / float64(n1-n0)
	}
	stop := "writes go on until every commit of the window is visible"
	if dt.StopAtEnd {
		stop = "writes stop at its end"
	}
	row.Command = fmt.Sprintf("demodata.Writer: single-row autocommit INSERTs at %g/s from %d connections for a %s window (%s)", rate, writersFor(rate), dt.Window, stop)
	return row, detect.Period(samples), nil
}

func secsOf(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = d.Seconds()
	}
	return out
}
