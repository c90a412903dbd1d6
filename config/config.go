// Package config loads and validates refresherd's YAML configuration.
//
// The loader walks the YAML node tree itself instead of decoding into structs
// so that every error can name the file, the line and the key path, and so
// that unknown keys are always errors.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/robfig/cron/v3"
	"go.yaml.in/yaml/v3"
)

// Change detection modes.
const (
	// DetectNotify: a statement trigger does pg_notify only when the daemon
	// has armed its table's doorbell, which the first such writer disarms;
	// the daemon LISTENs and, at a ring (answered at once after a quiet
	// spell, every 200 ms at most under a stream of writes) and every
	// poll_interval as the fallback, re-arms it and works out what
	// changed.
	DetectNotify = "notify"
	// DetectChangelog: a statement trigger appends a row to an UNLOGGED log
	// table that the daemon drains every poll_interval; no NOTIFY, so
	// committing writers do not serialise on the notification queue lock.
	DetectChangelog = "changelog"
	// DetectStats: no trigger; the daemon polls the table statistics
	// counters, which cost writers nothing but appear up to ~10 s late.
	DetectStats = "stats"
	// DetectNone: schedule and manual refreshes only.
	DetectNone = "none"
	// DetectCapture is not configured: an incremental view's own capture
	// triggers log the group keys that writers touch, and the daemon polls
	// that log. Set for strategy incremental, and for auto once the query
	// qualifies.
	DetectCapture = "capture"
)

// Refresh strategies (strategy:).
const (
	// StrategyFull: a materialized view, recomputed whole by REFRESH.
	StrategyFull = "full"
	// StrategyIncremental: a plain table the daemon keeps exact by
	// recomputing only the groups that changed (the query must qualify).
	StrategyIncremental = "incremental"
	// StrategyAuto: incremental when the query qualifies, else full.
	StrategyAuto = "auto"
)

// IncrementalDebounce is the debounce of incremental (and auto) views when
// none is configured: a round costs little, so it only coalesces a burst.
const IncrementalDebounce = 50 * time.Millisecond

// DefaultMaxLoad lets a view refresh 90% of the time when its target lag
// cannot be met.
const DefaultMaxLoad = 0.9

// DefaultPollInterval is how often the changelog and stats detectors poll
// (and notify's when no ring came) when poll_interval is not set.
const DefaultPollInterval = 200 * time.Millisecond

// minPollInterval keeps a typo such as 1us from turning a poller into a
// busy loop against the database.
const minPollInterval = 10 * time.Millisecond

// Config is a loaded, validated configuration with defaults applied.
type Config struct {
	File                   string
	Database               Database
	HTTP                   HTTP
	Log                    Log
	Leader                 Leader
	Shutdown               Shutdown
	MaxConcurrentRefreshes int
	Views                  []View
}

// Database holds connection settings.
type Database struct {
	URL string
	// DirectURL, when set, is used for the listener and leader connections,
	// which need a real session (PgBouncer in transaction mode breaks LISTEN
	// and session advisory locks).
	DirectURL string
}

// SessionURL is the URL for connections that need a real session.
func (d Database) SessionURL() string {
	if d.DirectURL != "" {
		return d.DirectURL
	}
	return d.URL
}

// HTTP holds the metrics/probe server settings.
type HTTP struct{ Listen string }

// Log holds logger settings.
type Log struct{ Format, Level string }

// Leader holds leader-election settings.
type Leader struct{ Name string }

// Shutdown holds graceful-stop settings.
type Shutdown struct{ GracePeriod time.Duration }

// Settings are the per-view refresh settings; `refresh:` holds the defaults.
type Settings struct {
	Schedule     string
	ScheduleSpec cron.Schedule // nil when no schedule
	Debounce     time.Duration
	MaxDelay     time.Duration
	// TargetLag is the freshness the view should keep: a change visible
	// within this much time. The daemon plans refreshes from the oldest
	// pending change and its measured refresh time; 0 plans by debounce and
	// max_delay alone.
	TargetLag time.Duration
	// MaxLoad is the share of time (0 < x <= 1) a view may spend
	// refreshing when its target cannot be met: refreshes then run back to
	// back with at least duration*(1-MaxLoad)/MaxLoad between them.
	MaxLoad          float64
	StatementTimeout time.Duration
	LockTimeout      time.Duration
	Concurrently     bool
	ChangeDetection  string
	// PollInterval is how often the changelog and stats detectors poll,
	// and notify's when no ring came (its fallback; one under 200 ms also
	// lets it answer a stream of rings that often); unused by none. Each
	// detector polls at the shortest interval among the views that use it.
	PollInterval time.Duration
	// RefreshUnchanged makes scheduled ticks refresh even when no change was
	// seen since the last refresh.
	RefreshUnchanged bool
	// VacuumThreshold: after a concurrent refresh leaves at least this many
	// dead rows in the view, VACUUM (ANALYZE) it; 0 disables.
	VacuumThreshold int
	// Strategy: full, incremental or auto.
	Strategy string
	// VerifySchedule (cron) compares an incremental summary with a full
	// aggregate periodically; "" never.
	VerifySchedule string
	VerifySpec     cron.Schedule
}

