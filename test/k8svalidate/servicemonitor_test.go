package k8svalidate

import (
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestServiceMonitorVariant: the overlay that swaps the PodMonitor for a Service +
// ServiceMonitor renders, and its pieces select each other.
func TestServiceMonitorVariant(t *testing.T) {
	m := render(t, "deploy/overlays/servicemonitor")
	if n := m.count("PodMonitor"); n != 0 {
		t.Errorf("%d PodMonitors: the component must remove the base's PodMonitor", n)
	}
	for _, k := range []string{"ServiceAccount", "ConfigMap", "Deployment", "PodDisruptionBudget", "NetworkPolicy", "PrometheusRule", "Service", "ServiceMonitor"} {
		if m.count(k) != 1 {
			t.Errorf("%s: %d objects, want 1", k, m.count(k))
		}
	}
	d := one(t, "Deployment", m.Deployments)
	svc := one(t, "Service", m.Services)
	sm := one(t, "ServiceMonitor", m.ServiceMonitors)

	if !selects(svc.Spec.Selector, d.Spec.Template.Labels) {
		t.Errorf("Service selector %v does not select the pods", svc.Spec.Selector)
	}
	p := one(t, "Service port", svc.Spec.Ports)
	if p.Name != metricsPort || p.Port != metricsPortNum || p.TargetPort != intstr.FromString(metricsPort) {
		t.Errorf("Service port %+v, want %s %d -> %s", p, metricsPort, metricsPortNum, metricsPort)
	}
	if !selects(sm.Spec.Selector.MatchLabels, svc.Labels) {
		t.Errorf("ServiceMonitor selector does not select the Service")
	}
	if sm.Spec.JobLabel == "" || svc.Labels[sm.Spec.JobLabel] != "refresherd" {
		t.Errorf("jobLabel %q: the Service label must exist and be \"refresherd\"", sm.Spec.JobLabel)
	}
	ep := one(t, "ServiceMonitor endpoint", sm.Spec.Endpoints)
	if ep.Port != metricsPort || (ep.Path != "" && ep.Path != "/metrics") {
		t.Errorf("ServiceMonitor endpoint %s%s, want %s/metrics", ep.Port, ep.Path, metricsPort)
	}
	for _, l := range requiredLabels {
		if svc.Labels[l] == "" || sm.Labels[l] == "" {
			t.Errorf("Service/ServiceMonitor: missing label %s", l)
		}
	}

	// The component also renders on its own (just the two objects).
	c := render(t, "deploy/k8s/servicemonitor")
	kinds := slices.Clone(c.Kinds)
	slices.Sort(kinds)
	if !slices.Equal(kinds, []string{"Service", "ServiceMonitor"}) {
		t.Errorf("component alone renders %v, want Service and ServiceMonitor", kinds)
	}
}
