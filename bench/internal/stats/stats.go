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

// MedianInterval is a distribution-free confidence interval for the median
// of the population xs was drawn from: the k-th smallest and k-th largest
// values, with k the largest rank whose binomial coverage, 1 - 2 P(B < k)
// for B ~ Binomial(n, 1/2), is at least level (e.g. 0.95). It assumes
// nothing about the shape of the distribution, which for per-round TPS
// ratios on a noisy machine is skewed and heavy-tailed. ok is false when the
// sample is too small for that level (fewer than 6 values at 0.95). NaN
// values (a round without a figure) are left out.
func MedianInterval(xs []float64, level float64) (lo, hi float64, ok bool) {
	s := slices.DeleteFunc(slices.Clone(xs), math.IsNaN)
	n := len(s)
	k, below := 0, 0.0 // below = P(B < k+1) as k grows
	for i := 0; i < n; i++ {
		below += binomialHalf(n, i)
		if 1-2*below < level {
			break
		}
		k = i + 1
	}
	if k == 0 {
		return math.NaN(), math.NaN(), false
	}
	slices.Sort(s)
	return s[k-1], s[n-k], true
}

// binomialHalf is P(B = i) for B ~ Binomial(n, 1/2), through log-gamma so
// that large n neither overflows nor underflows to a wrong sum.
func binomialHalf(n, i int) float64 {
	ln := func(x int) float64 { v, _ := math.Lgamma(float64(x) + 1); return v }
	return math.Exp(ln(n) - ln(i) - ln(n-i) - float64(n)*math.Ln2)
}
