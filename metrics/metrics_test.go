package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

type fixedState []ViewState

func (f fixedState) ViewStates() []ViewState { return f }

func newTestMetrics(t *testing.T) *Metrics {
	t.Helper()
	m := New("test")
	m.InitView("public.app_chargesummary")
	m.RegisterState(fixedState{{View: "public.app_chargesummary", StalenessSeconds: 3, PendingChanges: 2, InProgress: true}})
	return m
}

// TestLint runs the Prometheus naming and help lints over every metric.
func TestLint(t *testing.T) {
	m := newTestMetrics(t)
	problems, err := testutil.GatherAndLint(m.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestContractSeries: the contract's series exist from the start, with
// every trigger and result label set.
func TestContractSeries(t *testing.T) {
	m := newTestMetrics(t)
	if n := testutil.CollectAndCount(m.Refreshes); n != len(Triggers)*len(Results) {
		t.Errorf("refreshes_total has %d series, want %d", n, len(Triggers)*len(Results))
	}
	const want = `
# HELP refresherd_staleness_seconds Age of the oldest change not yet reflected in the view; 0 when the view is up to date.
# TYPE refresherd_staleness_seconds gauge
refresherd_staleness_seconds{view="public.app_chargesummary"} 3
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "refresherd_staleness_seconds"); err != nil {
		t.Error(err)
	}
	m.RemoveView("public.app_chargesummary")
	if n := testutil.CollectAndCount(m.Refreshes); n != 0 {
		t.Errorf("after RemoveView: %d refreshes_total series", n)
	}
}

// TestServer: the endpoints answer, and readiness reflects Ready.
func TestServer(t *testing.T) {
	m := newTestMetrics(t)
	ready := error(nil)
	srv, err := Listen("127.0.0.1:0", m, Handlers{
		Ready:  func() error { return ready },
		Status: func() any { return map[string]int{"views": 1} },
	}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + srv.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ok", "/status": `"views": 1`, "/metrics": "refresherd_build_info"} {
		if code, body := get(path); code != 200 || !strings.Contains(body, want) {
			t.Errorf("GET %s = %d %q", path, code, body)
		}
	}
	ready = errorString("listener not connected")
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "listener not connected") {
		t.Errorf("unready /readyz = %d %q", code, body)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }
