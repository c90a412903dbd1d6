package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/refresherd/refresherd/internal/daemontest"
)

// errRejected means the daemon refused its configuration (exit code 2).
type errRejected struct{ msg string }

func (e *errRejected) Error() string { return "daemon rejected its configuration: " + e.msg }

// daemon is one refresherd process, started with daemontest as users run
// it: `refresherd run --config FILE` with DATABASE_URL in the environment.
type daemon struct {
	p    *daemontest.Proc
	view string
}

func startDaemon(ctx context.Context, bin, cfgPath, dbURL, view string) (*daemon, error) {
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	p, err := daemontest.Start(sctx, daemontest.Options{
		Binary: bin,
		Args:   []string{"--config", cfgPath},
		Env:    []string{"DATABASE_URL=" + dbURL},
	})
	if err != nil {
		// daemontest reports the exit as text ("daemon exited: exit status
		// 2") followed by the daemon's output; a config error is the line
		// "refresherd run: ...".
		if strings.Contains(err.Error(), "daemon exited: exit status 2") {
			msg := "exit status 2"
			for _, line := range strings.Split(err.Error(), "\n") {
				if strings.HasPrefix(line, "refresherd run:") {
					msg = strings.TrimSpace(strings.TrimPrefix(line, "refresherd run:"))
					break
				}
			}
			return nil, &errRejected{msg: msg}
		}
		return nil, fmt.Errorf("start daemon: %w", err)
	}
	return &daemon{p: p, view: view}, nil
}

// modeStart is what startModeDaemon did.
type modeStart struct {
	d           *daemon // nil when the daemon rejected the mode
	diff        string  // how the config differs from the shipped one
	unavailable string  // the daemon's message when it rejected the mode
}

// startModeDaemon starts a daemon on db with the shipped config changed by
// set (written to cfgName in the work folder) and waits until it has
// settled. A mode the daemon rejects (exit 2) is not an error: the result
// has no daemon and says why. started gets the daemon as soon as it runs,
// so that the caller stops it even when settling fails.
func (s *sizeEnv) startModeDaemon(ctx context.Context, cfgName, db, mode string, set [][2]string, started func(*daemon)) (modeStart, error) {
	cfgPath := filepath.Join(s.work, cfgName)
	diff, err := deriveConfig(s.shipped, cfgPath, set)
	if err != nil {
		return modeStart{}, err
	}
	t0 := time.Now()
	d, err := startDaemon(ctx, s.bin, cfgPath, s.cluster.URL(db), s.view.Name.String())
	var rej *errRejected
	if errors.As(err, &rej) {
		s.logf("mode %s: not available in this build: %s", mode, rej.msg)
		return modeStart{diff: diff, unavailable: rej.msg}, nil
	}
	if err != nil {
		return modeStart{diff: diff}, err
	}
	started(d)
	if err := d.waitSettled(ctx, 30*time.Minute); err != nil {
		return modeStart{d: d, diff: diff}, err
	}
	s.logf("mode %s: daemon started and settled in %s", mode, time.Since(t0).Round(time.Millisecond))
	return modeStart{d: d, diff: diff}, nil
}

// viewStatus is the part of /status the harness reads.
type viewStatus struct {
	View                string     `json:"view"`
	Ready               bool       `json:"ready"`
	SetupError          string     `json:"setup_error"`
	ChangeDetection     string     `json:"change_detection"`
	DataAsOf            *time.Time `json:"data_as_of"`
	StalenessSeconds    float64    `json:"staleness_seconds"`
	PendingChanges      int64      `json:"pending_changes"`
	InProgress          bool       `json:"in_progress"`
	LastResult          string     `json:"last_result"`
	LastError           string     `json:"last_error"`
	LastDurationSeconds float64    `json:"last_duration_seconds"`
}

