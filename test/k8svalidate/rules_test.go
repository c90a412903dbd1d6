package k8svalidate

import (
	"bytes"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const (
	rulesFile          = "deploy/prometheus/rules.yml"
	prometheusRuleFile = "deploy/k8s/prometheusrule.yaml"
	runbookFile        = "docs/runbook.md"
	runbookURLPrefix   = "https://github.com/refresherd/refresherd/blob/main/docs/runbook.md#"
)

// The alerts the project promises (docs/runbook.md has a section for each).
var requiredAlerts = []string{
	"RefresherdViewStale",
	"RefresherdRefreshesFailing",
	"RefresherdNoLeader",
	"RefresherdListenerDisconnected",
	"RefresherdViewNotReady",
	"RefresherdTargetLagMissed",
	"RefresherdConfigReloadFailed",
	"RefresherdDown",
}

// exportedMetrics is refresherd's public metric contract (DESIGN.md and issue 4). Rules and
// dashboards may use only these (and the Go/process collectors and up).
var exportedMetrics = []string{
	"refresherd_refreshes_total",
	"refresherd_refresh_duration_seconds",
	"refresherd_last_success_timestamp_seconds",
	"refresherd_data_as_of_timestamp_seconds",
	"refresherd_staleness_seconds",
	"refresherd_pending_changes",
	"refresherd_refresh_in_progress",
	"refresherd_leader",
	"refresherd_listener_connected",
	"refresherd_listener_reconnects_total",
	"refresherd_view_ready",
	"refresherd_target_lag_seconds",
	"refresherd_target_met",
	"refresherd_config_last_reload_successful",
	"refresherd_build_info",
}

var metricNameRE = regexp.MustCompile(`\b(refresherd_[a-z0-9_]+|go_[a-z0-9_]+|process_[a-z0-9_]+)`)

// unknownMetrics returns the metric names in expr that refresherd does not export.
func unknownMetrics(expr string) []string {
	var bad []string
	for _, name := range metricNameRE.FindAllString(expr, -1) {
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			continue // Go and process collectors
		}
		base := name
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suf); ok && b == "refresherd_refresh_duration_seconds" {
				base = b
			}
		}
		if !slices.Contains(exportedMetrics, base) {
			bad = append(bad, name)
		}
	}
	return bad
}

// ruleFile is the Prometheus rule file format, decoded strictly.
type ruleFile struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval,omitempty"`
		Rules    []struct {
			Alert       string            `json:"alert,omitempty"`
			Record      string            `json:"record,omitempty"`
			Expr        string            `json:"expr"`
			For         string            `json:"for,omitempty"`
			Labels      map[string]string `json:"labels,omitempty"`
			Annotations map[string]string `json:"annotations,omitempty"`
		} `json:"rules"`
	} `json:"groups"`
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	if err := yaml.UnmarshalStrict(readRepoFile(t, rulesFile), &rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	return rf
}

// generatedPrometheusRule is deploy/k8s/prometheusrule.yaml as generated from rules.yml: a
// header, then rules.yml from its groups: line on, indented under spec.
func generatedPrometheusRule(rules []byte) []byte {
	var b bytes.Buffer
	b.WriteString(`# GENERATED from deploy/prometheus/rules.yml - do not edit by hand.
# Regenerate: cd test/k8svalidate && UPDATE_PROMETHEUSRULE=1 go test ./...
# (the test fails while this file and rules.yml differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: refresherd
  labels:
    app.kubernetes.io/name: refresherd
    app.kubernetes.io/instance: refresherd
    app.kubernetes.io/component: controller
spec:
`)
	i := bytes.Index(rules, []byte("\ngroups:"))
	if i < 0 {
		return nil
	}
	for _, line := range strings.SplitAfter(string(rules[i+1:]), "\n") {
		if strings.TrimSpace(line) != "" {
			b.WriteString("  ")
		}
		b.WriteString(line)
	}
	return b.Bytes()
}

