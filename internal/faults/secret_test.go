package faults

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/refresherd/refresherd/internal/daemontest"
)

// TestPasswordNeverShown checks that the password in the database URLs
// appears in no log line, metric, /status or /readyz body, including the
// errors of failed connections: a closed port, and a server that rejects a
// wrong password (scram-sha-256) on the direct URL while the pooled URL's
// right password works.
func TestPasswordNeverShown(t *testing.T) {
	t.Parallel()

	t.Run("closed port", func(t *testing.T) {
		const secret = "Cl0sed-Port-S3cret"
		port := closedPort(t)
		u := "postgres://postgres:" + secret + "@127.0.0.1:" + strconv.Itoa(port) + "/app?sslmode=disable&connect_timeout=2"
		p := start(t, config{}.write(t), "DATABASE_URL="+u)
		// The leader election's connection fails and says so, with the
		// driver's error.
		waitLogAfter(t, p, 0, 15*time.Second, msgIs("leader election cannot connect; retrying"))
		if p.CountLogs(func(l map[string]any) bool {
			e, _ := l["error"].(string)
			return strings.Contains(e, strconv.Itoa(port))
		}) == 0 {
			t.Fatalf("no connection error naming port %d was logged: the check below would prove nothing", port)
		}
		assertSecretHidden(t, p, secret)
	})

	t.Run("wrong password", func(t *testing.T) {
		const right, wrong = "Pw-Corr3ct-Horse", "Pw-Wr0ng-Battery"
		e := newEnv(t, 1000)
		e.exec(t, `CREATE ROLE refresherd_pw LOGIN SUPERUSER PASSWORD '`+right+`'`)
		// Passwords for this role over TCP; everyone else stays trusted
		// (the first matching line wins).
		hba := filepath.Join(e.cluster.DataDir(), "pg_hba.conf")
		old, err := os.ReadFile(hba)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(hba, append([]byte("host all refresherd_pw 127.0.0.1/32 scram-sha-256\n"), old...), 0o600); err != nil {
			t.Fatal(err)
		}
		e.exec(t, `SELECT pg_reload_conf()`)
		withPw := func(pw string) string {
			parsed, err := url.Parse(e.url)
			if err != nil {
				t.Fatal(err)
			}
			parsed.User = url.UserPassword("refresherd_pw", pw)
			return parsed.String()
		}
		p := start(t, config{}.write(t), "DATABASE_URL="+withPw(right), "DATABASE_DIRECT_URL="+withPw(wrong))
		waitLogAfter(t, p, 0, 15*time.Second, msgIs("database reachable"))
		waitLogAfter(t, p, 0, 15*time.Second, func(l map[string]any) bool {
			e, _ := l["error"].(string)
			return l["msg"] == "leader election cannot connect; retrying" && strings.Contains(e, "password authentication failed")
		})
		assertSecretHidden(t, p, right)
		assertSecretHidden(t, p, wrong)
	})
}

// assertSecretHidden looks for secret in everything the daemon shows.
func assertSecretHidden(t *testing.T, p *daemontest.Proc, secret string) {
	t.Helper()
	shown := map[string]string{}
	for _, path := range []string{"/metrics", "/status", "/readyz", "/healthz", "/"} {
		_, body, _, err := get(p, path, 10*time.Second)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		shown[path] = body
	}
	shown["logs"] = p.Logs()
	for where, text := range shown {
		if strings.Contains(text, secret) {
			t.Errorf("the password appears in %s", where)
		}
	}
	if p.Exited() {
		t.Errorf("daemon exited")
	}
}

// closedPort returns a local TCP port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}
