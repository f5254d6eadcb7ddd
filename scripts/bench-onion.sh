#!/usr/bin/env bash
# Onion circuits (seed 004), measured on the issue's topology: network
# namespaces for three directory authorities, seven nodes (three exits), a
# client and a web server on one bridge, each in its own /16.
#
# Prints, for burrow (release build):
#   cold start   authorities and nodes started at once -> first page fetched
#   build        3-hop circuit build, p50 / p90 over N fresh clients
#   ttfb         1 KiB on a built circuit (request to first byte), p50 / p90
#   bulk         one circuit, SIZE MiB through `burrow proxy --hops 3` + curl, MB/s,
#                beside the same download without burrow (curl from the client's
#                namespace to the server directly: the plaintext anchor)
#   cpu          CPU-seconds per MiB over every burrow process during the bulk run
#   rss          RSS of each node, idle, after the bulk run
#
# Tor as the anchor of the issue (a private network, TestingTorNetwork 1) is
# not part of this script yet: see docs/benchmarks.md.
#
# Usage: scripts/bench-onion.sh [SIZE_MIB=256] [SAMPLES=20]   (root; builds the release binary)
set -euo pipefail

SIZE=${1:-256}
SAMPLES=${2:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
need() { command -v "$1" >/dev/null 2>&1 || { apt-get install -y -q "$2" >/dev/null 2>&1 || true; }; }
need curl curl
need bc bc
[ -n "${BURROW_BIN:-}" ] || (cd "$ROOT" && cargo build --release -q -p burrow-cli)
BIN="${BURROW_BIN:-$ROOT/target/release/burrow}"
WORK=$(mktemp -d /dev/shm/burrow-bench-onion.XXXXXX)
PIDS=()
MACHINES="a1 a2 a3 n1 n2 n3 n4 n5 n6 n7 client web"
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for m in $MACHINES hub; do ip netns del "bo$m" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
ip netns add bohub
ip -n bohub link add br0 type bridge
ip -n bohub link set br0 up
addr_of() {
    case $1 in
        a*) echo "10.${1#a}.0.1" ;;
        n*) echo "10.1${1#n}.0.1" ;;
        client) echo "10.50.0.1" ;;
        web) echo "10.60.0.1" ;;
    esac
}
for m in $MACHINES; do
    ip netns add "bo$m"
    ip -n "bo$m" link set lo up
    ip link add "bo$m" netns "bo$m" type veth peer name "v$m" netns bohub
    ip -n "bo$m" link set "bo$m" name eth0
    ip -n "bo$m" addr add "$(addr_of "$m")/8" dev eth0
    ip -n "bo$m" link set eth0 up
    ip -n bohub link set "v$m" master br0 up
    mkdir -p "$WORK/$m"
done
on() { local m=$1; shift; ip netns exec "bo$m" env -u BURROW_CONFIG -u BURROW_DIRECTORIES HOME="$WORK/$m" "$BIN" "$@"; }
start() { local m=$1 log=$2; shift 2; ip netns exec "bo$m" env -u BURROW_CONFIG -u BURROW_DIRECTORIES HOME="$WORK/$m" "$BIN" "$@" 2> "$log" & PIDS+=($!); }
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((NR-1)*p/100)+1; printf "%.2f", a[i]}'; }

mkdir -p "$WORK/site"
head -c 1024 /dev/urandom > "$WORK/site/1k.bin"
head -c $((SIZE << 20)) /dev/urandom > "$WORK/site/big.bin"
ip netns exec boweb python3 -c 'import functools, http.server, socketserver, sys
socketserver.ThreadingTCPServer.allow_reuse_address = True
http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
socketserver.ThreadingTCPServer((sys.argv[1], 8000), h).serve_forever()' 10.60.0.1 "$WORK/site" > web.log 2>&1 & PIDS+=($!)