// View is one managed materialized view.
type View struct {
	Name      QualifiedName
	Query     string
	UniqueKey []string
	Sources   []QualifiedName
	// DependsOn names managed views this view reads: it refreshes after
	// them, and their refreshes make it dirty.
	DependsOn []QualifiedName
	// GroupKey, when set, declares the group key of an incremental view;
	// it is checked against the query's GROUP BY.
	GroupKey []string
	Settings
	Line int // where the view is declared, for later error messages
}

// Defaults applied when a key is absent.
var defaultSettings = Settings{
	Debounce:         time.Second,
	MaxDelay:         30 * time.Second,
	MaxLoad:          DefaultMaxLoad,
	StatementTimeout: 10 * time.Minute,
	LockTimeout:      5 * time.Second,
	Concurrently:     true,
	ChangeDetection:  DetectNotify,
	PollInterval:     DefaultPollInterval,
	VacuumThreshold:  10000,
	Strategy:         StrategyFull,
}

// Error is a configuration error at a place in a file.
type Error struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	if e.Key != "" {
		b.WriteString(": " + e.Key)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// Overrides come from the environment and flags; they win over the file.
type Overrides struct {
	DatabaseURL string
	HTTPListen  string
	LogFormat   string
}

// Load reads, expands, decodes and validates the file at path.
// getenv resolves ${VAR} references (os.Getenv in production).
func Load(path string, getenv func(string) string, ov Overrides) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	return Parse(path, data, getenv, ov)
}

// Parse is Load on bytes already read; path is used in messages and to
// resolve query_file.
func Parse(path string, data []byte, getenv func(string) string, ov Overrides) (*Config, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	d := &decoder{file: path, getenv: getenv, dir: filepath.Dir(path)}
	cfg, err := d.decode(data)
	if err != nil {
		return nil, err
	}
	if ov.DatabaseURL != "" {
		cfg.Database.URL = ov.DatabaseURL
	}
	if ov.HTTPListen != "" {
		cfg.HTTP.Listen = ov.HTTPListen
	}
	if ov.LogFormat != "" {
		cfg.Log.Format = ov.LogFormat
	}
	if err := checkLogFormat(cfg.Log.Format); err != nil {
		return nil, &Error{File: path, Key: "log.format", Msg: err.Error()}
	}
	if cfg.Database.URL == "" {
		return nil, &Error{File: path, Line: d.urlLine, Key: "database.url", Msg: "no database URL: set database.url, the DATABASE_URL environment variable or --database-url"}
	}
	return cfg, nil
}

func checkLogFormat(f string) error {
	if f != "json" && f != "console" {
		return fmt.Errorf("expected json or console, got %q", f)
	}
	return nil
}

type decoder struct {
	file   string
	dir    string
	getenv func(string) string
	err    error
	// urlLine is where database.url is set, for the "no database URL" error.
	urlLine int
}

