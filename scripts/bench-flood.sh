#!/usr/bin/env bash
# A relay at its default limits under 5,000 slowloris and 5,000 idle
# reconnecting connections (issue 14, item 9), from 40 loopback addresses
# (each within its per-address share): prints, every second, how many
# attacking connections are open and how many /health probes were answered;
# then, during the attack, three 16 MiB transfers through the relay and
# their time, and the relay's peak RSS. The anchor is the same transfers
# with no attack, in the same run.
#
# Usage: [SLOW=5000] [IDLE=5000] [ADDRESSES=40] [RELAY_BIN=target/release/burrow] scripts/bench-flood.sh
# RELAY_BIN may be an older build, to show the figures before a change.
# Runs inside a private network namespace. Needs GNU time (installed if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SLOW=${SLOW:-5000}
IDLE=${IDLE:-5000}
ADDRESSES=${ADDRESSES:-40}
if [ -z "${BURROW_BENCH_IN_NS:-}" ]; then
    # shellcheck source=scripts/bench-install.sh
    . "$ROOT/scripts/bench-install.sh"
    need_commands /usr/bin/time:time unshare:util-linux ip:iproute2
    (cd "$ROOT" && cargo build --release -q -p burrow-cli && cargo build --release -q -p burrow-relay --example flood)
    exec unshare --net env BURROW_BENCH_IN_NS=1 bash "$0" "$@"
fi
ip link set lo up
WORK_NAME=burrow-flood
# shellcheck source=scripts/bench-common.sh
. "$ROOT/scripts/bench-common.sh"
RELAY_BIN=$(realpath "${RELAY_BIN:-$BIN}")
FLOOD="$ROOT/target/release/examples/flood"
cd "$WORK"
ulimit -n "$(ulimit -Hn)"
echo "== flood: $SLOW slowloris + $IDLE idle from $ADDRESSES addresses, relay $RELAY_BIN at its defaults, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
head -c $((16 * 1024 * 1024)) /dev/urandom > data.bin
/usr/bin/time -v "$RELAY_BIN" relay --listen 127.0.0.1:7400 2> relay.err & PIDS+=($!)
wait_for relay.err "listening on"
transfer() { # n: one transfer under code n; prints seconds, or why it failed
    local code="$1-absorb-zebra-captain" t0 t1
    rm -rf out && mkdir out
    t0=$(now)
    timeout 60 "$BIN" send --relay 127.0.0.1:7400 --code "$code" data.bin 2> send.err & local sp=$!
    if timeout 60 "$BIN" receive --relay 127.0.0.1:7400 --yes --out out "$code" 2> recv.err && wait $sp && cmp -s data.bin out/data.bin; then
        t1=$(now)
        python3 -c "print(f'{$t1 - $t0:.2f} s')"
    else
        wait $sp 2>/dev/null || true
        echo "failed: $(tail -n 1 recv.err)"
    fi
}
for i in 1 2 3; do echo "no attack, transfer $i: $(transfer "$i")"; done
"$FLOOD" 127.0.0.1:7400 --slow "$SLOW" --idle "$IDLE" --addresses "$ADDRESSES" --seconds 25 > flood.out & PIDS+=($!)
sleep 8
for i in 4 5 6; do echo "under attack, transfer $i: $(transfer "$i")"; done
wait "${PIDS[1]}" || true
cat flood.out
pkill -INT -P "${PIDS[0]}" || true; wait "${PIDS[0]}" 2>/dev/null || true
echo "relay peak RSS: $(rss relay.err)"
