// Package harness runs refresherd's benchmark: a throwaway PostgreSQL with
// fsync on, the Django-shaped charge data at one or more sizes, the daemon
// built from the tree and run as users run it, and the baselines it is
// compared with (psql, plain REFRESH, a plain view, pg_cron, no trigger).
package harness

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Options configure a run. Profile fills what is left zero.
type Options struct {
	Profile     string // quick or full
	Out         string // results folder
	CommandLine string // for the report

	// Sizes in charges; 0 means "10M if the 1M figures say it fits, else 5M"
	// (full mode's last size).
	Sizes []int
	// Modes are the change_detection values for the writer test, "none"
	// being the no-trigger baseline, and (but none) for the detection test.
	Modes []string
	// WriterSize is the size (charges) the writer and detection tests run at.
	WriterSize int

	CostRounds      int           // refreshes per method
	ReaderIdle      time.Duration // reader samples without a refresh (and on the plain view)
	ReaderRefreshes int           // refreshes per method while readers run
	Readers         int           // reader connections
	ReaderRate      float64       // queries per second per reader
	Rates           []float64     // freshness write rates (commits/s)
	FreshWindow     time.Duration // measured window of a refresherd freshness run
	CronMinutes     int           // full mode: pg_cron ticks measured per rate
	CronMinWindow   time.Duration // quick mode: shortest window before the tick
	CronMaxWindow   time.Duration // quick mode: preferred longest window
	WriterDuration  time.Duration
	WriterRounds    int
	WriterClients   []int
	Idle            time.Duration // full mode; quick mode idles during pg_cron's run
	DetectRates     []float64     // detection test write rates (default: Rates; quick: the first)
	DetectWindow    time.Duration // sustained writes per mode and rate
	DetectProbes    int           // isolated probe commits per mode
	DetectScrape    time.Duration // interval between two reads of the daemon's /status
	Max10MLoad      time.Duration // full mode: 10M only if its projected load time fits
	Max10MRefresh   time.Duration // ... and its projected CONCURRENTLY refresh fits pg_cron's minute

	// Skip names sections not to run (cost, reader, fresh, cron, writer,
	// detect, idle, incremental), for working on the harness; the report
	// shows them as not run.
	Skip []string

	// Incremental runs the incremental-strategy section (issue 12): always
	// in quick mode (unless skipped), in full mode when set.
	Incremental bool
	// Shapes are the data shapes of the incremental section: demo (groups
	// saturate) and distinct (nearly every charge its own group).
	Shapes []string
	// IncStrategies: incremental, incremental-shipped, full, cron, pgivm.
	IncStrategies []string
	IncSizes      []int         // default: quick 20k, full Sizes (auto: 10M)
	IncWindow     time.Duration // measured window of a freshness run
	IncFullMax    int           // full and pg_cron run at sizes up to this
	IncSweep      []int         // apply sweep: charges per transaction
	// IncWriterSize and IncWriterShapes: where the incremental writer
	// test runs (default: 1M full, the quick size; the distinct shape).
	IncWriterSize     int
	IncWriterShapes   []string
	IncWriterDuration time.Duration
	IncWriterRounds   int
	// PGSettings are extra server settings (e.g. shared_buffers), shown
	// in the report's server settings.
	PGSettings map[string]string
	// PgIvmSrc is pg_ivm's source folder (default ../shared/anchors/pg_ivm
	// beside the repository).
	PgIvmSrc string

	Logf func(string, ...any)
}

// Quick reports whether this is the CI smoke profile.
func (o *Options) Quick() bool { return o.Profile == "quick" }

