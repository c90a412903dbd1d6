// Package fresh measures freshness lag: the time from a charge's commit to
// the moment a separate reader sees it in the summary view, judged by the
// view's content, not by what the refresher claims.
//
// Every inserted charge belongs to one summary row (its user, job and
// month). Inserts only add positive amounts, so the row's hardware +
// software total only grows, and a charge is visible exactly when that
// total reaches the group's pre-run sum plus the amounts of the run's
// charges in the group up to and including this one. A refresh reflects
// every commit before its snapshot, so the visible charges are a prefix of
// the commit order: each poll checks the oldest unseen charge and, when it
// has become visible, binary-searches how far the prefix now reaches, all in
// one REPEATABLE READ snapshot.
//
// Commit order is approximated by the order in which commits were
// acknowledged (Writer.OnCommit times). With several writer connections two
// commits in the same group acknowledged within the same millisecond can be
// ordered the other way round; such a charge is then seen one refresh late.
// That is rare and only ever over-states lag.
package fresh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configure a Tracker.
type Options struct {
	// View is the summary relation, already quoted (e.g. "public"."x").
	View string
	// BaseID: every charge with id <= BaseID existed before the run; the
	// run's inserts all have larger ids. Best the id sequence's last value
	// (ids between it and the run's first are never acknowledged, and the
	// tracker reads every row beyond the highest id up to which all were).
	BaseID int64
	// WindowStart and WindowEnd bound the commits whose lag is measured
	// (acknowledged in [WindowStart, WindowEnd)); others are tracked, as they
	// add to their groups' sums, but not counted.
	WindowStart, WindowEnd time.Time
	// StatusView, when set, is the view name to read
	// refresherd.data_as_of(StatusView) with in each poll, to check the
	// daemon's claim against the content.
	StatusView string
	// Every is the poll interval (default 20 ms).
	Every time.Duration
	// Lookup, when set, is the query that reads a group's total in cents
	// from the summary, given the group's key as $1 (the shipped view's id,
	// user_id:job_id-or-dash:YYYY-MM-DD), for a summary that has no such id
	// column; no row means not visible. Default: View's hardware + software
	// WHERE id = $1.
	Lookup string
}

// LookupByGroup is a Lookup for a summary with user_id, job_id, month,
// hardware and software columns but no id (e.g. a pg_ivm IMMV).
func LookupByGroup(view string) string {
	return `SELECT ((coalesce(hardware, 0) + coalesce(software, 0)) * 100)::bigint FROM ` + view + `
WHERE user_id = split_part($1, ':', 1)::bigint AND month = split_part($1, ':', 3)::date
  AND job_id IS NOT DISTINCT FROM nullif(split_part($1, ':', 2), '-')::bigint`
}

// Result is what a Tracker measured.
type Result struct {
	// Lags of the in-window commits that became visible.
	Lags []time.Duration
	// InWindow is how many in-window commits there were; Unseen of them
	// never became visible before the tracker stopped.
	InWindow, Unseen int
	// ClaimViolations counts charges that refresherd.data_as_of said were
	// in the view (as-of at or after their commit acknowledgement) while the
	// content did not show them yet. 0 is the only good value.
	ClaimViolations int
	// Polls and the time one poll took (median), to judge the reader's cost.
	Polls       int
	PollMedian  time.Duration
	ClaimChecks bool
}

type commit struct {
	id int64
	at time.Time
}

type charge struct {
	id      int64
	at      time.Time
	key     string
	need    int64 // cents the group total must reach
	inWin   bool
	flagged bool // counted as a claim violation already
}

type group struct{ base, cum int64 }

// Tracker follows a run's commits until they are visible.
type Tracker struct {
	o Options

	mu        sync.Mutex
	incoming  []commit
	inWindow  int
	seenInWin int
	lags      []time.Duration
	violation int
	polls     int
	pollTimes []time.Duration
	lastPoll  time.Time // start of the last completed poll
	pendingIn int       // in-window charges received but not yet visible
	changed   chan struct{}

	// Owned by Run's goroutine.
	pending []*charge
	groups  map[string]*group
	// Every id in (BaseID, mark] is an admitted charge; above holds the
	// admitted ids beyond it. See admit.
	mark  int64
	above map[int64]bool
}

// New returns a tracker; feed it with Commit and run it with Run.
func New(o Options) *Tracker {
	if o.Every <= 0 {
		o.Every = 20 * time.Millisecond
	}
	if o.Lookup == "" {
		o.Lookup = `SELECT ((coalesce(hardware, 0) + coalesce(software, 0)) * 100)::bigint FROM ` + o.View + ` WHERE id = $1`
	}
	return &Tracker{o: o, groups: map[string]*group{}, changed: make(chan struct{}), mark: o.BaseID, above: map[int64]bool{}}
}

