// Package daemontest runs the refresherd binary as a separate process, the
// way users run it, for end-to-end tests and benchmarks: build it from the
// tree, start it with a config file, read its JSON logs, scrape /metrics with
// the Prometheus text parser, signal it and stop it.
package daemontest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Build compiles ./cmd/refresherd into dir and returns the binary's path.
func Build(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "refresherd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/refresherd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build refresherd: %w\n%s", err, out)
	}
	return bin, nil
}

// moduleRoot finds the directory holding go.mod from this source file.
func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("module root: no caller info")
	}
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root: go.mod not found")
		}
		dir = parent
	}
}

// ModuleRoot is the repository root (for the shipped config.yaml).
func ModuleRoot() string {
	root, err := moduleRoot()
	if err != nil {
		panic(err)
	}
	return root
}

// Options start a daemon.
type Options struct {
	Binary string
	Args   []string // after "run", e.g. --config FILE
	Env    []string // added to the environment, e.g. DATABASE_URL=...
}

// Proc is a running daemon.
type Proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result, valid after done

	mu    sync.Mutex
	logs  bytes.Buffer
	lines []map[string]any
	addr  string
	cond  chan struct{} // closed and replaced at each log line
}

// Start runs `refresherd run ARGS` with --http-listen 127.0.0.1:0 unless
// given, and waits until it logs its HTTP address.
func Start(ctx context.Context, o Options) (*Proc, error) {
	args := append([]string{"run"}, o.Args...)
	if !contains(o.Args, "--http-listen") {
		args = append(args, "--http-listen", "127.0.0.1:0")
	}
	cmd := exec.Command(o.Binary, args...)
	cmd.Env = append(os.Environ(), o.Env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, fmt.Errorf("start daemon: %w", err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start daemon: %w", err)
	}
	p := &Proc{cmd: cmd, done: make(chan struct{}), cond: make(chan struct{})}
	go p.read(stderr)
	if _, err := p.WaitLog(ctx, func(l map[string]any) bool { return l["msg"] == "refresherd starting" }); err != nil {
		p.Kill()
		return nil, fmt.Errorf("daemon did not start: %w\n%s", err, p.Logs())
	}
	return p, nil
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s || strings.HasPrefix(x, s+"=") {
			return true
		}
	}
	return false
}

func (p *Proc) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var m map[string]any
		_ = json.Unmarshal(line, &m)
		p.mu.Lock()
		p.logs.Write(line)
		p.logs.WriteByte('\n')
		if m != nil {
			p.lines = append(p.lines, m)
			if m["msg"] == "refresherd starting" {
				p.addr, _ = m["http"].(string)
			}
		}
		close(p.cond)
		p.cond = make(chan struct{})
		p.mu.Unlock()
	}
	p.err = p.cmd.Wait()
	p.mu.Lock()
	close(p.cond)
	p.cond = make(chan struct{})
	p.mu.Unlock()
	close(p.done)
}

// PID is the daemon's process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// URL is the daemon's HTTP base URL.
func (p *Proc) URL() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return "http://" + p.addr
}

// Logs returns everything the daemon logged so far.
func (p *Proc) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// LogLines returns the parsed JSON log lines so far.
func (p *Proc) LogLines() []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]map[string]any(nil), p.lines...)
}

// CountLogs counts parsed log lines matching f.
func (p *Proc) CountLogs(f func(map[string]any) bool) int {
	n := 0
	for _, l := range p.LogLines() {
		if f(l) {
			n++
		}
	}
	return n
}

