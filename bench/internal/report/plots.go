package report

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/refresherd/refresherd/bench/internal/results"
)

// writePlots draws the PNGs and returns their file names by section.
func writePlots(dir string, run *results.Run) (map[string][]string, error) {
	out := map[string][]string{}
	save := func(section, name string, p *plot.Plot) error {
		if err := p.Save(8*vg.Inch, 4.5*vg.Inch, filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("plot %s: %w", name, err)
		}
		out[section] = append(out[section], name)
		return nil
	}
	for _, s := range run.Sizes {
		if p := freshnessPlot(s); p != nil {
			if err := save("freshness", "freshness_lag_"+strings.ToLower(s.Label)+".png", p); err != nil {
				return nil, err
			}
		}
	}
	if p, err := costPlot(run); err != nil {
		return nil, err
	} else if p != nil {
		if err := save("cost", "refresh_duration.png", p); err != nil {
			return nil, err
		}
	}
	if p, err := readerPlot(run); err != nil {
		return nil, err
	} else if p != nil {
		if err := save("reader", "reader_latency.png", p); err != nil {
			return nil, err
		}
	}
	if err := incPlots(run, save); err != nil {
		return nil, err
	}
	if p, err := writerPlot(run); err != nil {
		return nil, err
	} else if p != nil {
		if err := save("writer", "writer_tps.png", p); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// freshnessPlot draws each run's lag distribution as an empirical CDF.
func freshnessPlot(s *results.Size) *plot.Plot {
	p := plot.New()
	p.Title.Text = "Freshness lag, " + s.Label + " charges (commit to visible in the summary)"
	p.X.Label.Text = "lag (s)"
	p.Y.Label.Text = "fraction of commits visible"
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	p.Legend.Top = false
	p.Legend.Left = false
	n := 0
	for i, f := range sortedFresh(s.Freshness) {
		if len(f.Lags) == 0 {
			continue
		}
		xs := slices.Clone(f.Lags)
		slices.Sort(xs)
		pts := make(plotter.XYs, 0, len(xs)+1)
		pts = append(pts, plotter.XY{X: 0, Y: 0})
		for j, x := range xs {
			pts = append(pts, plotter.XY{X: x, Y: float64(j+1) / float64(len(xs))})
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			continue
		}
		l.Color = plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s %g/s (n=%d)", f.System, f.TargetRate, len(xs)), l)
		n++
	}
	if n == 0 {
		return nil
	}
	return p
}

// grouped draws grouped bars: one group per category, one bar per series,
// each labelled with its value (format), with room above for the legend.
func grouped(p *plot.Plot, categories []string, series []string, format string, value func(cat, ser int) float64) error {
	w := vg.Points(math.Min(60/float64(max(len(series), 1)), 24))
	top := 0.0
	for si, name := range series {
		vals := make(plotter.Values, len(categories))
		var pts plotter.XYs
		var labels []string
		for ci := range categories {
			v := value(ci, si)
			if math.IsNaN(v) {
				v = 0
			} else {
				pts = append(pts, plotter.XY{X: float64(ci), Y: v})
				labels = append(labels, fmt.Sprintf(format, v))
			}
			vals[ci] = v
			top = math.Max(top, v)
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return fmt.Errorf("bar chart %s: %w", name, err)
		}
		bars.LineStyle.Width = 0
		bars.Color = plotutil.Color(si)
		bars.Offset = w * vg.Length(float64(si)-float64(len(series)-1)/2)
		p.Add(bars)
		p.Legend.Add(name, bars)
		if len(pts) > 0 {
			lb, err := plotter.NewLabels(plotter.XYLabels{XYs: pts, Labels: labels})
			if err != nil {
				return fmt.Errorf("bar labels %s: %w", name, err)
			}
			for i := range lb.TextStyle {
				lb.TextStyle[i].Font.Size = vg.Points(7)
				lb.TextStyle[i].XAlign = -0.5
			}
			lb.Offset = vg.Point{X: bars.Offset, Y: vg.Points(2)}
			p.Add(lb)
		}
	}
	p.NominalX(categories...)
	p.X.Min, p.X.Max = -0.6, float64(len(categories))-0.4
	p.Y.Min = 0
	if top > 0 {
		// Room for the legend (one line per series) above the bars.
		p.Y.Max = top * (1.15 + 0.08*float64(len(series)))
	}
	p.Legend.Top = true
	return nil
}

func costPlot(run *results.Run) (*plot.Plot, error) {
	var cats []string
	var methods []string
	for _, s := range run.Sizes {
		if len(s.Cost) == 0 {
			continue
		}
		cats = append(cats, s.Label)
		for _, c := range s.Cost {
			if !slices.Contains(methods, c.Method) {
				methods = append(methods, c.Method)
			}
		}
	}
	if len(cats) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = "Refresh duration by size (median)"
	p.Y.Label.Text = "seconds"
	p.X.Label.Text = "charges"
	sizes := sizesWithCost(run)
	err := grouped(p, cats, methods, "%.2f", func(ci, si int) float64 {
		for _, c := range sizes[ci].Cost {
			if c.Method == methods[si] {
				return c.Summary.Median
			}
		}
		return math.NaN()
	})
	return p, err
}

func sizesWithCost(run *results.Run) []*results.Size {
	var out []*results.Size
	for _, s := range run.Sizes {
		if len(s.Cost) > 0 {
			out = append(out, s)
		}
	}
	return out
}

func readerPlot(run *results.Run) (*plot.Plot, error) {
	var cats []string
	var conds []string
	var sizes []*results.Size
	for _, s := range run.Sizes {
		if len(s.Reader) == 0 {
			continue
		}
		sizes = append(sizes, s)
		cats = append(cats, s.Label)
		for _, r := range s.Reader {
			if !slices.Contains(conds, r.Condition) {
				conds = append(conds, r.Condition)
			}
		}
	}
	if len(cats) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = "App query p99 latency (SELECT * FROM summary WHERE user_id = $1)"
	p.Y.Label.Text = "milliseconds"
	p.X.Label.Text = "charges"
	err := grouped(p, cats, conds, "%.1f", func(ci, si int) float64 {
		for _, r := range sizes[ci].Reader {
			if r.Condition == conds[si] {
				return r.Summary.P99
			}
		}
		return math.NaN()
	})
	return p, err
}

func writerPlot(run *results.Run) (*plot.Plot, error) {
	w := run.Writer
	if w == nil {
		return nil, nil
	}
	p, err := tpsPlot(w, "Insert TPS by client count and change detection ("+w.SizeLabel+" charges, median)")
	if p == nil || err != nil {
		return nil, err
	}
	p.Legend.TextStyle.Color = color.Black
	return p, nil
}

// tpsPlot is the median TPS of w's available modes, grouped by client
// count; nil when no mode ran.
func tpsPlot(w *results.Writer, title string) (*plot.Plot, error) {
	var modes []string
	var ms []results.WriterMode
	for _, m := range w.Modes {
		if m.Available {
			modes = append(modes, m.Mode)
			ms = append(ms, m)
		}
	}
	if len(modes) == 0 {
		return nil, nil
	}
	cats := make([]string, len(w.Clients))
	for i, c := range w.Clients {
		cats[i] = strconv.Itoa(c)
	}
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = "transactions per second"
	p.X.Label.Text = "pgbench clients"
	err := grouped(p, cats, modes, "%.0f", func(ci, si int) float64 { return ms[si].Median[w.Clients[ci]] })
	return p, err
}
