package stats

import (
	"math"
	"testing"
)

func TestSummarize(t *testing.T) {
	xs := make([]float64, 200)
	for i := range xs {
		xs[i] = float64(200 - i) // 200 .. 1, unsorted
	}
	s := Summarize(xs)
	if s.N != 200 || s.Min != 1 || s.Max != 200 || s.Median != 100.5 || s.P99 != 198 {
		t.Errorf("Summarize = %+v", s)
	}
	if xs[0] != 200 {
		t.Error("Summarize sorted its input")
	}
	if s := Summarize([]float64{3}); s.Median != 3 || s.P99 != 3 {
		t.Errorf("one value: %+v", s)
	}
	if s := Summarize(nil); s.N != 0 || !math.IsNaN(s.Median) || !math.IsNaN(s.P99) {
		t.Errorf("empty: %+v", s)
	}
}

func TestRatio(t *testing.T) {
	if r := Ratio(3, 2); r != 1.5 {
		t.Errorf("Ratio(3, 2) = %v", r)
	}
	for _, r := range []float64{Ratio(1, 0), Ratio(math.NaN(), 1), Ratio(1, math.NaN())} {
		if !math.IsNaN(r) {
			t.Errorf("want NaN, got %v", r)
		}
	}
}

// TestMedianInterval checks the ranks against the binomial tables: at 95%,
// n = 6 gives the extremes (coverage 96.9%), n = 10 the 2nd smallest and
// largest (97.9%; the 3rd would cover 89.1%), n = 40 the 14th and 27th
// (96.2%; the 15th would cover 91.9%); n = 5 has no 95% interval (93.8%).
func TestMedianInterval(t *testing.T) {
	for _, tc := range []struct {
		n      int
		lo, hi float64 // 1-based ranks in 1..n
		ok     bool
	}{
		{0, 0, 0, false},
		{5, 0, 0, false},
		{6, 1, 6, true},
		{10, 2, 9, true},
		{40, 14, 27, true},
	} {
		xs := make([]float64, tc.n)
		for i := range xs {
			xs[i] = float64(tc.n - i) // n .. 1: the value is the rank, input unsorted
		}
		lo, hi, ok := MedianInterval(xs, 0.95)
		if ok != tc.ok || (ok && (lo != tc.lo || hi != tc.hi)) {
			t.Errorf("n=%d: (%v, %v, %v), want (%v, %v, %v)", tc.n, lo, hi, ok, tc.lo, tc.hi, tc.ok)
		}
		if tc.n > 0 && xs[0] != float64(tc.n) {
			t.Errorf("n=%d: input sorted", tc.n)
		}
	}
	// NaNs are left out: 6 values and 2 NaNs give the 6 values' extremes.
	nan := math.NaN()
	if lo, hi, ok := MedianInterval([]float64{nan, 3, 1, 6, nan, 2, 5, 4}, 0.95); !ok || lo != 1 || hi != 6 {
		t.Errorf("with NaNs: (%v, %v, %v), want (1, 6, true)", lo, hi, ok)
	}
}
