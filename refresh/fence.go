package refresh

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// LeaderFence returns a Fence that passes while backend pid holds the
// session-level advisory lock key (the leader lock).
func LeaderFence(key int64, pid uint32) Fence {
	classid, objid := AdvisoryLockIDs(key)
	return func(ctx context.Context, tx pgx.Tx) error {
		var held bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks
			WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = 1
			  AND pid = $3 AND granted)`, int64(classid), int64(objid), int64(pid)).Scan(&held); err != nil {
			return fmt.Errorf("check leader lock: %w", err)
		}
		if !held {
			return fmt.Errorf("leader lock not held by backend %d: %w", pid, ErrNotLeader)
		}
		return nil
	}
}
