package k8svalidate

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const (
	baseDir        = "deploy/k8s"
	metricsPort    = "http-metrics"
	metricsPortNum = 9481
	nonRootUID     = 65532
	configMount    = "/etc/refresherd"
	secretName     = "refresherd-database"
	secretKey      = "url"
)

// The labels every object and the pod template carry.
var requiredLabels = []string{
	"app.kubernetes.io/name",
	"app.kubernetes.io/instance",
	"app.kubernetes.io/component",
	"app.kubernetes.io/part-of",
}

func TestBaseKinds(t *testing.T) {
	m := render(t, baseDir)
	want := map[string]int{
		"ServiceAccount": 1, "ConfigMap": 1, "Deployment": 1, "PodDisruptionBudget": 1,
		"NetworkPolicy": 1, "PodMonitor": 1, "PrometheusRule": 1,
	}
	for kind, n := range want {
		if got := m.count(kind); got != n {
			t.Errorf("%s: %d objects, want %d", kind, got, n)
		}
	}
	if len(m.Kinds) != 7 {
		t.Errorf("rendered kinds %s, want exactly %v", sortedKinds(m), want)
	}
	for kind, docs := range m.rawByKind {
		for _, doc := range docs {
			var obj struct {
				Metadata struct {
					Name   string            `json:"name"`
					Labels map[string]string `json:"labels"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal(doc, &obj); err != nil {
				t.Fatal(err)
			}
			for _, l := range requiredLabels {
				if obj.Metadata.Labels[l] == "" {
					t.Errorf("%s %s: missing label %s", kind, obj.Metadata.Name, l)
				}
			}
			if obj.Metadata.Labels["app.kubernetes.io/name"] != "refresherd" {
				t.Errorf("%s %s: app.kubernetes.io/name = %q, want refresherd", kind, obj.Metadata.Name, obj.Metadata.Labels["app.kubernetes.io/name"])
			}
		}
	}
}

// gracePeriod reads shutdown.grace_period from the ConfigMap's config.yaml (default 30s).
func gracePeriod(t *testing.T, cfg string) time.Duration {
	t.Helper()
	var c struct {
		Shutdown struct {
			GracePeriod string `json:"grace_period"`
		} `json:"shutdown"`
	}
	if err := yaml.Unmarshal([]byte(cfg), &c); err != nil {
		t.Fatalf("config.yaml: %v", err)
	}
	if c.Shutdown.GracePeriod == "" {
		return 30 * time.Second
	}
	d, err := time.ParseDuration(c.Shutdown.GracePeriod)
	if err != nil {
		t.Fatalf("config.yaml: shutdown.grace_period: %v", err)
	}
	return d
}

func TestDeployment(t *testing.T) {
	m := render(t, baseDir)
	d := one(t, "Deployment", m.Deployments)
	cm := one(t, "ConfigMap", m.ConfigMaps)
	sa := one(t, "ServiceAccount", m.ServiceAccounts)
	spec := d.Spec.Template.Spec
	podLabels := d.Spec.Template.Labels

	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas = %v, want 2", d.Spec.Replicas)
	}
	for _, l := range append(requiredLabels, "app.kubernetes.io/version") {
		if d.Labels[l] == "" {
			t.Errorf("Deployment: missing label %s", l)
		}
		if podLabels[l] == "" {
			t.Errorf("pod template: missing label %s", l)
		}
	}
	if podLabels["app.kubernetes.io/version"] != d.Labels["app.kubernetes.io/version"] {
		t.Errorf("version label differs between Deployment and pods")
	}
	sel := d.Spec.Selector.MatchLabels
	if !selects(sel, podLabels) {
		t.Errorf("selector %v does not select the pod template labels %v", sel, podLabels)
	}
	for _, l := range []string{"app.kubernetes.io/version", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"} {
		if _, ok := sel[l]; ok {
			t.Errorf("selector contains %s: selectors are immutable, a label that changes must not be in them", l)
		}
	}

	// Shutdown: Kubernetes must wait longer than the daemon's own grace period.
	grace := gracePeriod(t, cm.Data["config.yaml"])
	if spec.TerminationGracePeriodSeconds == nil {
		t.Errorf("terminationGracePeriodSeconds not set")
	} else if tg := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second; tg <= 30*time.Second || tg < grace+10*time.Second {
		t.Errorf("terminationGracePeriodSeconds = %v, want > 30s and >= shutdown.grace_period (%v) + 10s", tg, grace)
	}

	// Service account: no API token anywhere.
	if spec.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName = %q, want %q", spec.ServiceAccountName, sa.Name)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("pod automountServiceAccountToken must be false")
	}
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Errorf("ServiceAccount automountServiceAccountToken must be false")
	}

	// Pod securityContext.
	psc := spec.SecurityContext
	if psc == nil {
		t.Fatalf("pod securityContext not set")
	}
	if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("pod runAsNonRoot must be true")
	}
	if psc.RunAsUser == nil || *psc.RunAsUser != nonRootUID {
		t.Errorf("pod runAsUser = %v, want %d", psc.RunAsUser, nonRootUID)
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod seccompProfile must be RuntimeDefault")
	}

	// Spread the replicas.
	spread := false
	for _, c := range spec.TopologySpreadConstraints {
		if c.TopologyKey == "kubernetes.io/hostname" && c.LabelSelector != nil && selects(c.LabelSelector.MatchLabels, podLabels) {
			spread = true
		}
	}
	if a := spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		for _, w := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			if w.PodAffinityTerm.TopologyKey == "kubernetes.io/hostname" && w.PodAffinityTerm.LabelSelector != nil &&
				selects(w.PodAffinityTerm.LabelSelector.MatchLabels, podLabels) {
				spread = true
			}
		}
	}
	if !spread {
		t.Errorf("no topology spread or pod anti-affinity over kubernetes.io/hostname that selects the pods")
	}

	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]

	// Port.
	var port *corev1.ContainerPort
	for i := range c.Ports {
		if c.Ports[i].Name == metricsPort {
			port = &c.Ports[i]
		}
	}
	if port == nil || port.ContainerPort != metricsPortNum || port.Protocol != corev1.ProtocolTCP {
		t.Errorf("want container port %s %d/TCP, got %+v", metricsPort, metricsPortNum, c.Ports)
	}

	// Command line: config path and listen address agree with the mount and the port.
	wantArgs := [][]string{{"run"}, {"--config", configMount + "/config.yaml"}, {"--http-listen", ":9481"}}
	for _, w := range wantArgs {
		if !containsSeq(c.Args, w) {
			t.Errorf("args %q do not contain %q", c.Args, w)
		}
	}
	if len(c.Args) == 0 || c.Args[0] != "run" {
		t.Errorf("args %q: the first must be the run subcommand", c.Args)
	}

	// Probes.
	checkProbe(t, "liveness", c.LivenessProbe, "/healthz", true)
	checkProbe(t, "readiness", c.ReadinessProbe, "/readyz", true)
	checkProbe(t, "startup", c.StartupProbe, "/healthz", false)

	// Resources.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("no %s request", r)
		}
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.IsZero() {
		t.Errorf("no memory limit")
	}

	// Container securityContext.
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("container securityContext not set")
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("container runAsNonRoot must be true")
	}
	if sc.RunAsUser != nil && *sc.RunAsUser != nonRootUID {
		t.Errorf("container runAsUser = %d, want %d", *sc.RunAsUser, nonRootUID)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("readOnlyRootFilesystem must be true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation must be false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("privileged must not be true")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("capabilities must drop ALL and add none, got %+v", sc.Capabilities)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container seccompProfile must be RuntimeDefault")
	}

	// Database URL from the user's Secret; no credentials committed.
	var dbURL *corev1.EnvVar
	for i, e := range c.Env {
		if e.Name == "DATABASE_URL" {
			dbURL = &c.Env[i]
		}
		if strings.Contains(e.Value, "://") {
			t.Errorf("env %s has a literal URL: connection strings belong in the Secret", e.Name)
		}
	}
	if dbURL == nil || dbURL.ValueFrom == nil || dbURL.ValueFrom.SecretKeyRef == nil {
		t.Fatalf("DATABASE_URL must come from a secretKeyRef")
	}
	ref := dbURL.ValueFrom.SecretKeyRef
	if ref.Name != secretName || ref.Key != secretKey {
		t.Errorf("DATABASE_URL from secret %s key %s, want %s key %s", ref.Name, ref.Key, secretName, secretKey)
	}
	if ref.Optional != nil && *ref.Optional {
		t.Errorf("DATABASE_URL secret ref must not be optional")
	}
	if len(c.EnvFrom) != 0 {
		t.Errorf("envFrom is not expected: %+v", c.EnvFrom)
	}

	// Config: the generated ConfigMap (hash-suffixed name, so a change rolls the pods) mounted
	// read-only at /etc/refresherd.
	if !strings.HasPrefix(cm.Name, "refresherd-config-") {
		t.Errorf("ConfigMap name %q has no kustomize hash suffix", cm.Name)
	}
	if _, ok := cm.Data["config.yaml"]; !ok || len(cm.Data) != 1 {
		t.Errorf("ConfigMap data keys %v, want exactly config.yaml", keys(cm.Data))
	}
	if cm.Data["config.yaml"] != string(readRepoFile(t, "deploy/k8s/config.yaml")) {
		t.Errorf("ConfigMap config.yaml differs from deploy/k8s/config.yaml")
	}
	volName := ""
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == cm.Name {
			volName = v.Name
		}
	}
	if volName == "" {
		t.Fatalf("no volume references ConfigMap %s", cm.Name)
	}
	mounted := false
	for _, vm := range c.VolumeMounts {
		if vm.Name == volName && vm.MountPath == configMount && vm.ReadOnly {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("ConfigMap volume %s is not mounted read-only at %s", volName, configMount)
	}
}

func containsSeq(s, seq []string) bool {
	for i := 0; i+len(seq) <= len(s); i++ {
		if slices.Equal(s[i:i+len(seq)], seq) {
			return true
		}
	}
	return false
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func checkProbe(t *testing.T, name string, p *corev1.Probe, path string, required bool) {
	t.Helper()
	if p == nil {
		if required {
			t.Errorf("%s probe not set", name)
		}
		return
	}
	g := p.HTTPGet
	if g == nil {
		t.Errorf("%s probe is not an httpGet", name)
		return
	}
	if g.Path != path || g.Port != intstr.FromString(metricsPort) {
		t.Errorf("%s probe: GET %s on port %s, want %s on %s", name, g.Path, g.Port.String(), path, metricsPort)
	}
}

func TestPodDisruptionBudget(t *testing.T) {
	m := render(t, baseDir)
	pdb := one(t, "PodDisruptionBudget", m.PDBs)
	d := one(t, "Deployment", m.Deployments)
	if pdb.Spec.MinAvailable == nil || *pdb.Spec.MinAvailable != intstr.FromInt32(1) {
		t.Errorf("minAvailable = %v, want 1", pdb.Spec.MinAvailable)
	}
	if pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("PDB selector does not select the pods")
	}
}

func TestNetworkPolicy(t *testing.T) {
	m := render(t, baseDir)
	np := one(t, "NetworkPolicy", m.NetworkPolicies)
	d := one(t, "Deployment", m.Deployments)
	if !selects(np.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("podSelector does not select the pods")
	}
	var types []string
	for _, pt := range np.Spec.PolicyTypes {
		types = append(types, string(pt))
	}
	slices.Sort(types)
	if !slices.Equal(types, []string{"Egress", "Ingress"}) {
		t.Errorf("policyTypes = %v, want Ingress and Egress", types)
	}
	if len(np.Spec.Ingress) == 0 {
		t.Errorf("no ingress rule: Prometheus could not scrape")
	}
	for _, r := range np.Spec.Ingress {
		if len(r.From) == 0 {
			t.Errorf("ingress rule without from: open to every source")
		}
		if len(r.Ports) != 1 || r.Ports[0].Port == nil || *r.Ports[0].Port != intstr.FromString(metricsPort) {
			t.Errorf("ingress must allow only port %s, got %+v", metricsPort, r.Ports)
		}
	}
	var egress []string
	for _, r := range np.Spec.Egress {
		if len(r.Ports) == 0 {
			t.Errorf("egress rule without ports: open to every port")
		}
		for _, p := range r.Ports {
			proto := "TCP"
			if p.Protocol != nil {
				proto = string(*p.Protocol)
			}
			egress = append(egress, p.Port.String()+"/"+proto)
		}
	}
	slices.Sort(egress)
	if !slices.Equal(egress, []string{"53/TCP", "53/UDP", "5432/TCP"}) {
		t.Errorf("egress ports %v, want PostgreSQL 5432/TCP and DNS 53/UDP+TCP only", egress)
	}
}

func TestPodMonitor(t *testing.T) {
	m := render(t, baseDir)
	pm := one(t, "PodMonitor", m.PodMonitors)
	d := one(t, "Deployment", m.Deployments)
	podLabels := d.Spec.Template.Labels
	if !selects(pm.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("PodMonitor selector does not select the pods")
	}
	// The rules look for job="refresherd".
	if pm.Spec.JobLabel == "" || podLabels[pm.Spec.JobLabel] != "refresherd" {
		t.Errorf("jobLabel %q: the pod label must exist and be \"refresherd\" (the rules use job=\"refresherd\")", pm.Spec.JobLabel)
	}
	ep := one(t, "podMetricsEndpoint", pm.Spec.PodMetricsEndpoints)
	if ep.Port == nil || *ep.Port != metricsPort {
		t.Errorf("podMetricsEndpoint port = %v, want %s", ep.Port, metricsPort)
	}
	if ep.Path != "" && ep.Path != "/metrics" {
		t.Errorf("podMetricsEndpoint path = %s, want /metrics", ep.Path)
	}
}

// TestConfigCopy: kustomize can only read files under deploy/k8s, so the ConfigMap is built
// from a copy of the repository's config.yaml that must stay identical.
func TestConfigCopy(t *testing.T) {
	root := readRepoFile(t, "config.yaml")
	cp := readRepoFile(t, "deploy/k8s/config.yaml")
	if !bytes.Equal(root, cp) {
		t.Errorf("deploy/k8s/config.yaml differs from config.yaml: run `cp config.yaml deploy/k8s/config.yaml`")
	}
}
