// Package stats summarises benchmark samples: nearest-rank percentiles,
// medians and ratios, with explicit handling of empty and tiny samples.
package stats

import (
	"math"
	"slices"
)

// Summary describes a sample. Percentiles use the nearest-rank method, so
// with fewer than 100 values the p99 is the maximum.
type Summary struct {
	N      int
	Min    float64
	Median float64
	P99    float64
	Max    float64
	Mean   float64
}

// Summarize returns the summary of xs (not modified). An empty sample gives
// N = 0 and NaN everywhere else.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		nan := math.NaN()
		return Summary{Min: nan, Median: nan, P99: nan, Max: nan, Mean: nan}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	return Summary{
		N:      len(s),
		Min:    s[0],
		Median: median(s),
		P99:    Percentile(s, 99),
		Max:    s[len(s)-1],
		Mean:   sum / float64(len(s)),
	}
}

// Percentile returns the nearest-rank p-th percentile (0 < p <= 100) of an
// ascending sample; NaN when it is empty.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Median returns the median of xs (not modified); NaN when empty.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return median(s)
}

func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// Ratio is a / b, NaN when either is NaN or b is 0.
func Ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return math.NaN()
	}
	return a / b
}

// Scale multiplies every field but N by f (e.g. seconds to milliseconds).
func (s Summary) Scale(f float64) Summary {
	s.Min *= f
	s.Median *= f
	s.P99 *= f
	s.Max *= f
	s.Mean *= f
	return s
}
