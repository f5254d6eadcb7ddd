#!/usr/bin/env bash
# Benchmark of the mesh (issue 12, seed 002), in one run, in network
# namespaces this script creates (bmA, bmB joined by a veth, 10.77.0.0/24;
# bmN for the many-node figures, addresses on its loopback):
#   one hop     iperf3 (one TCP stream, 8 s) A -> B: raw veth; through a
#               burrow tunnel (`burrow proxy B --mesh --forward`, the node's
#               TUNNEL packets); through wireguard-go; through yggdrasil.
#               Mb/s and the CPU-seconds per GiB of each system's processes.
#   dead peer   A pings B once a second; B is stopped (SIGSTOP): seconds
#               until A lists B offline (--keepalive 10).
#   idle link   packets and bytes on the veth in IDLE_SECS (default 60) with
#               only the two nodes' link on it.
#   many nodes  NODES (default 50) nodes, each bootstrapping from node 1:
#               seconds until every node knows every other (cold start), then
#               a new node until all know it (join), and the nodes' RSS.
#
# Usage: [NODES=50] [IDLE_SECS=60] [SETTLE_SECS=130] [MANY_ONLY=1] scripts/bench-mesh.sh
# Needs root (ip netns). Installs what it needs if missing: iperf3,
# wireguard-go, wireguard-tools, yggdrasil (Debian packages).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODES=${NODES:-50}
# MANY_ONLY=1: only the many-node figures.
IDLE_SECS=${IDLE_SECS:-60}
# shellcheck source=scripts/bench-install.sh
. "$ROOT/scripts/bench-install.sh"
need_commands iperf3:iperf3 wireguard-go:wireguard-go wg:wireguard-tools yggdrasil:yggdrasil python3:python3
[ -n "${BURROW_BIN:-}" ] || (cd "$ROOT" && cargo build --release -q -p burrow-cli)
BIN="${BURROW_BIN:-$ROOT/target/release/burrow}"
WORK=$(mktemp -d /dev/shm/burrow-mesh.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in bmA bmB bmN; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
for n in bmA bmB bmN; do ip netns del "$n" 2>/dev/null || true; ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add bmva netns bmA type veth peer name bmvb netns bmB
ip -n bmA addr add 10.77.0.1/24 dev bmva; ip -n bmA link set bmva up
ip -n bmB addr add 10.77.0.2/24 dev bmvb; ip -n bmB link set bmvb up

# (Background processes are started with `ip netns exec` itself, never
# through these functions: `f &` gives the subshell's PID, not the program's.)
inA() { ip netns exec bmA "$@"; }
inB() { ip netns exec bmB "$@"; }
b() { local home=$1; shift; env -u BURROW_RELAY -u BURROW_CONFIG HOME="$home" XDG_DATA_HOME="$home/data" "$BIN" "$@"; }
cpu_of() { # PIDS...: user+system seconds so far
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    python3 -c "print($t / $(getconf CLK_TCK))"
}
wait_for() { # file pattern
    for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}
iperf_mbps() { # ns host port: Mb/s received, one stream, 8 s
    ip netns exec "$1" iperf3 -c "$2" -p "$3" -t 8 -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))'
}
one_hop() { # label ns host port pids...: prints the line
    local label=$1 ns=$2 host=$3 port=$4; shift 4
    local c0 c1 mbps
    c0=$(cpu_of "$@")
    mbps=$(iperf_mbps "$ns" "$host" "$port")
    c1=$(cpu_of "$@")
    python3 -c "m=$mbps; c=$c1-$c0; gib=m*1e6*8/8/2**30; print(f'{\"$label\":<22} {m:>6} Mb/s   CPU-s per GiB of its processes: {c/gib if gib else 0:.2f}')"
}

echo "== mesh bench, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
if [ -z "${MANY_ONLY:-}" ]; then
inB iperf3 -s -D -B 10.77.0.2 -p 5202 --pidfile "$WORK/iperf-raw.pid"
inB iperf3 -s -D -B 127.0.0.1 -p 5201 --pidfile "$WORK/iperf-lo.pid"
sleep 0.3
PIDS+=("$(cat "$WORK/iperf-raw.pid")" "$(cat "$WORK/iperf-lo.pid")")
echo "-- one hop (iperf3, one TCP stream, 8 s)"
RAW=$(iperf_mbps bmA 10.77.0.2 5202)
echo "raw veth               $RAW Mb/s"

# --- burrow --------------------------------------------------------------------------
mkdir -p ha hb
ip netns exec bmB env HOME="$WORK/hb" XDG_DATA_HOME="$WORK/hb/data" "$BIN" node --listen 10.77.0.2:9010 --name b \
    --allow 127.0.0.1/32:5201 2> nodeb.err & PIDS+=($!); NB=$!