func (d *daemon) status(ctx context.Context) (viewStatus, error) {
	code, body, err := d.p.Get(ctx, "/status")
	if err != nil {
		return viewStatus{}, fmt.Errorf("get /status: %w", err)
	}
	if code != http.StatusOK {
		return viewStatus{}, fmt.Errorf("get /status: HTTP %d", code)
	}
	var st struct {
		Views []viewStatus `json:"views"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return viewStatus{}, fmt.Errorf("get /status: %w", err)
	}
	for _, v := range st.Views {
		if v.View == d.view {
			return v, nil
		}
	}
	return viewStatus{}, fmt.Errorf("get /status: view %s not listed", d.view)
}

// waitSettled waits until the view is set up, its last refresh succeeded,
// none runs and (with change detection) no change is pending: the daemon
// is ready and idle.
func (d *daemon) waitSettled(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last viewStatus
	err := daemontest.Eventually(ctx, 50*time.Millisecond, func() error {
		if d.p.Exited() {
			return errors.New("daemon exited")
		}
		code, _, err := d.p.Get(ctx, "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("/readyz: HTTP %d", code)
		}
		st, err := d.status(ctx)
		if err != nil {
			return err
		}
		last = st
		switch {
		case !st.Ready:
			return fmt.Errorf("view not ready (%s)", st.SetupError)
		case st.LastResult != "success":
			return fmt.Errorf("last result %q %s", st.LastResult, st.LastError)
		case st.InProgress || st.PendingChanges != 0:
			return errors.New("refresh running or pending")
		case st.ChangeDetection != "none" && st.StalenessSeconds != 0:
			return errors.New("changes not yet reflected")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("wait until the daemon is settled: %w (status %+v)\n%s", err, last, tailLines(d.p.Logs(), 20))
	}
	return nil
}

// counts reads refreshes_total: completed refreshes (success + error) and
// skipped scheduled ticks.
func (d *daemon) counts(ctx context.Context) (done, skipped float64, err error) {
	fams, err := d.p.Metrics(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("read refresh counts: %w", err)
	}
	l := map[string]string{"view": d.view}
	done = fams.Sum("refresherd_refreshes_total", with(l, "result", "success")) +
		fams.Sum("refresherd_refreshes_total", with(l, "result", "error"))
	skipped = fams.Sum("refresherd_refreshes_total", with(l, "result", "skipped"))
	return done, skipped, nil
}

// durations reads the refresh duration histogram's count and sum.
func (d *daemon) durations(ctx context.Context) (count uint64, sum float64, err error) {
	fams, err := d.p.Metrics(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("read refresh durations: %w", err)
	}
	fam := fams["refresherd_refresh_duration_seconds"]
	if fam == nil {
		return 0, 0, errors.New("read refresh durations: no refresherd_refresh_duration_seconds")
	}
	for _, m := range fam.Metric {
		for _, lp := range m.Label {
			if lp.GetName() == "view" && lp.GetValue() == d.view && m.Histogram != nil {
				return m.Histogram.GetSampleCount(), m.Histogram.GetSampleSum(), nil
			}
		}
	}
	return 0, 0, fmt.Errorf("read refresh durations: no series for %s", d.view)
}

// manualRefresh sends SIGUSR1 and returns that refresh's duration from the
// histogram (sum and count deltas), once it has been observed.
func (d *daemon) manualRefresh(ctx context.Context, timeout time.Duration) (float64, error) {
	n0, s0, err := d.durations(ctx)
	if err != nil {
		return 0, fmt.Errorf("manual refresh: %w", err)
	}
	if err := d.p.Signal(syscall.SIGUSR1); err != nil {
		return 0, fmt.Errorf("manual refresh: signal: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var secs float64
	err = daemontest.Eventually(ctx, 20*time.Millisecond, func() error {
		n, s, err := d.durations(ctx)
		if err != nil {
			return err
		}
		switch {
		case n == n0:
			return errors.New("refresh not finished")
		case n > n0+1:
			return fmt.Errorf("%d refreshes instead of one (is something writing?)", n-n0)
		}
		secs = s - s0
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("manual refresh: %w", err)
	}
	st, err := d.status(ctx)
	if err != nil {
		return 0, fmt.Errorf("manual refresh: %w", err)
	}
	if st.LastResult != "success" {
		return 0, fmt.Errorf("manual refresh: %s: %s", st.LastResult, st.LastError)
	}
	return secs, nil
}

// terminate sends SIGTERM and waits until the daemon has given up
// leadership (its log says so) or exited; the process may take longer to
// exit (reap it). It returns when the signal was sent.
func (d *daemon) terminate(ctx context.Context) (time.Time, error) {
	t0 := time.Now()
	if d.p.Exited() {
		return t0, nil
	}
	if err := d.p.Signal(syscall.SIGTERM); err != nil {
		return t0, fmt.Errorf("terminate daemon: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := d.p.WaitLog(wctx, func(l map[string]any) bool { return l["msg"] == "leadership released" }); err != nil && !d.p.Exited() {
		// Not a leader, or the message changed: wait for the exit instead.
		if _, err := d.stop(ctx); err != nil {
			return t0, fmt.Errorf("terminate daemon: %w", err)
		}
	}
	return t0, nil
}

// stop sends SIGTERM and waits for the exit code.
func (d *daemon) stop(ctx context.Context) (int, error) {
	if d.p.Exited() {
		return d.p.Wait(ctx)
	}
	if err := d.p.Signal(syscall.SIGTERM); err != nil {
		return 0, fmt.Errorf("stop daemon: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	code, err := d.p.Wait(wctx)
	if err != nil {
		d.p.Kill()
		return 0, fmt.Errorf("stop daemon: %w", err)
	}
	return code, nil
}

func with(l map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(l)+1)
	for a, b := range l {
		out[a] = b
	}
	out[k] = v
	return out
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// deriveConfig writes the shipped config with some refresh defaults
// replaced (e.g. change_detection) to path, and returns a one-line summary
// of the changes for the report. Views that set a key themselves get the
// new value too, so the override always takes effect.
func deriveConfig(shipped, path string, set [][2]string) (string, error) {
	data, err := os.ReadFile(shipped)
	if err != nil {
		return "", fmt.Errorf("derive config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return "", fmt.Errorf("derive config: parse %s: %w", shipped, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return "", fmt.Errorf("derive config: %s is not a mapping", shipped)
	}
	root := doc.Content[0]
	refresh := mapValue(root, "refresh")
	if refresh == nil {
		refresh = &yaml.Node{Kind: yaml.MappingNode}
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "refresh"}, refresh)
	}
	var parts []string
	for _, kv := range set {
		setScalar(refresh, kv[0], kv[1])
		if views := mapValue(root, "views"); views != nil && views.Kind == yaml.SequenceNode {
			for _, v := range views.Content {
				if v.Kind == yaml.MappingNode && mapValue(v, kv[0]) != nil {
					setScalar(v, kv[0], kv[1])
				}
			}
		}
		parts = append(parts, "refresh."+kv[0]+": "+kv[1])
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return "", fmt.Errorf("derive config: %w", err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return "", fmt.Errorf("derive config: %w", err)
	}
	return strings.Join(parts, ", "), nil
}

func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func setScalar(m *yaml.Node, key, value string) {
	if v := mapValue(m, key); v != nil {
		v.Kind, v.Tag, v.Value, v.Style, v.Content = yaml.ScalarNode, "!!str", value, yaml.DoubleQuotedStyle, nil
		return
	}
	m.Content = append(m.Content,
		&yaml.Node{Kind: yaml.ScalarNode, Value: key},
		&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value, Style: yaml.DoubleQuotedStyle})
}
