package faults

import (
	"testing"

	"github.com/refresherd/refresherd/internal/pgtest"
)

// TestMain provides the shared cluster (unused here: every test starts its
// own so it can break it) and checks for leaked goroutines afterwards.
func TestMain(m *testing.M) { pgtest.Main(m) }