// TestPrometheusRuleMatchesRulesFile: the Operator's PrometheusRule and the plain rule file
// carry the same alerts.
func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	rules := readRepoFile(t, rulesFile)
	want := generatedPrometheusRule(rules)
	if want == nil {
		t.Fatalf("%s: no top-level groups: line", rulesFile)
	}
	if os.Getenv("UPDATE_PROMETHEUSRULE") != "" {
		if err := os.WriteFile(repoPath(prometheusRuleFile), want, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", prometheusRuleFile)
	}
	if got := readRepoFile(t, prometheusRuleFile); !bytes.Equal(got, want) {
		t.Errorf("%s is not generated from %s: run `cd test/k8svalidate && UPDATE_PROMETHEUSRULE=1 go test ./...`", prometheusRuleFile, rulesFile)
	}

	// And semantically, as rendered by kustomize (after its label transformer).
	m := render(t, baseDir)
	pr := one(t, "PrometheusRule", m.PrometheusRules)
	var rendered map[string]any
	if err := yaml.Unmarshal(m.RawRules[pr.Name], &rendered); err != nil {
		t.Fatal(err)
	}
	var file map[string]any
	if err := yaml.Unmarshal(rules, &file); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rendered["spec"], file) {
		t.Errorf("rendered PrometheusRule spec differs from %s", rulesFile)
	}
	// The typed decode saw the same alerts.
	var alerts []string
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
		}
	}
	var fileAlerts []string
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			fileAlerts = append(fileAlerts, r.Alert)
		}
	}
	if !slices.Equal(alerts, fileAlerts) {
		t.Errorf("PrometheusRule alerts %v, rules.yml alerts %v", alerts, fileAlerts)
	}
}

// githubAnchors returns the anchors GitHub generates for the Markdown headings in md.
func githubAnchors(md string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	inFence := false
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(h) {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteRune('-')
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", a, n)] = true
		} else {
			anchors[a] = true
		}
		seen[a]++
	}
	return anchors
}

func TestAlerts(t *testing.T) {
	rf := loadRules(t)
	anchors := githubAnchors(string(readRepoFile(t, runbookFile)))
	var names []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			names = append(names, r.Alert)
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
			switch r.Labels["severity"] {
			case "critical", "warning", "info":
			default:
				t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			if r.For == "" {
				t.Errorf("%s: no for: a single bad scrape would page", r.Alert)
			}
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], runbookURLPrefix)
			if !ok {
				t.Errorf("%s: runbook_url %q does not start with %s", r.Alert, r.Annotations["runbook_url"], runbookURLPrefix)
			} else if !anchors[anchor] {
				t.Errorf("%s: runbook_url anchor #%s has no heading in %s", r.Alert, anchor, runbookFile)
			}
			if bad := unknownMetrics(r.Expr); len(bad) > 0 {
				t.Errorf("%s: uses metrics refresherd does not export: %v", r.Alert, bad)
			}
		}
	}
	for _, a := range requiredAlerts {
		if !slices.Contains(names, a) {
			t.Errorf("alert %s missing from %s", a, rulesFile)
		}
	}
	if len(names) != len(requiredAlerts) {
		t.Errorf("alerts %v; requiredAlerts in this test lists %v: keep them (and the runbook) in step", names, requiredAlerts)
	}
}

// TestRulesUnitTestsCoverEveryAlert: rules_test.yml has, for every alert, a case where it
// fires and a case where it must not.
func TestRulesUnitTestsCoverEveryAlert(t *testing.T) {
	var tf struct {
		Tests []struct {
			Name  string `json:"name"`
			Cases []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(readRepoFile(t, "deploy/prometheus/rules_test.yml"), &tf); err != nil {
		t.Fatal(err)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, c := range tc.Cases {
			if len(c.ExpAlerts) > 0 {
				fires[c.Alertname] = true
			} else {
				silent[c.Alertname] = true
			}
		}
	}
	for _, a := range requiredAlerts {
		if !fires[a] {
			t.Errorf("rules_test.yml: no case where %s fires", a)
		}
		if !silent[a] {
			t.Errorf("rules_test.yml: no case where %s must not fire", a)
		}
	}
}

// TestMetricsExistInDaemon: every metric the rules and the dashboard rely on is defined by the
// daemon's metrics package (a cheap guard against a rename on either side).
func TestMetricsExistInDaemon(t *testing.T) {
	dir := repoPath("metrics")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read the daemon's metrics package: %v", err)
	}
	var src strings.Builder
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".go") && !strings.HasSuffix(e.Name(), "_test.go") {
			src.Write(readRepoFile(t, "metrics/"+e.Name()))
		}
	}
	for _, name := range exportedMetrics {
		if !strings.Contains(src.String(), `"`+name+`"`) {
			t.Errorf("metric %s is used by deploy/ but not defined in metrics/*.go", name)
		}
	}
}
