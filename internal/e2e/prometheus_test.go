package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/metrics"
)

// These tests run the real Prometheus server and promtool (Debian package
// "prometheus", as scripts/validate-deploy.sh uses) against the built daemon.

const (
	promWait   = 60 * time.Second // bound of each wait on Prometheus
	promBudget = 90 * time.Second // bound of a whole test, once the tools and the daemon binary exist
)

// installPrometheus makes sure prometheus and promtool are on PATH, installing
// Debian's prometheus package when they are not and we are root: apt-get
// update, then apt-get install, once per test binary.
var installPrometheus = sync.OnceValue(func() error {
	if havePrometheus() {
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("prometheus and promtool are not on PATH and the tests do not run as root: " +
			"install the Debian package prometheus (apt-get install prometheus), or put prometheus and promtool on PATH")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	apt := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := apt("update", "-qq"); err != nil {
		return err
	}
	if err := apt("install", "-y", "-qq", "--no-install-recommends", "prometheus"); err != nil {
		return err
	}
	if !havePrometheus() {
		return errors.New("the Debian package prometheus is installed but prometheus or promtool is still not on PATH")
	}
	return nil
})

func havePrometheus() bool {
	_, err1 := exec.LookPath("prometheus")
	_, err2 := exec.LookPath("promtool")
	return err1 == nil && err2 == nil
}

// ensurePrometheus returns the paths of prometheus and promtool, installing
// them if need be; it fails the test (never skips) when it cannot.
func ensurePrometheus(t *testing.T) (prometheus, promtool string) {
	t.Helper()
	if err := installPrometheus(); err != nil {
		t.Fatalf("the real Prometheus is required for this test: %v", err)
	}
	prometheus, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal(err)
	}
	promtool, err = exec.LookPath("promtool")
	if err != nil {
		t.Fatal(err)
	}
	return prometheus, promtool
}

// rulesFile is the repository's alert rule file.
func rulesFile() string {
	return filepath.Join(daemontest.ModuleRoot(), "deploy", "prometheus", "rules.yml")
}

type ruleGroups struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert  string `yaml:"alert"`
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T, path string) ruleGroups {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rg ruleGroups
	if err := yaml.NewDecoder(bytes.NewReader(b)).Decode(&rg); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(rg.Groups) == 0 {
		t.Fatalf("%s has no rule groups", path)
	}
	return rg
}

// promServer is a Prometheus server run by a test.
type promServer struct {
	base   string // http://127.0.0.1:port
	client *http.Client
}

// startPrometheus runs bin with a config scraping target every second as job
// "refresherd" and evaluating a copy of rulesPath every second, on a free
// port of its own (never the :9090 of a packaged service). At cleanup it is
// stopped (SIGTERM, then SIGKILL) and waited for.
func startPrometheus(ctx context.Context, t *testing.T, bin, target, rulesPath string) *promServer {
	t.Helper()
	dir := t.TempDir()
	rules, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	rulesCopy := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(rulesCopy, rules, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: refresherd
    metrics_path: /metrics
    static_configs:
      - targets: [%q]
`, rulesCopy, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	tr := &http.Transport{}
	s := &promServer{client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	t.Cleanup(tr.CloseIdleConnections)

	// The free port may be taken between its probe and Prometheus's bind:
	// try a few.
	for attempt := 1; ; attempt++ {
		addr := freeAddr(t)
		logPath := filepath.Join(dir, fmt.Sprintf("prometheus-%d.log", attempt))
		err := s.start(ctx, t, bin, []string{
			"--config.file=" + cfgPath,
			"--storage.tsdb.path=" + filepath.Join(dir, fmt.Sprintf("data-%d", attempt)),
			"--web.listen-address=" + addr,
		}, logPath, addr)
		if err == nil {
			return s
		}
		logs, _ := os.ReadFile(logPath)
		if attempt < 3 && bytes.Contains(logs, []byte("address already in use")) {
			continue
		}
		t.Fatalf("prometheus did not become ready: %v\nprometheus logs:\n%s", err, logs)
	}
}

// start starts one Prometheus process and waits until it is ready. The
// process is stopped at cleanup whatever the outcome.
func (s *promServer) start(ctx context.Context, t *testing.T, bin string, args []string, logPath, addr string) error {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf // *os.File: no copying goroutines
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start prometheus: %v", err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		defer logf.Close()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Errorf("prometheus (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
				return
			}
		}
		if t.Failed() {
			logs, _ := os.ReadFile(logPath)
			t.Logf("prometheus logs:\n%s", logs)
		}
	})

	s.base = "http://" + addr
	wctx, cancel := context.WithTimeout(ctx, promWait)
	defer cancel()
	for {
		code, _, err := s.get(wctx, "/-/ready", nil)
		if err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("prometheus exited: %v", waitErr)
		case <-wctx.Done():
			return fmt.Errorf("%w (last: HTTP %d, %v)", wctx.Err(), code, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// freeAddr returns a 127.0.0.1 address with a port that was free just now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func (s *promServer) get(ctx context.Context, path string, params url.Values) (int, []byte, error) {
	u := s.base + path
	if params != nil {
		u += "?" + params.Encode()
	}
	return daemontest.HTTPGet(ctx, s.client, u)
}

// api calls an HTTP API endpoint and decodes its data into out.
func (s *promServer) api(ctx context.Context, path string, params url.Values, out any) error {
	code, body, err := s.get(ctx, path, params)
	if err != nil {
		return err
	}
	var env struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("GET %s: HTTP %d, not JSON: %v: %.500s", path, code, err, body)
	}
	if code != http.StatusOK || env.Status != "success" {
		return fmt.Errorf("GET %s: HTTP %d, status %q: %s", path, code, env.Status, env.Error)
	}
	return json.Unmarshal(env.Data, out)
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"` // [unix time, "value"]
}

func (s promSample) float() float64 {
	str, _ := s.Value[1].(string)
	f, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return -1
	}
	return f
}

