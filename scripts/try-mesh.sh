#!/usr/bin/env bash
# The README's mesh walk-through, as a new user would type it, on three
# "machines": network namespaces home, laptop and office (each its own HOME),
# joined by a bridge (10.91.0.0/24), plus a web server on home's side. Each
# step prints the command and what it printed. Nothing leaves the namespaces.
#
#   link     burrow node on all three (laptop and office bootstrap from home)
#   list     burrow node status / burrow node nodes on the laptop
#   ping     burrow node ping home (by name) from the laptop
#   pair     burrow pair --mesh laptop (home) / ... CODE --name home (laptop)
#   proxy    burrow proxy home --mesh on the laptop, curl through it
#   send     burrow send --to home on the laptop, into home's inbox
#   NAT      office behind NAT: --relay, linked and sent to through the relay
#
# Usage: scripts/try-mesh.sh   (root: ip netns; builds the release binary)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -n "${BURROW_BIN:-}" ] || (cd "$ROOT" && cargo build --release -q -p burrow-cli)
BIN="${BURROW_BIN:-$ROOT/target/release/burrow}"
WORK=$(mktemp -d /dev/shm/burrow-try.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in tmhome tmlaptop tmoffice tmhub; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
ip netns add tmhub
ip -n tmhub link add br0 type bridge
ip -n tmhub link set br0 up
i=1
for m in home laptop office; do
    ip netns add "tm$m"
    ip -n "tm$m" link set lo up
    ip link add "tm$m" netns "tm$m" type veth peer name "v$m" netns tmhub
    ip -n "tm$m" link set "tm$m" name eth0
    ip -n "tm$m" addr add "10.91.0.$i/24" dev eth0
    ip -n "tm$m" link set eth0 up
    ip -n tmhub link set "v$m" master br0 up
    mkdir -p "$WORK/$m"
    i=$((i + 1))
done
# A relay beside them (on the hub's own address) for the NAT step.
ip -n tmhub addr add 10.91.0.9/24 dev br0

on() { # machine command...: the user's shell on that machine
    local m=$1; shift
    echo "[$m]\$ burrow $*" >&2
    ip netns exec "tm$m" env -u BURROW_RELAY -u BURROW_CONFIG HOME="$WORK/$m" "$BIN" "$@"
}
start() { # machine logfile command...: a long-running burrow in the background
    local m=$1 log=$2; shift 2
    echo "[$m]\$ burrow $* &" >&2
    ip netns exec "tm$m" env -u BURROW_RELAY -u BURROW_CONFIG HOME="$WORK/$m" "$BIN" "$@" 2> "$log" & PIDS+=($!)
}
wait_for() { # file pattern
    for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

echo "== link"
start home home.log node --listen 0.0.0.0:9010 --name home --allow 10.91.0.1/32:8000
wait_for home.log "listening on"
start laptop laptop.log node --bootstrap 10.91.0.1:9010 --name laptop
start office office.log node --bootstrap 10.91.0.1:9010 --name office
wait_for laptop.log "link up"
wait_for office.log "link up"
sleep 1

echo "== list"
on laptop node status
on laptop node nodes

echo "== ping"
on laptop node ping -c 3 home

echo "== pair"
ip netns exec tmhome env HOME="$WORK/home" "$BIN" pair --mesh laptop 2> pair.err & PP=$!
echo "[home]\$ burrow pair --mesh laptop" >&2
wait_for pair.err "^code:"
cat pair.err >&2
on laptop pair --mesh home "$(sed -n 's/^code: //p' pair.err)" --name home
wait "$PP"
sed -n '/^waiting/,$p' pair.err | tail -n +2 >&2

echo "== proxy"
mkdir -p site && head -c 300000 /dev/urandom > site/blob
(cd site && exec ip netns exec tmhome python3 -m http.server 8000 --bind 10.91.0.1 > /dev/null 2>&1) & PIDS+=($!)
for _ in $(seq 1 100); do ip netns exec tmhome curl -s -o /dev/null http://10.91.0.1:8000/ && break; sleep 0.05; done
start laptop proxy.log proxy home --mesh --listen 127.0.0.1:1080
wait_for proxy.log "proxy listening on"
echo "[laptop]\$ curl --socks5-hostname 127.0.0.1:1080 http://10.91.0.1:8000/blob -o blob" >&2
for _ in $(seq 1 50); do
    ip netns exec tmlaptop curl -sS --socks5-hostname 127.0.0.1:1080 http://10.91.0.1:8000/blob -o blob && break
    sleep 0.1
done
cmp blob site/blob && echo "byte-identical ($(stat -c %s blob) bytes)"

echo "== send --to"
mkdir -p photos/trip && head -c 2000000 /dev/urandom > photos/trip/a.jpg && echo hi > photos/note.txt
cp -r photos "$WORK/laptop/photos"
on laptop send --to home "$WORK/laptop/photos"
diff -r photos "$WORK/home/burrow-inbox/photos" && echo "home's inbox has the folder, byte-identical"

echo "== NAT: office keeps a mailbox on a relay, nobody can dial it"
(exec ip netns exec tmhub env HOME="$WORK" "$BIN" relay --listen 10.91.0.9:7000 2> relay.log) & PIDS+=($!)
wait_for relay.log "listening on"
kill "${PIDS[2]}"
ip netns exec tmoffice ip link set eth0 down; ip netns exec tmoffice ip link set eth0 up
start office office2.log node --listen 127.0.0.1:9010 --advertise 10.91.9.9:9010 --name office \
    --bootstrap 10.91.0.1:9010 --relay 10.91.0.9:7000
wait_for office2.log "reachable through the relay"
on office node status
for _ in $(seq 1 100); do
    on laptop node nodes --json 2>/dev/null | python3 -c "import json,sys; sys.exit(0 if any(n['name']=='office' and n['online'] for n in json.load(sys.stdin)['nodes']) else 1)" && break
    sleep 0.2
done
on laptop node status
on laptop node ping -c 2 office
echo "== done"
