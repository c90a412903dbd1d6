#!/usr/bin/env bash
# The full check: formatting, vet, staticcheck and the race-enabled tests
# against throwaway PostgreSQL clusters (each test package starts its own via
# internal/pgtest; set REFRESHERD_TEST_PGURL to use an existing server) and,
# for internal/pgbouncertest, throwaway PgBouncers in front of them.
# Extra arguments replace ./... as the packages to check.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
pkgs=("$@")
if [[ ${#pkgs[@]} -eq 0 ]]; then
	pkgs=(./...)
fi

step() { printf '\n==> %s\n' "$*"; }

step "ensure PostgreSQL and PgBouncer are installed"
bash scripts/ensure-postgres.sh
bash scripts/ensure-pgbouncer.sh

step "gofmt"
# Untracked files count too: the tree is checked before it is committed.
if git rev-parse --git-dir >/dev/null 2>&1; then
	mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.go')
else
	mapfile -t files < <(find . -name '*.go' -not -path './vendor/*')
fi
if [[ ${#files[@]} -gt 0 ]]; then
	unformatted="$(gofmt -l "${files[@]}")"
	if [[ -n "$unformatted" ]]; then
		echo "gofmt: these files need formatting (run gofmt -w):" >&2
		echo "$unformatted" >&2
		exit 1
	fi
fi

# vet, staticcheck and the deploy validation run beside the tests (which
# mostly wait) into a log shown when both are done: the whole check is
# shorter by their time, and a failure in either still fails it.
static_log="$(mktemp)"
trap 'rm -f "$static_log"' EXIT
(
	set -euo pipefail
	step "go vet ${pkgs[*]}"
	go vet "${pkgs[@]}"

	step "staticcheck ${pkgs[*]}"
	go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 "${pkgs[@]}"

	if [[ $# -eq 0 ]]; then
		# Manifests, Prometheus rules (promtool) and the strict Kubernetes
		# decoding live in their own module; only for a whole-tree run.
		step "deploy validation"
		bash scripts/validate-deploy.sh
	fi
) >"$static_log" 2>&1 &
static_pid=$!

test_pkgs=("${pkgs[@]}")
if [[ $# -eq 0 ]]; then
	# go test starts packages in the order given (-p at a time): the
	# longest first, so that none of them ends alone.
	test_pkgs=(./bench ./refresh ./internal/faults ./internal/djangotest ./internal/e2e ./...)
fi
step "go test -race ${pkgs[*]} (with the benchmark harness's quick smoke run)"
# REFRESHERD_BENCH_SMOKE runs a cut-down `bench -size quick` in ./bench, so
# the harness cannot rot; it asserts completeness, never timings.
# -p 3 packages and -parallel 4 tests at a time on two cores: they mostly
# wait (on PostgreSQL, timeouts, backoffs, a frozen backend), not on the
# CPU. Fresh clone, quiet machine: 257 s with -p 2; 213 and 256 s with -p 3.
test_rc=0
REFRESHERD_BENCH_SMOKE=1 go test -race -count=1 -p 3 -parallel 4 -timeout 30m "${test_pkgs[@]}" || test_rc=$?

static_rc=0
wait "$static_pid" || static_rc=$?
cat "$static_log"
if [[ $static_rc -ne 0 ]]; then
	echo "static checks failed (exit $static_rc): see above" >&2
fi
if [[ $test_rc -ne 0 ]]; then
	echo "go test failed (exit $test_rc)" >&2
fi
if [[ $static_rc -ne 0 || $test_rc -ne 0 ]]; then
	exit 1
fi

step "all checks passed"