wait_for nodeb.err "listening on"
ip netns exec bmA env HOME="$WORK/ha" XDG_DATA_HOME="$WORK/ha/data" "$BIN" node --listen 10.77.0.1:9010 --name a \
    --bootstrap 10.77.0.2:9010 2> nodea.err & PIDS+=($!); NA=$!
wait_for nodea.err "link up"
IDA=$(b "$WORK/ha" id 2>/dev/null); IDB=$(b "$WORK/hb" id 2>/dev/null)
b "$WORK/ha" pair --mesh "$IDB" 2> pair.err & PP=$!
wait_for pair.err "^code:"
b "$WORK/hb" pair --mesh "$IDA" "$(sed -n 's/^code: //p' pair.err)" --name a > /dev/null
wait "$PP"
ip netns exec bmA env HOME="$WORK/ha" XDG_DATA_HOME="$WORK/ha/data" "$BIN" proxy b --mesh --listen 127.0.0.1:11080 \
    --forward 127.0.0.1:15201=127.0.0.1:5201 2> proxy.err & PIDS+=($!); NP=$!
wait_for proxy.err "proxy listening on"
BURROW=$(one_hop "burrow (mesh tunnel)" bmA 127.0.0.1 15201 "$NA" "$NB" "$NP")
echo "$BURROW"
kill "$NP"

# --- wireguard-go --------------------------------------------------------------------
for s in A B; do wg genkey > "wg$s.key"; wg pubkey < "wg$s.key" > "wg$s.pub"; done
ip netns exec bmA env WG_PROCESS_FOREGROUND=1 wireguard-go bmwg1 2> wga.err & PIDS+=($!); WA=$!
ip netns exec bmB env WG_PROCESS_FOREGROUND=1 wireguard-go bmwg2 2> wgb.err & PIDS+=($!); WB=$!
sleep 0.5
inA wg set bmwg1 private-key wgA.key listen-port 51820 peer "$(cat wgB.pub)" allowed-ips 10.78.0.2/32 endpoint 10.77.0.2:51820
inB wg set bmwg2 private-key wgB.key listen-port 51820 peer "$(cat wgA.pub)" allowed-ips 10.78.0.1/32 endpoint 10.77.0.1:51820
ip -n bmA addr add 10.78.0.1/24 dev bmwg1; ip -n bmA link set bmwg1 mtu 1420 up
ip -n bmB addr add 10.78.0.2/24 dev bmwg2; ip -n bmB link set bmwg2 mtu 1420 up
inB iperf3 -s -D -B 10.78.0.2 -p 5203 --pidfile "$WORK/iperf-wg.pid"; sleep 0.3; PIDS+=("$(cat "$WORK/iperf-wg.pid")")
WG=$(one_hop "wireguard-go" bmA 10.78.0.2 5203 "$WA" "$WB")
echo "$WG"
kill "$WA" "$WB"

# --- yggdrasil -----------------------------------------------------------------------
for s in A B; do yggdrasil -genconf -json > "ygg$s.json"; done
python3 - <<'PY'
import json
for side, listen, peers in (("A", [], ["tcp://10.77.0.2:7000"]), ("B", ["tcp://10.77.0.2:7000"], [])):
    p = f"ygg{side}.json"; c = json.load(open(p))
    c.update(Listen=listen, Peers=peers, AdminListen="none", IfName=f"bmygg{side}", MulticastInterfaces=[])
    json.dump(c, open(p, "w"))
PY
ip netns exec bmA yggdrasil -useconffile yggA.json > ygga.log 2>&1 & PIDS+=($!); YA=$!
ip netns exec bmB yggdrasil -useconffile yggB.json > yggb.log 2>&1 & PIDS+=($!); YB=$!
YADDR=$(yggdrasil -useconffile yggB.json -address)
for _ in $(seq 1 100); do inA ping -6 -c1 -W1 "$YADDR" > /dev/null 2>&1 && break; sleep 0.2; done
inB iperf3 -s -D -B "$YADDR" -p 5204 --pidfile "$WORK/iperf-ygg.pid"; sleep 0.3; PIDS+=("$(cat "$WORK/iperf-ygg.pid")")
YGG=$(one_hop "yggdrasil" bmA "$YADDR" 5204 "$YA" "$YB")
echo "$YGG"
kill "$YA" "$YB"
mb() { echo "$1" | awk '{for (i=1;i<=NF;i++) if ($(i+1)=="Mb/s") {print $i; exit}}'; }
python3 -c "b=$(mb "$BURROW"); w=$(mb "$WG"); y=$(mb "$YGG"); print(f'burrow / wireguard-go {b/w:.2f}x, burrow / yggdrasil {b/y:.2f}x, burrow / raw veth {b/$RAW:.2f}x')"