// ApplyProfile fills zero fields from the profile's defaults.
func (o *Options) ApplyProfile() error {
	quick := o.Profile == "quick"
	if !quick && o.Profile != "full" {
		return fmt.Errorf("apply profile: unknown size %q (want quick or full)", o.Profile)
	}
	pick := func(q, f time.Duration) time.Duration {
		if quick {
			return q
		}
		return f
	}
	pickInt := func(q, f int) int {
		if quick {
			return q
		}
		return f
	}
	setD := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	setI := func(i *int, v int) {
		if *i == 0 {
			*i = v
		}
	}
	if len(o.Sizes) == 0 {
		if quick {
			o.Sizes = []int{100_000}
		} else {
			o.Sizes = []int{100_000, 1_000_000, 0}
		}
	}
	if len(o.Modes) == 0 {
		o.Modes = []string{"none", "notify", "changelog", "stats"}
	}
	setI(&o.WriterSize, pickInt(100_000, 1_000_000))
	if !slices.Contains(o.Sizes, o.WriterSize) && o.Sizes[0] != 0 {
		// The writer test needs one of the sizes that run.
		o.WriterSize = o.Sizes[0]
	}
	setI(&o.CostRounds, pickInt(3, 5))
	setD(&o.ReaderIdle, pick(1500*time.Millisecond, 10*time.Second))
	setI(&o.ReaderRefreshes, pickInt(2, 3))
	setI(&o.Readers, 4)
	if o.ReaderRate == 0 {
		o.ReaderRate = 50
	}
	if len(o.Rates) == 0 {
		o.Rates = []float64{50, 500}
	}
	setD(&o.FreshWindow, pick(8*time.Second, 60*time.Second))
	setI(&o.CronMinutes, 3)
	setD(&o.CronMinWindow, 8*time.Second)
	setD(&o.CronMaxWindow, 22*time.Second)
	setD(&o.WriterDuration, pick(2*time.Second, 5*time.Second))
	setI(&o.WriterRounds, pickInt(1, 20))
	if len(o.WriterClients) == 0 {
		o.WriterClients = []int{1, 8, 32}
	}
	setD(&o.Idle, pick(0, 60*time.Second))
	if len(o.DetectRates) == 0 {
		o.DetectRates = o.Rates
		if quick {
			o.DetectRates = o.Rates[:1]
		}
	}
	setD(&o.DetectWindow, pick(2*time.Second, 30*time.Second))
	setI(&o.DetectProbes, pickInt(4, 50))
	setD(&o.DetectScrape, 10*time.Millisecond)
	if quick {
		o.Incremental = true
	}
	if len(o.Shapes) == 0 {
		o.Shapes = []string{"demo", "distinct"}
		if quick {
			// One shape covers the section's code; the shapes differ only
			// in their data.
			o.Shapes = []string{"distinct"}
		}
	}
	if len(o.IncStrategies) == 0 {
		o.IncStrategies = []string{"incremental", "incremental-shipped", "full", "cron", "pgivm"}
		if quick {
			// pg_cron's tick costs a minute; the main quick section has one.
			o.IncStrategies = []string{"incremental", "full", "pgivm"}
		}
	}
	for _, st := range o.IncStrategies {
		if !slices.Contains(IncStrategyNames, st) {
			return fmt.Errorf("apply profile: unknown incremental-section strategy %q (want %s)", st, strings.Join(IncStrategyNames, ", "))
		}
	}
	for _, sh := range append(slices.Clone(o.Shapes), o.IncWriterShapes...) {
		if sh != "demo" && sh != "distinct" {
			return fmt.Errorf("apply profile: unknown data shape %q (want demo or distinct)", sh)
		}
	}
	if len(o.IncSizes) == 0 {
		if quick {
			o.IncSizes = []int{20_000}
		} else {
			for _, n := range o.Sizes {
				if n == 0 {
					n = 10_000_000
				}
				o.IncSizes = append(o.IncSizes, n)
			}
		}
	}
	setD(&o.IncWindow, pick(2*time.Second, 30*time.Second))
	setI(&o.IncFullMax, pickInt(o.IncSizes[len(o.IncSizes)-1], 1_000_000))
	if len(o.IncSweep) == 0 {
		o.IncSweep = []int{10, 100, 1000}
		if !quick {
			o.IncSweep = append(o.IncSweep, 10_000)
		}
	}
	setI(&o.IncWriterSize, pickInt(o.IncSizes[0], 1_000_000))
	if len(o.IncWriterShapes) == 0 {
		o.IncWriterShapes = []string{"distinct"}
	}
	setD(&o.IncWriterDuration, pick(2*time.Second, 10*time.Second))
	setI(&o.IncWriterRounds, pickInt(1, 3))
	setD(&o.Max10MLoad, 15*time.Minute)
	setD(&o.Max10MRefresh, 45*time.Second)
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return nil
}

// IncStrategyNames are the incremental section's strategies as flags name
// them.
var IncStrategyNames = []string{"incremental", "incremental-shipped", "full", "cron", "pgivm"}

// ParseSizes parses "100k,1m,auto" (k = thousand, m = million; auto = 0).
func ParseSizes(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.ToLower(strings.TrimSpace(part))
		if part == "" {
			continue
		}
		if part == "auto" {
			out = append(out, 0)
			continue
		}
		mult := 1
		switch {
		case strings.HasSuffix(part, "k"):
			mult, part = 1_000, strings.TrimSuffix(part, "k")
		case strings.HasSuffix(part, "m"):
			mult, part = 1_000_000, strings.TrimSuffix(part, "m")
		}
		n, err := strconv.ParseFloat(part, 64)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("parse sizes: bad size %q (want e.g. 100k, 1m, auto)", part)
		}
		out = append(out, int(n*float64(mult)))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("parse sizes: no size in %q", s)
	}
	return out, nil
}

// SizeLabel writes 100000 as 100k and 1000000 as 1M.
func SizeLabel(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return strconv.Itoa(n/1_000_000) + "M"
	case n >= 1_000 && n%1_000 == 0:
		return strconv.Itoa(n/1_000) + "k"
	}
	return strconv.Itoa(n)
}
