package refresh

import (
	"time"

	"github.com/refresherd/refresherd/metrics"
)

// ViewStatus is one view in /status.
type ViewStatus struct {
	View                string     `json:"view"`
	Ready               bool       `json:"ready"`
	SetupError          string     `json:"setup_error,omitempty"`
	DefinitionError     string     `json:"definition_error,omitempty"`
	Strategy            string     `json:"strategy"`
	StrategyReason      string     `json:"strategy_reason,omitempty"`
	ChangeDetection     string     `json:"change_detection"`
	DataAsOf            *time.Time `json:"data_as_of"`
	StalenessSeconds    float64    `json:"staleness_seconds"`
	TargetLagSeconds    float64    `json:"target_lag_seconds,omitempty"`
	TargetMet           bool       `json:"target_met"`
	RefreshEstimate     float64    `json:"refresh_estimate_seconds"`
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
	now := e.opts.Now()
	for _, w := range e.snapshot() {
		w.mu.Lock()
		vs := ViewStatus{
			View:                w.name,
			Ready:               w.ready,
			ChangeDetection:     w.sched.settings.ChangeDetection,
			StalenessSeconds:    w.staleness(now, st.Leader).Seconds(),
			TargetLagSeconds:    w.view.TargetLag.Seconds(),
			TargetMet:           !w.targetMissed,
			RefreshEstimate:     w.sched.estimate.Seconds(),
			PendingChanges:      w.sched.p.count,
			InProgress:          w.refreshing,
			LastResult:          string(w.lastResult),
			LastError:           w.lastError,
			LastTrigger:         string(w.lastTrigger),
			LastDurationSeconds: w.lastDur.Seconds(),
			ConsecutiveFailures: w.sched.failures,
			DataAsOf:            timePtr(w.asOf),
			LastSuccessAt:       timePtr(w.lastSuccess),
		}
		vs.Strategy, vs.StrategyReason = w.strategyName()
		if w.setupErr != nil {
			vs.SetupError = w.setupErr.Error()
		}
		if w.defErr != nil {
			vs.DefinitionError = w.defErr.Error()
		}
		if w.view.ScheduleSpec != nil {
			vs.NextScheduled = timePtr(w.sched.nextTick)
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
	now := e.opts.Now()
	ws := e.snapshot()
	out := make([]metrics.ViewState, 0, len(ws))
	for _, w := range ws {
		w.mu.Lock()
		out = append(out, metrics.ViewState{
			View:             w.name,
			StalenessSeconds: w.staleness(now, leader).Seconds(),
			PendingChanges:   float64(w.sched.p.count),
			InProgress:       w.refreshing,
		})
		w.mu.Unlock()
	}
	return out
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
