package main

import (
	"math"
	"os"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	var samples []sample
	add := func(round, clients int, v string, tps float64) {
		samples = append(samples, sample{round: round, clients: clients, variant: v, tps: tps})
	}
	// Ten rounds at 32 clients: the trigger at 0.9x of none, except one
	// round where none's run is missing; at 8 clients one round only.
	for r := 0; r < 10; r++ {
		if r != 3 {
			add(r, 32, none, 1000+float64(r)*10)
		}
		add(r, 32, "t", 0.9*(1000+float64(r)*10))
	}
	add(0, 8, none, 500)
	add(0, 8, "t", 250)

	tests := []struct {
		name      string
		clients   int
		against   string
		wantRatio float64
		wantN     int
		wantOK    bool
	}{
		{"ratios within each round, a round without baseline left out", 32, none, 0.9, 9, true},
		{"one round has no interval", 8, none, 0.5, 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := summarize(samples, tc.clients, []string{none, "t"}, tc.against)
			if len(got) != 1 || got[0].variant != "t" {
				t.Fatalf("summarize = %+v, want one row for t", got)
			}
			s := got[0]
			if math.Abs(s.ratio-tc.wantRatio) > 1e-9 || s.rounds != tc.wantN || s.ok != tc.wantOK {
				t.Errorf("ratio %v rounds %d ok %v, want %v %d %v", s.ratio, s.rounds, s.ok, tc.wantRatio, tc.wantN, tc.wantOK)
			}
			if s.ok && (s.lo > s.ratio || s.hi < s.ratio) {
				t.Errorf("interval %v-%v does not hold the median %v", s.lo, s.hi, s.ratio)
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr bool
	}{
		{nil, false},
		{[]string{"-variants", "refresherd_notify"}, true},
		{[]string{"-variants", "none"}, true},
		{[]string{"-clients", "8,x"}, true},
		{[]string{"-clients", "8, 32", "-rounds", "3"}, false},
		{[]string{"-duration", "100ms"}, true},
	}
	for _, tc := range tests {
		_, err := parse(tc.args)
		if (err != nil) != tc.wantErr {
			t.Errorf("parse(%q) error %v, want error %v", tc.args, err, tc.wantErr)
		}
	}
}

func TestRawRoundTrip(t *testing.T) {
	dir := t.TempDir()
	a, b := dir+"/a.tsv", dir+"/b.tsv"
	// Two files with the same round numbers: pooled, a run of one file is
	// never paired with a run of the other.
	if err := writeRaw(a, []sample{{0, 32, none, 1000}, {0, 32, "t", 900}}); err != nil {
		t.Fatal(err)
	}
	if err := writeRaw(b, []sample{{0, 32, none, 2000}, {0, 32, "t", 1000}}); err != nil {
		t.Fatal(err)
	}
	samples, err := readRaw([]string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	got := summarize(samples, 32, []string{none, "t"}, none)
	if len(got) != 1 || got[0].rounds != 2 || math.Abs(got[0].ratio-0.7) > 1e-9 {
		t.Errorf("pooled summary %+v, want 2 rounds with median ratio (0.9+0.5)/2", got)
	}
	bad := dir + "/bad.tsv"
	if err := os.WriteFile(bad, []byte("0 32 none 1000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readRaw([]string{bad}); err == nil {
		t.Error("readRaw accepted a line without tabs")
	}
}

// TestSmoke runs the whole command on a small data set: its own cluster,
// every variant of variants.sql, the daemon's work beside the writers, the
// raw file. It takes about half a minute, so it runs with the benchmark's
// smoke test (REFRESHERD_BENCH_SMOKE=1, as the test command sets).
func TestSmoke(t *testing.T) {
	if os.Getenv("REFRESHERD_BENCH_SMOKE") != "1" {
		t.Skip("set REFRESHERD_BENCH_SMOKE=1 to run triggerab on a small data set (about half a minute)")
	}
	variants := []string{none, shipped, "ab_log_doorbell", "ab_ring_nowhen", "ab_empty", "ab_empty_sd", "ab_doorbell", "ab_doorbell_arg", "ab_before", "ab_oid_before"}
	raw := t.TempDir() + "/runs.tsv"
	var out strings.Builder
	err := run(t.Context(), []string{"-charges", "5000", "-rounds", "2", "-duration", "1s", "-clients", "2",
		"-arm-every", "20ms", "-variants", strings.Join(variants, ","), "-raw", raw}, &out)
	if err != nil {
		t.Fatal(err)
	}
	samples, err := readRaw([]string{raw})
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 2*len(variants) {
		t.Errorf("raw file has %d runs, want %d", len(samples), 2*len(variants))
	}
	for _, s := range samples {
		if !(s.tps > 0) {
			t.Errorf("run %+v measured no throughput", s)
		}
	}
	for _, v := range variants[1:] {
		if !strings.Contains(out.String(), "| "+v+" | ") {
			t.Errorf("summary has no row for %s:\n%s", v, out.String())
		}
	}
}