// Commit records an acknowledged insert (use as demodata.Writer.OnCommit).
// Safe for concurrent use.
func (t *Tracker) Commit(id int64, at time.Time) {
	t.mu.Lock()
	t.incoming = append(t.incoming, commit{id, at})
	if t.inWin(at) {
		t.inWindow++
		t.pendingIn++
	}
	t.mu.Unlock()
}

func (t *Tracker) inWin(at time.Time) bool {
	return !at.Before(t.o.WindowStart) && at.Before(t.o.WindowEnd)
}

// Run polls on conn (a connection of its own: the separate reader) until
// ctx is done. It returns nil when ctx ends and the first error otherwise.
func (t *Tracker) Run(ctx context.Context, conn *pgx.Conn) error {
	tick := time.NewTicker(t.o.Every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		start := time.Now()
		if err := t.poll(ctx, conn); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("freshness poll: %w", err)
		}
		t.mu.Lock()
		t.polls++
		t.pollTimes = append(t.pollTimes, time.Since(start))
		t.lastPoll = start
		close(t.changed)
		t.changed = make(chan struct{})
		t.mu.Unlock()
	}
}

// WaitAllSeen waits until the window is over (plus grace for in-flight
// acknowledgements) and every in-window commit has been seen, or ctx ends.
func (t *Tracker) WaitAllSeen(ctx context.Context) error {
	const grace = 200 * time.Millisecond
	for {
		t.mu.Lock()
		done := t.lastPoll.After(t.o.WindowEnd.Add(grace)) && t.pendingIn == 0
		ch := t.changed
		left := t.pendingIn
		t.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for visibility: %d in-window commits not visible yet: %w", left, ctx.Err())
		case <-ch:
		}
	}
}

// WaitPolls waits until n polls in all have completed, or ctx ends.
func (t *Tracker) WaitPolls(ctx context.Context, n int) error {
	for {
		t.mu.Lock()
		polls, ch := t.polls, t.changed
		t.mu.Unlock()
		if polls >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %d polls (%d so far): %w", n, polls, ctx.Err())
		case <-ch:
		}
	}
}

// Result returns what was measured so far.
func (t *Tracker) Result() Result {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := Result{
		Lags:            slices.Clone(t.lags),
		InWindow:        t.inWindow,
		Unseen:          t.inWindow - t.seenInWin,
		ClaimViolations: t.violation,
		Polls:           t.polls,
		ClaimChecks:     t.o.StatusView != "",
	}
	if n := len(t.pollTimes); n > 0 {
		s := slices.Clone(t.pollTimes)
		slices.Sort(s)
		r.PollMedian = s[n/2]
	}
	return r
}

