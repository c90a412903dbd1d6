package harness

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/internal/daemontest"
)

// TestDeriveConfig: the writer test's configs are the shipped one with the
// overrides, and the daemon's own loader accepts them.
func TestDeriveConfig(t *testing.T) {
	shipped := filepath.Join(daemontest.ModuleRoot(), "config.yaml")
	path := filepath.Join(t.TempDir(), "c.yaml")
	diff, err := deriveConfig(shipped, path, [][2]string{
		{"change_detection", "none"}, {"debounce", "1h"}, {"max_delay", "1h"}, {"schedule", "@every 24h"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(diff, "refresh.change_detection: none") {
		t.Errorf("diff = %q", diff)
	}
	getenv := func(k string) string {
		if k == "DATABASE_URL" {
			return "postgres://x/y"
		}
		return ""
	}
	cfg, err := config.Load(path, getenv, config.Overrides{})
	if err != nil {
		t.Fatalf("derived config rejected: %v", err)
	}
	ref, err := config.Load(shipped, getenv, config.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	v, r := cfg.Views[0], ref.Views[0]
	if v.ChangeDetection != "none" || v.Debounce != time.Hour || v.MaxDelay != time.Hour || v.Schedule != "@every 24h" {
		t.Errorf("overrides not applied: %+v", v.Settings)
	}
	if v.Name != r.Name || v.Query != r.Query || v.Concurrently != r.Concurrently {
		t.Errorf("derived view differs from the shipped one beyond the overrides")
	}
}
