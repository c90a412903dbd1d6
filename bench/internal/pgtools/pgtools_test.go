package pgtools

import (
	"math"
	"testing"
)

const pgbenchOut = `pgbench (15.18 (Debian 15.18-0+deb12u1))
progress: 1.0 s, 62.0 tps, lat 412.000 ms stddev 100.000, 0 failed
progress: 2.0 s, 2000.0 tps, lat 15.000 ms stddev 3.000, 0 failed
progress: 3.0 s, 3000.0 tps, lat 10.000 ms stddev 2.000, 0 failed
transaction type: insert_charge.sql
number of failed transactions: 0 (0.000%)
tps = 1687.3 (without initial connection time)
`

func TestParseTPS(t *testing.T) {
	tests := []struct {
		name, out string
		want      float64
		wantErr   bool
	}{
		{"progress after the first second", pgbenchOut, 2500, false},
		{"one progress line: overall tps", "progress: 1.0 s, 62.0 tps, lat 1 ms stddev 0, 0 failed\ntps = 99.5 (without initial connection time)\n", 99.5, false},
		{"failures", "number of failed transactions: 3 (0.1%)\ntps = 99.5 (without initial connection time)\n", 0, true},
		{"no figure", "pgbench: error: connection refused\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTPS(tt.out)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && math.Abs(got-tt.want) > 1e-9 {
				t.Errorf("tps = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPgbenchCommand(t *testing.T) {
	p := Pgbench{DB: "w", Script: "s.sql", Clients: 32}
	if got, want := p.Command(), "pgbench -n -h 127.0.0.1 -p PORT -U postgres -f s.sql -c 32 -j 2 -T 1 -P 1 w"; got != want {
		t.Errorf("Command() = %q, want %q", got, want)
	}
}

// TestFailedTransactions: what a warm-up fails on. A second that commits
// nothing (seen on a slow machine: no tps line at all) is not a failure.
func TestFailedTransactions(t *testing.T) {
	nothing := "progress: 1.0 s, 0.0 tps, lat 0.000 ms stddev 0.000, 0 failed\nnumber of transactions actually processed: 0\nnumber of failed transactions: 0 (NaN%)\n"
	for _, tt := range []struct {
		name, out string
		wantErr   bool
	}{
		{"a normal run", pgbenchOut, false},
		{"nothing committed", nothing, false},
		{"failures", "number of failed transactions: 3 (0.1%)\n", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := failedTransactions(tt.out); (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
	if _, err := ParseTPS(nothing); err == nil {
		t.Error("ParseTPS of a run that committed nothing: no error; a measured run must have a figure")
	}
}