func (d *decoder) fail(n *yaml.Node, key, format string, args ...any) {
	if d.err != nil {
		return
	}
	line := 0
	if n != nil {
		line = n.Line
	}
	d.err = &Error{File: d.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)}
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (d *decoder) decode(data []byte) (*Config, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{File: d.file, Msg: "empty configuration"}
		}
		msg := err.Error()
		if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, &Error{File: d.file, Line: line, Msg: "invalid YAML: " + m[2]}
		}
		return nil, &Error{File: d.file, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		line := 0
		if err == nil {
			line = extra.Line
		} else if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ = strconv.Atoi(m[1])
		}
		return nil, &Error{File: d.file, Line: line, Msg: "invalid YAML: more than one document (remove the extra ---)"}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	cfg := &Config{
		File:                   d.file,
		HTTP:                   HTTP{Listen: ":9481"},
		Log:                    Log{Format: "json", Level: "info"},
		Leader:                 Leader{Name: "refresherd"},
		Shutdown:               Shutdown{GracePeriod: 30 * time.Second},
		MaxConcurrentRefreshes: 2,
	}
	defaults := defaultSettings
	var viewsNode *yaml.Node
	d.mapping(root, "", map[string]func(*yaml.Node, string){
		"database": func(n *yaml.Node, p string) {
			d.mapping(n, p, map[string]func(*yaml.Node, string){
				"url": func(n *yaml.Node, p string) {
					cfg.Database.URL = d.str(n, p)
					d.urlLine = n.Line
				},
				"direct_url": func(n *yaml.Node, p string) { cfg.Database.DirectURL = d.str(n, p) },
			})
		},
		"http": func(n *yaml.Node, p string) {
			d.mapping(n, p, map[string]func(*yaml.Node, string){
				"listen": func(n *yaml.Node, p string) { cfg.HTTP.Listen = d.str(n, p) },
			})
		},
		"log": func(n *yaml.Node, p string) {
			d.mapping(n, p, map[string]func(*yaml.Node, string){
				"format": func(n *yaml.Node, p string) {
					cfg.Log.Format = d.str(n, p)
					if err := checkLogFormat(cfg.Log.Format); err != nil {
						d.fail(n, p, "%v", err)
					}
				},
				"level": func(n *yaml.Node, p string) {
					cfg.Log.Level = d.str(n, p)
					switch cfg.Log.Level {
					case "debug", "info", "warn", "error":
					default:
						d.fail(n, p, "expected debug, info, warn or error, got %q", cfg.Log.Level)
					}
				},
			})
		},
		"leader": func(n *yaml.Node, p string) {
			d.mapping(n, p, map[string]func(*yaml.Node, string){
				"name": func(n *yaml.Node, p string) {
					cfg.Leader.Name = d.str(n, p)
					if cfg.Leader.Name == "" {
						d.fail(n, p, "must not be empty")
					}
				},
			})
		},
		"shutdown": func(n *yaml.Node, p string) {
			d.mapping(n, p, map[string]func(*yaml.Node, string){
				"grace_period": func(n *yaml.Node, p string) { cfg.Shutdown.GracePeriod = d.duration(n, p, false) },
			})
		},
		"max_concurrent_refreshes": func(n *yaml.Node, p string) {
			cfg.MaxConcurrentRefreshes = d.integer(n, p)
			if d.err == nil && cfg.MaxConcurrentRefreshes < 1 {
				d.fail(n, p, "expected an integer >= 1, got %d", cfg.MaxConcurrentRefreshes)
			}
		},
		"refresh": func(n *yaml.Node, p string) { d.settings(n, p, &defaults) },
		"views":   func(n *yaml.Node, _ string) { viewsNode = n },
	})
	if d.err == nil && viewsNode == nil {
		d.fail(root, "views", "no views configured: add at least one under views:")
	}
	if d.err == nil {
		cfg.Views = d.views(viewsNode, defaults)
	}
	if d.err != nil {
		return nil, d.err
	}
	return cfg, nil
}

// mapping decodes a mapping node, calling the handler for each known key and
// failing on unknown or duplicate keys.
func (d *decoder) mapping(n *yaml.Node, path string, handlers map[string]func(*yaml.Node, string)) {
	if d.err != nil {
		return
	}
	where := path
	if where == "" {
		where = "(top level)"
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, where, "expected a mapping, got %s", kindName(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content) && d.err == nil; i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.fail(k, where, "expected a plain key, got %s", kindName(k))
			return
		}
		key := k.Value
		full := key
		if path != "" {
			full = path + "." + key
		}
		h, ok := handlers[key]
		if !ok {
			d.fail(k, full, "unknown key (expected one of: %s)", strings.Join(sortedKeys(handlers), ", "))
			return
		}
		if seen[key] {
			d.fail(k, full, "duplicate key")
			return
		}
		seen[key] = true
		h(v, full)
	}
}

func sortedKeys(m map[string]func(*yaml.Node, string)) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		if len(n.Content) == 0 {
			return "an empty list"
		}
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing"
		}
		return fmt.Sprintf("%q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "something else"
}

var envRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// str returns a scalar's value with ${VAR} and ${VAR:-default} expanded.
// Expansion happens per value, after parsing, so an environment value can
// never change the YAML's structure.
func (d *decoder) str(n *yaml.Node, path string) string {
	if d.err != nil {
		return ""
	}
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		d.fail(n, path, "expected a string, got %s", kindName(n))
		return ""
	}
	return envRE.ReplaceAllStringFunc(n.Value, func(m string) string {
		sub := envRE.FindStringSubmatch(m)
		if v := d.getenv(sub[1]); v != "" {
			return v
		}
		return sub[3]
	})
}

