// Package results holds what one benchmark run measured, for the report.
// Durations are in seconds unless a field says otherwise.
package results

import (
	"math"
	"time"

	"github.com/refresherd/refresherd/bench/internal/stats"
	"github.com/refresherd/refresherd/bench/internal/sysinfo"
)

// Run is a whole benchmark run.
type Run struct {
	Profile     string // quick or full
	CommandLine string
	Started     time.Time
	Elapsed     time.Duration
	Machine     sysinfo.Machine
	PGVersion   string
	PgbenchVer  string
	PgCron      string // version or why it is not available
	PgCronOK    bool
	PgCronSetup string // how it was made available
	Settings    map[string]string
	Config      ConfigInfo
	SizeChoice  string // why the largest size is what it is (full mode)
	Sizes       []*Size
	Writer      *Writer      // nil when not run
	Detect      *Detect      // nil when not run
	Incremental *Incremental // nil when not run
	Idle        *Idle
	Stops       []Stop    // daemons stopped with SIGTERM
	LoadAvg     []float64 // 1-minute load average at each step's start
	Notes       []string
	Problems    []string // errors that made a section incomplete
}

// Stop is one daemon's graceful stop: SIGTERM to exit.
type Stop struct {
	What    string
	Seconds float64
	Code    int
	Err     string
}

// ConfigInfo is what the shipped config says about the view.
type ConfigInfo struct {
	Path         string
	View         string
	Debounce     time.Duration
	MaxDelay     time.Duration
	TargetLag    time.Duration // 0: none
	MaxLoad      float64
	Schedule     string
	Concurrently bool
	Detection    string
	Query        string
}

// Size is everything measured at one data size.
type Size struct {
	Label       string // 100k, 1M, ...
	Charges     int
	Users, Jobs int
	Months      int
	Seed        int64
	LoadSeconds float64
	CopySeconds float64 // template copies for pg_cron (and the writer test)
	SummaryRows int64
	TableBytes  int64 // app_charge with indexes
	ViewBytes   int64 // the materialized view with indexes

	Cost      []CostRow
	Reader    []ReaderRow
	Freshness []FreshRow
}

// CostRow is one way of computing the summary.
type CostRow struct {
	Method  string
	Command string
	Seconds []float64
	Summary stats.Summary
}

// ReaderRow is the app query's latency under one condition (milliseconds).
type ReaderRow struct {
	Condition string
	Command   string
	Windows   int // refreshes the samples were taken during (0: none)
	Summary   stats.Summary
}

// FreshRow is one freshness run.
type FreshRow struct {
	System      string // refresherd or pg_cron
	TargetRate  float64
	Achieved    float64 // in-window commits per second
	Inserts     int64   // every insert of the run (the table grew by this)
	Window      time.Duration
	Lags        []float64 // seconds
	Summary     stats.Summary
	Unseen      int
	Violations  int  // refresherd's data_as_of claim contradicted by content
	ClaimChecks bool // violations were checked
	Refreshes   int  // refreshes that completed during the run
	RefreshMean float64
	// Timeline is the successful refreshes that finished during the run,
	// from refresherd.refresh_log, in order (refresherd only).
	Timeline  []Refresh
	DaemonCPU float64 // daemon CPU seconds per second of run (refresherd)
	Verified  string  // content check after the run
	Note      string
	Command   string
}

// Refresh is one refresh of the view as refresherd logged it.
type Refresh struct {
	Started, Finished time.Time
}

// Seconds is the refresh's duration.
func (r Refresh) Seconds() float64 { return r.Finished.Sub(r.Started).Seconds() }

// Writer is the writer-impact section.
type Writer struct {
	SizeLabel string
	Duration  time.Duration
	Rounds    int
	Clients   []int
	Script    string
	Command   string
	Modes     []WriterMode
}

// WriterMode is one change-detection mode.
type WriterMode struct {
	Mode        string
	Available   bool
	Unavailable string // the daemon's message when it rejected the mode
	Triggers    []string
	TPS         map[int][]float64 // by clients: every round
	Median      map[int]float64
	// Ratios: by clients, every round's TPS over the baseline's in the same
	// round (run back to back); MedianRatio their median, which is what the
	// report compares: it is not thrown off by drift between rounds.
	Ratios      map[int][]float64
	MedianRatio map[int]float64
	Refreshes   int // refreshes during the pgbench runs (should be 0)
	ConfigDiff  string
}

// BaselineMode is the writer test's no-trigger baseline.
const BaselineMode = "none"

// Ratio is mode m's throughput relative to the baseline at c clients: the
// median of the per-round ratios when there are any, else (results from
// before they were recorded) the ratio of the medians.
func (m *WriterMode) Ratio(c int, base *WriterMode) float64 {
	if r, ok := m.MedianRatio[c]; ok {
		return r
	}
	if base == nil || base.Median[c] == 0 {
		return math.NaN()
	}
	return m.Median[c] / base.Median[c]
}

// Detect is the change-detection section: per change_detection mode, the
// delay from a commit to the daemon recording a change after it, and the
// freshness lag, under sustained writes and for isolated commits.
type Detect struct {
	SizeLabel    string
	PollInterval time.Duration // the shipped poll_interval (changelog and stats)
	Debounce     time.Duration
	MaxDelay     time.Duration
	Scrape       time.Duration // asked interval between two reads of /status
	ScrapeMedian time.Duration // measured: the resolution of the delays
	Window       time.Duration // sustained writes: freshness window
	Tail         time.Duration // commits of the window's last Tail are not used for detection
	StopAtEnd    bool          // writes stop at the window's end (quick) instead of going on until all are visible
	StatsGrace   time.Duration // stats: reads go on this long after the writers' connections closed
	Probes       int           // isolated probes asked per mode
	Modes        []DetectMode
}

