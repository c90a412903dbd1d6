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
