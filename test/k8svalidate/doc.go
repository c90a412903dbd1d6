// Package k8svalidate checks refresherd's deployment files: the kustomize base and its
// ServiceMonitor variant render and decode strictly into the real Kubernetes and Prometheus
// Operator types, they meet the project's requirements (probes, securityContext, replicas,
// secret reference, ...), the PrometheusRule carries exactly deploy/prometheus/rules.yml, the
// ConfigMap carries the repository's config.yaml, and the Grafana dashboard and the alerts only
// use metrics that refresherd exports.
//
// It is a separate module so that the main module never depends on Kubernetes packages.
// It needs kubectl (for kustomize) and promtool on PATH; scripts/validate-deploy.sh installs
// promtool and runs it:
//
//	cd test/k8svalidate && go test ./...
//
// UPDATE_PROMETHEUSRULE=1 go test ./... regenerates deploy/k8s/prometheusrule.yaml from
// deploy/prometheus/rules.yml.
package k8svalidate
