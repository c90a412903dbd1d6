package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/robfig/cron/v3"

	"github.com/refresherd/refresherd/config"
)

// env returns a getenv backed by a map.
func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

// badConfigs maps each testdata/bad-*.yaml file to the exact error it must
// produce. Every file must be listed, and every entry must have a file.
var badConfigs = map[string]string{
	"bad-alias-key.yaml":               `testdata/bad-alias-key.yaml:4: (top level): expected a plain key, got an alias`,
	"bad-change-detection.yaml":        `testdata/bad-change-detection.yaml:7: views[0] (public.s).change_detection: expected notify, changelog, stats or none, got "polling"`,
	"bad-cron-never.yaml":              `testdata/bad-cron-never.yaml:7: views[0] (public.s).schedule: cron expression "0 0 31 2 *" never fires (no date matches it)`,
	"bad-cron-tz-no-space.yaml":        `testdata/bad-cron-tz-no-space.yaml:7: views[0] (public.s).schedule: invalid cron expression "CRON_TZ=UTC" (expected 5 fields such as "*/5 * * * *" or @every 30s): a time zone must be followed by a space and a schedule`,
	"bad-duplicate-key.yaml":           `testdata/bad-duplicate-key.yaml:9: views[0] (public.s).debounce: duplicate key`,
	"bad-duplicate-view.yaml":          `testdata/bad-duplicate-view.yaml:8: views[1].name: view public.s is already declared as views[0]`,
	"bad-duration.yaml":                `testdata/bad-duration.yaml:4: refresh.debounce: expected a duration such as 500ms, 30s or 5m, got "10 seconds"`,
	"bad-empty.yaml":                   `testdata/bad-empty.yaml: empty configuration`,
	"bad-every-fraction.yaml":          `testdata/bad-every-fraction.yaml:7: views[0] (public.s).schedule: @every interval must be a whole number of seconds, got "@every 1500ms"`,
	"bad-every-subsecond.yaml":         `testdata/bad-every-subsecond.yaml:4: refresh.schedule: @every interval must be at least 1s, got "@every 100ms"`,
	"bad-log-format.yaml":              `testdata/bad-log-format.yaml:4: log.format: expected json or console, got "text"`,
	"bad-mapping-for-string.yaml":      `testdata/bad-mapping-for-string.yaml:3: database.url: expected a string, got a mapping`,
	"bad-max-concurrent-zero.yaml":     `testdata/bad-max-concurrent-zero.yaml:3: max_concurrent_refreshes: expected an integer >= 1, got 0`,
	"bad-max-delay.yaml":               `testdata/bad-max-delay.yaml:9: views[0] (public.s).max_delay: must not be shorter than debounce (1.5s < 2s)`,
	"bad-missing-query.yaml":           `testdata/bad-missing-query.yaml:4: views[0] (public.s).query: missing: set query or query_file`,
	"bad-missing-sources.yaml":         `testdata/bad-missing-sources.yaml:4: views[0] (public.s).sources: missing: change_detection "notify" needs the source tables to watch (or set change_detection: none)`,
	"bad-missing-unique-key.yaml":      `testdata/bad-missing-unique-key.yaml:4: views[0] (public.s).unique_key: missing: REFRESH ... CONCURRENTLY needs a unique key of NOT NULL columns, e.g. unique_key: [id]`,
	"bad-multi-document.yaml":          `testdata/bad-multi-document.yaml:8: invalid YAML: more than one document (remove the extra ---)`,
	"bad-name-empty-part.yaml":         `testdata/bad-name-empty-part.yaml:4: views[0].name: empty name part in "public..s"`,
	"bad-name-no-schema.yaml":          `testdata/bad-name-no-schema.yaml:4: views[0].name: expected a qualified name schema.name, got "app_chargesummary"`,
	"bad-name-space.yaml":              `testdata/bad-name-space.yaml:4: views[0].name: character ' ' needs the name part to be double-quoted in "public.charge summary"`,
	"bad-name-three-parts.yaml":        `testdata/bad-name-three-parts.yaml:4: views[0].name: expected a qualified name schema.name, got "db.public.s"`,
	"bad-name-unterminated-quote.yaml": `testdata/bad-name-unterminated-quote.yaml:4: views[0].name: unterminated quoted identifier in "public.\"Summary"`,
	"bad-negative-duration.yaml":       `testdata/bad-negative-duration.yaml:4: shutdown.grace_period: expected a positive duration, got "-5s"`,
	"bad-no-database-url.yaml":         `testdata/bad-no-database-url.yaml:2: database.url: no database URL: set database.url, the DATABASE_URL environment variable or --database-url`,
	"bad-poll-interval-short.yaml":     `testdata/bad-poll-interval-short.yaml:8: views[0] (public.s).poll_interval: must be at least 10ms, got 1ms`,
	"bad-depends-cycle.yaml":           `testdata/bad-depends-cycle.yaml:7: views[0] (public.a).depends_on: dependency cycle: public.a -> public.c -> public.b -> public.a`,
	"bad-depends-unknown.yaml":         `testdata/bad-depends-unknown.yaml:7: views[0] (public.a).depends_on: public.nope is not a view in this configuration`,
	"bad-poll-interval-zero.yaml":      `testdata/bad-poll-interval-zero.yaml:4: refresh.poll_interval: expected a positive duration, got "0s"`,
	"bad-query-and-file.yaml":          `testdata/bad-query-and-file.yaml:8: views[0] (public.s).query_file: set either query or query_file, not both`,
	"bad-query-empty.yaml":             `testdata/bad-query-empty.yaml:7: views[0] (public.s).query: is empty`,
	"bad-query-file-dir.yaml":          `testdata/bad-query-file-dir.yaml:7: views[0] (public.s).query_file: cannot read testdata: not a regular file`,
	"bad-query-file-multi.yaml":        `testdata/bad-query-file-multi.yaml:7: views[0] (public.s).query_file: must be a single SQL statement (one query, such as SELECT ...); found ';' followed by more SQL at line 3 of two-statements.sql`,
	"bad-query-multi.yaml":             `testdata/bad-query-multi.yaml:7: views[0] (public.s).query: must be a single SQL statement (one query, such as SELECT ...); found ';' followed by more SQL at line 1 of the query`,
	"bad-schedule.yaml":                `testdata/bad-schedule.yaml:7: views[0] (public.s).schedule: invalid cron expression "*/5 * *" (expected 5 fields such as "*/5 * * * *" or @every 30s): expected exactly 5 fields, found 3: [*/5 * *]`,
	"bad-source-semicolon.yaml":        `testdata/bad-source-semicolon.yaml:8: views[0] (public.s).sources[1]: character ';' needs the name part to be double-quoted in "public.u;DROP TABLE x"`,
	"bad-statement-timeout.yaml":       `testdata/bad-statement-timeout.yaml:4: refresh.statement_timeout: must be at least 1ms (PostgreSQL's timeout resolution), got 500µs`,
	"bad-unique-key-dot.yaml":          `testdata/bad-unique-key-dot.yaml:5: views[0] (public.s).unique_key[0]: expected a single identifier, got "t.id"`,
	"bad-unique-key-duplicate.yaml":    `testdata/bad-unique-key-duplicate.yaml:5: views[0] (public.s).unique_key[2]: duplicate column "user_id"`,
	"bad-unknown-top-key.yaml":         `testdata/bad-unknown-top-key.yaml:3: databse: unknown key (expected one of: database, http, leader, log, max_concurrent_refreshes, refresh, shutdown, views)`,
	"bad-unknown-view-key.yaml":        `testdata/bad-unknown-view-key.yaml:7: views[0] (public.s).shedule: unknown key (expected one of: change_detection, concurrently, debounce, depends_on, group_key, lock_timeout, max_delay, max_load, name, poll_interval, query, query_file, refresh_unchanged, schedule, sources, statement_timeout, strategy, target_lag, unique_key, vacuum_threshold, verify_schedule)`,
	"bad-view-not-mapping.yaml":        `testdata/bad-view-not-mapping.yaml:4: views[0]: expected a mapping, got "public.s"`,
	"bad-views-empty.yaml":             `testdata/bad-views-empty.yaml:3: views: expected a non-empty list of views, got an empty list`,
	"bad-views-missing.yaml":           `testdata/bad-views-missing.yaml:1: views: no views configured: add at least one under views:`,
	// go.yaml.in/yaml/v3 reports parser errors one line early (the unclosed
	// "[" is on line 5); the message is passed through as the library gives it.
	"bad-yaml-syntax.yaml": `testdata/bad-yaml-syntax.yaml:4: invalid YAML: did not find expected ',' or ']'`,
}

func TestLoadBadConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/bad-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata/bad-*.yaml files")
	}
	for _, f := range files {
		if _, ok := badConfigs[filepath.Base(f)]; !ok {
			t.Errorf("%s has no expected error in badConfigs", f)
		}
	}
	for name, want := range badConfigs {
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			path := filepath.Join("testdata", name)
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("expected error listed for a missing file: %v", err)
			}
			// No environment at all: every file sets what it needs itself.
			cfg, err := config.Load(path, env(), config.Overrides{})
			if err == nil {
				t.Fatalf("Load succeeded (%d views), want error:\n%s", len(cfg.Views), want)
			}
			if got := err.Error(); got != want {
				t.Errorf("wrong error\n got: %s\nwant: %s", got, want)
			}
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error is %T, want *config.Error", err)
			}
			if ce.File != path {
				t.Errorf("Error.File = %q, want %q", ce.File, path)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := config.Load("testdata/does-not-exist.yaml", env(), config.Overrides{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v, want an error wrapping os.ErrNotExist", err)
	}
}

// lineOf returns the 1-based line of the first line of file containing s.
func lineOf(t *testing.T, file, s string) int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			return i + 1
		}
	}
	t.Fatalf("%s: no line contains %q", file, s)
	return 0
}

func TestLoadShippedConfig(t *testing.T) {
	const file = "../config.yaml"
	const url = "postgres://refresherd@db:5432/app?sslmode=verify-full"
	cfg, err := config.Load(file, env("DATABASE_URL", url), config.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.File != file {
		t.Errorf("File = %q", cfg.File)
	}
	wantTop := config.Config{
		File:                   file,
		Database:               config.Database{URL: url},
		HTTP:                   config.HTTP{Listen: ":9481"},
		Log:                    config.Log{Format: "json", Level: "info"},
		Leader:                 config.Leader{Name: "refresherd"},
		Shutdown:               config.Shutdown{GracePeriod: 30 * time.Second},
		MaxConcurrentRefreshes: 2,
	}
	gotTop := *cfg
	gotTop.Views = nil
	if !reflect.DeepEqual(gotTop, wantTop) {
		t.Errorf("top-level settings\n got: %+v\nwant: %+v", gotTop, wantTop)
	}
	if got := cfg.Database.SessionURL(); got != url {
		t.Errorf("SessionURL() = %q, want the URL when direct_url is unset", got)
	}
	if len(cfg.Views) != 1 {
		t.Fatalf("got %d views, want 1", len(cfg.Views))
	}
	v := cfg.Views[0]
	if want := (config.QualifiedName{Schema: "public", Name: "app_chargesummary"}); v.Name != want {
		t.Errorf("Name = %#v, want %#v", v.Name, want)
	}
	if got := v.Name.Sanitized(); got != `"public"."app_chargesummary"` {
		t.Errorf("Sanitized() = %s", got)
	}
	if !slices.Equal(v.UniqueKey, []string{"id"}) {
		t.Errorf("UniqueKey = %q", v.UniqueKey)
	}
	if want := []config.QualifiedName{{Schema: "public", Name: "app_charge"}}; !slices.Equal(v.Sources, want) {
		t.Errorf("Sources = %v, want %v", v.Sources, want)
	}
	if want := lineOf(t, file, "- name: public.app_chargesummary"); v.Line != want {
		t.Errorf("Line = %d, want %d", v.Line, want)
	}
	// The view sets no refresh settings: all come from refresh:, and what
	// refresh: leaves out comes from the built-in defaults.
	wantSettings := config.Settings{
		Schedule:         "@every 10m",
		ScheduleSpec:     cron.Every(10 * time.Minute),
		Debounce:         time.Second,
		MaxDelay:         10 * time.Second, // refresh: beats the built-in 30s
		TargetLag:        2 * time.Second,
		MaxLoad:          config.DefaultMaxLoad,
		StatementTimeout: 10 * time.Minute,
		LockTimeout:      5 * time.Second,
		Concurrently:     true,
		ChangeDetection:  config.DetectNotify,
		PollInterval:     config.DefaultPollInterval,
		VacuumThreshold:  10000,
		Strategy:         config.StrategyFull,
	}
	if !reflect.DeepEqual(v.Settings, wantSettings) {
		t.Errorf("Settings\n got: %+v\nwant: %+v", v.Settings, wantSettings)
	}
	if !strings.HasPrefix(v.Query, "SELECT c.user_id::text || ':'") ||
		!strings.HasSuffix(v.Query, "GROUP BY c.user_id, c.job_id, c.month") {
		t.Errorf("Query not trimmed or not read in full:\n%s", v.Query)
	}
}

func TestLoadShippedConfigNeedsDatabaseURL(t *testing.T) {
	const file = "../config.yaml"
	_, err := config.Load(file, env(), config.Overrides{})
	want := "../config.yaml:5: database.url: no database URL: set database.url, the DATABASE_URL environment variable or --database-url"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	// The flag alone is enough.
	cfg, err := config.Load(file, env(), config.Overrides{DatabaseURL: "postgres://flag/db"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Database.URL != "postgres://flag/db" {
		t.Errorf("URL = %q", cfg.Database.URL)
	}
}

func TestGoodConfigsLoad(t *testing.T) {
	files, err := filepath.Glob("testdata/good-*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no good configs: %v", err)
	}
	for _, f := range files {
		if _, err := config.Load(f, env(), config.Overrides{}); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestFullConfig(t *testing.T) {
	cfg, err := config.Load("testdata/good-full.yaml", env("LEADER", "ledger", "DATABASE_DIRECT_URL", "postgres://direct/app"), config.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	wantTop := config.Config{
		File:                   "testdata/good-full.yaml",
		Database:               config.Database{URL: "postgres://localhost/app", DirectURL: "postgres://direct/app"},
		HTTP:                   config.HTTP{Listen: "127.0.0.1:9999"},
		Log:                    config.Log{Format: "console", Level: "debug"},
		Leader:                 config.Leader{Name: "ledger"},
		Shutdown:               config.Shutdown{GracePeriod: 45 * time.Second},
		MaxConcurrentRefreshes: 4,
	}
	gotTop := *cfg
	gotTop.Views = nil
	if !reflect.DeepEqual(gotTop, wantTop) {
		t.Errorf("top-level settings\n got: %+v\nwant: %+v", gotTop, wantTop)
	}
	if got := cfg.Database.SessionURL(); got != "postgres://direct/app" {
		t.Errorf("SessionURL() = %q", got)
	}
	if len(cfg.Views) != 2 {
		t.Fatalf("got %d views", len(cfg.Views))
	}

	// views: comes before refresh: in the file; the defaults still apply.
	inherit := cfg.Views[0]
	want := config.Settings{
		Schedule:         "@every 5m",
		ScheduleSpec:     cron.Every(5 * time.Minute),
		Debounce:         2 * time.Second,
		MaxDelay:         20 * time.Second,
		MaxLoad:          config.DefaultMaxLoad,
		StatementTimeout: 15 * time.Minute,
		LockTimeout:      3 * time.Second,
		Concurrently:     true,
		ChangeDetection:  config.DetectNotify,
		PollInterval:     time.Second,
		VacuumThreshold:  10000,
		Strategy:         config.StrategyFull,
	}
	if !reflect.DeepEqual(inherit.Settings, want) {
		t.Errorf("inheriting view\n got: %+v\nwant: %+v", inherit.Settings, want)
	}
	if inherit.Query != "SELECT id FROM public.app_charge" {
		t.Errorf("Query = %q, want the trailing ; and newline removed", inherit.Query)
	}
	wantSrc := []config.QualifiedName{{Schema: "public", Name: "app_charge"}, {Schema: "Billing", Name: "Invoice Lines"}}
	if !slices.Equal(inherit.Sources, wantSrc) {
		t.Errorf("Sources = %#v", inherit.Sources)
	}

	// Every per-view key beats refresh:.
	over := cfg.Views[1]
	if want := (config.QualifiedName{Schema: "Reports", Name: "Monthly Totals"}); over.Name != want {
		t.Errorf("Name = %#v", over.Name)
	}
	if !slices.Equal(over.UniqueKey, []string{"Month", "total_id"}) {
		t.Errorf("UniqueKey = %q", over.UniqueKey)
	}
	if len(over.Sources) != 0 {
		t.Errorf("Sources = %v, want none", over.Sources)
	}
	spec, ok := over.ScheduleSpec.(*cron.SpecSchedule)
	if !ok {
		t.Fatalf("ScheduleSpec is %T, want *cron.SpecSchedule", over.ScheduleSpec)
	}
	if spec.Location != time.UTC {
		t.Errorf("schedule location = %v, want UTC", spec.Location)
	}
	got := over.Settings
	got.ScheduleSpec = nil
	want = config.Settings{
		Schedule:         "TZ=UTC 0 3 * * *",
		Debounce:         0,
		MaxDelay:         time.Minute,
		MaxLoad:          config.DefaultMaxLoad,
		StatementTimeout: time.Hour,
		LockTimeout:      250 * time.Millisecond,
		Concurrently:     false,
		ChangeDetection:  config.DetectNone,
		PollInterval:     50 * time.Millisecond,
		RefreshUnchanged: true,
		VacuumThreshold:  10000,
		Strategy:         config.StrategyFull,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("overriding view\n got: %+v\nwant: %+v", got, want)
	}
}

const minimal = `
database:
  url: postgres://localhost/app
refresh:
  schedule: "*/5 * * * *"
  max_delay: 1m
views:
  - name: public.a
    unique_key: [id]
    sources: [public.t]
    query: SELECT 1 AS id
`

func TestViewOverridesDefault(t *testing.T) {
	cases := []struct {
		name  string
		extra string // added to the view
		check func(t *testing.T, s config.Settings)
	}{
		{"inherits", "", func(t *testing.T, s config.Settings) {
			if s.Schedule != "*/5 * * * *" || s.ScheduleSpec == nil || s.MaxDelay != time.Minute || s.Debounce != time.Second {
				t.Errorf("%+v", s)
			}
		}},
		{"empty schedule disables the default", `schedule: ""`, func(t *testing.T, s config.Settings) {
			if s.Schedule != "" || s.ScheduleSpec != nil {
				t.Errorf("schedule %q %v, want none", s.Schedule, s.ScheduleSpec)
			}
		}},
		{"every", `schedule: "@every 90s"`, func(t *testing.T, s config.Settings) {
			if s.ScheduleSpec != cron.Every(90*time.Second) {
				t.Errorf("ScheduleSpec = %#v", s.ScheduleSpec)
			}
		}},
		{"every in a time zone", `schedule: "TZ=UTC @every 2m"`, func(t *testing.T, s config.Settings) {
			if s.ScheduleSpec != cron.Every(2*time.Minute) {
				t.Errorf("ScheduleSpec = %#v", s.ScheduleSpec)
			}
		}},
		{"descriptor", `schedule: "@hourly"`, func(t *testing.T, s config.Settings) {
			if _, ok := s.ScheduleSpec.(*cron.SpecSchedule); !ok {
				t.Errorf("ScheduleSpec = %#v", s.ScheduleSpec)
			}
		}},
		{"max_delay", `max_delay: 5s`, func(t *testing.T, s config.Settings) {
			if s.MaxDelay != 5*time.Second {
				t.Errorf("MaxDelay = %v", s.MaxDelay)
			}
		}},
		{"zero debounce", `debounce: 0s`, func(t *testing.T, s config.Settings) {
			if s.Debounce != 0 {
				t.Errorf("Debounce = %v", s.Debounce)
			}
		}},
		{"concurrently", `concurrently: false`, func(t *testing.T, s config.Settings) {
			if s.Concurrently {
				t.Error("Concurrently still true")
			}
		}},
		{"default change detection and poll interval", "", func(t *testing.T, s config.Settings) {
			if s.ChangeDetection != config.DetectNotify || s.PollInterval != 200*time.Millisecond {
				t.Errorf("ChangeDetection %q, PollInterval %v; want notify, 200ms", s.ChangeDetection, s.PollInterval)
			}
		}},
		{"changelog", `change_detection: changelog`, func(t *testing.T, s config.Settings) {
			if s.ChangeDetection != config.DetectChangelog {
				t.Errorf("ChangeDetection = %q", s.ChangeDetection)
			}
		}},
		{"stats with its own poll interval", "change_detection: stats\n    poll_interval: 1s", func(t *testing.T, s config.Settings) {
			if s.ChangeDetection != config.DetectStats || s.PollInterval != time.Second {
				t.Errorf("ChangeDetection %q, PollInterval %v; want stats, 1s", s.ChangeDetection, s.PollInterval)
			}
		}},
		{"smallest poll interval", `poll_interval: 10ms`, func(t *testing.T, s config.Settings) {
			if s.PollInterval != 10*time.Millisecond {
				t.Errorf("PollInterval = %v", s.PollInterval)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := minimal
			if c.extra != "" {
				src += "    " + c.extra + "\n"
			}
			cfg, err := config.Parse("t.yaml", []byte(src), nil, config.Overrides{})
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, cfg.Views[0].Settings)
		})
	}
}

func TestEnvExpansion(t *testing.T) {
	src := `
database:
  url: postgres://${DB_USER:-app}:${DB_PASS}@${DB_HOST:-localhost}/${DB_NAME:-app}
http:
  listen: ${LISTEN:-:9481}
leader:
  name: ${LEADER:-refresherd}-$LEADER-${LEADER
max_concurrent_refreshes: ${MAX:-3}
refresh:
  debounce: ${DEBOUNCE:-1s}
  concurrently: ${CONC:-true}
views:
  - name: ${SCHEMA:-public}.a
    unique_key: [id]
    sources: [public.t]
    query: SELECT '${QVAR:-x}' AS id
`
	cases := []struct {
		name  string
		env   func(string) string
		check func(t *testing.T, c *config.Config)
	}{
		{"defaults", env(), func(t *testing.T, c *config.Config) {
			if c.Database.URL != "postgres://app:@localhost/app" {
				t.Errorf("URL = %q", c.Database.URL)
			}
			if c.HTTP.Listen != ":9481" || c.MaxConcurrentRefreshes != 3 || c.Views[0].Debounce != time.Second || !c.Views[0].Concurrently {
				t.Errorf("%+v", c)
			}
			// $VAR and an unterminated ${ are left alone.
			if c.Leader.Name != "refresherd-$LEADER-${LEADER" {
				t.Errorf("Leader.Name = %q", c.Leader.Name)
			}
			if c.Views[0].Query != "SELECT 'x' AS id" {
				t.Errorf("Query = %q", c.Views[0].Query)
			}
		}},
		{"set", env("DB_USER", "u", "DB_PASS", "p@ss", "DB_HOST", "db", "LISTEN", "0.0.0.0:1",
			"LEADER", "L", "MAX", "7", "DEBOUNCE", "250ms", "CONC", "false", "SCHEMA", "Reports"), func(t *testing.T, c *config.Config) {
			if c.Database.URL != "postgres://u:p@ss@db/app" {
				t.Errorf("URL = %q", c.Database.URL)
			}
			if c.HTTP.Listen != "0.0.0.0:1" || c.Leader.Name != "L-$LEADER-${LEADER" || c.MaxConcurrentRefreshes != 7 ||
				c.Views[0].Debounce != 250*time.Millisecond || c.Views[0].Concurrently {
				t.Errorf("%+v %+v", c, c.Views[0].Settings)
			}
			if want := (config.QualifiedName{Schema: "Reports", Name: "a"}); c.Views[0].Name != want {
				t.Errorf("Name = %#v", c.Views[0].Name)
			}
		}},
		{"empty value uses the default", env("DB_HOST", ""), func(t *testing.T, c *config.Config) {
			if c.Database.URL != "postgres://app:@localhost/app" {
				t.Errorf("URL = %q", c.Database.URL)
			}
		}},
		{"values are not expanded again", env("DB_PASS", "${DB_HOST}"), func(t *testing.T, c *config.Config) {
			if c.Database.URL != "postgres://app:${DB_HOST}@localhost/app" {
				t.Errorf("URL = %q", c.Database.URL)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := config.Parse("t.yaml", []byte(src), c.env, config.Overrides{})
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, cfg)
		})
	}

	t.Run("expanded values are still checked", func(t *testing.T) {
		_, err := config.Parse("t.yaml", []byte(src), env("MAX", "0"), config.Overrides{})
		want := `t.yaml:8: max_concurrent_refreshes: expected an integer >= 1, got 0`
		if err == nil || err.Error() != want {
			t.Errorf("got %v\nwant %s", err, want)
		}
		_, err = config.Parse("t.yaml", []byte(src), env("SCHEMA", "x;y"), config.Overrides{})
		want = `t.yaml:13: views[0].name: character ';' needs the name part to be double-quoted in "x;y.a"`
		if err == nil || err.Error() != want {
			t.Errorf("got %v\nwant %s", err, want)
		}
	})
}

// An environment value is substituted into one scalar after parsing, so
// however much YAML it contains it stays that scalar's text.
func TestEnvExpansionKeepsStructure(t *testing.T) {
	hostile := []string{
		"x\n  foo: bar",
		"x\nviews: []\nmax_concurrent_refreshes: 0",
		"\"\nhttp: {listen: evil}\n",
		"x'}, leader: {name: evil}, {'",
		"*alias",
		"&anchor x",
		"--- \n...\n",
		"# comment",
		"|\n  block",
	}
	src := `
database:
  url: ${DATABASE_URL}
  direct_url: "${DATABASE_URL}"
http: {listen: '${DATABASE_URL}'}
views:
  - name: public.a
    unique_key: [id]
    sources: [public.t]
    query: |
      SELECT '${DATABASE_URL}' AS id
`
	for _, h := range hostile {
		cfg, err := config.Parse("t.yaml", []byte(src), env("DATABASE_URL", h), config.Overrides{})
		if err != nil {
			t.Errorf("DATABASE_URL=%q: %v", h, err)
			continue
		}
		if cfg.Database.URL != h || cfg.Database.DirectURL != h || cfg.HTTP.Listen != h {
			t.Errorf("DATABASE_URL=%q: got url %q direct %q listen %q", h, cfg.Database.URL, cfg.Database.DirectURL, cfg.HTTP.Listen)
		}
		if cfg.Leader.Name != "refresherd" || cfg.MaxConcurrentRefreshes != 2 || len(cfg.Views) != 1 {
			t.Errorf("DATABASE_URL=%q changed the structure: %+v", h, cfg)
		}
		if want := "SELECT '" + h + "' AS id"; cfg.Views[0].Query != want {
			t.Errorf("DATABASE_URL=%q: Query = %q", h, cfg.Views[0].Query)
		}
	}
}

func TestOverrides(t *testing.T) {
	src := `
database:
  url: postgres://file/db
http:
  listen: ":1111"
log:
  format: console
views:
  - name: public.a
    unique_key: [id]
    sources: [public.t]
    query: SELECT 1 AS id
`
	cfg, err := config.Parse("t.yaml", []byte(src), nil, config.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Database.URL != "postgres://file/db" || cfg.HTTP.Listen != ":1111" || cfg.Log.Format != "console" {
		t.Errorf("empty overrides changed values: %+v", cfg)
	}

	ov := config.Overrides{DatabaseURL: "postgres://flag/db", HTTPListen: ":2222", LogFormat: "json"}
	cfg, err = config.Parse("t.yaml", []byte(src), nil, ov)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Database.URL != ov.DatabaseURL || cfg.HTTP.Listen != ov.HTTPListen || cfg.Log.Format != ov.LogFormat {
		t.Errorf("overrides lost: %+v", cfg)
	}

	_, err = config.Parse("t.yaml", []byte(src), nil, config.Overrides{LogFormat: "text"})
	if want := `t.yaml: log.format: expected json or console, got "text"`; err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

func TestQueryFile(t *testing.T) {
	// Relative to the config file's directory, not the working directory.
	cfg, err := config.Load("testdata/good-query-file.yaml", env(), config.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if q := cfg.Views[0].Query; q != "SELECT id, name\nFROM public.t" {
		t.Errorf("Query = %q", q)
	}
	if !slices.Equal(cfg.Views[0].UniqueKey, []string{"id"}) || len(cfg.Views[0].Sources) != 1 {
		t.Errorf("a single string should be a one-element list: %+v", cfg.Views[0])
	}

	dir := t.TempDir()
	sub := filepath.Join(dir, "etc")
	if err := os.MkdirAll(filepath.Join(sub, "sql"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "sql", "a.sql"), []byte("\n  SELECT 2 AS id ;\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	abs := filepath.Join(dir, "b.sql")
	if err := os.WriteFile(abs, []byte("SELECT 3 AS id"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := `
database: {url: postgres://x/y}
views:
  - {name: public.a, unique_key: id, sources: public.t, query_file: sql/a.sql}
  - {name: public.b, unique_key: id, sources: public.t, query_file: ` + abs + `}
  - {name: public.c, unique_key: id, sources: public.t, query_file: sql/missing.sql}
`
	path := filepath.Join(sub, "refresherd.yaml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = config.Load(path, env(), config.Overrides{})
	want := path + ":6: views[2] (public.c).query_file: cannot read: stat " + filepath.Join(sub, "sql", "missing.sql") + ": no such file or directory"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	src = strings.Replace(src, "sql/missing.sql", "sql/a.sql", 1)
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = config.Load(path, env(), config.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"SELECT 2 AS id", "SELECT 3 AS id", "SELECT 2 AS id"} {
		if got := cfg.Views[i].Query; got != want {
			t.Errorf("views[%d].Query = %q, want %q", i, got, want)
		}
	}
}

func TestQualifiedNameForms(t *testing.T) {
	cases := []struct {
		schema, name string
		str, san     string
	}{
		{"public", "app_chargesummary", `public.app_chargesummary`, `"public"."app_chargesummary"`},
		{"public", "v2", `public.v2`, `"public"."v2"`},
		{"_x", "_1", `_x._1`, `"_x"."_1"`},
		{"public", "MyView", `public."MyView"`, `"public"."MyView"`},
		{"PUBLIC", "x", `"PUBLIC".x`, `"PUBLIC"."x"`},
		{"public", "1abc", `public."1abc"`, `"public"."1abc"`},
		{"public", "a$b", `public."a$b"`, `"public"."a$b"`},
		{"my schema", "a.b", `"my schema"."a.b"`, `"my schema"."a.b"`},
		{"public", "semi;colon", `public."semi;colon"`, `"public"."semi;colon"`},
		{"public", `Robert"; DROP TABLE x;--`, `public."Robert""; DROP TABLE x;--"`, `"public"."Robert""; DROP TABLE x;--"`},
		{`a"b`, `"`, `"a""b".""""`, `"a""b".""""`},
		{`""`, `.`, `""""""."."`, `""""""."."`},
		{"public", "café", `public."café"`, `"public"."café"`},
		{"данные", "表", `"данные"."表"`, `"данные"."表"`},
		{"public", "🙂", `public."🙂"`, `"public"."🙂"`},
		{"public", "tab\there", "public.\"tab\there\"", "\"public\".\"tab\there\""},
		{"public", "new\nline", "public.\"new\nline\"", "\"public\".\"new\nline\""},
		{"public", "x' OR '1'='1", `public."x' OR '1'='1"`, `"public"."x' OR '1'='1"`},
		{"public", `back\slash`, `public."back\slash"`, `"public"."back\slash"`},
	}
	for _, c := range cases {
		q := config.QualifiedName{Schema: c.schema, Name: c.name}
		if got := q.String(); got != c.str {
			t.Errorf("%#v.String() = %s, want %s", q, got, c.str)
		}
		if got := q.Sanitized(); got != c.san {
			t.Errorf("%#v.Sanitized() = %s, want %s", q, got, c.san)
		}
		if got, pg := q.Sanitized(), (pgx.Identifier{c.schema, c.name}).Sanitize(); got != pg {
			t.Errorf("%#v.Sanitized() = %s, pgx.Identifier gives %s", q, got, pg)
		}
		if !slices.Equal(q.Identifier(), pgx.Identifier{c.schema, c.name}) {
			t.Errorf("%#v.Identifier() = %q", q, q.Identifier())
		}
		for _, form := range []string{q.String(), q.Sanitized()} {
			back, err := config.ParseQualifiedName(form)
			if err != nil {
				t.Errorf("ParseQualifiedName(%s): %v", form, err)
			} else if back != q {
				t.Errorf("ParseQualifiedName(%s) = %#v, want %#v", form, back, q)
			}
		}
	}
	if got := (config.QualifiedName{Schema: "public", Name: "a"}).WithName("a_new"); got != (config.QualifiedName{Schema: "public", Name: "a_new"}) {
		t.Errorf("WithName = %#v", got)
	}
}

func TestParseQualifiedName(t *testing.T) {
	long := strings.Repeat("a", 63)
	cases := []struct {
		in      string
		want    config.QualifiedName
		wantErr string
	}{
		{in: "public.app_x", want: config.QualifiedName{Schema: "public", Name: "app_x"}},
		// No case folding: names must match the catalog spelling.
		{in: "Public.MyView", want: config.QualifiedName{Schema: "Public", Name: "MyView"}},
		{in: "public.a$1", want: config.QualifiedName{Schema: "public", Name: "a$1"}},
		{in: "public.café", want: config.QualifiedName{Schema: "public", Name: "café"}},
		{in: `"a.b"."c d"`, want: config.QualifiedName{Schema: "a.b", Name: "c d"}},
		{in: `public."x""y"`, want: config.QualifiedName{Schema: "public", Name: `x"y`}},
		{in: "public." + long, want: config.QualifiedName{Schema: "public", Name: long}},
		{in: "", wantErr: `empty name part in ""`},
		{in: ".", wantErr: `empty name part in "."`},
		{in: "public.", wantErr: `empty name part in "public."`},
		{in: ".x", wantErr: `empty name part in ".x"`},
		{in: "x", wantErr: `expected a qualified name schema.name, got "x"`},
		{in: "a.b.c", wantErr: `expected a qualified name schema.name, got "a.b.c"`},
		{in: `"".x`, wantErr: `empty quoted identifier in "\"\".x"`},
		{in: `public."x`, wantErr: `unterminated quoted identifier in "public.\"x"`},
		{in: `public."x""`, wantErr: `unterminated quoted identifier in "public.\"x\"\""`},
		{in: `"a"b.c`, wantErr: `unexpected 'b' after quoted identifier in "\"a\"b.c"`},
		{in: `"a"é.c`, wantErr: `unexpected 'é' after quoted identifier in "\"a\"é.c"`},
		{in: `public."a` + "\x00" + `"`, wantErr: `identifier contains a NUL byte in "public.\"a\x00\""`},
		{in: "public.1abc", wantErr: `character '1' needs the name part to be double-quoted in "public.1abc"`},
		{in: "public.$x", wantErr: `character '$' needs the name part to be double-quoted in "public.$x"`},
		{in: "public.my view", wantErr: `character ' ' needs the name part to be double-quoted in "public.my view"`},
		{in: "public.x;", wantErr: `character ';' needs the name part to be double-quoted in "public.x;"`},
		{in: `public.Robert"; DROP TABLE x;--`, wantErr: `character '"' needs the name part to be double-quoted in "public.Robert\"; DROP TABLE x;--"`},
		{in: "public.a-b", wantErr: `character '-' needs the name part to be double-quoted in "public.a-b"`},
		{in: "public." + long + "a", wantErr: `identifier "` + long + `a" is longer than 63 bytes`},
		{in: "public.\xff", wantErr: `name "public.\xff" is not valid UTF-8`},
		{in: "public.\"\xff\"", wantErr: `name "public.\"\xff\"" is not valid UTF-8`},
	}
	for _, c := range cases {
		got, err := config.ParseQualifiedName(c.in)
		switch {
		case c.wantErr != "":
			if err == nil || err.Error() != c.wantErr {
				t.Errorf("ParseQualifiedName(%q) = %#v, %v; want error %s", c.in, got, err, c.wantErr)
			}
		case err != nil:
			t.Errorf("ParseQualifiedName(%q): %v", c.in, err)
		case got != c.want:
			t.Errorf("ParseQualifiedName(%q) = %#v, want %#v", c.in, got, c.want)
		}
	}
}

func TestParseIdent(t *testing.T) {
	cases := []struct{ in, want, wantErr string }{
		{in: "id", want: "id"},
		{in: "ID", want: "ID"},
		{in: `"Order ID"`, want: "Order ID"},
		{in: `"a.b"`, want: "a.b"},
		{in: "t.id", wantErr: `expected a single identifier, got "t.id"`},
		{in: `"t".id`, wantErr: `expected a single identifier, got "\"t\".id"`},
		{in: "", wantErr: `empty name part in ""`},
		{in: "id,name", wantErr: `character ',' needs the name part to be double-quoted in "id,name"`},
	}
	for _, c := range cases {
		got, err := config.ParseIdent(c.in)
		switch {
		case c.wantErr != "":
			if err == nil || err.Error() != c.wantErr {
				t.Errorf("ParseIdent(%q) = %q, %v; want error %s", c.in, got, err, c.wantErr)
			}
		case err != nil:
			t.Errorf("ParseIdent(%q): %v", c.in, err)
		case got != c.want:
			t.Errorf("ParseIdent(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestErrorFormat(t *testing.T) {
	cases := []struct {
		err  config.Error
		want string
	}{
		{config.Error{File: "f.yaml", Line: 3, Key: "a.b", Msg: "bad"}, "f.yaml:3: a.b: bad"},
		{config.Error{File: "f.yaml", Key: "a.b", Msg: "bad"}, "f.yaml: a.b: bad"},
		{config.Error{File: "f.yaml", Line: 3, Msg: "bad"}, "f.yaml:3: bad"},
		{config.Error{File: "f.yaml", Msg: "bad"}, "f.yaml: bad"},
	}
	for _, c := range cases {
		if got := c.err.Error(); got != c.want {
			t.Errorf("%+v.Error() = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestParseInline(t *testing.T) {
	const head = "database: {url: postgres://x/y}\nviews:\n  - name: public.a\n    unique_key: [id]\n    sources: [public.t]\n    query: SELECT 1 AS id\n"
	cases := []struct {
		name, src, wantErr string // wantErr "" means the config is valid
	}{
		{"leading document marker", "---\n" + head, ""},
		{"document end marker", head + "...\n", ""},
		{"trailing document marker", head + "---\n", `t.yaml:7: invalid YAML: more than one document (remove the extra ---)`},
		{"negative @every", head + "    schedule: \"@every -5s\"\n", `t.yaml:7: views[0] (public.a).schedule: @every interval must be at least 1s, got "@every -5s"`},
		{"@every in a time zone", head + "    schedule: \"TZ=UTC @every 500ms\"\n", `t.yaml:7: views[0] (public.a).schedule: @every interval must be at least 1s, got "TZ=UTC @every 500ms"`},
		{"unknown time zone", head + "    schedule: \"TZ=Nowhere/Atlantis 0 * * * *\"\n", `t.yaml:7: views[0] (public.a).schedule: invalid cron expression "TZ=Nowhere/Atlantis 0 * * * *" (expected 5 fields such as "*/5 * * * *" or @every 30s): provided bad location Nowhere/Atlantis: unknown time zone Nowhere/Atlantis`},
		{"six fields", head + "    schedule: \"0 0 * * * *\"\n", `t.yaml:7: views[0] (public.a).schedule: invalid cron expression "0 0 * * * *" (expected 5 fields such as "*/5 * * * *" or @every 30s): expected exactly 5 fields, found 6: [0 0 * * * *]`},
		{"duplicate source", strings.Replace(head, "[public.t]", "[public.t, '\"public\".t']", 1), `t.yaml:5: views[0] (public.a).sources[1]: duplicate source public.t`},
		{"empty query_file", strings.Replace(head, "query: SELECT 1 AS id", `query_file: ""`, 1), `t.yaml:6: views[0] (public.a).query_file: is empty`},
		{"alias value", "x: &u postgres://x/y\n" + head, `t.yaml:1: x: unknown key (expected one of: database, http, leader, log, max_concurrent_refreshes, refresh, shutdown, views)`},
		{"lock_timeout sub-millisecond", head + "    lock_timeout: 1ns\n", `t.yaml:7: views[0] (public.a).lock_timeout: must be at least 1ms (PostgreSQL's timeout resolution), got 1ns`},
		{"refresh max_delay shorter than debounce", head + "refresh:\n  debounce: 1m\n", `t.yaml:8: refresh.max_delay: must not be shorter than debounce (30s < 1m0s)`},
		{"view name missing", "database: {url: postgres://x/y}\nviews:\n  - unique_key: [id]\n", `t.yaml:3: views[0].name: missing: every view needs a schema-qualified name`},
		{"view name not a string", "database: {url: postgres://x/y}\nviews:\n  - name: [public, a]\n", `t.yaml:3: views[0].name: expected a string, got a list`},
		{"sources null", strings.Replace(head, "[public.t]", "", 1), `t.yaml:5: views[0] (public.a).sources: expected a list of strings, got nothing`},
		{"boolean", head + "    concurrently: yes\n", `t.yaml:7: views[0] (public.a).concurrently: expected true or false, got "yes"`},
		{"root not a mapping", "- a\n- b\n", `t.yaml:1: (top level): expected a mapping, got a list`},
		{"log level", head + "log: {level: trace}\n", `t.yaml:7: log.level: expected debug, info, warn or error, got "trace"`},
		{"empty leader", head + "leader: {name: ''}\n", `t.yaml:7: leader.name: must not be empty`},
		{"integer", head + "max_concurrent_refreshes: two\n", `t.yaml:7: max_concurrent_refreshes: expected an integer, got "two"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := config.Parse("t.yaml", []byte(c.src), nil, config.Overrides{})
			switch {
			case c.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case c.wantErr != "" && (err == nil || err.Error() != c.wantErr):
				t.Errorf("got %v\nwant %s", err, c.wantErr)
			}
		})
	}
}

// TestQuerySingleStatement: a query is embedded in CREATE MATERIALIZED VIEW
// ... AS <query>, so a ';' that ends it would let more statements follow.
// The check must see ';' only where PostgreSQL's lexer would end a
// statement: not in string literals (standard, or E'...' with backslash
// escapes), quoted identifiers, dollar-quoted strings or comments (nested).
func TestQuerySingleStatement(t *testing.T) {
	const multi = "t.yaml:6: views[0] (public.a).query: must be a single SQL statement (one query, such as SELECT ...); found ';' followed by more SQL at line %d of the query"
	cases := []struct {
		name, query string
		want        string // the accepted query, or the error (with %d for its line)
		line        int    // 0: accepted; -1: rejected, no line in the message
	}{
		{"plain", "SELECT 1 AS id", "SELECT 1 AS id", 0},
		{"in a string", "SELECT ';' AS id", "SELECT ';' AS id", 0},
		{"in a string with a doubled quote", "SELECT 'it''s; fine' AS id", "SELECT 'it''s; fine' AS id", 0},
		{"backslash ends no standard string", `SELECT '\' AS a, ';' AS id`, `SELECT '\' AS a, ';' AS id`, 0},
		{"in an E string after an escaped quote", `SELECT E'\'; DROP TABLE x; --' AS id`, `SELECT E'\'; DROP TABLE x; --' AS id`, 0},
		{"in a quoted identifier", `SELECT 1 AS "a;b", 2 AS "x"";" FROM t`, `SELECT 1 AS "a;b", 2 AS "x"";" FROM t`, 0},
		{"in a dollar-quoted string", "SELECT $$;$$ AS id", "SELECT $$;$$ AS id", 0},
		{"in a tagged dollar-quoted string", "SELECT $fn$ a; $$ b; $fn$ AS id", "SELECT $fn$ a; $$ b; $fn$ AS id", 0},
		{"in a line comment", "SELECT 1 AS id -- a; b\nFROM t", "SELECT 1 AS id -- a; b\nFROM t", 0},
		{"in a nested block comment", "SELECT /* ; /* nested; */ ; */ 1 AS id", "SELECT /* ; /* nested; */ ; */ 1 AS id", 0},
		{"trailing semicolons", "SELECT 1 AS id ;; ;", "SELECT 1 AS id", 0},
		{"trailing semicolon and comments", "SELECT 1 AS id; -- done\n/* really */ ;", "SELECT 1 AS id", 0},
		{"trailing semicolon after a comment ending in one", "SELECT 1 AS id -- one;\n; -- done", "SELECT 1 AS id -- one", 0},

		{"only comments", "-- nothing\n; /* here */", "t.yaml:6: views[0] (public.a).query: is empty", -1},
		{"second statement", "SELECT 1 AS id; DROP TABLE x", multi, 1},
		{"second statement on its own line", "SELECT 1 AS id\n  FROM t;\nDROP TABLE x;\nSELECT 1", multi, 2},
		{"after a string with a doubled quote", "SELECT 'a'';' AS id; DROP TABLE x", multi, 1},
		{"after an E string ending in an escaped backslash", `SELECT E'\\' AS id; DROP TABLE x`, multi, 1},
		{"after a dollar-quoted string", "SELECT $$ ; $$ AS id; DROP TABLE x", multi, 1},
		{"after a block comment", "SELECT /* ; */ 1 AS id; DROP TABLE x", multi, 1},
		{"after a line comment", "SELECT 1 AS id -- x;\n; DROP TABLE x", multi, 2},
		{"dollar signs inside an identifier", "SELECT 1 AS a$b$; DROP TABLE x; SELECT $b$", multi, 1},
		{"a parameter is no dollar quote", "SELECT $1; DROP TABLE x; SELECT $1", multi, 1},
		{"a string after the semicolon", "SELECT 1 AS id; 'x'", multi, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := "database: {url: postgres://x/y}\nviews:\n  - name: public.a\n    unique_key: [id]\n    sources: [public.t]\n    query: |\n      " +
				strings.ReplaceAll(c.query, "\n", "\n      ") + "\n"
			cfg, err := config.Parse("t.yaml", []byte(src), nil, config.Overrides{})
			if c.line == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if got := cfg.Views[0].Query; got != c.want {
					t.Fatalf("Query = %q, want %q", got, c.want)
				}
				return
			}
			want := c.want
			if c.line > 0 {
				want = fmt.Sprintf(c.want, c.line)
			}
			if err == nil || err.Error() != want {
				t.Fatalf("got %v\nwant %s", err, want)
			}
		})
	}
}

// TestStrategyKeys: strategy, group_key and verify_schedule, and what they
// imply: an incremental view detects changes by its capture triggers, and
// incremental or auto views debounce briefly unless told otherwise.
func TestStrategyKeys(t *testing.T) {
	// An incremental view needs no sources (its capture triggers go on the
	// query's one table); the others do, for their change detection.
	const head = "database: {url: postgres://x/y}\nviews:\n  - name: public.a\n    unique_key: [id]\n    query: SELECT 1 AS id\n"
	const withSources = "database: {url: postgres://x/y}\nviews:\n  - name: public.a\n    sources: [public.t]\n    unique_key: [id]\n    query: SELECT 1 AS id\n"
	cases := []struct {
		name, src, wantErr string
		strategy, detect   string
		debounce           time.Duration
		groupKey           []string
	}{
		{name: "default full", src: withSources, strategy: config.StrategyFull, detect: config.DetectNotify, debounce: time.Second},
		{name: "incremental", src: head + "    strategy: incremental\n", strategy: config.StrategyIncremental, detect: config.DetectCapture, debounce: config.IncrementalDebounce},
		{name: "auto keeps the detector for a fallback", src: withSources + "    strategy: auto\n", strategy: config.StrategyAuto, detect: config.DetectNotify, debounce: config.IncrementalDebounce},
		{name: "debounce set on the view", src: head + "    strategy: incremental\n    debounce: 200ms\n", strategy: config.StrategyIncremental, detect: config.DetectCapture, debounce: 200 * time.Millisecond},
		{name: "refresh.debounce is for full views", src: head + "    strategy: incremental\nrefresh: {debounce: 300ms}\n", strategy: config.StrategyIncremental, detect: config.DetectCapture, debounce: config.IncrementalDebounce},
		{name: "strategy under refresh", src: head + "refresh: {strategy: incremental}\n", strategy: config.StrategyIncremental, detect: config.DetectCapture, debounce: config.IncrementalDebounce},
		{name: "group key", src: withSources + "    strategy: auto\n    group_key: [user_id, \"Job\"]\n", strategy: config.StrategyAuto, detect: config.DetectNotify, debounce: config.IncrementalDebounce, groupKey: []string{"user_id", "Job"}},
		{name: "bad strategy", src: head + "    strategy: fast\n", wantErr: `t.yaml:6: views[0] (public.a).strategy: expected full, incremental or auto, got "fast"`},
		{name: "group key on a full view", src: withSources + "    group_key: [user_id]\n", wantErr: `t.yaml:7: views[0] (public.a).group_key: only used by strategy incremental or auto; this view's strategy is full`},
		{name: "empty group key", src: head + "    strategy: incremental\n    group_key: []\n", wantErr: `t.yaml:7: views[0] (public.a).group_key: must name at least one column (or leave it out: the group key is read from the query)`},
		{name: "bad verify schedule", src: withSources + "    verify_schedule: often\n", wantErr: `t.yaml:7: views[0] (public.a).verify_schedule: invalid cron expression "often" (expected 5 fields such as "*/5 * * * *" or @every 30s): expected exactly 5 fields, found 1: [often]`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := config.Parse("t.yaml", []byte(c.src), nil, config.Overrides{})
			if c.wantErr != "" {
				if err == nil || err.Error() != c.wantErr {
					t.Fatalf("got %v\nwant %s", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			v := cfg.Views[0]
			if v.Strategy != c.strategy || v.ChangeDetection != c.detect || v.Debounce != c.debounce || !slices.Equal(v.GroupKey, c.groupKey) {
				t.Fatalf("strategy %q detection %q debounce %v group key %v; want %q %q %v %v",
					v.Strategy, v.ChangeDetection, v.Debounce, v.GroupKey, c.strategy, c.detect, c.debounce, c.groupKey)
			}
		})
	}
}