func (d *decoder) duration(n *yaml.Node, path string, zeroOK bool) time.Duration {
	s := d.str(n, path)
	if d.err != nil {
		return 0
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		d.fail(n, path, "expected a duration such as 500ms, 30s or 5m, got %q", s)
		return 0
	}
	if v < 0 || (v == 0 && !zeroOK) {
		d.fail(n, path, "expected a positive duration, got %q", s)
		return 0
	}
	return v
}

// pgTimeout is a positive duration that PostgreSQL can represent: its
// timeouts have millisecond resolution and a sub-millisecond value would be
// rounded to 0, which disables the timeout.
func (d *decoder) pgTimeout(n *yaml.Node, path string) time.Duration {
	v := d.duration(n, path, false)
	if d.err == nil && v < time.Millisecond {
		d.fail(n, path, "must be at least 1ms (PostgreSQL's timeout resolution), got %s", v)
		return 0
	}
	return v
}

func (d *decoder) integer(n *yaml.Node, path string) int {
	s := d.str(n, path)
	if d.err != nil {
		return 0
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		d.fail(n, path, "expected an integer, got %q", s)
	}
	return v
}

func (d *decoder) boolean(n *yaml.Node, path string) bool {
	s := d.str(n, path)
	if d.err != nil {
		return false
	}
	switch s {
	case "true":
		return true
	case "false":
		return false
	}
	d.fail(n, path, "expected true or false, got %q", s)
	return false
}

func (d *decoder) strList(n *yaml.Node, path string) ([]string, []*yaml.Node) {
	if d.err != nil {
		return nil, nil
	}
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return []string{d.str(n, path)}, []*yaml.Node{n}
	}
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "expected a list of strings, got %s", kindName(n))
		return nil, nil
	}
	out := make([]string, 0, len(n.Content))
	for i, c := range n.Content {
		out = append(out, d.str(c, fmt.Sprintf("%s[%d]", path, i)))
	}
	return out, n.Content
}

// settings decodes refresh settings into s (which holds the inherited values).
func (d *decoder) settings(n *yaml.Node, path string, s *Settings) {
	d.mapping(n, path, d.settingHandlers(s))
	d.checkSettings(n, path, s)
}

func (d *decoder) settingHandlers(s *Settings) map[string]func(*yaml.Node, string) {
	return map[string]func(*yaml.Node, string){
		"schedule": func(n *yaml.Node, p string) {
			s.Schedule = d.str(n, p)
			s.ScheduleSpec = nil
			if d.err != nil || s.Schedule == "" {
				return
			}
			spec, err := parseSchedule(s.Schedule)
			if err != nil {
				d.fail(n, p, "%v", err)
				return
			}
			s.ScheduleSpec = spec
		},
		"debounce": func(n *yaml.Node, p string) {
			s.Debounce = d.duration(n, p, true)
		},
		"strategy": func(n *yaml.Node, p string) {
			s.Strategy = d.str(n, p)
			switch s.Strategy {
			case StrategyFull, StrategyIncremental, StrategyAuto:
			default:
				d.fail(n, p, "expected full, incremental or auto, got %q", s.Strategy)
			}
		},
		"verify_schedule": func(n *yaml.Node, p string) {
			s.VerifySchedule = d.str(n, p)
			s.VerifySpec = nil
			if d.err != nil || s.VerifySchedule == "" {
				return
			}
			spec, err := parseSchedule(s.VerifySchedule)
			if err != nil {
				d.fail(n, p, "%v", err)
				return
			}
			s.VerifySpec = spec
		},
		"max_delay":  func(n *yaml.Node, p string) { s.MaxDelay = d.duration(n, p, false) },
		"target_lag": func(n *yaml.Node, p string) { s.TargetLag = d.duration(n, p, true) },
		"max_load": func(n *yaml.Node, p string) {
			raw := d.str(n, p)
			if d.err != nil {
				return
			}
			f, err := strconv.ParseFloat(raw, 64)
			if err != nil || !(f > 0 && f <= 1) {
				d.fail(n, p, "expected a share of time between 0 (exclusive) and 1, such as 0.5, got %q", raw)
				return
			}
			s.MaxLoad = f
		},
		"statement_timeout": func(n *yaml.Node, p string) { s.StatementTimeout = d.pgTimeout(n, p) },
		"lock_timeout":      func(n *yaml.Node, p string) { s.LockTimeout = d.pgTimeout(n, p) },
		"concurrently":      func(n *yaml.Node, p string) { s.Concurrently = d.boolean(n, p) },
		"refresh_unchanged": func(n *yaml.Node, p string) { s.RefreshUnchanged = d.boolean(n, p) },
		"vacuum_threshold": func(n *yaml.Node, p string) {
			s.VacuumThreshold = d.integer(n, p)
			if d.err == nil && s.VacuumThreshold < 0 {
				d.fail(n, p, "expected a number of dead rows >= 0 (0 disables), got %d", s.VacuumThreshold)
			}
		},
		"change_detection": func(n *yaml.Node, p string) {
			s.ChangeDetection = d.str(n, p)
			switch s.ChangeDetection {
			case DetectNotify, DetectChangelog, DetectStats, DetectNone:
			default:
				d.fail(n, p, "expected notify, changelog, stats or none, got %q", s.ChangeDetection)
			}
		},
		"poll_interval": func(n *yaml.Node, p string) {
			s.PollInterval = d.duration(n, p, false)
			if d.err == nil && s.PollInterval < minPollInterval {
				d.fail(n, p, "must be at least %s, got %s", minPollInterval, s.PollInterval)
			}
		},
	}
}

