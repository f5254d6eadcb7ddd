#!/usr/bin/env bash
# Benchmark of the mesh (issue 12, seed 002), in one run, in network
# namespaces this script creates: bmA and bmB joined by two veths, one for
# burrow (10.77.0.0/24) and one for the anchors (10.77.1.0/24), so that
# burrow's link idles on its own veth while the anchors run on theirs; bmN
# for the many-node figures (addresses on its loopback).
#   one hop     iperf3 (one TCP stream, 8 s) A -> B: raw veth; through a
#               burrow tunnel (`burrow proxy B --mesh --forward`, the node's
#               TUNNEL packets); through wireguard-go, yggdrasil, tinc and
#               nebula. Mb/s, CPU-seconds per GiB of each system's
#               processes, and the daemons' peak RSS.
#   idle link   packets and bytes a minute on the veth with only that
#               system's two daemons on it (IDLE_SECS, default 60):
#               burrow's after SETTLE_SECS (default 130) without changes,
#               the anchors' 5 s after their iperf3 run. wireguard-go runs
#               with persistent-keepalive 10 (without it an idle tunnel
#               sends nothing and has no liveness at all).
#   dead peer   A pings B once a second and B is stopped (SIGSTOP):
#               seconds until A lists B offline; then the same with the
#               link idle (--keepalive 10).
#   many nodes  NODES (default 50) nodes, each bootstrapping from node 1:
#               seconds until every node knows every other (cold start), then
#               a new node until all know it (join), all restarting at once
#               (restart storm), and the nodes' RSS and private memory.
#   handshakes  full link handshakes per second on one core (XX and IK).
#   tinc 50     the same cold start and join with tinc 1.0 (host-up scripts).
#
# Usage: [NODES=50] [IDLE_SECS=60] [SETTLE_SECS=130] [MANY_ONLY=1] scripts/bench-mesh.sh
# Needs root (ip netns). Installs what it needs if missing: iperf3,
# wireguard-go, wireguard-tools, yggdrasil, tinc, nebula (Debian packages).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODES=${NODES:-50}
# MANY_ONLY=1: only the many-node figures.
IDLE_SECS=${IDLE_SECS:-60}
SETTLE_SECS=${SETTLE_SECS:-130}
# shellcheck source=scripts/bench-install.sh
. "$ROOT/scripts/bench-install.sh"
need_commands iperf3:iperf3 wireguard-go:wireguard-go wg:wireguard-tools yggdrasil:yggdrasil tincd:tinc \
    nebula:nebula nebula-cert:nebula ping:iputils-ping python3:python3
[ -n "${BURROW_BIN:-}" ] || (cd "$ROOT" && cargo build --release -q -p burrow-cli)
(cd "$ROOT" && cargo build --release -q -p burrow-proto --example handshakes)
HS_BIN="$ROOT/target/release/examples/handshakes"
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
ip link add bmwa netns bmA type veth peer name bmwb netns bmB
ip -n bmA addr add 10.77.1.1/24 dev bmwa; ip -n bmA link set bmwa up
ip -n bmB addr add 10.77.1.2/24 dev bmwb; ip -n bmB link set bmwb up

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
peak_rss() { # PIDS...: the largest peak RSS (VmHWM) among them, MiB
    local m=0 p r
    for p in "$@"; do r=$(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0); [ "$r" -gt "$m" ] && m=$r; done
    python3 -c "print(f'{$m / 1024:.1f}')"
}
wait_for() { # file pattern
    for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}
