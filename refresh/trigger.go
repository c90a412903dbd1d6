package refresh

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/refresherd/refresherd/metrics"
)

// Trigger is why a refresh runs: the refreshes_total label value.
type Trigger string

// Triggers, mirroring the metric's bounded label values.
const (
	TriggerSchedule Trigger = metrics.TriggerSchedule
	TriggerChange   Trigger = metrics.TriggerChange
	TriggerManual   Trigger = metrics.TriggerManual
	TriggerStartup  Trigger = metrics.TriggerStartup
	TriggerCatchup  Trigger = metrics.TriggerCatchup
	TriggerRetry    Trigger = metrics.TriggerRetry
)

// Result is a refresh's outcome: the refreshes_total result label value.
type Result string

// Results, mirroring the metric's bounded label values.
const (
	ResultSuccess Result = metrics.ResultSuccess
	ResultError   Result = metrics.ResultError
	ResultSkipped Result = metrics.ResultSkipped
)

// Fence is checked inside a refresh (or swap) transaction just before its
// COMMIT: a non-nil error aborts the transaction, so only a replica that
// still leads can commit. A nil Fence checks nothing (one-shot commands).
type Fence func(ctx context.Context, tx pgx.Tx) error

// ErrNotLeader is what a Fence returns when this replica no longer holds
// the leader lock.
var ErrNotLeader = errors.New("no longer the leader")