// parseSchedule parses a 5-field cron expression or a descriptor such as
// @hourly or @every 30s, optionally prefixed with TZ=zone or CRON_TZ=zone.
func parseSchedule(s string) (cron.Schedule, error) {
	invalid := func(err error) error {
		return fmt.Errorf("invalid cron expression %q (expected 5 fields such as \"*/5 * * * *\" or @every 30s): %v", s, err)
	}
	rest := s
	if strings.HasPrefix(s, "TZ=") || strings.HasPrefix(s, "CRON_TZ=") {
		// cron.ParseStandard slices out of range (panics) without the space.
		i := strings.IndexByte(s, ' ')
		if i < 0 {
			return nil, invalid(errors.New("a time zone must be followed by a space and a schedule"))
		}
		rest = strings.TrimSpace(s[i:])
	}
	spec, err := parseCron(s)
	if err != nil {
		return nil, invalid(err)
	}
	switch spec := spec.(type) {
	case cron.ConstantDelaySchedule:
		// cron.Every silently raises intervals below 1s to 1s and truncates
		// fractions of a second, so check the written interval.
		every, err := time.ParseDuration(strings.TrimPrefix(rest, "@every "))
		if err != nil {
			return nil, invalid(err)
		}
		if every < time.Second {
			return nil, fmt.Errorf("@every interval must be at least 1s, got %q", s)
		}
		if every%time.Second != 0 {
			return nil, fmt.Errorf("@every interval must be a whole number of seconds, got %q", s)
		}
	case *cron.SpecSchedule:
		if spec.Next(time.Now()).IsZero() {
			return nil, fmt.Errorf("cron expression %q never fires (no date matches it)", s)
		}
	}
	return spec, nil
}

func parseCron(s string) (spec cron.Schedule, err error) {
	defer func() {
		if r := recover(); r != nil {
			spec, err = nil, fmt.Errorf("%v", r)
		}
	}()
	return cron.ParseStandard(s)
}

func (d *decoder) checkSettings(n *yaml.Node, path string, s *Settings) {
	if d.err != nil {
		return
	}
	if s.MaxDelay < s.Debounce {
		// Point at whichever of the two this mapping sets; the other one may
		// be inherited.
		if n.Kind == yaml.MappingNode {
			if v := lookup(n, "max_delay"); v != nil {
				n = v
			} else if v := lookup(n, "debounce"); v != nil {
				n = v
			}
		}
		d.fail(n, path+".max_delay", "must not be shorter than debounce (%s < %s)", s.MaxDelay, s.Debounce)
	}
}

