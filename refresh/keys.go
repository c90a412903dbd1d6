package refresh

// Advisory-lock keys, exported for tools that inspect a running deployment
// from outside the daemon (refresherd status reads pg_locks for them). They
// wrap lockKey so the derivation stays in one place.

// LeaderLockKey is the key of the session-level advisory lock held by the
// leader of the replicas sharing leader.name.
func LeaderLockKey(name string) int64 { return lockKey("leader", name) }

// ViewLockKey is the key of the transaction-level advisory lock held by a
// refresh of view (its canonical name, config.QualifiedName.String()) for
// the whole refresh transaction.
func ViewLockKey(view string) int64 { return lockKey("view", view) }

// AdvisoryLockIDs splits key the way pg_locks shows a bigint advisory lock:
// classid holds the high 32 bits, objid the low 32 bits (both unsigned), and
// objsubid is 1.
func AdvisoryLockIDs(key int64) (classid, objid uint32) {
	return uint32(uint64(key) >> 32), uint32(uint64(key))
}
