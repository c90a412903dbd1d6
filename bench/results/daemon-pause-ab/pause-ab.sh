#!/bin/bash
# pause-ab.sh BINARY CONFIG ROUNDS OUT: what a running notify daemon costs
# writers, apart from its trigger. Needs a database with the demo schema and
# 1M charges (demodata.CreateSchema + demodata.Load), reached through
# PGHOST/PGPORT/PGDATABASE (as user postgres), pgbench on PATH, and CONFIG:
# the shipped config.yaml with debounce and max_delay 1h, target_lag 0s and
# schedule "@every 24h" (as the writer section sets them), so that no
# refresh runs. Each round runs pgbench (ins.sql beside this script: the
# writer section's script at 1M) for 5 s at 32 clients in three states, in an
# order that rotates: none (daemon paused with SIGSTOP, trigger disabled),
# trig (daemon paused, trigger enabled, doorbell disarmed: the WHEN check
# alone) and daemon (running, trigger enabled). Writes ROUND\tSTATE\tTPS.
# Caveat: SIGSTOP pauses the daemon, not its backends; the daemon's start-up
# refresh (20-30 s under these writers) overlaps the first rounds.
set -eu
BIN=$1 CONFIG=$2 R=$3 OUT=$4
DIR=$(cd "$(dirname "$0")" && pwd)
: >"$OUT"
DATABASE_URL="postgres://postgres@/$PGDATABASE?host=$PGHOST&port=$PGPORT" "$BIN" run --config "$CONFIG" >"$OUT.daemon.log" 2>&1 &
PID=$!
trap 'kill -CONT $PID; kill $PID' EXIT
sleep 8
P="psql -U postgres -qAt"
BELL=$($P -c "SELECT 'refresherd.' || substring(encode(tgargs, 'escape') FROM 'doorbell_[0-9a-f]+') FROM pg_trigger WHERE tgname = 'refresherd_notify'")
$P -c "DELETE FROM app_charge WHERE id > 1000000" -c "VACUUM app_charge" >/dev/null
V=(none trig daemon)
for r in $(seq 1 "$R"); do
	for i in 0 1 2; do
		v=${V[$(((i + r) % 3))]}
		case $v in
		none) kill -STOP $PID; $P -c "ALTER TABLE app_charge DISABLE TRIGGER refresherd_notify" ;;
		trig) kill -STOP $PID; $P -c "ALTER TABLE app_charge ENABLE TRIGGER refresherd_notify" -c "SELECT nextval('$BELL')" >/dev/null ;;
		daemon) $P -c "ALTER TABLE app_charge ENABLE TRIGGER refresherd_notify"; kill -CONT $PID; sleep 0.3 ;;
		esac
		tps=$(pgbench -U postgres -n -f "$DIR/ins.sql" -c 32 -j 2 -T 5 2>&1 | awk '/^tps/{print $3}')
		printf '%s\t%s\t%s\n' "$r" "$v" "$tps" >>"$OUT"
	done
done
$P -c "ALTER TABLE app_charge ENABLE TRIGGER refresherd_notify"
