// Package faults holds refresherd's fault-injection tests: each test starts
// a private PostgreSQL cluster (internal/pgtest.NewCluster), runs the built
// daemon as a process (internal/daemontest) and breaks something on purpose
// (the database restarting, hanging or killing connections, lock
// contention, slow refreshes, replicas dying, bad input, too few privileges)
// to check that the daemon survives and loses no change. The package has no
// non-test code; this file only carries the documentation.
package faults