wait_ping() { # ns address: until it answers (30 s at most)
    for _ in $(seq 1 150); do ip netns exec "$1" ping -c1 -W1 "$2" > /dev/null 2>&1 && return 0; sleep 0.2; done
    echo "no answer from $2" >&2; exit 1
}
iperf_mbps() { # ns host port: Mb/s received, one stream, 8 s
    ip netns exec "$1" iperf3 -c "$2" -p "$3" -t 8 -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))'
}
declare -A MBPS CPU RSSM IDLE
one_hop() { # key label ns host port pids...: measures, prints the line
    local key=$1 label=$2 ns=$3 host=$4 port=$5; shift 5
    local c0 c1 mbps
    c0=$(cpu_of "$@")
    mbps=$(iperf_mbps "$ns" "$host" "$port")
    c1=$(cpu_of "$@")
    MBPS[$key]=$mbps
    CPU[$key]=$(python3 -c "m=$mbps; c=$c1-$c0; gib=m*1e6*8/8/2**30; print(f'{c/gib if gib else 0:.2f}')")
    RSSM[$key]=$(peak_rss "$@")
    printf '%-22s %6s Mb/s   CPU-s per GiB of its processes: %s   peak RSS of its daemons: %s MiB\n' \
        "$label" "$mbps" "${CPU[$key]}" "${RSSM[$key]}"
}
veth_count() { # dev in bmA: "packets bytes" so far, both directions
    ip -n bmA -s -j link show "$1" | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["stats64"]; print(s["tx"]["packets"]+s["rx"]["packets"], s["tx"]["bytes"]+s["rx"]["bytes"])'
}
idle_cost() { # key label dev: packets and bytes a minute over IDLE_SECS
    local p0 b0 p1 b1
    read -r p0 b0 < <(veth_count "$3")
    sleep "$IDLE_SECS"
    read -r p1 b1 < <(veth_count "$3")
    IDLE[$1]=$(python3 -c "print(f'{($p1-$p0)*60/$IDLE_SECS:.0f} packets and {($b1-$b0)*60/$IDLE_SECS:.0f} bytes a minute')")
    printf '%-22s idle link: %s (both directions, IP headers included)\n' "$2" "${IDLE[$1]}"
}
declare -A DEAD
dead_peer() { # key label stop_pid gone_cmd...: stop the peer's daemon under
    # 1 ping/s (started by the caller), seconds until gone_cmd succeeds (120 s at most)
    local key=$1 label=$2 pid=$3 t0; shift 3
    sleep 2
    kill -STOP "$pid"; t0=$(date +%s.%N)
    for _ in $(seq 1 1200); do "$@" && break; sleep 0.1; done
    DEAD[$key]=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")
    "$@" || DEAD[$key]="> 120"
    printf '%-22s dead peer under 1 ping/s: %s s\n' "$label" "${DEAD[$key]}"
    kill -CONT "$pid"
}
online() { # home id: A lists the node online
    b "$1" node nodes --json | python3 -c "import json,sys; sys.exit(0 if any(n['id']=='$2' and n['online'] for n in json.load(sys.stdin)['nodes']) else 1)"
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
one_hop burrow "burrow (mesh tunnel)" bmA 127.0.0.1 15201 "$NA" "$NB" "$NP"
RSSM[burrow]=$(peak_rss "$NA" "$NB")
echo "                       (peak RSS of the two nodes: ${RSSM[burrow]} MiB; the proxy is the client's own process)"
kill "$NP"

echo "-- dead peer (--keepalive 10)"
# (Started directly, not through b(): `f &` would give the subshell's PID.)
env -u BURROW_RELAY -u BURROW_CONFIG HOME="$WORK/ha" XDG_DATA_HOME="$WORK/ha/data" "$BIN" node ping -c 600 "$IDB" \
    > /dev/null 2>&1 & PING=$!
sleep 3
kill -STOP "$NB"; T0=$(date +%s.%N)
while online "$WORK/ha" "$IDB"; do sleep 0.1; done
DEAD_BUSY=$(python3 -c "print(f'{$(date +%s.%N) - $T0:.2f}')")
echo "under traffic (A pings B once a second): A lists B offline after $DEAD_BUSY s"
kill "$PING" 2>/dev/null || true
kill -CONT "$NB"
for _ in $(seq 1 300); do online "$WORK/ha" "$IDB" && break; sleep 0.2; done
# Let the new link go idle (its first node-list exchange and beats).
sleep 12
kill -STOP "$NB"; T0=$(date +%s.%N)
while online "$WORK/ha" "$IDB"; do sleep 0.1; done
DEAD_IDLE=$(python3 -c "print(f'{$(date +%s.%N) - $T0:.2f}')")
echo "idle link: A lists B offline after $DEAD_IDLE s (at most 2 intervals + 1 s after B's last packet)"
kill -CONT "$NB"
for _ in $(seq 1 300); do online "$WORK/ha" "$IDB" && break; sleep 0.2; done
SETTLED_AT=$(( $(date +%s) + SETTLE_SECS ))

# --- the anchors, on the second veth, while burrow's link settles ----------------------
# wireguard-go
for s in A B; do wg genkey > "wg$s.key"; wg pubkey < "wg$s.key" > "wg$s.pub"; done
ip netns exec bmA env WG_PROCESS_FOREGROUND=1 wireguard-go bmwg1 2> wga.err & PIDS+=($!); WA=$!
ip netns exec bmB env WG_PROCESS_FOREGROUND=1 wireguard-go bmwg2 2> wgb.err & PIDS+=($!); WB=$!
sleep 0.5
inA wg set bmwg1 private-key wgA.key listen-port 51820 peer "$(cat wgB.pub)" allowed-ips 10.78.0.2/32 \
    endpoint 10.77.1.2:51820 persistent-keepalive 10
inB wg set bmwg2 private-key wgB.key listen-port 51820 peer "$(cat wgA.pub)" allowed-ips 10.78.0.1/32 \
    endpoint 10.77.1.1:51820 persistent-keepalive 10
ip -n bmA addr add 10.78.0.1/24 dev bmwg1; ip -n bmA link set bmwg1 mtu 1420 up
ip -n bmB addr add 10.78.0.2/24 dev bmwg2; ip -n bmB link set bmwg2 mtu 1420 up
wait_ping bmA 10.78.0.2
inB iperf3 -s -D -B 10.78.0.2 -p 5203 --pidfile "$WORK/iperf-wg.pid"; sleep 0.3; PIDS+=("$(cat "$WORK/iperf-wg.pid")")
one_hop wg "wireguard-go" bmA 10.78.0.2 5203 "$WA" "$WB"
sleep 5; idle_cost wg "wireguard-go (pk 10)" bmwa
kill "$WA" "$WB"

# yggdrasil
for s in A B; do yggdrasil -genconf -json > "ygg$s.json"; done
python3 - <<'PY'
import json
for side, listen, peers in (("A", [], ["tcp://10.77.1.2:7000"]), ("B", ["tcp://10.77.1.2:7000"], [])):
    p = f"ygg{side}.json"; c = json.load(open(p))
    admin = "unix://" + __import__("os").getcwd() + f"/ygg{side}.sock"
    c.update(Listen=listen, Peers=peers, AdminListen=admin, IfName=f"bmygg{side}", MulticastInterfaces=[])
    json.dump(c, open(p, "w"))
PY
ip netns exec bmA yggdrasil -useconffile yggA.json > ygga.log 2>&1 & PIDS+=($!); YA=$!
ip netns exec bmB yggdrasil -useconffile yggB.json > yggb.log 2>&1 & PIDS+=($!); YB=$!
YADDR=$(yggdrasil -useconffile yggB.json -address)
for _ in $(seq 1 100); do inA ping -6 -c1 -W1 "$YADDR" > /dev/null 2>&1 && break; sleep 0.2; done
inB iperf3 -s -D -B "$YADDR" -p 5204 --pidfile "$WORK/iperf-ygg.pid"; sleep 0.3; PIDS+=("$(cat "$WORK/iperf-ygg.pid")")
one_hop ygg "yggdrasil" bmA "$YADDR" 5204 "$YA" "$YB"
sleep 5; idle_cost ygg "yggdrasil" bmwa
ygg_gone() { ! yggdrasilctl -endpoint="unix://$WORK/yggA.sock" getPeers 2>/dev/null | grep -q 10.77.1.2; }
ip netns exec bmA ping -6 -i 1 "$YADDR" > /dev/null 2>&1 & PG=$!
dead_peer ygg "yggdrasil" "$YB" ygg_gone
kill "$PG"
kill "$YA" "$YB"

# tinc 1.0 (router mode, host files copied between the two: its "pairing")
for s in A B; do
    i=$([ $s = A ] && echo 1 || echo 2); n=$(echo "$s" | tr AB ab)
    mkdir -p "tinc$s/hosts"
    { echo "Name = $n"; echo "Interface = bmtinc$s"; echo "Mode = router"; echo "AddressFamily = ipv4"
      [ $s = A ] && echo "ConnectTo = b"; } > "tinc$s/tinc.conf"
    printf 'Address = 10.77.1.%s\nSubnet = 10.79.0.%s/32\nCipher = aes-256-cbc\nDigest = sha256\n' "$i" "$i" > "tinc$s/hosts/$n"
    printf '#!/bin/sh\nip addr add 10.79.0.%s/24 dev $INTERFACE\nip link set $INTERFACE up\n' "$i" > "tinc$s/tinc-up"
    chmod +x "tinc$s/tinc-up"
    tincd -c "$WORK/tinc$s" -K 2048 < /dev/null > /dev/null 2>&1
done
cp tincA/hosts/a tincB/hosts/; cp tincB/hosts/b tincA/hosts/
printf '#!/bin/sh\ndate +%%s.%%N >> %s/tinc-b-down\n' "$WORK" > tincA/hosts/b-down; chmod +x tincA/hosts/b-down
ip netns exec bmB tincd -c "$WORK/tincB" -D -d0 --pidfile="$WORK/tincB/pid" --logfile="$WORK/tincB/log" & PIDS+=($!); TB=$!
ip netns exec bmA tincd -c "$WORK/tincA" -D -d0 --pidfile="$WORK/tincA/pid" --logfile="$WORK/tincA/log" & PIDS+=($!); TA=$!
wait_ping bmA 10.79.0.2
inB iperf3 -s -D -B 10.79.0.2 -p 5205 --pidfile "$WORK/iperf-tinc.pid"; sleep 0.3; PIDS+=("$(cat "$WORK/iperf-tinc.pid")")
one_hop tinc "tinc 1.0" bmA 10.79.0.2 5205 "$TA" "$TB"
sleep 5; idle_cost tinc "tinc 1.0" bmwa
tinc_gone() { [ -s "$WORK/tinc-b-down" ]; }
ip netns exec bmA ping -i 1 10.79.0.2 > /dev/null 2>&1 & PG=$!
dead_peer tinc "tinc 1.0" "$TB" tinc_gone
kill "$PG"
kill "$TA" "$TB"

# nebula (B is the lighthouse; certificates from one CA)
nebula-cert ca -name bench -out-crt ca.crt -out-key ca.key
for s in A B; do
    i=$([ $s = A ] && echo 1 || echo 2)
    nebula-cert sign -name "n$s" -ip "10.80.0.$i/24" -ca-crt ca.crt -ca-key ca.key -out-crt "neb$s.crt" -out-key "neb$s.key"
    if [ $s = A ]; then
        lh='lighthouse: {am_lighthouse: false, interval: 10, hosts: ["10.80.0.2"]}'
    else
        lh='lighthouse: {am_lighthouse: true}'
    fi
    cat > "neb$s.yml" <<YML
pki: {ca: $WORK/ca.crt, cert: $WORK/neb$s.crt, key: $WORK/neb$s.key}
static_host_map: {"10.80.0.2": ["10.77.1.2:4242"]}
$lh
listen: {host: 0.0.0.0, port: 4242}
punchy: {punch: true}
tun: {dev: bmneb$s, mtu: 1300}
logging: {level: info}
firewall:
  outbound: [{port: any, proto: any, host: any}]
  inbound: [{port: any, proto: any, host: any}]
YML
done
ip netns exec bmB nebula -config "$WORK/nebB.yml" > nebb.log 2>&1 & PIDS+=($!); EB=$!
ip netns exec bmA nebula -config "$WORK/nebA.yml" > neba.log 2>&1 & PIDS+=($!); EA=$!
wait_ping bmA 10.80.0.2
inB iperf3 -s -D -B 10.80.0.2 -p 5206 --pidfile "$WORK/iperf-neb.pid"; sleep 0.3; PIDS+=("$(cat "$WORK/iperf-neb.pid")")
one_hop neb "nebula" bmA 10.80.0.2 5206 "$EA" "$EB"
sleep 5; idle_cost neb "nebula" bmwa
neb_gone() { grep -q "state:dead" "$WORK/neba.log"; }
ip netns exec bmA ping -i 1 10.80.0.2 > /dev/null 2>&1 & PG=$!
dead_peer neb "nebula" "$EB" neb_gone
kill "$PG"
kill "$EA" "$EB"

# burrow's idle link, settled
NOW=$(date +%s); [ "$NOW" -lt "$SETTLED_AT" ] && sleep $((SETTLED_AT - NOW))
idle_cost burrow "burrow (keepalive 10)" bmva
kill "$NA" "$NB"

echo "-- one hop, side by side"
python3 - "$RAW" "${MBPS[burrow]}" "${MBPS[wg]}" "${MBPS[ygg]}" "${MBPS[tinc]}" "${MBPS[neb]}" <<'PY'
import sys
raw, b, *anchors = map(float, sys.argv[1:])
names = ["wireguard-go", "yggdrasil", "tinc 1.0", "nebula"]
print(f"burrow {b:.0f} Mb/s = {b/raw:.2f}x raw veth; " + ", ".join(f"{b/a:.2f}x {n} ({a:.0f})" for n, a in zip(names, anchors)))
PY
echo "-- dead peer under 1 ping/s: burrow $DEAD_BUSY s; yggdrasil ${DEAD[ygg]} s, tinc ${DEAD[tinc]} s," \
    "nebula ${DEAD[neb]} s, wireguard-go: no peer-down state. burrow idle: $DEAD_IDLE s"

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
knows_all() { # want min_links home...: every node knows `want` records
    # and has at least `min_links` links up (asked straight on the
    # control sockets, all in one process: a sweep of 50 nodes takes
    # milliseconds, not the seconds 50 CLI runs would)
    python3 - "$@" <<'PY'
import json, socket, sys
want, min_links = int(sys.argv[1]), int(sys.argv[2])
for h in sys.argv[3:]:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(f"{h}/data/burrow/node.sock")
        s.sendall(b'{"op":"status"}\n')
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        st = json.loads(data)
        up = sum(1 for l in st["links"] if l.get("state") == "up")
        if st["known_nodes"] != want or up < min_links:
            sys.exit(1)
    except (OSError, ValueError, KeyError):
        sys.exit(1)
PY
}
HOMES=()
T0=$(date +%s.%N)
start_node 0; HOMES+=("$WORK/n0")
for i in $(seq 1 $((NODES - 1))); do start_node "$i" 10.93.0.1:9010; HOMES+=("$WORK/n$i"); done
until knows_all "$NODES" 1 "${HOMES[@]}"; do sleep 0.05; done
COLD=$(python3 -c "print(f'{$(date +%s.%N) - $T0:.2f}')")
echo "cold start: all $NODES know all after $COLD s (from the first start)"
T0=$(date +%s.%N)
start_node "$NODES" 10.93.0.1:9010
until knows_all $((NODES + 1)) 1 "${HOMES[@]}"; do sleep 0.02; done
JOIN=$(python3 -c "print(f'{$(date +%s.%N) - $T0:.2f}')")
echo "join: node $((NODES + 1)) known to all $NODES after $JOIN s"
HOMES+=("$WORK/n$NODES")
sleep 5
STEADY=$(for p in "${NPIDS[@]}"; do awk '/VmRSS/ {print $2}' "/proc/$p/status"; done | sort -n)
PRIV=$(for p in "${NPIDS[@]}"; do awk '/^(Private_Dirty|Private_Clean):/ {s += $2} END {print s}' "/proc/$p/smaps_rollup"; done | sort -n)
PSS=$(for p in "${NPIDS[@]}"; do awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup"; done | sort -n)
python3 - <<PY
r = [int(x) for x in """$STEADY""".split()]; v = [int(x) for x in """$PRIV""".split()]; p = [int(x) for x in """$PSS""".split()]
m = lambda a: a[len(a) // 2] / 1024
print(f"RSS per node ({len(r)} nodes, settled): median {m(r):.1f} MiB, max {r[-1] / 1024:.1f} MiB; "
      f"private memory median {m(v):.1f} MiB, max {v[-1] / 1024:.1f} MiB; PSS median {m(p):.1f} MiB "
      f"(the rest of RSS is the binary's and libc's pages, shared by every burrow process on a host)")
print(f"anchors' RSS per daemon at 50 nodes (MESH.md): tinc 6.5 MB, yggdrasil 8.0-9.1 MB (hub 12 MB), nebula 12.8-13.6 MB")
PY
# Restart storm: every node at once (TERM, then the same homes again:
# they remember the known nodes and their addresses).
kill "${NPIDS[@]}"
for p in "${NPIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
OLD=("${NPIDS[@]}"); NPIDS=()
T0=$(date +%s.%N)
for i in $(seq 0 "$NODES"); do start_node "$i" 10.93.0.1:9010; done
until knows_all $((NODES + 1)) 2 "${HOMES[@]}"; do sleep 0.05; done
STORM=$(python3 -c "print(f'{$(date +%s.%N) - $T0:.2f}')")
sleep 2
HWM=$(for p in "${NPIDS[@]}"; do awk '/VmHWM/ {print $2}' "/proc/$p/status"; done | sort -n)
python3 - <<PY
s = [int(x) for x in """$STEADY""".split()]; h = [int(x) for x in """$HWM""".split()]
med = s[len(s) // 2]
print(f"restart storm: all {len(h)} restarted at once know all and have 2+ links up after $STORM s; "
      f"peak RSS max {h[-1] / 1024:.1f} MiB = {h[-1] / med:.2f}x the settled median "
      f"(tinc 1.1 at about 100 nodes: OOM, MESH.md)")
PY

# The anchor in the same namespace: tinc 1.0 with the same 50 + 1 nodes,
# each ConnectTo the first, host files copied to and from the first only
# (MESH.md's setup); "knows" = its host-up script ran for every other node.
kill "${NPIDS[@]}" 2>/dev/null || true
for p in "${NPIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
TDIRS=(); TPIDS=()
for i in $(seq 0 "$NODES"); do
    d="$WORK/t$i"; mkdir -p "$d/hosts"; TDIRS+=("$d")
    { echo "Name = t$i"; echo "Mode = router"; echo "AddressFamily = ipv4"; echo "Port = $((10000 + i))"
      echo "Interface = bmt$i"; [ "$i" -gt 0 ] && echo "ConnectTo = t0"; } > "$d/tinc.conf"
    printf 'Address = 127.0.0.1\nPort = %s\nSubnet = 10.79.%s.%s/32\n' "$((10000 + i))" "$((i / 250))" "$((i % 250 + 1))" > "$d/hosts/t$i"
    printf '#!/bin/sh\necho "$NODE" >> %s/ups\n' "$d" > "$d/host-up"; chmod +x "$d/host-up"
    tincd -c "$d" -K 1024 < /dev/null > /dev/null 2>&1
done
for i in $(seq 1 "$NODES"); do cp "$WORK/t$i/hosts/t$i" "$WORK/t0/hosts/"; cp "$WORK/t0/hosts/t0" "$WORK/t$i/hosts/"; done
tinc_start() { ip netns exec bmN tincd -c "$WORK/t$1" -D -d0 --pidfile="$WORK/t$1/pid" --logfile="$WORK/t$1/log" & PIDS+=($!); TPIDS+=($!); }
tinc_all() { # want dirs...: every node saw host-up for want-1 others
    python3 - "$@" <<'PY'
import sys
want = int(sys.argv[1])
for d in sys.argv[2:]:
    try:
        ups = set(open(f"{d}/ups").read().split())
    except OSError:
        sys.exit(1)
    if len(ups) < want - 1:
        sys.exit(1)
PY
}
T0=$(date +%s.%N)
for i in $(seq 0 $((NODES - 1))); do tinc_start "$i"; done
TCOLD="> 120"
for _ in $(seq 1 2400); do
    if tinc_all "$NODES" "${TDIRS[@]:0:$NODES}"; then TCOLD=$(python3 -c "print(f'{$(date +%s.%N) - $T0:.2f}')"); break; fi
    sleep 0.05
done
T0=$(date +%s.%N)
tinc_start "$NODES"
TJOIN="> 60"
for _ in $(seq 1 1200); do
    if tinc_all $((NODES + 1)) "${TDIRS[@]}"; then TJOIN=$(python3 -c "print(f'{$(date +%s.%N) - $T0:.2f}')"); break; fi
    sleep 0.02
done
TRSS=$(for p in "${TPIDS[@]}"; do awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null; done | sort -n)
python3 - <<PY
r = [int(x) for x in """$TRSS""".split()] or [0]
print(f"tinc 1.0, the same {len(r)} nodes: cold start {'$TCOLD'} s (burrow $COLD s), join {'$TJOIN'} s (burrow $JOIN s), "
      f"RSS per daemon median {r[len(r) // 2] / 1024:.1f} MiB, max {r[-1] / 1024:.1f} MiB")
PY
kill "${TPIDS[@]}" 2>/dev/null || true

echo "-- handshakes (in memory, one core; G9 goal: 5,000 a second per core)"
"$HS_BIN" 3
