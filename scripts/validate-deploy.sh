#!/usr/bin/env bash
# Validates the deployment files: Prometheus rules and their unit tests, the example Prometheus
# configs, the kustomize base and its variants, and the manifest tests in test/k8svalidate.
#
#   scripts/validate-deploy.sh
#
# Installs promtool (Debian package "prometheus") when it is missing and we are root.
set -euo pipefail

cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "validate-deploy: $1 is missing; install the Debian package $2 (or run as root)" >&2
    exit 1
  fi
  log "installing $2 (for $1)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}

command -v promtool >/dev/null 2>&1 || apt_install promtool prometheus
command -v kubectl >/dev/null 2>&1 || apt_install kubectl kubectl
command -v go >/dev/null 2>&1 || { echo "validate-deploy: go is not on PATH" >&2; exit 1; }

log "promtool $(promtool --version 2>&1 | head -n1 | awk '{print $3}')"

log "promtool check rules deploy/prometheus/rules.yml"
promtool check rules deploy/prometheus/rules.yml

log "promtool test rules deploy/prometheus/rules_test.yml"
promtool test rules deploy/prometheus/rules_test.yml

log "promtool check config deploy/prometheus/prometheus.yml"
promtool check config deploy/prometheus/prometheus.yml

log "promtool check config deploy/prometheus/prometheus-kubernetes.yml"
if out=$(promtool check config deploy/prometheus/prometheus-kubernetes.yml 2>&1); then
  printf '%s\n' "$out"
elif grep -q 'field kubernetes_sd_configs not found' <<<"$out"; then
  # Debian builds Prometheus without Kubernetes service discovery.
  echo "SKIP: this promtool is built without kubernetes_sd_configs"
else
  printf '%s\n' "$out" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for dir in deploy/k8s deploy/k8s/servicemonitor deploy/overlays/servicemonitor deploy/grafana; do
  log "kubectl kustomize $dir"
  kubectl kustomize "$dir" >"$tmp/out.yaml"
  printf '    %s objects\n' "$(grep -c '^kind:' "$tmp/out.yaml")"
done

# The PrometheusRule in the base must carry exactly rules.yml (the Go test checks it too; this
# also runs promtool on what the Operator will load).
log "promtool check rules on the rendered PrometheusRule"
kubectl kustomize deploy/k8s >"$tmp/base.yaml"
awk '
  /^---$/ { inrule = 0; next }
  /^kind: PrometheusRule$/ { inrule = 1 }
  inrule && /^spec:$/ { inspec = 1; next }
  inrule && inspec && /^[^ ]/ { inspec = 0 }
  inrule && inspec { sub(/^  /, ""); print }
' "$tmp/base.yaml" >"$tmp/prometheusrule-groups.yml"
promtool check rules "$tmp/prometheusrule-groups.yml"

log "go test (test/k8svalidate)"
(cd test/k8svalidate && go test -count=1 ./...)

log "deployment files OK"
