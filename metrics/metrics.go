// Package metrics holds refresherd's Prometheus registry, its metrics and the
// HTTP server that exposes them with the probes and the status page.
package metrics

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Triggers and results are the bounded label values of refreshes_total;
// every combination is initialised per view so dashboards see zeros.
var (
	Triggers = []string{TriggerSchedule, TriggerChange, TriggerManual, TriggerStartup, TriggerCatchup, TriggerRetry}
	Results  = []string{ResultSuccess, ResultError, ResultSkipped}
)

// RebuildReasons are the bounded reason label values of rebuilds_total.
var RebuildReasons = []string{"initial", "strategy", "definition", "truncate", "log_lost", "trigger", "other"}

// Trigger label values.
const (
	TriggerSchedule = "schedule"
	TriggerChange   = "change"
	TriggerManual   = "manual"
	TriggerStartup  = "startup"
	TriggerCatchup  = "catchup"
	TriggerRetry    = "retry"
)

// Result label values.
const (
	ResultSuccess = "success"
	ResultError   = "error"
	ResultSkipped = "skipped"
)

// Metrics are the daemon's instruments, registered on their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	Refreshes            *prometheus.CounterVec
	Duration             *prometheus.HistogramVec
	LastSuccess          *prometheus.GaugeVec
	DataAsOf             *prometheus.GaugeVec
	ViewReady            *prometheus.GaugeVec
	Leader               prometheus.Gauge
	ListenerConnected    prometheus.Gauge
	ListenerReconnects   prometheus.Counter
	NotificationsIgnored prometheus.Counter
	Vacuums              *prometheus.CounterVec
	Rebuilds             *prometheus.CounterVec
	VerifyMismatched     *prometheus.GaugeVec
	TargetLag            *prometheus.GaugeVec
	TargetMet            *prometheus.GaugeVec
	ConfigReloadOK       prometheus.Gauge
	ConfigReloadTime     prometheus.Gauge
}

// New creates and registers every metric, with Go and process collectors.
func New(version string) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		Refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refresherd_refreshes_total",
			Help: "Refresh attempts by view, trigger and result (skipped: a scheduled tick with nothing changed).",
		}, []string{"view", "trigger", "result"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "refresherd_refresh_duration_seconds",
			Help: "Wall time of refresh transactions, successful or not.",
			// 10 ms .. ~20 min: from a tiny summary to a 10M-row recompute.
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 14),
		}, []string{"view"}),
		LastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresherd_last_success_timestamp_seconds",
			Help: "When the last successful refresh of the view committed (0 if none yet).",
		}, []string{"view"}),
		DataAsOf: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresherd_data_as_of_timestamp_seconds",
			Help: "The snapshot time the view's data reflects: every change committed before it is in the view (0 if unknown).",
		}, []string{"view"}),
		ViewReady: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresherd_view_ready",
			Help: "1 when the view is set up and refreshable, 0 when its set-up failed (see logs and /status).",
		}, []string{"view"}),
		Leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "refresherd_leader",
			Help: "1 on the replica that holds the leader lock and refreshes.",
		}),
		ListenerConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "refresherd_listener_connected",
			Help: "1 while the leader's LISTEN connection is up (0 on followers).",
		}),
		ListenerReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "refresherd_listener_reconnects_total",
			Help: "LISTEN connections re-established after a loss.",
		}),
		NotificationsIgnored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "refresherd_notifications_ignored_total",
			Help: "Notifications on the change channel that could not be parsed or name no watched table.",
		}),
		Vacuums: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refresherd_vacuums_total",
			Help: "VACUUM (ANALYZE) runs after concurrent refreshes left vacuum_threshold dead rows or more.",
		}, []string{"view"}),
		Rebuilds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "refresherd_rebuilds_total",
			Help: "Full rebuilds of incremental summaries, by reason (initial, strategy, definition, truncate, log_lost, trigger, other).",
		}, []string{"view", "reason"}),
		VerifyMismatched: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresherd_verify_mismatched_rows",
			Help: "Rows in which an incremental summary differed from a full aggregate at its last verification (must stay 0).",
		}, []string{"view"}),
		TargetLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresherd_target_lag_seconds",
			Help: "The view's configured freshness target (target_lag); 0 when it has none.",
		}, []string{"view"}),
		TargetMet: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "refresherd_target_met",
			Help: "0 while the view's target_lag cannot be met (its refresh takes too long for it; refreshes run back to back within max_load), else 1.",
		}, []string{"view"}),
		ConfigReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "refresherd_config_last_reload_successful",
			Help: "1 if the last configuration (re)load succeeded.",
		}),
		ConfigReloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "refresherd_config_last_reload_success_timestamp_seconds",
			Help: "When the configuration was last loaded successfully.",
		}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "refresherd_build_info",
		Help: "Build information; always 1.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	reg.MustRegister(
		m.Refreshes, m.Duration, m.LastSuccess, m.DataAsOf, m.ViewReady,
		m.Vacuums, m.Rebuilds, m.VerifyMismatched, m.TargetLag, m.TargetMet, m.Leader, m.ListenerConnected, m.ListenerReconnects, m.NotificationsIgnored,
		m.ConfigReloadOK, m.ConfigReloadTime, build,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.ConfigReloadOK.Set(1)
	return m
}

