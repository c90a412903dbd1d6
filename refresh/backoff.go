package refresh

import (
	"context"
	"hash/fnv"
	"math/rand/v2"
	"time"
)

// Backoff is capped exponential backoff with full jitter in [d/2, d], so
// replicas and views that failed together do not retry in lock-step.
type Backoff struct {
	Base, Max time.Duration
	// Rand returns a number in [0, n]; nil uses math/rand. Tests pin it.
	Rand func(n int64) int64
}

// Delay returns the wait before retry number attempt (1-based).
func (b Backoff) Delay(attempt int) time.Duration {
	d := b.Base
	for i := 1; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	half := d / 2
	if b.Rand != nil {
		return half + time.Duration(b.Rand(int64(half)))
	}
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

// sleep waits for d or until ctx is done; it reports whether it slept fully.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// jitter returns d +/- up to frac of d.
func jitter(d time.Duration, frac float64) time.Duration {
	span := int64(float64(d) * frac)
	if span <= 0 {
		return d
	}
	return d - time.Duration(span) + time.Duration(rand.Int64N(2*span+1))
}

// lockKey derives a stable advisory-lock key from a name, namespaced so the
// daemon's keys are unlikely to collide with an application's.
func lockKey(kind, name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("refresherd:" + kind + ":" + name))
	return int64(h.Sum64())
}
