#!/usr/bin/env bash
# The README's onion walk-through (seed 004), as a new user would type it,
# on twelve "machines": network namespaces for three directory authorities
# (10.1-3.0.1), seven nodes (10.11-17.0.1; the last three are exits), a
# client (10.50.0.1) and a web server (10.60.0.1), all on one bridge, each
# in its own /16 (path rules never put two hops in one /16). Each step
# prints the command. Nothing leaves the namespaces.
#
#   directory  burrow directory on three machines, each naming the others
#   node       burrow node --directory ... (--exit on three)
#   fetch      burrow fetch http://10.60.0.1:8000/page.html --hops 3
#   proxy      burrow proxy --hops 3, curl through it
#
# Usage: scripts/try-onion.sh   (root: ip netns; builds the release binary)
#        KEEP=1 scripts/try-onion.sh   leaves everything running until Enter
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -n "${BURROW_BIN:-}" ] || (cd "$ROOT" && cargo build --release -q -p burrow-cli)
BIN="${BURROW_BIN:-$ROOT/target/release/burrow}"
WORK=$(mktemp -d /dev/shm/burrow-onion.XXXXXX)
PIDS=()
. "$ROOT/scripts/onion-net.sh"
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    onion_net_down to
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
onion_net_up to "$WORK"

on() { # machine command...: the user's shell on that machine
    local m=$1; shift
    echo "[$m]\$ burrow $*" >&2
    ip netns exec "to$m" env -u BURROW_RELAY -u BURROW_CONFIG -u BURROW_DIRECTORIES HOME="$WORK/$m" "$BIN" "$@"
}
start() { # machine logfile command...: a long-running burrow in the background
    local m=$1 log=$2; shift 2
    echo "[$m]\$ burrow $* &" >&2
    ip netns exec "to$m" env -u BURROW_RELAY -u BURROW_CONFIG -u BURROW_DIRECTORIES HOME="$WORK/$m" "$BIN" "$@" 2> "$log" & PIDS+=($!)
}
wait_for() { # file pattern
    for _ in $(seq 1 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}

echo "== directory: three authorities" >&2
declare -A FP
for a in a1 a2 a3; do FP[$a]=$(on "$a" id); done
DIRS=""
for a in a1 a2 a3; do DIRS="$DIRS${DIRS:+,}${FP[$a]}@$(addr_of "$a"):9030"; done
T0=$(date +%s.%N)
for a in a1 a2 a3; do
    peers=()
    for b in a1 a2 a3; do [ "$a" = "$b" ] || peers+=(--peer "${FP[$b]}@$(addr_of "$b"):9030"); done
    start "$a" "$a.log" directory --listen "$(addr_of "$a"):9030" "${peers[@]}"
done

echo "== node: seven nodes, three of them exits" >&2
# The web server is on a private address: exits allow it explicitly.
for i in 1 2 3 4 5 6 7; do
    extra=()
    [ "$i" -ge 5 ] && extra=(--exit --allow 10.60.0.0/16)
    boot=()
    [ "$i" -gt 1 ] && boot=(--bootstrap "$(addr_of n1):9010")
    start "n$i" "n$i.log" node --listen "$(addr_of "n$i"):9010" --name "n$i" --directory "$DIRS" "${boot[@]}" "${extra[@]}"
done

mkdir -p "$WORK/site"
head -c 300000 /dev/urandom | base64 > "$WORK/site/page.html"
# (Python's http.server looks its own address up in DNS first: none here.)
echo "[web]\$ a static web server on 10.60.0.1:8000 &" >&2
ip netns exec toweb python3 -c 'import functools, http.server, socketserver, sys
socketserver.ThreadingTCPServer.allow_reuse_address = True
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
socketserver.ThreadingTCPServer((sys.argv[1], 8000), h).serve_forever()' 10.60.0.1 "$WORK/site" > web.log 2>&1 & PIDS+=($!)

echo "== fetch: a page through three hops" >&2
ok=""
echo "[client]\$ burrow fetch http://10.60.0.1:8000/page.html --hops 3 --directory $DIRS -o page.html" >&2
for _ in $(seq 1 100); do
    if timeout 20 ip netns exec toclient env -u BURROW_CONFIG -u BURROW_DIRECTORIES HOME="$WORK/client" "$BIN" fetch "http://10.60.0.1:8000/page.html" --hops 3 --directory "$DIRS" -o "$WORK/client/page.html" --json 2> fetch.json; then ok=1; break; fi
    cat fetch.json >&2
    sleep 0.1
done
T1=$(date +%s.%N)
cat fetch.json >&2
[ -n "$ok" ] || { for f in *.log; do echo "--- $f" >&2; tail -5 "$f" >&2; done; mkdir -p /tmp/onion-logs; cp ./*.log /tmp/onion-logs/; exit 1; }
cmp "$WORK/site/page.html" "$WORK/client/page.html"
echo "byte-identical; first fetch $(echo "$T1 - $T0" | bc) s after the authorities started" >&2

echo "== proxy: curl through a 3-hop circuit" >&2
start client proxy.log proxy --hops 3 --directory "$DIRS" --listen 127.0.0.1:1080
wait_for proxy.log "SOCKS5"
echo "[client]\$ curl -x socks5h://127.0.0.1:1080 http://10.60.0.1:8000/page.html" >&2
ip netns exec toclient curl -sS --max-time 20 -x socks5h://127.0.0.1:1080 -o "$WORK/client/page2.html" http://10.60.0.1:8000/page.html
cmp "$WORK/site/page.html" "$WORK/client/page2.html" && echo "byte-identical" >&2
if [ -n "${KEEP:-}" ]; then
    echo "running in $WORK (namespaces to*); Enter stops everything" >&2
    read -r _
fi
