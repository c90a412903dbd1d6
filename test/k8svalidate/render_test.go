package k8svalidate

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// repoRoot is the repository root, relative to this package.
const repoRoot = "../.."

func repoPath(p string) string { return filepath.Join(repoRoot, filepath.FromSlash(p)) }

func readRepoFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(repoPath(p))
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return b
}

// manifests is one rendered kustomization, decoded strictly into typed objects.
type manifests struct {
	ServiceAccounts []*corev1.ServiceAccount
	ConfigMaps      []*corev1.ConfigMap
	Services        []*corev1.Service
	Deployments     []*appsv1.Deployment
	PDBs            []*policyv1.PodDisruptionBudget
	NetworkPolicies []*networkingv1.NetworkPolicy
	PodMonitors     []*monitoringv1.PodMonitor
	ServiceMonitors []*monitoringv1.ServiceMonitor
	PrometheusRules []*monitoringv1.PrometheusRule
	Kinds           []string            // in render order
	RawRules        map[string][]byte   // PrometheusRule name -> its YAML document
	rawByKind       map[string][][]byte // kind -> YAML documents
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not on PATH: run scripts/validate-deploy.sh from the repository root, which installs what it needs", name)
	}
	return p
}

// kustomize renders dir (relative to the repository root) with `kubectl kustomize`.
func kustomize(t *testing.T, dir string) []byte {
	t.Helper()
	kubectl := needTool(t, "kubectl")
	cmd := exec.Command(kubectl, "kustomize", repoPath(dir))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	return out
}

// splitDocs splits a multi-document YAML stream, dropping empty documents.
func splitDocs(t *testing.T, data []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if err != nil {
			if err.Error() == "EOF" {
				break
			}
			t.Fatalf("split YAML documents: %v", err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		docs = append(docs, doc)
	}
	return docs
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// strict decodes doc into out, failing on unknown or duplicate fields.
func strict(doc []byte, out any) error {
	return yaml.UnmarshalStrict(doc, out)
}

func render(t *testing.T, dir string) *manifests {
	t.Helper()
	m := &manifests{RawRules: map[string][]byte{}, rawByKind: map[string][][]byte{}}
	for i, doc := range splitDocs(t, kustomize(t, dir)) {
		var tm typeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("%s: document %d: %v", dir, i, err)
		}
		want := map[string]string{
			"ServiceAccount":      "v1",
			"ConfigMap":           "v1",
			"Service":             "v1",
			"Deployment":          "apps/v1",
			"PodDisruptionBudget": "policy/v1",
			"NetworkPolicy":       "networking.k8s.io/v1",
			"PodMonitor":          "monitoring.coreos.com/v1",
			"ServiceMonitor":      "monitoring.coreos.com/v1",
			"PrometheusRule":      "monitoring.coreos.com/v1",
		}[tm.Kind]
		if want == "" {
			t.Fatalf("%s: document %d: unexpected kind %q", dir, i, tm.Kind)
		}
		if tm.APIVersion != want {
			t.Fatalf("%s: %s: apiVersion %q, want %q", dir, tm.Kind, tm.APIVersion, want)
		}
		var err error
		switch tm.Kind {
		case "ServiceAccount":
			o := &corev1.ServiceAccount{}
			err = strict(doc, o)
			m.ServiceAccounts = append(m.ServiceAccounts, o)
		case "ConfigMap":
			o := &corev1.ConfigMap{}
			err = strict(doc, o)
			m.ConfigMaps = append(m.ConfigMaps, o)
		case "Service":
			o := &corev1.Service{}
			err = strict(doc, o)
			m.Services = append(m.Services, o)
		case "Deployment":
			o := &appsv1.Deployment{}
			err = strict(doc, o)
			m.Deployments = append(m.Deployments, o)
		case "PodDisruptionBudget":
			o := &policyv1.PodDisruptionBudget{}
			err = strict(doc, o)
			m.PDBs = append(m.PDBs, o)
		case "NetworkPolicy":
			o := &networkingv1.NetworkPolicy{}
			err = strict(doc, o)
			m.NetworkPolicies = append(m.NetworkPolicies, o)
		case "PodMonitor":
			o := &monitoringv1.PodMonitor{}
			err = strict(doc, o)
			m.PodMonitors = append(m.PodMonitors, o)
		case "ServiceMonitor":
			o := &monitoringv1.ServiceMonitor{}
			err = strict(doc, o)
			m.ServiceMonitors = append(m.ServiceMonitors, o)
		case "PrometheusRule":
			o := &monitoringv1.PrometheusRule{}
			err = strict(doc, o)
			m.PrometheusRules = append(m.PrometheusRules, o)
			m.RawRules[o.Name] = doc
		}
		if err != nil {
			t.Fatalf("%s: %s: strict decode: %v", dir, tm.Kind, err)
		}
		m.Kinds = append(m.Kinds, tm.Kind)
		m.rawByKind[tm.Kind] = append(m.rawByKind[tm.Kind], doc)
	}
	return m
}

func (m *manifests) count(kind string) int { return len(m.rawByKind[kind]) }

// one returns the only element of s, failing the test otherwise.
func one[T any](t *testing.T, what string, s []T) T {
	t.Helper()
	if len(s) != 1 {
		t.Fatalf("want exactly one %s, got %d", what, len(s))
	}
	return s[0]
}

// selects reports whether every selector label is in labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func sortedKinds(m *manifests) string {
	seen := map[string]bool{}
	var out []string
	for _, k := range m.Kinds {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return strings.Join(out, ",")
}