func (s promSample) String() string {
	return fmt.Sprintf("%v %v", s.Metric, s.Value[1])
}

// query evaluates an instant query that must return a vector.
func (s *promServer) query(ctx context.Context, expr string) ([]promSample, error) {
	var d struct {
		ResultType string       `json:"resultType"`
		Result     []promSample `json:"result"`
	}
	if err := s.api(ctx, "/api/v1/query", url.Values{"query": {expr}}, &d); err != nil {
		return nil, fmt.Errorf("query %s: %w", expr, err)
	}
	if d.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: result type %q, want vector", expr, d.ResultType)
	}
	return d.Result, nil
}

// TestPrometheusScrapesDaemon: the real Prometheus scrapes the daemon run
// with the shipped config, finds the documented series, and evaluates the
// shipped alert rules on them without error and without firing.
func TestPrometheusScrapesDaemon(t *testing.T) {
	promBin, _ := ensurePrometheus(t)
	daemontest.Binary(t) // built (once) outside the time budget
	ctx, cancel := context.WithTimeout(context.Background(), promBudget)
	defer cancel()

	p, _ := startShippedIdle(ctx, t, 2000, "")

	rg := readRules(t, rulesFile())
	target := strings.TrimPrefix(p.URL(), "http://")
	prom := startPrometheus(ctx, t, promBin, target, rulesFile())

	// expect polls expr until check accepts its result.
	expect := func(expr string, check func([]promSample) error) {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, promWait)
		defer wcancel()
		err := daemontest.Eventually(wctx, 250*time.Millisecond, func() error {
			v, err := prom.query(wctx, expr)
			if err != nil {
				return err
			}
			if err := check(v); err != nil {
				return fmt.Errorf("%s = %v: %w", expr, v, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	one := func(ok func(float64) bool, want string) func([]promSample) error {
		return func(v []promSample) error {
			if len(v) != 1 {
				return fmt.Errorf("%d samples, want 1", len(v))
			}
			if !ok(v[0].float()) {
				return fmt.Errorf("value %v, want %s", v[0].Value[1], want)
			}
			return nil
		}
	}
	is := func(want float64) func(float64) bool { return func(f float64) bool { return f == want } }
	atLeast := func(low float64) func(float64) bool { return func(f float64) bool { return f >= low } }

	sel := fmt.Sprintf(`{job="refresherd",view=%q}`, view)
	expect(`up{job="refresherd"}`, one(is(1), "1"))
	expect(`refresherd_staleness_seconds`+sel, one(is(0), "0 (the view is fresh)"))
	expect(`refresherd_refreshes_total`+sel, func(v []promSample) error {
		if want := len(metrics.Triggers) * len(metrics.Results); len(v) != want {
			return fmt.Errorf("%d series, want %d (every trigger and result)", len(v), want)
		}
		return nil
	})
	expect(fmt.Sprintf(`sum(refresherd_refreshes_total{job="refresherd",view=%q,result="success"})`, view), one(atLeast(1), ">= 1 (the start-up refresh)"))
	expect(`refresherd_refresh_duration_seconds_count`+sel, one(atLeast(1), ">= 1"))
	expect(`sum(refresherd_leader{job="refresherd"}) == 1`, one(is(1), "1"))

	// Every alert expression of rules.yml evaluates, on the real series, to
	// an empty vector while the daemon is healthy and the view fresh.
	var staleExpr string
	for _, g := range rg.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if r.Alert == "RefresherdViewStale" {
				staleExpr = r.Expr
			}
			v, err := prom.query(ctx, r.Expr)
			if err != nil {
				t.Errorf("alert %s: %v", r.Alert, err)
			} else if len(v) != 0 {
				t.Errorf("alert %s: expression returns %v while the daemon is healthy, want an empty vector", r.Alert, v)
			}
		}
	}
	// With its threshold at 0, the staleness alert's expression selects the
	// view: its join on (job, instance) matches the labels Prometheus gives
	// the real series, so the empty result above is not vacuous.
	if staleExpr == "" {
		t.Fatal("rules.yml has no alert RefresherdViewStale")
	}
	threshold := regexp.MustCompile(`>\s*[0-9][0-9.e+]*`)
	if loc := threshold.FindStringIndex(staleExpr); loc == nil {
		t.Errorf("the RefresherdViewStale expression has no `> N` threshold to lower; update this test:\n%s", staleExpr)
	} else {
		lowered := staleExpr[:loc[0]] + ">= 0" + staleExpr[loc[1]:]
		expect(lowered, func(v []promSample) error {
			if len(v) != 1 || v[0].Metric["view"] != view || v[0].Metric["job"] != "refresherd" || v[0].Metric["instance"] != target {
				return fmt.Errorf("want one series of view %s, job refresherd, instance %s", view, target)
			}
			return nil
		})
	}

	// /api/v1/rules: the groups of rules.yml are loaded, every rule has
	// been evaluated without error, and no alert is pending or firing.
	wctx, wcancel := context.WithTimeout(ctx, promWait)
	defer wcancel()
	err := daemontest.Eventually(wctx, 250*time.Millisecond, func() error {
		var d struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Name      string `json:"name"`
					Type      string `json:"type"`
					Health    string `json:"health"`
					State     string `json:"state"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := prom.api(wctx, "/api/v1/rules", nil, &d); err != nil {
			return err
		}
		if len(d.Groups) != len(rg.Groups) {
			return fmt.Errorf("%d rule groups loaded, rules.yml has %d", len(d.Groups), len(rg.Groups))
		}
		for i, g := range d.Groups {
			if g.Name != rg.Groups[i].Name || len(g.Rules) != len(rg.Groups[i].Rules) {
				return fmt.Errorf("group %d: %q with %d rules loaded, rules.yml has %q with %d", i, g.Name, len(g.Rules), rg.Groups[i].Name, len(rg.Groups[i].Rules))
			}
			for _, r := range g.Rules {
				if r.Health != "ok" {
					return fmt.Errorf("rule %s: health %q %s", r.Name, r.Health, r.LastError)
				}
				if r.Type == "alerting" && r.State != "inactive" {
					return fmt.Errorf("alert %s is %s", r.Name, r.State)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("/api/v1/rules: %v", err)
	}
}

// TestPromtoolCheckMetrics: what the daemon exposes passes promtool's
// metric lint (names, suffixes, units, help) without a single remark.
func TestPromtoolCheckMetrics(t *testing.T) {
	_, promtool := ensurePrometheus(t)
	daemontest.Binary(t) // built (once) outside the time budget
	ctx, cancel := context.WithTimeout(context.Background(), promBudget)
	defer cancel()

	p, _ := startShippedIdle(ctx, t, 2000, "") // after a refresh: every family has samples

	// No Accept header: the Prometheus text format, which promtool reads.
	code, body, err := p.Get(ctx, "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d, %v", code, err)
	}
	if !bytes.Contains(body, []byte("refresherd_staleness_seconds")) {
		t.Fatalf("/metrics lacks refresherd_staleness_seconds:\n%s", body)
	}

	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	cmd := exec.CommandContext(cctx, promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err = cmd.Run()
	if err != nil || strings.TrimSpace(out.String()) != "" {
		t.Errorf("promtool check metrics: %v\n%s\nmetrics:\n%s", err, out.String(), body)
	}
}