declare -A FP
for a in a1 a2 a3; do FP[$a]=$(on "$a" id 2>/dev/null); done
DIRS=""
for a in a1 a2 a3; do DIRS="$DIRS${DIRS:+,}${FP[$a]}@$(addr_of "$a"):9030"; done
T0=$(date +%s.%N)
for a in a1 a2 a3; do
    peers=()
    for b in a1 a2 a3; do [ "$a" = "$b" ] || peers+=(--peer "${FP[$b]}@$(addr_of "$b"):9030"); done
    start "$a" "$a.log" directory --listen "$(addr_of "$a"):9030" "${peers[@]}"
done
NODE_PIDS=()
for i in 1 2 3 4 5 6 7; do
    extra=()
    [ "$i" -ge 5 ] && extra=(--exit --allow 10.60.0.0/16)
    boot=()
    [ "$i" -gt 1 ] && boot=(--bootstrap "$(addr_of n1):9010")
    start "n$i" "n$i.log" node --listen "$(addr_of "n$i"):9010" --name "n$i" --directory "$DIRS" "${boot[@]}" "${extra[@]}"
    NODE_PIDS+=($!)
done
until on client fetch http://10.60.0.1:8000/1k.bin --hops 3 --directory "$DIRS" -o "$WORK/client/1k.bin" 2>/dev/null; do sleep 0.02; done
T1=$(date +%s.%N)
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "cold start to first page: $(echo "$T1 - $T0" | bc) s"

: > builds; : > ttfb
for _ in $(seq 1 "$SAMPLES"); do
    on client fetch http://10.60.0.1:8000/1k.bin --hops 3 --directory "$DIRS" -o "$WORK/client/1k.bin" --json 2> r.json || continue
    python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(r["circuit_build_ms"] or "", file=open("builds","a")); print(r["first_byte_ms"], file=open("ttfb","a"))' r.json
done
echo "3-hop circuit build: p50 $(pct 50 < builds) ms, p90 $(pct 90 < builds) ms ($(wc -l < builds) fresh clients)"
: > plain_ttfb
for _ in $(seq 1 "$SAMPLES"); do
    ip netns exec boclient curl -sS -o /dev/null -w '%{time_starttransfer}\n' http://10.60.0.1:8000/1k.bin | awk '{printf "%.3f\n", $1 * 1000}' >> plain_ttfb
done
echo "1 KiB time to first byte on a built circuit: p50 $(pct 50 < ttfb) ms, p90 $(pct 90 < ttfb) ms (the same request without a circuit, curl to the server: p50 $(pct 50 < plain_ttfb) ms, connect included)"

start client proxy.log proxy --hops 3 --directory "$DIRS" --listen 127.0.0.1:1080
PROXY=$!
until grep -q "circuit ready" proxy.log; do sleep 0.05; done
cpu_of() { local t=0; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
ALL=("${PIDS[@]:1}")
C0=$(cpu_of "${ALL[@]}")
S0=$(date +%s.%N)
ip netns exec boclient curl -sS -x socks5h://127.0.0.1:1080 -o /dev/null http://10.60.0.1:8000/big.bin
S1=$(date +%s.%N)
C1=$(cpu_of "${ALL[@]}")
HZ=$(getconf CLK_TCK)
MBS=$(echo "scale=1; $SIZE * 1048576 / ($S1 - $S0) / 1000000" | bc)
P0=$(date +%s.%N)
ip netns exec boclient curl -sS -o /dev/null http://10.60.0.1:8000/big.bin
P1=$(date +%s.%N)
PLAIN=$(echo "scale=1; $SIZE * 1048576 / ($P1 - $P0) / 1000000" | bc)
echo "one circuit, $SIZE MiB: $MBS MB/s (plain curl, same server, no circuit: $PLAIN MB/s; ratio $(echo "scale=2; $MBS / $PLAIN" | bc))"
echo "CPU-seconds per MiB over every burrow process: $(echo "scale=4; ($C1 - $C0) / $HZ / $SIZE" | bc)"
printf "RSS per node after the run (KiB):"
for p in "${NODE_PIDS[@]}"; do printf " %s" "$(awk '/VmRSS/ {print $2}' "/proc/$p/status")"; done
echo
kill "$PROXY" 2>/dev/null || true
