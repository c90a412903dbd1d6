#!/usr/bin/env bash
# Make sure PgBouncer is installed, which the tests need to run refresherd
# behind a transaction pooler (internal/pgbouncer starts a throwaway one).
# Quiet and quick when it is present; installs the Debian package when root;
# otherwise says what to install. Honours PGBOUNCER (the binary's path) like
# internal/pgbouncer does.
set -euo pipefail

have_pgbouncer() {
	if [[ -n "${PGBOUNCER:-}" ]]; then
		[[ -x "$PGBOUNCER" ]]
		return
	fi
	command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]]
}

if have_pgbouncer; then
	exit 0
fi
if [[ -n "${PGBOUNCER:-}" ]]; then
	echo "ensure-pgbouncer: PGBOUNCER=$PGBOUNCER is not an executable" >&2
	exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
	echo "ensure-pgbouncer: pgbouncer not found; install it," >&2
	echo "  e.g. sudo apt-get install pgbouncer, or set PGBOUNCER to its path" >&2
	exit 1
fi
echo "ensure-pgbouncer: installing PgBouncer with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
install() {
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
}
# The lock internal/pgcluster.AptInstall holds: dpkg does not wait for its
# own lock, so a test binary installing at the same time would fail.
if command -v flock >/dev/null 2>&1; then
	exec 9>/tmp/refresherd-pg-install.lock
	flock 9
	have_pgbouncer || install
	flock -u 9
else
	install
fi
if ! have_pgbouncer; then
	echo "ensure-pgbouncer: apt-get installed pgbouncer but the binary is still missing" >&2
	exit 1
fi
