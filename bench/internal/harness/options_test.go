package harness

import (
	"slices"
	"testing"
	"time"
)

func TestParseSizes(t *testing.T) {
	got, err := ParseSizes("100k, 1m,auto,2500")
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{100_000, 1_000_000, 0, 2500}; !slices.Equal(got, want) {
		t.Errorf("ParseSizes = %v, want %v", got, want)
	}
	for _, bad := range []string{"", "x", "-1k", "1g"} {
		if _, err := ParseSizes(bad); err == nil {
			t.Errorf("ParseSizes(%q) succeeded", bad)
		}
	}
}

func TestSizeLabel(t *testing.T) {
	for n, want := range map[int]string{100_000: "100k", 1_000_000: "1M", 10_000_000: "10M", 1234: "1234"} {
		if got := SizeLabel(n); got != want {
			t.Errorf("SizeLabel(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestApplyProfileWriterSize(t *testing.T) {
	o := Options{Profile: "full", Sizes: []int{100_000}}
	if err := o.ApplyProfile(); err != nil {
		t.Fatal(err)
	}
	if o.WriterSize != 100_000 {
		t.Errorf("writer size %d, want the only size run", o.WriterSize)
	}
	if err := (&Options{Profile: "huge"}).ApplyProfile(); err == nil {
		t.Error("unknown profile accepted")
	}
}

func TestApplyProfileDetect(t *testing.T) {
	q := Options{Profile: "quick", Rates: []float64{50, 500}}
	f := Options{Profile: "full", Rates: []float64{50, 500}}
	for _, o := range []*Options{&q, &f} {
		if err := o.ApplyProfile(); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(q.DetectRates, []float64{50}) || !slices.Equal(f.DetectRates, []float64{50, 500}) {
		t.Errorf("detection rates: quick %v, full %v; want [50] and [50 500]", q.DetectRates, f.DetectRates)
	}
	if q.DetectProbes >= f.DetectProbes || q.DetectWindow >= f.DetectWindow || q.DetectScrape <= 0 {
		t.Errorf("quick detection test not smaller than full: %+v vs %+v", q, f)
	}
	if tail := detectTail(200 * time.Millisecond); tail >= q.DetectWindow {
		t.Errorf("quick window %s leaves no commit for detection after the %s tail", q.DetectWindow, tail)
	}
}

// The incremental section's defaults per profile, and bad names refused.
func TestIncrementalDefaults(t *testing.T) {
	q := Options{Profile: "quick"}
	if err := q.ApplyProfile(); err != nil {
		t.Fatal(err)
	}
	if !q.Incremental || !slices.Equal(q.Shapes, []string{"distinct"}) || !slices.Equal(q.IncSizes, []int{20_000}) ||
		!slices.Equal(q.IncStrategies, []string{"incremental", "full", "pgivm"}) || q.IncWriterSize != 20_000 || q.IncFullMax != 20_000 {
		t.Errorf("quick: %+v", q)
	}
	f := Options{Profile: "full", Sizes: []int{1_000_000, 0}}
	if err := f.ApplyProfile(); err != nil {
		t.Fatal(err)
	}
	if f.Incremental || !slices.Equal(f.Shapes, []string{"demo", "distinct"}) || !slices.Equal(f.IncSizes, []int{1_000_000, 10_000_000}) ||
		len(f.IncStrategies) != 5 || f.IncWriterSize != 1_000_000 || f.IncFullMax != 1_000_000 || f.IncWindow != 30*time.Second {
		t.Errorf("full: %+v", f)
	}
	for _, bad := range []Options{
		{Profile: "quick", IncStrategies: []string{"ivm"}},
		{Profile: "quick", Shapes: []string{"square"}},
		{Profile: "quick", IncWriterShapes: []string{"x"}},
	} {
		if err := bad.ApplyProfile(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}
