#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl, postgres) are installed,
# which the tests, the demo and the benchmarks need to start a throwaway
# cluster. Quiet and quick when they are present; installs the Debian package
# when root; otherwise says what to install. Honours PG_BINDIR like
# internal/pgcluster does.
set -euo pipefail

have_initdb() {
	if [[ -n "${PG_BINDIR:-}" ]]; then
		[[ -x "$PG_BINDIR/initdb" ]]
		return
	fi
	local f
	for f in /usr/lib/postgresql/*/bin/initdb; do
		[[ -x "$f" ]] && return 0
	done
	command -v initdb >/dev/null 2>&1
}

if have_initdb; then
	exit 0
fi
if [[ -n "${PG_BINDIR:-}" ]]; then
	echo "ensure-postgres: PG_BINDIR=$PG_BINDIR has no initdb" >&2
	exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
	echo "ensure-postgres: PostgreSQL server binaries (initdb) not found; install them," >&2
	echo "  e.g. sudo apt-get install postgresql, or set PG_BINDIR to the directory with initdb" >&2
	exit 1
fi
echo "ensure-postgres: installing PostgreSQL with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
if ! have_initdb; then
	echo "ensure-postgres: apt-get installed postgresql but initdb is still missing" >&2
	exit 1
fi