func (d *decoder) views(n *yaml.Node, defaults Settings) []View {
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		d.fail(n, "views", "expected a non-empty list of views, got %s", kindName(n))
		return nil
	}
	var views []View
	byName := map[QualifiedName]int{}
	var depLines []*yaml.Node // per view, where its depends_on is (for messages)
	for i, vn := range n.Content {
		path := fmt.Sprintf("views[%d]", i)
		if vn.Kind != yaml.MappingNode {
			d.fail(vn, path, "expected a mapping, got %s", kindName(vn))
			return nil
		}
		v := View{Settings: defaults, Line: vn.Line}
		// Name first, so every later message can say which view it is about.
		nameNode := lookup(vn, "name")
		if nameNode == nil {
			d.fail(vn, path+".name", "missing: every view needs a schema-qualified name")
			return nil
		}
		raw := d.str(nameNode, path+".name")
		if d.err != nil {
			return nil
		}
		name, err := ParseQualifiedName(raw)
		if err != nil {
			d.fail(nameNode, path+".name", "%v", err)
			return nil
		}
		v.Name = name
		if prev, dup := byName[name]; dup {
			d.fail(nameNode, path+".name", "view %s is already declared as views[%d]", name, prev)
			return nil
		}
		byName[name] = i
		path = fmt.Sprintf("views[%d] (%s)", i, name)

		var queryNode, fileNode, keyNode, srcNode, depNode, groupNode *yaml.Node
		handlers := d.settingHandlers(&v.Settings)
		handlers["name"] = func(*yaml.Node, string) {}
		handlers["query"] = func(n *yaml.Node, _ string) { queryNode = n }
		handlers["query_file"] = func(n *yaml.Node, _ string) { fileNode = n }
		handlers["unique_key"] = func(n *yaml.Node, _ string) { keyNode = n }
		handlers["sources"] = func(n *yaml.Node, _ string) { srcNode = n }
		handlers["depends_on"] = func(n *yaml.Node, _ string) { depNode = n }
		handlers["group_key"] = func(n *yaml.Node, _ string) { groupNode = n }
		d.mapping(vn, path, handlers)
		if d.err != nil {
			return nil
		}
		// Where the query came from, for messages.
		queryAt, queryKey, queryIn := queryNode, path+".query", "the query"
		switch {
		case queryNode != nil && fileNode != nil:
			d.fail(fileNode, path+".query_file", "set either query or query_file, not both")
		case queryNode != nil:
			v.Query = d.str(queryNode, path+".query")
		case fileNode != nil:
			queryAt, queryKey, queryIn = fileNode, path+".query_file", d.str(fileNode, path+".query_file")
			v.Query = d.queryFile(fileNode, path+".query_file")
		default:
			d.fail(vn, path+".query", "missing: set query or query_file")
		}
		if d.err != nil {
			return nil
		}
		written := v.Query
		// A trailing ';' would end the statement the query is embedded in.
		v.Query = strings.TrimRight(strings.TrimSpace(v.Query), "; \t\r\n\f\v")
		// So would a ';' inside it, and run what follows as statements of
		// their own. A ';' followed by nothing but comments is cut off with
		// them.
		if i := firstSemicolon(v.Query); i >= 0 {
			if moreSQL(v.Query[i:]) {
				lead := len(written) - len(strings.TrimLeftFunc(written, unicode.IsSpace))
				line := 1 + strings.Count(written[:lead+i], "\n")
				d.fail(queryAt, queryKey, "must be a single SQL statement (one query, such as SELECT ...); found ';' followed by more SQL at line %d of %s", line, queryIn)
				return nil
			}
			v.Query = strings.TrimRight(v.Query[:i], "; \t\r\n\f\v")
		}
		if !moreSQL(v.Query) {
			d.fail(queryAt, queryKey, "is empty")
			return nil
		}
		if keyNode == nil {
			d.fail(vn, path+".unique_key", "missing: REFRESH ... CONCURRENTLY needs a unique key of NOT NULL columns, e.g. unique_key: [id]")
			return nil
		}
		keys, keyNodes := d.strList(keyNode, path+".unique_key")
		if d.err == nil && len(keys) == 0 {
			d.fail(keyNode, path+".unique_key", "must name at least one column")
		}
		if d.err != nil {
			return nil
		}
		for j, k := range keys {
			kp := fmt.Sprintf("%s.unique_key[%d]", path, j)
			col, err := ParseIdent(k)
			if err != nil {
				d.fail(keyNodes[j], kp, "%v", err)
				return nil
			}
			if slices.Contains(v.UniqueKey, col) {
				d.fail(keyNodes[j], kp, "duplicate column %q", col)
				return nil
			}
			v.UniqueKey = append(v.UniqueKey, col)
		}
		if groupNode != nil {
			cols, colNodes := d.strList(groupNode, path+".group_key")
			if d.err == nil && len(cols) == 0 {
				d.fail(groupNode, path+".group_key", "must name at least one column (or leave it out: the group key is read from the query)")
			}
			if d.err != nil {
				return nil
			}
			for j, c := range cols {
				col, err := ParseIdent(c)
				if err != nil {
					d.fail(colNodes[j], fmt.Sprintf("%s.group_key[%d]", path, j), "%v", err)
					return nil
				}
				v.GroupKey = append(v.GroupKey, col)
			}
			if v.Strategy == StrategyFull {
				d.fail(groupNode, path+".group_key", "only used by strategy incremental or auto; this view's strategy is full")
				return nil
			}
		}
		// refresh.debounce is a quiet period for full refreshes; for a round
		// it would only add lag (it counts from the first change), so an
		// incremental view takes a debounce only from its own entry.
		if v.Strategy != StrategyFull && lookup(vn, "debounce") == nil {
			v.Debounce = IncrementalDebounce
			if v.MaxDelay < v.Debounce {
				v.MaxDelay = v.Debounce
			}
		}
		if v.Strategy == StrategyIncremental {
			v.ChangeDetection = DetectCapture
		}
		if srcNode != nil {
			srcs, srcNodes := d.strList(srcNode, path+".sources")
			if d.err != nil {
				return nil
			}
			for j, s := range srcs {
				sp := fmt.Sprintf("%s.sources[%d]", path, j)
				q, err := ParseQualifiedName(s)
				if err != nil {
					d.fail(srcNodes[j], sp, "%v", err)
					return nil
				}
				if slices.Contains(v.Sources, q) {
					d.fail(srcNodes[j], sp, "duplicate source %s", q)
					return nil
				}
				v.Sources = append(v.Sources, q)
			}
		}
		if depNode != nil {
			deps, depNodes := d.strList(depNode, path+".depends_on")
			if d.err != nil {
				return nil
			}
			for j, s := range deps {
				dp := fmt.Sprintf("%s.depends_on[%d]", path, j)
				q, err := ParseQualifiedName(s)
				if err != nil {
					d.fail(depNodes[j], dp, "%v", err)
					return nil
				}
				if q == v.Name || slices.Contains(v.DependsOn, q) {
					d.fail(depNodes[j], dp, "%s listed twice or depends on itself", q)
					return nil
				}
				v.DependsOn = append(v.DependsOn, q)
			}
			depLines = append(depLines, depNode)
		} else {
			depLines = append(depLines, vn)
		}
		if len(v.Sources) == 0 && len(v.DependsOn) == 0 && v.ChangeDetection != DetectNone && v.ChangeDetection != DetectCapture {
			d.fail(vn, path+".sources", "missing: change_detection %q needs the source tables to watch (or set change_detection: none)", v.ChangeDetection)
		}
		d.checkSettings(vn, path, &v.Settings)
		if d.err != nil {
			return nil
		}
		views = append(views, v)
	}
	d.checkDependencies(views, depLines)
	if d.err != nil {
		return nil
	}
	return views
}

// checkDependencies checks that depends_on names managed views and has no
// cycle; a cycle is reported with its path.
func (d *decoder) checkDependencies(views []View, lines []*yaml.Node) {
	index := map[QualifiedName]int{}
	for i, v := range views {
		index[v.Name] = i
	}
	for i, v := range views {
		for _, dep := range v.DependsOn {
			if _, ok := index[dep]; !ok {
				d.fail(lines[i], fmt.Sprintf("views[%d] (%s).depends_on", i, v.Name), "%s is not a view in this configuration", dep)
				return
			}
		}
	}
	const (
		unvisited = iota
		visiting
		done
	)
	state := make([]int, len(views))
	var stack []QualifiedName
	var visit func(i int) bool
	visit = func(i int) bool {
		state[i] = visiting
		stack = append(stack, views[i].Name)
		for _, dep := range views[i].DependsOn {
			j := index[dep]
			switch state[j] {
			case visiting:
				start := slices.Index(stack, dep)
				cycle := make([]string, 0, len(stack)-start+1)
				for _, n := range stack[start:] {
					cycle = append(cycle, n.String())
				}
				cycle = append(cycle, dep.String())
				d.fail(lines[j], fmt.Sprintf("views[%d] (%s).depends_on", j, dep), "dependency cycle: %s", strings.Join(cycle, " -> "))
				return false
			case unvisited:
				if !visit(j) {
					return false
				}
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = done
		return true
	}
	for i := range views {
		if state[i] == unvisited && !visit(i) {
			return
		}
	}
}

// lookup returns the value of the first plain key named key in mapping n.
func lookup(n *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// maxQueryFile bounds query_file reads.
const maxQueryFile = 1 << 20

// queryFile reads a query_file, relative to the configuration's directory.
// Only regular files are read: a FIFO or a device such as /dev/zero would
// block or never end.
func (d *decoder) queryFile(n *yaml.Node, path string) string {
	f := d.str(n, path)
	if d.err != nil {
		return ""
	}
	if f == "" {
		d.fail(n, path, "is empty")
		return ""
	}
	if !filepath.IsAbs(f) {
		f = filepath.Join(d.dir, f)
	}
	st, err := os.Stat(f)
	if err != nil {
		d.fail(n, path, "cannot read: %v", err)
		return ""
	}
	if !st.Mode().IsRegular() {
		d.fail(n, path, "cannot read %s: not a regular file", f)
		return ""
	}
	if st.Size() > maxQueryFile {
		d.fail(n, path, "cannot read %s: larger than %d bytes", f, maxQueryFile)
		return ""
	}
	b, err := os.ReadFile(f)
	if err != nil {
		d.fail(n, path, "cannot read: %v", err)
		return ""
	}
	return string(b)
}

// firstSemicolon returns the offset of the first ';' in sql that ends a
// statement, or -1.
func firstSemicolon(sql string) int {
	at := -1
	scanSQL(sql, func(i int) bool {
		if sql[i] == ';' {
			at = i
			return false
		}
		return true
	})
	return at
}

// moreSQL reports whether sql holds anything but white space, comments and
// ';'.
func moreSQL(sql string) bool {
	more := false
	scanSQL(sql, func(i int) bool {
		more = sql[i] != ';' && !unicode.IsSpace(rune(sql[i]))
		return !more
	})
	return more
}

// scanSQL calls visit with the offset of each byte of sql outside comments,
// string literals, quoted identifiers and dollar-quoted strings, plus the
// opening byte of each of the last three, until visit returns false. It
// splits tokens the way PostgreSQL's lexer does where a ';' could hide: a
// doubled quote stays inside the quotes, E'...' strings escape with a
// backslash (other strings do not: standard_conforming_strings is on since
// PostgreSQL 9.1), $tag$ quotes run to the same tag, block comments nest.
// An unterminated construct runs to the end (the server rejects it).
func scanSQL(sql string, visit func(i int) bool) {
	for i := 0; i < len(sql); {
		switch c := sql[i]; {
		case strings.HasPrefix(sql[i:], "--"):
			end := strings.IndexByte(sql[i:], '\n')
			if end < 0 {
				return
			}
			i += end + 1
			continue
		case strings.HasPrefix(sql[i:], "/*"):
			i = skipBlockComment(sql, i)
			continue
		case c == '\'' || c == '"':
			if !visit(i) {
				return
			}
			escapes := c == '\'' && i > 0 && (sql[i-1] == 'E' || sql[i-1] == 'e') && (i == 1 || !isIdentByte(sql[i-2]))
			i = skipQuoted(sql, i, escapes)
			continue
		case c == '$' && (i == 0 || !isIdentByte(sql[i-1])):
			if tag := dollarTag(sql[i:]); tag != "" {
				if !visit(i) {
					return
				}
				end := strings.Index(sql[i+len(tag):], tag)
				if end < 0 {
					return
				}
				i += len(tag) + end + len(tag)
				continue
			}
		}
		if !visit(i) {
			return
		}
		i++
	}
}

// isIdentByte reports whether b may continue an identifier (or a keyword,
// such as the E of E'...'); bytes of multi-byte characters count as letters.
func isIdentByte(b byte) bool {
	return b == '_' || b == '$' || b >= 0x80 || '0' <= b && b <= '9' || 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z'
}

// skipQuoted returns the offset after the literal or quoted identifier
// opening at i.
func skipQuoted(sql string, i int, backslashEscapes bool) int {
	q := sql[i]
	for j := i + 1; j < len(sql); j++ {
		switch {
		case backslashEscapes && sql[j] == '\\':
			j++
		case sql[j] == q && j+1 < len(sql) && sql[j+1] == q:
			j++
		case sql[j] == q:
			return j + 1
		}
	}
	return len(sql)
}

// skipBlockComment returns the offset after the (nested) comment opening
// at i.
func skipBlockComment(sql string, i int) int {
	depth := 0
	for i < len(sql) {
		switch {
		case strings.HasPrefix(sql[i:], "/*"):
			depth++
			i += 2
		case strings.HasPrefix(sql[i:], "*/"):
			depth--
			i += 2
			if depth == 0 {
				return i
			}
		default:
			i++
		}
	}
	return len(sql)
}

// dollarTag returns the $tag$ (or $$) that s starts with, or "" ($1 is a
// parameter).
func dollarTag(s string) string {
	for j := 1; j < len(s); j++ {
		switch b := s[j]; {
		case b == '$':
			return s[:j+1]
		case b == '_' || b >= 0x80 || 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z':
		case '0' <= b && b <= '9' && j > 1:
		default:
			return ""
		}
	}
	return ""
}
