package refresh

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// LeaderFence returns a Fence that lets a transaction commit only while
// backend pid (the leader's lock session) holds the session-level advisory
// lock key. Leadership is decided by that session, not by the connection
// the refresh runs on: if the session died or was terminated, the lock is
// gone (another replica may hold it) even though this replica has not
// noticed yet, and its refresh must not commit.
//
// The check is read inside the transaction just before COMMIT, so a lease
// lost in between is not seen; that window is harmless for a refresh, which
// holds the view's transaction-level lock: a new leader's refresh of the
// same view waits for this one and commits after it.
func LeaderFence(key int64, pid uint32) Fence {
	classid, objid := AdvisoryLockIDs(key)
	return func(ctx context.Context, tx pgx.Tx) error {
		// pg_locks shows a bigint advisory key split in two oids, with
		// objsubid 1 (2 would be the two-int4 form of the same numbers).
		var held bool
		err := tx.QueryRow(ctx, `SELECT EXISTS (
				SELECT 1 FROM pg_catalog.pg_locks
				WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = 1
				  AND granted AND pid = $3)`, classid, objid, int64(pid)).Scan(&held)
		if err != nil {
			return fmt.Errorf("leader fence: read pg_locks: %w", err)
		}
		if !held {
			return fmt.Errorf("leader fence: backend %d does not hold leader lock %d: %w", pid, key, ErrNotLeader)
		}
		return nil
	}
}