# --- dead peer under pings, then idle link cost ------------------------------------------
echo "-- dead peer (A pings B once a second; B stopped)"
env HOME="$WORK/ha" XDG_DATA_HOME="$WORK/ha/data" "$BIN" node ping -c 600 "$IDB" > /dev/null 2>&1 & PING=$!
sleep 3
kill -STOP "$NB"; T0=$(date +%s.%N)
while b "$WORK/ha" node nodes --json | python3 -c "import json,sys; sys.exit(0 if any(n['id']=='$IDB' and n['online'] for n in json.load(sys.stdin)['nodes']) else 1)"; do sleep 0.1; done
python3 -c "print(f'A lists B offline after {$(date +%s.%N) - $T0:.2f} s (keepalive 10 s)')"
kill "$PING" 2>/dev/null || true
kill -CONT "$NB"
for _ in $(seq 1 300); do
    b "$WORK/ha" node nodes --json | python3 -c "import json,sys; sys.exit(0 if any(n['id']=='$IDB' and n['online'] for n in json.load(sys.stdin)['nodes']) else 1)" && break
    sleep 0.2
done
echo "-- idle link ($IDLE_SECS s, only the A-B mesh link on the veth, after ${SETTLE_SECS:-130} s without changes)"
# A node pulls node lists every 30 s while they change, every 5 min once
# they have been quiet for 2 min: measure the settled link.
sleep "${SETTLE_SECS:-130}"
read -r P0 B0 < <(ip -n bmA -s -j link show bmva | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["stats64"]; print(s["tx"]["packets"]+s["rx"]["packets"], s["tx"]["bytes"]+s["rx"]["bytes"])')
sleep "$IDLE_SECS"
read -r P1 B1 < <(ip -n bmA -s -j link show bmva | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["stats64"]; print(s["tx"]["packets"]+s["rx"]["packets"], s["tx"]["bytes"]+s["rx"]["bytes"])')
python3 -c "print(f'{($P1-$P0)*60/$IDLE_SECS:.0f} packets and {($B1-$B0)*60/$IDLE_SECS:.0f} bytes per minute (both directions, IP headers included)')"
kill "$NA" "$NB"

fi

# --- many nodes ----------------------------------------------------------------------
echo "-- $NODES nodes in one namespace, each bootstrapping from node 1"
NPIDS=()
start_node() { # i [bootstrap]
    local i=$1 h="$WORK/n$1"
    mkdir -p "$h"
    ip -n bmN addr add "10.93.$((i / 250)).$((i % 250 + 1))/32" dev lo 2>/dev/null || true
    ip netns exec bmN env HOME="$h" XDG_DATA_HOME="$h/data" "$BIN" node --listen "10.93.$((i / 250)).$((i % 250 + 1)):9010" \
        --name "n$i" ${2:+--bootstrap "$2"} 2> "$h/err" & PIDS+=($!); NPIDS+=($!)
}
knows_all() { # want home...: every node knows `want` records (asked
    # straight on the control sockets, all in one process: a sweep of 50
    # nodes takes milliseconds, not the seconds 50 CLI runs would)
    python3 - "$@" <<'PY'
import json, socket, sys
want = int(sys.argv[1])
for h in sys.argv[2:]:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(f"{h}/data/burrow/node.sock")
        s.sendall(b'{"op":"status"}\n')
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        if json.loads(data)["known_nodes"] != want:
            sys.exit(1)
    except (OSError, ValueError, KeyError):
        sys.exit(1)
PY
}
HOMES=()
T0=$(date +%s.%N)
start_node 0; HOMES+=("$WORK/n0")
for i in $(seq 1 $((NODES - 1))); do start_node "$i" 10.93.0.1:9010; HOMES+=("$WORK/n$i"); done
until knows_all "$NODES" "${HOMES[@]}"; do sleep 0.05; done
python3 -c "print(f'cold start: all {$NODES} know all after {$(date +%s.%N) - $T0:.2f} s (from the first start)')"
T0=$(date +%s.%N)
start_node "$NODES" 10.93.0.1:9010
until knows_all $((NODES + 1)) "${HOMES[@]}"; do sleep 0.02; done
python3 -c "print(f'join: node {$NODES + 1} known to all {$NODES} after {$(date +%s.%N) - $T0:.2f} s')"
RSS=$(for p in "${NPIDS[@]}"; do awk '/VmRSS/ {print $2}' "/proc/$p/status"; done | sort -n)
python3 -c "r=[int(x) for x in '''$RSS'''.split()]; print(f'RSS per node: median {r[len(r)//2]/1024:.1f} MiB, max {r[-1]/1024:.1f} MiB')"