// InitView creates every label set of a view so its series exist from the
// start (absent series break rate() and alerts).
func (m *Metrics) InitView(view string) {
	for _, t := range Triggers {
		for _, r := range Results {
			m.Refreshes.WithLabelValues(view, t, r)
		}
	}
	m.Duration.WithLabelValues(view)
	m.LastSuccess.WithLabelValues(view)
	m.DataAsOf.WithLabelValues(view)
	m.ViewReady.WithLabelValues(view)
	m.Vacuums.WithLabelValues(view)
	for _, r := range RebuildReasons {
		m.Rebuilds.WithLabelValues(view, r)
	}
	m.TargetLag.WithLabelValues(view)
	m.TargetMet.WithLabelValues(view).Set(1)
}

// RemoveView deletes a view's series (when it stops being managed).
func (m *Metrics) RemoveView(view string) {
	for _, t := range Triggers {
		for _, r := range Results {
			m.Refreshes.DeleteLabelValues(view, t, r)
		}
	}
	m.Duration.DeleteLabelValues(view)
	m.LastSuccess.DeleteLabelValues(view)
	m.DataAsOf.DeleteLabelValues(view)
	m.ViewReady.DeleteLabelValues(view)
	m.Vacuums.DeleteLabelValues(view)
	for _, r := range RebuildReasons {
		m.Rebuilds.DeleteLabelValues(view, r)
	}
	m.VerifyMismatched.DeleteLabelValues(view)
	m.TargetLag.DeleteLabelValues(view)
	m.TargetMet.DeleteLabelValues(view)
}

// ViewState is the live, in-memory state of one view, read at scrape time so
// staleness is exact rather than as old as the last update.
type ViewState struct {
	View             string
	StalenessSeconds float64
	PendingChanges   float64
	InProgress       bool
}

// StateSource provides the live view states; it must answer from memory
// without touching the database, so /metrics stays fast when it hangs.
type StateSource interface {
	ViewStates() []ViewState
}

// RegisterState registers the collector of staleness, pending changes and
// refresh-in-progress from src.
func (m *Metrics) RegisterState(src StateSource) {
	m.Registry.MustRegister(&stateCollector{src: src})
}

var (
	stalenessDesc = prometheus.NewDesc("refresherd_staleness_seconds",
		"Age of the oldest change not yet reflected in the view; 0 when the view is up to date.",
		[]string{"view"}, nil)
	pendingDesc = prometheus.NewDesc("refresherd_pending_changes",
		"Change events received since the last refresh started and not yet reflected.",
		[]string{"view"}, nil)
	inProgressDesc = prometheus.NewDesc("refresherd_refresh_in_progress",
		"1 while a refresh of the view is running.",
		[]string{"view"}, nil)
)

type stateCollector struct{ src StateSource }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- stalenessDesc
	ch <- pendingDesc
	ch <- inProgressDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src.ViewStates() {
		ch <- prometheus.MustNewConstMetric(stalenessDesc, prometheus.GaugeValue, s.StalenessSeconds, s.View)
		ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, s.PendingChanges, s.View)
		inProgress := 0.0
		if s.InProgress {
			inProgress = 1
		}
		ch <- prometheus.MustNewConstMetric(inProgressDesc, prometheus.GaugeValue, inProgress, s.View)
	}
}

// ViewRecorder records one view's refresh metrics: what a refresh worker
// needs of the registry, and no more.
type ViewRecorder struct {
	m    *Metrics
	view string
}

// View returns the recorder of one view's series.
func (m *Metrics) View(view string) ViewRecorder { return ViewRecorder{m: m, view: view} }

// Refresh counts one attempt and observes its duration.
func (r ViewRecorder) Refresh(trigger, result string, d time.Duration) {
	r.m.Duration.WithLabelValues(r.view).Observe(d.Seconds())
	r.m.Refreshes.WithLabelValues(r.view, trigger, result).Inc()
}

// Skipped counts a refresh that was due but found nothing to do.
func (r ViewRecorder) Skipped(trigger string) {
	r.m.Refreshes.WithLabelValues(r.view, trigger, ResultSkipped).Inc()
}

// Success records the data time and commit time of a successful refresh;
// a zero time leaves its gauge as it is.
func (r ViewRecorder) Success(asOf, finished time.Time) {
	if !asOf.IsZero() {
		r.m.DataAsOf.WithLabelValues(r.view).Set(unixSeconds(asOf))
	}
	if !finished.IsZero() {
		r.m.LastSuccess.WithLabelValues(r.view).Set(unixSeconds(finished))
	}
}

// Ready records whether the view is set up.
func (r ViewRecorder) Ready(ok bool) {
	v := 0.0
	if ok {
		v = 1
	}
	r.m.ViewReady.WithLabelValues(r.view).Set(v)
}

// Rebuilt counts a rebuild of an incremental summary.
func (r ViewRecorder) Rebuilt(reason string) {
	r.m.Rebuilds.WithLabelValues(r.view, reason).Inc()
}

// Verified records a verification's mismatched rows.
func (r ViewRecorder) Verified(mismatched int64) {
	r.m.VerifyMismatched.WithLabelValues(r.view).Set(float64(mismatched))
}

// Target records the view's freshness target and whether it is met.
func (r ViewRecorder) Target(lag time.Duration, met bool) {
	r.m.TargetLag.WithLabelValues(r.view).Set(lag.Seconds())
	v := 0.0
	if met {
		v = 1
	}
	r.m.TargetMet.WithLabelValues(r.view).Set(v)
}

// Vacuumed counts a vacuum after a refresh.
func (r ViewRecorder) Vacuumed() { r.m.Vacuums.WithLabelValues(r.view).Inc() }

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