func (t *Tracker) poll(ctx context.Context, conn *pgx.Conn) error {
	t.mu.Lock()
	batch := t.incoming
	t.incoming = nil
	t.mu.Unlock()
	if len(batch) > 0 {
		if err := t.admit(ctx, conn, batch); err != nil {
			return err
		}
	}
	if len(t.pending) == 0 {
		return nil
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	check := func(i int) (bool, error) {
		var total int64
		err := tx.QueryRow(ctx, t.o.Lookup, t.pending[i].key).Scan(&total)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("read summary row %s: %w", t.pending[i].key, err)
		}
		return total >= t.pending[i].need, nil
	}
	first, err := check(0)
	// The snapshot was taken by that first query: whatever it shows was
	// visible by now.
	seenAt := time.Now()
	if err != nil {
		return err
	}
	visible := 0
	if first {
		lo, hi := 0, len(t.pending)-1
		ok, err := check(hi)
		if err != nil {
			return err
		}
		if ok {
			lo = hi
		}
		for hi-lo > 1 {
			mid := (lo + hi) / 2
			ok, err := check(mid)
			if err != nil {
				return err
			}
			if ok {
				lo = mid
			} else {
				hi = mid
			}
		}
		visible = lo + 1
	}
	violations := 0
	if t.o.StatusView != "" {
		var asOf *time.Time
		if err := tx.QueryRow(ctx, `SELECT refresherd.data_as_of($1)`, t.o.StatusView).Scan(&asOf); err != nil {
			return fmt.Errorf("read data_as_of: %w", err)
		}
		if asOf != nil {
			for _, c := range t.pending[visible:] {
				if c.at.After(*asOf) {
					break
				}
				if !c.flagged {
					c.flagged = true
					violations++
				}
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}

	t.mu.Lock()
	for _, c := range t.pending[:visible] {
		if c.inWin {
			t.lags = append(t.lags, seenAt.Sub(c.at))
			t.seenInWin++
			t.pendingIn--
		}
	}
	t.violation += violations
	t.mu.Unlock()
	t.pending = slices.Delete(t.pending, 0, visible)
	return nil
}

// admit looks up the new charges' groups and amounts and computes the total
// each group must reach for each of them to be visible.
func (t *Tracker) admit(ctx context.Context, conn *pgx.Conn, batch []commit) error {
	slices.SortStableFunc(batch, func(a, b commit) int { return a.at.Compare(b.at) })
	ids := make([]int64, len(batch))
	for i, c := range batch {
		ids[i] = c.id
	}
	type detail struct {
		key   string
		user  int64
		job   *int64
		month time.Time
		cents int64
	}
	details := make(map[int64]detail, len(batch))
	rows, err := conn.Query(ctx, `SELECT id, user_id, job_id, month, (amount * 100)::bigint FROM public.app_charge WHERE id = ANY($1)`, ids)
	if err != nil {
		return fmt.Errorf("read new charges: %w", err)
	}
	for rows.Next() {
		var id int64
		var d detail
		if err := rows.Scan(&id, &d.user, &d.job, &d.month, &d.cents); err != nil {
			rows.Close()
			return fmt.Errorf("read new charges: %w", err)
		}
		job := "-"
		if d.job != nil {
			job = fmt.Sprint(*d.job)
		}
		// The shipped view's id: user_id:job_id-or-dash:YYYY-MM-DD.
		d.key = fmt.Sprintf("%d:%s:%s", d.user, job, d.month.Format("2006-01-02"))
		details[id] = d
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read new charges: %w", err)
	}

	// Charges admitted so far, by id: every id up to mark is one of them
	// (or existed before the run, or never will).
	for _, c := range batch {
		if c.id > t.mark {
			t.above[c.id] = true
		}
	}
	for t.above[t.mark+1] {
		delete(t.above, t.mark+1)
		t.mark++
	}

	var keys []string
	newKeys := map[string]bool{}
	var users []int64
	var jobs []*int64
	var months []time.Time
	for _, c := range batch {
		d, ok := details[c.id]
		if !ok {
			return fmt.Errorf("charge %d was acknowledged but is not in app_charge", c.id)
		}
		if _, known := t.groups[d.key]; known || newKeys[d.key] {
			continue
		}
		newKeys[d.key] = true
		keys = append(keys, d.key)
		users = append(users, d.user)
		jobs = append(jobs, d.job)
		months = append(months, d.month)
	}
	if len(keys) > 0 {
		// A new group's pre-run sum, without reading its rows from the
		// table (about one page per row, from disk at 10M charges: the
		// tracker fell behind the summary it measures): the group's sum
		// now, which an index that covers the query reads alone, less the
		// run's charges in it that this snapshot sees. Those are this
		// batch's charges of the group up to mark (the group is new, so no
		// earlier batch had one; acknowledged, so visible), subtracted
		// below, and whatever it sees beyond mark, a short tail of
		// in-flight ids read by the primary key.
		rows, err := conn.Query(ctx, `WITH g AS MATERIALIZED (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::date[]) AS g(k, u, j, m)),
     tail AS MATERIALIZED (SELECT n.user_id, n.job_id, n.month, n.amount FROM public.app_charge n WHERE n.id > $5)
SELECT g.k,
       (coalesce((SELECT sum(c.amount) FROM public.app_charge c
                  WHERE c.user_id = g.u AND c.job_id IS NOT DISTINCT FROM g.j AND c.month = g.m), 0) * 100)::bigint,
       (coalesce((SELECT sum(n.amount) FROM tail n
                  WHERE n.user_id = g.u AND n.job_id IS NOT DISTINCT FROM g.j AND n.month = g.m), 0) * 100)::bigint
FROM g`, keys, users, jobs, months, t.mark)
		if err != nil {
			return fmt.Errorf("read group base sums: %w", err)
		}
		for rows.Next() {
			var k string
			var all, tail int64
			if err := rows.Scan(&k, &all, &tail); err != nil {
				rows.Close()
				return fmt.Errorf("read group base sums: %w", err)
			}
			t.groups[k] = &group{base: all - tail}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read group base sums: %w", err)
		}
		for _, c := range batch {
			if d := details[c.id]; newKeys[d.key] && c.id <= t.mark {
				t.groups[d.key].base -= d.cents
			}
		}
	}
	for _, c := range batch {
		d := details[c.id]
		g := t.groups[d.key]
		if g == nil {
			return fmt.Errorf("no base sum for group %s", d.key)
		}
		g.cum += d.cents
		t.pending = append(t.pending, &charge{id: c.id, at: c.at, key: d.key, need: g.base + g.cum, inWin: t.inWin(c.at)})
	}
	return nil
}
