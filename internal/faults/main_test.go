package faults

import (
	"testing"

	"github.com/refresherd/refresherd/internal/daemontest"
)

// TestMain starts no shared cluster (every test starts its own so it can
// break it) and checks for leaked goroutines afterwards.
func TestMain(m *testing.M) { daemontest.MainOwnClusters(m) }
