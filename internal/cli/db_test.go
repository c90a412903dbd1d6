package cli

import (
	"bytes"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/refresherd/refresherd/config"
)

func TestRedactWriter(t *testing.T) {
	var buf bytes.Buffer
	url := "postgres://app:hunter22@db:5432/app"
	w := &redactWriter{w: &buf, secrets: secretsOf(url, "hunter22", "ab", "")}
	msg := "connect " + url + " failed; password hunter22 rejected; ab stays\n"
	n, err := w.Write([]byte(msg))
	if err != nil || n != len(msg) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(msg))
	}
	if want := "connect [redacted] failed; password [redacted] rejected; ab stays\n"; buf.String() != want {
		t.Errorf("got %q, want %q", buf.String(), want)
	}
}

func TestParseInterspersed(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg := fs.String("config", "config.yaml", "")
	pos, _, ok := parseInterspersed(fs, []string{"public.a", "--config", "x.yaml", "public.b"})
	if !ok || *cfg != "x.yaml" || strings.Join(pos, ",") != "public.a,public.b" {
		t.Errorf("got %v %q %v", pos, *cfg, ok)
	}
	if _, code, ok := parseInterspersed(fs, []string{"public.a", "--nope"}); ok || code != ExitUsage {
		t.Errorf("unknown flag: code %d ok %v", code, ok)
	}
}

func TestSelectViews(t *testing.T) {
	cfg := &config.Config{File: "c.yaml", Views: []config.View{
		{Name: config.QualifiedName{Schema: "public", Name: "a"}},
		{Name: config.QualifiedName{Schema: "public", Name: "b"}},
	}}
	vs, err := selectViews(cfg, nil)
	if err != nil || len(vs) != 2 {
		t.Fatalf("all: %v %v", vs, err)
	}
	vs, err = selectViews(cfg, []string{`"public"."b"`, "public.a", "public.b"})
	if err != nil || len(vs) != 2 || vs[0].Name.Name != "b" || vs[1].Name.Name != "a" {
		t.Fatalf("named, in order, once: %v %v", vs, err)
	}
	_, err = selectViews(cfg, []string{"public.x", "public.a", "s.y"})
	if err == nil || err.Error() != "unknown views public.x, s.y: not in c.yaml (configured: public.a, public.b)" {
		t.Errorf("unknown: %v", err)
	}
}

func TestFormatting(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 999 * time.Millisecond: "0s", 90 * time.Second: "1m30s",
		47 * time.Hour: "47h0m0s", 50 * time.Hour: "2d2h",
	} {
		if got := formatAge(d); got != want {
			t.Errorf("formatAge(%v) = %q, want %q", d, got, want)
		}
	}
	if got := formatDuration(1234567 * time.Microsecond); got != "1.235s" {
		t.Errorf("formatDuration = %q", got)
	}
	if got := truncate("héllo wörld", 6); got != "héllo…" {
		t.Errorf("truncate = %q", got)
	}
	if got := truncate("short", 6); got != "short" {
		t.Errorf("truncate = %q", got)
	}
	if got := oneLine("ERROR: x\nDETAIL:  y\n"); got != "ERROR: x DETAIL: y" {
		t.Errorf("oneLine = %q", got)
	}
}

func TestConnConfigsExecMode(t *testing.T) {
	for _, tc := range []struct {
		url, direct string
		pool, sess  pgx.QueryExecMode
	}{
		// The default: unnamed statements on the pool, which a transaction
		// pooler can carry; the session connection keeps pgx's cache.
		{"postgres://app@pgbouncer:6432/app", "", pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement},
		{"postgres://app@pgbouncer:6432/app", "postgres://app@db:5432/app", pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement},
		{"host=pgbouncer port=6432 dbname=app", "", pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement},
		// A URL that chooses keeps its choice, even pgx's own default.
		{"postgres://app@pgbouncer:6432/app?default_query_exec_mode=cache_statement", "", pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheStatement},
		{"host=pgbouncer dbname=app default_query_exec_mode=simple_protocol", "", pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeSimpleProtocol},
		{"postgres://app@pgbouncer:6432/app", "postgres://app@db/app?default_query_exec_mode=cache_describe", pgx.QueryExecModeExec, pgx.QueryExecModeCacheDescribe},
	} {
		cfg := &config.Config{File: "c.yaml", MaxConcurrentRefreshes: 1, Database: config.Database{URL: tc.url, DirectURL: tc.direct}}
		pool, sess, err := connConfigs(cfg)
		if err != nil {
			t.Fatalf("%q: %v", tc.url, err)
		}
		if pool.ConnConfig.DefaultQueryExecMode != tc.pool || sess.DefaultQueryExecMode != tc.sess {
			t.Errorf("url %q direct %q: pool %v, session %v; want %v, %v", tc.url, tc.direct,
				pool.ConnConfig.DefaultQueryExecMode, sess.DefaultQueryExecMode, tc.pool, tc.sess)
		}
		if _, ok := pool.ConnConfig.RuntimeParams["default_query_exec_mode"]; ok {
			t.Errorf("%q: default_query_exec_mode sent to the server as a run-time parameter", tc.url)
		}
	}
}
