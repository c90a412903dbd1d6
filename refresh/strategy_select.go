package refresh

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh/incremental"
)

// viewStrategy is a view's strategy as configured (strategy: full |
// incremental | auto): it picks the implementation at set-up (auto: by
// analysing the query) and delegates to it.
type viewStrategy struct {
	full Strategy
	inc  *IncrementalStrategy
	mode string // the configured strategy

	mu     sync.Mutex
	chosen Strategy
	name   string // the strategy in use: full or incremental ("" before set-up)
	reason string // why auto chose full: the query does not qualify
}

// Setup implements Strategy.
func (s *viewStrategy) Setup(ctx context.Context, v *config.View, fence Fence) (SetupResult, error) {
	chosen, name, reason := s.full, config.StrategyFull, ""
	switch s.mode {
	case config.StrategyIncremental:
		chosen, name = s.inc, config.StrategyIncremental
	case config.StrategyAuto:
		_, err := Analyze(ctx, s.inc.Pool, v)
		var nq *incremental.NotQualified
		switch {
		case errors.As(err, &nq):
			reason = nq.Reason
		case err != nil:
			return SetupResult{}, err
		default:
			chosen, name = s.inc, config.StrategyIncremental
		}
	}
	s.mu.Lock()
	s.chosen, s.name, s.reason = chosen, name, reason
	s.mu.Unlock()
	return chosen.Setup(ctx, v, fence)
}

func (s *viewStrategy) current() Strategy {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chosen == nil {
		return s.full
	}
	return s.chosen
}

// describe returns the strategy in use and why it is not incremental when
// auto chose full.
func (s *viewStrategy) describe() (name, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.name, s.reason
}

// Refresh implements Strategy.
func (s *viewStrategy) Refresh(ctx context.Context, v *config.View, trigger Trigger, fence Fence) (Outcome, error) {
	return s.current().Refresh(ctx, v, trigger, fence)
}

// RecordFailure implements Strategy.
func (s *viewStrategy) RecordFailure(ctx context.Context, v *config.View, trigger Trigger, dur time.Duration, err error) error {
	return s.current().RecordFailure(ctx, v, trigger, dur, err)
}

// Maintain implements Strategy.
func (s *viewStrategy) Maintain(ctx context.Context, v *config.View, out Outcome) (Maintenance, error) {
	return s.current().Maintain(ctx, v, out)
}

// strategyName is the strategy w runs (before set-up: as configured, or
// "auto"), and why auto chose full. Caller holds w.mu (it takes only the
// strategy's own lock).
func (w *worker) strategyName() (name, reason string) {
	vs, ok := w.strategy.(*viewStrategy)
	if !ok {
		return config.StrategyFull, ""
	}
	name, reason = vs.describe()
	if name == "" {
		name = w.view.Strategy
	}
	return name, reason
}

// NewStrategy returns the strategy of v as configured, for one-shot
// commands (the daemon builds its own).
func NewStrategy(pool *pgxpool.Pool, identity string, v *config.View) Strategy {
	return &viewStrategy{full: NewMatviewStrategy(pool, identity), inc: NewIncrementalStrategy(pool, identity), mode: v.Strategy}
}

// Describe returns the strategy a NewStrategy value runs (after Setup) and
// why auto chose full.
func Describe(s Strategy) (name, reason string) {
	if vs, ok := s.(*viewStrategy); ok {
		return vs.describe()
	}
	return config.StrategyFull, ""
}