// DetectMode is one change_detection mode.
type DetectMode struct {
	Mode        string
	Available   bool
	Unavailable string // the daemon's message when it rejected the mode
	ConfigDiff  string
	ProbeQuiet  time.Duration // no change event for this long before each probe
	Rows        []DetectRow
	Verified    string // content check after the mode's last run
}

// DetectRow is one run of a mode: sustained writes at Rate, or isolated
// probes (Rate 0).
type DetectRow struct {
	Rate     float64 // commits/s; 0: isolated probes
	Achieved float64 // in-window commits per second (sustained)
	Window   time.Duration
	// Detection delays (seconds) of the commits used for detection, and
	// how many of them no change event followed before the harness stopped
	// reading.
	Delays     []float64
	Delay      stats.Summary
	Undetected int
	Discarded  int // probes dropped: a refresh started in the interval that would show their event
	// Freshness lags (seconds), sustained rows only.
	Lags        []float64
	Fresh       stats.Summary
	Unseen      int
	Violations  int
	ClaimChecks bool
	Refreshes   int
	RefreshMean float64
	DaemonCPU   float64 // CPU seconds per second of run
	Inserts     int64
	Command     string
}

// Idle is the idle and footprint section.
type Idle struct {
	SizeLabel    string
	Seconds      float64
	CPUSeconds   float64
	Refreshes    int // success + error during the idle period
	Skipped      int // scheduled ticks skipped as unchanged
	RSSBytes     int64
	PeakRSSBytes int64
	ClockTicks   int64
	Overlap      string // what else ran meanwhile (quick mode), or ""
}

// The refresh-cost methods (CostRow.Method).
const (
	MethodAggregate = "aggregate SELECT only (psql)"
	MethodPlain     = "REFRESH, plain (psql)"
	MethodPsqlConc  = "REFRESH CONCURRENTLY (psql)"
	MethodWarmConc  = "REFRESH CONCURRENTLY (warm session)"
	MethodDaemon    = "refresherd (SIGUSR1)"
)

// Systems (FreshRow.System).
const (
	SystemRefresherd = "refresherd"
	SystemPgCron     = "pg_cron"
)

// Incremental is the incremental-strategy section (issue 12): per data
// shape and size, freshness lag of each strategy, apply time per round,
// readers during rounds, `refresherd verify`; per shape at one size, writer
// throughput.
type Incremental struct {
	Strategies []string // asked for, in order (Strategy* constants)
	Shapes     []string // ShapeDemo, ShapeDistinct
	Rates      []float64
	Window     time.Duration // measured window of a freshness run
	StopAtEnd  bool          // writes stop at the window's end (quick)
	Readers    int           // reader connections during freshness runs
	ReaderRate float64       // queries per second per reader
	Sweep      []int         // batch sizes of the apply sweep (charges per transaction)
	FullMax    int           // largest size at which full and pg_cron run here
	PgIvm      string        // "pg_ivm 1.15" or "not available: why"
	PgIvmOK    bool
	PgIvmSetup string
	PgIvmQuery string            // the IMMV's definition
	Configs    map[string]string // strategy: how its config differs from the shipped one
	Runs       []*IncRun
	Writers    []*Writer // per shape
	NotRun     []string  // what was not run, and why
}

// Data shapes.
const (
	ShapeDemo     = "demo"     // demodata.DefaultSize: groups saturate
	ShapeDistinct = "distinct" // IndependentJobs: nearly every charge its own group
)

// Strategies of the incremental section (FreshRow.System there).
const (
	StrategyIncremental = "incremental"
	StrategyIncShipped  = "incremental, shipped debounce"
	StrategyFull        = "full (CONCURRENTLY)"
	StrategyPgCron      = "pg_cron"
	StrategyPgIvm       = "pg_ivm"
)

// IncRun is one data shape at one size.
type IncRun struct {
	Shape               string
	Label               string
	Charges             int
	Users, Jobs, Months int
	Seed                int64
	LoadSeconds         float64
	Groups              int64    // rows of the summary after the first population
	TableBytes          int64    // app_charge with indexes, after the advised index
	Check               []string // refresherd check's lines about the view (before the index)
	Index               string   // the index check advised, as created
	IndexSeconds        float64
	PopulateSeconds     float64 // the incremental daemon's start-up (initial rebuild) until settled
	PgIvmCreateSeconds  float64
	Freshness           []FreshRow
	Rounds              []Round
	Reader              []ReaderRow
	Verify              []Verify
	Rebuilds            map[string]float64 // refresherd_rebuilds_total by reason, at the end of the incremental runs
	Notes               []string
}

// Round is one incremental round from the daemon's "refreshed" log line.
type Round struct {
	Source  string // "<strategy> at <rate>/s" (freshness run) or "sweep"
	Groups  int
	Seconds float64
}

// Verify is one `refresherd verify` run at the end of an incremental run
// (or the content check of another strategy).
type Verify struct {
	Strategy   string
	Command    string
	Exit       int
	Mismatched int64 // -1: not known
	Output     string
	Seconds    float64
}
