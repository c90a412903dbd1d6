package refresh

import (
	"time"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/metrics"
)

// ViewStatus is one view in /status.
type ViewStatus struct {
	View                string     `json:"view"`
	Ready               bool       `json:"ready"`
	SetupError          string     `json:"setup_error,omitempty"`
	DefinitionError     string     `json:"definition_error,omitempty"`
	ChangeDetection     string     `json:"change_detection"`
	DataAsOf            *time.Time `json:"data_as_of"`
	StalenessSeconds    float64    `json:"staleness_seconds"`
	PendingChanges      int64      `json:"pending_changes"`
	InProgress          bool       `json:"in_progress"`
	LastResult          string     `json:"last_result,omitempty"`
	LastError           string     `json:"last_error,omitempty"`
	LastTrigger         string     `json:"last_trigger,omitempty"`
	LastDurationSeconds float64    `json:"last_duration_seconds"`
	LastSuccessAt       *time.Time `json:"last_success_at"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	NextScheduled       *time.Time `json:"next_scheduled,omitempty"`
}

// Status is the whole /status document.
type Status struct {
	Leader            bool         `json:"leader"`
	ListenerConnected bool         `json:"listener_connected"`
	DatabaseReachable bool         `json:"database_reachable"`
	Views             []ViewStatus `json:"views"`
}

// Status describes the daemon and every view, from memory.
func (e *Engine) Status() Status {
	e.mu.Lock()
	st := Status{Leader: e.leader, ListenerConnected: e.listenerConnected, DatabaseReachable: e.dbErr == nil}
	e.mu.Unlock()
	now := time.Now()
	for _, w := range e.snapshot() {
		w.mu.Lock()
		vs := ViewStatus{
			View:                w.name,
			Ready:               w.ready,
			ChangeDetection:     w.view.ChangeDetection,
			StalenessSeconds:    w.staleness(now, st.Leader).Seconds(),
			PendingChanges:      w.p.count,
			InProgress:          w.inProgress,
			LastResult:          w.lastResult,
			LastError:           w.lastError,
			LastTrigger:         w.lastTrigger,
			LastDurationSeconds: w.lastDur.Seconds(),
			ConsecutiveFailures: w.failures,
			DataAsOf:            timePtr(w.asOf),
			LastSuccessAt:       timePtr(w.lastSuccess),
		}
		if w.setupErr != nil {
			vs.SetupError = w.setupErr.Error()
		}
		if w.defErr != nil {
			vs.DefinitionError = w.defErr.Error()
		}
		if w.view.ScheduleSpec != nil {
			vs.NextScheduled = timePtr(w.nextTick)
		}
		w.mu.Unlock()
		st.Views = append(st.Views, vs)
	}
	return st
}

// ViewStates implements metrics.StateSource.
func (e *Engine) ViewStates() []metrics.ViewState {
	e.mu.Lock()
	leader := e.leader
	e.mu.Unlock()
	now := time.Now()
	ws := e.snapshot()
	out := make([]metrics.ViewState, 0, len(ws))
	for _, w := range ws {
		w.mu.Lock()
		out = append(out, metrics.ViewState{
			View:             w.name,
			StalenessSeconds: w.staleness(now, leader).Seconds(),
			PendingChanges:   float64(w.p.count),
			InProgress:       w.inProgress,
		})
		w.mu.Unlock()
	}
	return out
}

// staleness is the age of the oldest change not in the view. Without change
// detection any change may be missing, so it is the age of the data. A
// follower tracks no changes and reports 0: the leader's figure is the one
// that counts (alert on the maximum over replicas). Caller holds w.mu.
func (w *worker) staleness(now time.Time, leader bool) time.Duration {
	if !leader {
		return 0
	}
	if w.view.ChangeDetection == config.DetectNone {
		since := w.asOf
		if since.IsZero() {
			since = w.e.started
		}
		return max(now.Sub(since), 0)
	}
	return w.p.staleness(now)
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
