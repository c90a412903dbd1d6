package config_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/refresherd/refresherd/config"
)

// FuzzParse checks that Parse never panics, that every failure is a
// *config.Error naming the file (and line), and that whatever it accepts is
// internally consistent.
func FuzzParse(f *testing.F) {
	seeds, err := filepath.Glob("testdata/*")
	if err != nil {
		f.Fatal(err)
	}
	seeds = append(seeds, "../config.yaml")
	n := 0
	for _, s := range seeds {
		if st, err := os.Stat(s); err != nil || !st.Mode().IsRegular() {
			continue // testdata/fuzz is the fuzzer's own corpus
		}
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		n++
	}
	if n < 20 {
		f.Fatalf("only %d seed files", n)
	}

	// In testdata so that query_file: query.sql in the seeds resolves.
	const file = "testdata/fuzz.yaml"
	getenv := env("DATABASE_URL", "postgres://fuzz/db", "SCHEMA", "public", "NL", "a\n  b: c")

	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := config.Parse(file, data, getenv, config.Overrides{})
		if err != nil {
			if cfg != nil {
				t.Errorf("non-nil config with error %v", err)
			}
			ce, ok := err.(*config.Error)
			if !ok {
				t.Fatalf("error is %T, want *config.Error: %v", err, err)
			}
			msg := ce.Error()
			if ce.File != file || !strings.HasPrefix(msg, file+":") {
				t.Errorf("error does not start with %q: %q", file+":", msg)
			}
			if ce.Line < 0 {
				t.Errorf("negative line %d: %q", ce.Line, msg)
			}
			if ce.Line > 0 && !strings.HasPrefix(msg, file+":"+strconv.Itoa(ce.Line)+":") {
				t.Errorf("error does not contain :%d: after the file: %q", ce.Line, msg)
			}
			if ce.Msg == "" {
				t.Errorf("empty message: %q", msg)
			}
			return
		}
		if cfg == nil {
			t.Fatal("nil config without error")
		}
		if cfg.Database.URL == "" || cfg.MaxConcurrentRefreshes < 1 || cfg.Leader.Name == "" || cfg.Shutdown.GracePeriod <= 0 {
			t.Errorf("accepted invalid top-level settings: %+v", cfg)
		}
		if cfg.Log.Format != "json" && cfg.Log.Format != "console" {
			t.Errorf("accepted log format %q", cfg.Log.Format)
		}
		if len(cfg.Views) == 0 {
			t.Fatal("accepted a config without views")
		}
		seen := map[config.QualifiedName]bool{}
		for i, v := range cfg.Views {
			if seen[v.Name] {
				t.Errorf("views[%d]: duplicate name %s accepted", i, v.Name)
			}
			seen[v.Name] = true
			for _, form := range []string{v.Name.String(), v.Name.Sanitized()} {
				back, err := config.ParseQualifiedName(form)
				if err != nil || back != v.Name {
					t.Errorf("views[%d]: %#v does not round-trip through %s: %#v, %v", i, v.Name, form, back, err)
				}
			}
			if strings.TrimSpace(v.Query) == "" || strings.HasSuffix(v.Query, ";") {
				t.Errorf("views[%d]: query %q", i, v.Query)
			}
			if len(v.UniqueKey) == 0 {
				t.Errorf("views[%d]: no unique key", i)
			}
			for _, k := range v.UniqueKey {
				if back, err := config.ParseIdent(`"` + strings.ReplaceAll(k, `"`, `""`) + `"`); err != nil || back != k {
					t.Errorf("views[%d]: unique key column %q does not round-trip: %q, %v", i, k, back, err)
				}
			}
			if len(v.Sources) == 0 && v.ChangeDetection != config.DetectNone {
				t.Errorf("views[%d]: change detection %q without sources", i, v.ChangeDetection)
			}
			if v.MaxDelay < v.Debounce || v.MaxDelay <= 0 || v.Debounce < 0 || v.StatementTimeout <= 0 || v.LockTimeout <= 0 {
				t.Errorf("views[%d]: accepted invalid durations: %+v", i, v.Settings)
			}
			if v.PollInterval < 10*time.Millisecond {
				t.Errorf("views[%d]: accepted poll interval %v", i, v.PollInterval)
			}
			switch v.ChangeDetection {
			case config.DetectNotify, config.DetectChangelog, config.DetectStats, config.DetectNone:
			default:
				t.Errorf("views[%d]: accepted change detection %q", i, v.ChangeDetection)
			}
			if (v.Schedule == "") != (v.ScheduleSpec == nil) {
				t.Errorf("views[%d]: schedule %q but spec %v", i, v.Schedule, v.ScheduleSpec)
			}
		}
	})
}