// WaitLog waits for a log line matching f (also among earlier lines).
func (p *Proc) WaitLog(ctx context.Context, f func(map[string]any) bool) (map[string]any, error) {
	seen := 0
	for {
		p.mu.Lock()
		lines := p.lines[seen:]
		seen = len(p.lines)
		cond := p.cond
		p.mu.Unlock()
		for _, l := range lines {
			if f(l) {
				return l, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-p.done:
			return nil, fmt.Errorf("daemon exited: %v", p.err)
		case <-cond:
		}
	}
}

// Signal sends sig to the daemon.
func (p *Proc) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill sends SIGKILL and waits for the exit.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Wait waits for the exit and returns the exit code (-1 if killed by a
// signal).
func (p *Proc) Wait(ctx context.Context) (int, error) {
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-p.done:
	}
	if p.err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, p.err
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Get fetches a path from the daemon's HTTP server.
func (p *Proc) Get(ctx context.Context, path string) (int, []byte, error) {
	return HTTPGet(ctx, http.DefaultClient, p.URL()+path)
}

// maxBody bounds a body HTTPGet reads: far above any /metrics or API
// answer a test sees, so a runaway server cannot exhaust memory.
const maxBody = 32 << 20

// HTTPGet fetches url with client and returns the status code and body.
func HTTPGet(ctx context.Context, client *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	return resp.StatusCode, b, err
}

// Metrics scrapes /metrics and parses it with the Prometheus text parser.
func (p *Proc) Metrics(ctx context.Context) (Families, error) {
	code, body, err := p.Get(ctx, "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("scrape: HTTP %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return fams, nil
}

// Families are parsed metric families by name.
type Families map[string]*dto.MetricFamily

// Value returns the value of the series of family name whose labels include
// every pair in labels; ok is false when there is no such series.
func (f Families) Value(name string, labels map[string]string) (v float64, ok bool) {
	fam := f[name]
	if fam == nil {
		return 0, false
	}
	for _, m := range fam.Metric {
		if !matches(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// Sum adds the values of all series of name matching labels.
func (f Families) Sum(name string, labels map[string]string) float64 {
	fam := f[name]
	if fam == nil {
		return 0
	}
	total := 0.0
	for _, m := range fam.Metric {
		if !matches(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		}
	}
	return total
}

func matches(m *dto.Metric, labels map[string]string) bool {
	have := map[string]string{}
	for _, lp := range m.Label {
		have[lp.GetName()] = lp.GetValue()
	}
	for k, v := range labels {
		if have[k] != v {
			return false
		}
	}
	return true
}

// Eventually polls cond every interval until it returns nil or ctx ends;
// it returns the last error.
func Eventually(ctx context.Context, interval time.Duration, cond func() error) error {
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

// WaitMetric polls /metrics until the sum of the series of name matching
// labels satisfies ok, and returns that value; it fails when there is no
// such series or ctx ends first.
func (p *Proc) WaitMetric(ctx context.Context, name string, labels map[string]string, ok func(float64) bool) (float64, error) {
	var v float64
	err := Eventually(ctx, 50*time.Millisecond, func() error {
		fams, err := p.Metrics(ctx)
		if err != nil {
			return err
		}
		if _, found := fams.Value(name, labels); !found {
			return fmt.Errorf("no series %s%v", name, labels)
		}
		v = fams.Sum(name, labels)
		if !ok(v) {
			return fmt.Errorf("%s%v = %v", name, labels, v)
		}
		return nil
	})
	if err != nil {
		return v, fmt.Errorf("wait for %s: %w", name, err)
	}
	return v, nil
}

// WaitIdle waits until every one of views is clean in the same scrape: no
// refresh running, no change pending and staleness 0.
func (p *Proc) WaitIdle(ctx context.Context, views ...string) error {
	err := Eventually(ctx, 50*time.Millisecond, func() error {
		fams, err := p.Metrics(ctx)
		if err != nil {
			return err
		}
		for _, view := range views {
			l := map[string]string{"view": view}
			inProg, ok := fams.Value("refresherd_refresh_in_progress", l)
			if !ok {
				// Not vacuously idle: a view the daemon does not know.
				return fmt.Errorf("no refresherd_refresh_in_progress series for %s", view)
			}
			pend, _ := fams.Value("refresherd_pending_changes", l)
			stale, _ := fams.Value("refresherd_staleness_seconds", l)
			if inProg != 0 || pend != 0 || stale != 0 {
				return fmt.Errorf("%s busy: in progress %v, pending %v, staleness %v", view, inProg, pend, stale)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("wait until %v idle: %w", views, err)
	}
	return nil
}
