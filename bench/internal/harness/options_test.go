package harness

import (
	"slices"
	"testing"
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
