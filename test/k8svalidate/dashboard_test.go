package k8svalidate

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const dashboardFile = "deploy/grafana/refresherd-dashboard.json"

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr   string `json:"expr"`
		RefID  string `json:"refId"`
		Format string `json:"format"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

func flatten(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flatten(p.Panels)...)
	}
	return out
}

// grafanaToPromQL replaces Grafana's variables so that promtool can parse the query.
var grafanaToPromQL = strings.NewReplacer("$__rate_interval", "5m", "$job", ".*", "$namespace", ".*", "$view", ".*")

func TestDashboard(t *testing.T) {
	raw := readRepoFile(t, dashboardFile)
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard needs a uid and a title")
	}
	dsVar := false
	for _, v := range d.Templating.List {
		if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = true
		}
	}
	if !dsVar {
		t.Errorf("no datasource template variable of type prometheus")
	}

	ids := map[int]bool{}
	var exprs []string
	for _, p := range flatten(d.Panels) {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W == 0 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource must be the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
			if bad := unknownMetrics(tg.Expr); len(bad) > 0 {
				t.Errorf("panel %q: uses metrics refresherd does not export: %v", p.Title, bad)
			}
		}
	}

	all := strings.Join(exprs, "\n")
	for _, want := range []string{
		"refresherd_staleness_seconds",
		"refresherd_refresh_duration_seconds_bucket",
		"histogram_quantile(0.5,",
		"histogram_quantile(0.99,",
		"refresherd_refreshes_total",
		"sum by (result)",
		"sum by (trigger, result)",
		"refresherd_leader",
		"refresherd_listener_connected",
		"refresherd_pending_changes",
		"refresherd_refresh_in_progress",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no panel query contains %q", want)
		}
	}
	heatmap := false
	for _, p := range flatten(d.Panels) {
		if p.Type == "heatmap" && len(p.Targets) > 0 && p.Targets[0].Format == "heatmap" &&
			strings.Contains(p.Targets[0].Expr, "refresherd_refresh_duration_seconds_bucket") {
			heatmap = true
		}
	}
	if !heatmap {
		t.Errorf("no heatmap panel of refresherd_refresh_duration_seconds_bucket")
	}

	// Every query parses as PromQL: promtool checks them as recording rules.
	promtool := needTool(t, "promtool")
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for _, e := range exprs {
		rules = append(rules, rule{Record: "dashboard:query", Expr: grafanaToPromQL.Replace(e)})
	}
	file := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}
	out, err := yaml.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(promtool, "check", "rules", path).CombinedOutput(); err != nil {
		t.Errorf("dashboard queries do not parse: %v\n%s", err, b)
	}
}
