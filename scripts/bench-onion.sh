#!/usr/bin/env bash
# Onion circuits (seed 004), burrow and Tor side by side in one run, on the
# issue's topology (scripts/onion-net.sh): three directory authorities, seven
# relays (three exits), a client and a web server (nginx), each in its own
# network namespace and /16.
#
# For each system, in turn (the other one stopped):
#   cold start   every authority and relay started at once -> first 1 KiB page
#   build        3-hop circuit build, p50 / p90 (burrow: a fresh `burrow
#                fetch` each, its link to the entry included; Tor: EXTENDCIRCUIT
#                on the running client's control port, BUILT event)
#   ttfb         1 KiB through the SOCKS proxy on a built circuit, curl's
#                time_starttransfer (SOCKS, stream open, request, first byte:
#                two round trips over the circuit, curl sends its request only
#                after the SOCKS reply); and for burrow `burrow fetch`'s own
#                first byte (the request rides with the open: one round trip)
#   bulk         one circuit, SIZE MiB through the SOCKS proxy + curl, MB/s;
#                beside it curl straight to the server (the plaintext anchor)
#   cpu          CPU-seconds per MiB over every process of the system
#   rss          RSS per relay: idle, after the bulk run, and (burrow) with
#                CIRCUITS circuits open through the relays at once
#
# Tor is Debian's `tor` as a private network: tor-gencert authority keys,
# TestingTorNetwork 1 and chutney's fast-bootstrap options (voting every
# 10 s). TOR_SCHEDULERS=Vanilla (or KISTLite) picks Tor's cell scheduler;
# the default is Tor's own default. SYSTEMS="burrow" or "tor" runs one.
#
# Usage: scripts/bench-onion.sh [SIZE_MIB=256] [SAMPLES=20] [CIRCUITS=1000]
#        (root; installs tor, nginx, curl, bc; builds the release binary)
#        KEEP_LOGS=1 leaves every process's log in the work folder.
set -euo pipefail

SIZE=${1:-256}
SAMPLES=${2:-20}
CIRCUITS=${3:-1000}
SYSTEMS=${SYSTEMS:-burrow tor}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
need() { command -v "$1" >/dev/null 2>&1 || apt-get install -y -q "$2" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$2" >/dev/null 2>&1; }; }
need curl curl
need bc bc
need nginx nginx
need tor tor
need tor-gencert tor
if [ -z "${BURROW_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p burrow-cli && cargo build --release -q -p burrow-node --example onion_load)
fi
BIN=$(realpath "${BURROW_BIN:-$ROOT/target/release/burrow}")
LOAD=$(realpath "${BURROW_LOAD_BIN:-$ROOT/target/release/examples/onion_load}")
WORK=$(mktemp -d /dev/shm/burrow-bench-onion.XXXXXX)
chmod 755 "$WORK"
PIDS=()
. "$ROOT/scripts/onion-net.sh"
stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    # (A Tor relay sometimes stays after "exiting cleanly": KILL after 3 s.)
    for _ in $(seq 1 30); do
        local left=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    PIDS=()
}
cleanup() {
    stop_all
    if [ -n "${WEB_PID:-}" ]; then kill "$WEB_PID" 2>/dev/null; wait "$WEB_PID" 2>/dev/null; fi
    onion_net_down bo
    if [ -n "${KEEP_LOGS:-}" ]; then
        rm -rf "$WORK/site" "$WORK/client"
        echo "logs left in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
cd "$WORK"
onion_net_up bo "$WORK"
pct() { sort -n | awk -v p="$1" 'NF {a[++n]=$1} END {if (!n) {print "-"; exit} i=int((n-1)*p/100)+1; printf "%.2f", a[i]}'; }
cpu_of() { local t=0 p; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
rss_of() { local p out=""; for p in "$@"; do out="$out $(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$p/status" 2>/dev/null)"; done; echo "${out# }"; }
now() { date +%s.%N; }
declare -A R # results: R[system.figure]

# --- the web server (both systems fetch from it) -------------------------
mkdir -p "$WORK/site"
head -c 1024 /dev/urandom > "$WORK/site/1k.bin"
head -c $((SIZE << 20)) /dev/urandom > "$WORK/site/big.bin"
chmod -R a+rX "$WORK/site"
cat > "$WORK/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/web/nginx.pid;
error_log $WORK/web/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nodelay on;
    default_type application/octet-stream;
    client_body_temp_path $WORK/web/body;
    proxy_temp_path $WORK/web/proxy;
    fastcgi_temp_path $WORK/web/fastcgi;
    uwsgi_temp_path $WORK/web/uwsgi;
    scgi_temp_path $WORK/web/scgi;
    server { listen 10.60.0.1:8000; root $WORK/site; }
}
EOF
ip netns exec boweb nginx -c "$WORK/nginx.conf" > "$WORK/web/nginx.log" 2>&1 &
WEB_PID=$!
until ip netns exec boclient curl -sf -o /dev/null http://10.60.0.1:8000/1k.bin; do sleep 0.05; done
: > plain_ttfb
for _ in $(seq 1 "$SAMPLES"); do
    ip netns exec boclient curl -sS -o /dev/null -w '%{time_starttransfer}\n' http://10.60.0.1:8000/1k.bin | awk '{printf "%.3f\n", $1 * 1000}' >> plain_ttfb
done
P0=$(now)
ip netns exec boclient curl -sS -o /dev/null http://10.60.0.1:8000/big.bin
P1=$(now)
PLAIN_MBS=$(echo "scale=1; $SIZE * 1048576 / ($P1 - $P0) / 1000000" | bc)
PLAIN_TTFB=$(pct 50 < plain_ttfb)

# The same measurements for both systems, through a SOCKS proxy on the client.
socks_figures() { # system socks-port pids-of-the-system...
    local sys=$1 port=$2; shift 2
    local all=("$@") c0 c1 s0 s1
    : > "$sys.ttfb"
    # One request first (a fresh Tor client's first circuits can fail for
    # a while after its bootstrap): up to 30 s, then the samples. A failed
    # request is counted, not fatal: the other system's figures still print.
    local ok="" fails=0
    for _ in $(seq 1 60); do
        if ip netns exec boclient curl -sS -m 30 -x "socks5h://127.0.0.1:$port" -o /dev/null http://10.60.0.1:8000/1k.bin 2>> "$sys.curl.err"; then ok=1; break; fi
        sleep 0.5
    done
    if [ -z "$ok" ]; then
        R[$sys.ttfb]="failed"; R[$sys.bulk]="failed"
        echo "$sys: no request through its SOCKS proxy succeeded in 30 s: $(tail -1 "$sys.curl.err")" >&2
        return
    fi
    for _ in $(seq 1 "$SAMPLES"); do
        if ! ip netns exec boclient curl -sS -m 30 -x "socks5h://127.0.0.1:$port" -o /dev/null -w '%{time_starttransfer}\n' \
            http://10.60.0.1:8000/1k.bin 2>> "$sys.curl.err" | awk '{printf "%.3f\n", $1 * 1000}' >> "$sys.ttfb"; then
            fails=$((fails + 1))
        fi
    done
    [ "$fails" = 0 ] || echo "$sys: $fails of $SAMPLES requests failed: $(tail -1 "$sys.curl.err")" >&2
    R[$sys.ttfb]="$(pct 50 < "$sys.ttfb") / $(pct 90 < "$sys.ttfb")"
    c0=$(cpu_of "${all[@]}")
    s0=$(now)
    if ! ip netns exec boclient curl -sS -m 600 -x "socks5h://127.0.0.1:$port" -o "$WORK/client/big.$sys" http://10.60.0.1:8000/big.bin; then
        R[$sys.bulk]="failed"
        rm -f "$WORK/client/big.$sys"
        return
    fi
    s1=$(now)
    c1=$(cpu_of "${all[@]}")
    cmp -s "$WORK/client/big.$sys" "$WORK/site/big.bin" || echo "$sys: the bulk download differs from the file!" >&2
    rm -f "$WORK/client/big.$sys"
    R[$sys.bulk]=$(echo "scale=1; $SIZE * 1048576 / ($s1 - $s0) / 1000000" | bc)
    R[$sys.cpu]=$(echo "scale=4; ($c1 - $c0) / $(getconf CLK_TCK) / $SIZE" | bc)
}

# --- burrow ---------------------------------------------------------------
run_burrow() {
    local a b i
    on() { local m=$1; shift; ip netns exec "bo$m" env -u BURROW_CONFIG -u BURROW_DIRECTORIES HOME="$WORK/$m" "$BIN" "$@"; }
    start() { local m=$1 log=$2; shift 2; ip netns exec "bo$m" env -u BURROW_CONFIG -u BURROW_DIRECTORIES HOME="$WORK/$m" "$BIN" "$@" 2> "$log" & PIDS+=($!); }
    declare -A FP
    for a in a1 a2 a3; do FP[$a]=$(on "$a" id 2>/dev/null); done
    DIRS=""
    for a in a1 a2 a3; do DIRS="$DIRS${DIRS:+,}${FP[$a]}@$(addr_of "$a"):9030"; done
    local t0 t1
    t0=$(now)
    for a in a1 a2 a3; do
        local peers=()
        for b in a1 a2 a3; do [ "$a" = "$b" ] || peers+=(--peer "${FP[$b]}@$(addr_of "$b"):9030"); done
        start "$a" "b-$a.log" directory --listen "$(addr_of "$a"):9030" "${peers[@]}"
    done
    NODE_PIDS=()
    for i in 1 2 3 4 5 6 7; do
        local extra=() boot=()
        [ "$i" -ge 5 ] && extra=(--exit --allow 10.60.0.0/16)
        [ "$i" -gt 1 ] && boot=(--bootstrap "$(addr_of n1):9010")
        start "n$i" "b-n$i.log" node --listen "$(addr_of "n$i"):9010" --name "n$i" --directory "$DIRS" "${boot[@]}" "${extra[@]}"
        NODE_PIDS+=($!)
    done
    until on client fetch http://10.60.0.1:8000/1k.bin --hops 3 --directory "$DIRS" -o "$WORK/client/1k.bin" 2>/dev/null; do sleep 0.02; done
    t1=$(now)
    R[burrow.cold]=$(echo "scale=2; ($t1 - $t0) / 1" | bc)
    sleep 1
    R[burrow.rss_idle]=$(rss_of "${NODE_PIDS[@]}")

    : > burrow.builds; : > burrow.fetch_ttfb
    for _ in $(seq 1 "$SAMPLES"); do
        on client fetch http://10.60.0.1:8000/1k.bin --hops 3 --directory "$DIRS" -o "$WORK/client/1k.bin" --json 2> r.json || continue
        python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(r["circuit_build_ms"] or ""); print(r["first_byte_ms"], file=open("burrow.fetch_ttfb", "a"))' r.json >> burrow.builds
    done
    R[burrow.build]="$(pct 50 < burrow.builds) / $(pct 90 < burrow.builds)"
    R[burrow.fetch_ttfb]="$(pct 50 < burrow.fetch_ttfb) / $(pct 90 < burrow.fetch_ttfb)"

    start client b-proxy.log proxy --hops 3 --directory "$DIRS" --listen 127.0.0.1:1080
    local proxy=$!
    until grep -q "circuit ready" b-proxy.log; do sleep 0.05; done
    socks_figures burrow 1080 "${PIDS[@]}"
    R[burrow.rss_after]=$(rss_of "${NODE_PIDS[@]}")
    kill "$proxy" 2>/dev/null || true

    # CIRCUITS circuits at once, held open while the relays' RSS is read:
    # 20 per client, each client from its own address (entries limit
    # circuit creation per address).
    local binds="" n
    for n in $(seq 1 $(((CIRCUITS + 19) / 20))); do
        ip -n boclient addr add "10.50.$((n / 250 + 1)).$((n % 250 + 1))/8" dev eth0 2>/dev/null || true
        binds="$binds${binds:+,}10.50.$((n / 250 + 1)).$((n % 250 + 1))"
    done
    ip netns exec boclient env HOME="$WORK/client" "$LOAD" --directory "$DIRS" --circuits "$CIRCUITS" --per-client 20 --bind "$binds" --hold 4 \
        > load.out 2> load.err & PIDS+=($!)
    local load=$!
    until grep -q "^holding" load.out 2>/dev/null || ! kill -0 "$load" 2>/dev/null; do sleep 0.1; done
    if grep -q "^holding" load.out; then
        R[burrow.load]=$(sed -n 's/^holding \([0-9]*\) circuits.*/\1/p' load.out)
        R[burrow.rss_load]=$(rss_of "${NODE_PIDS[@]}")
        R[burrow.load_note]=$(grep '^holding' load.out)
    else
        R[burrow.load]=0
        R[burrow.rss_load]="-"
        R[burrow.load_note]="load failed: $(tail -1 load.err)"
    fi
    wait "$load" 2>/dev/null || true
    stop_all
}

# --- Tor --------------------------------------------------------------------
run_tor() {
    local a m d i auths="" t0 t1
    for a in a1 a2 a3; do
        d="$WORK/tor/$a"
        mkdir -p "$d/keys"
        (cd "$d/keys" && echo "" | tor-gencert --create-identity-key --passphrase-fd 0 -m 12 -a "$(addr_of "$a"):7000" > /dev/null 2>&1)
        local v3 fp
        v3=$(awk '/^fingerprint/ {print $2}' "$d/keys/authority_certificate")
        fp=$(tor --quiet --ignore-missing-torrc --list-fingerprint --DataDirectory "$d" --ORPort 5000 --Nickname "$a" 2>/dev/null | awk '{$1=""; gsub(/ /, ""); print}')
        auths="${auths}DirAuthority $a orport=5000 no-v2 v3ident=$v3 $(addr_of "$a"):7000 $fp"$'\n'
    done
    common() { # nickname datadir
        cat <<EOF
TestingTorNetwork 1
AssumeReachable 1
PathsNeededToBuildCircuits 0.25
TestingDirAuthVoteExit *
TestingDirAuthVoteGuard *
TestingMinExitFlagThreshold 0
V3AuthNIntervalsValid 2
DataDirectory $2
RunAsDaemon 0
Nickname $1
ShutdownWaitLength 0
Log notice file $2/notice.log
SafeLogging 0
$auths
EOF
        [ -n "${TOR_SCHEDULERS:-}" ] && echo "Schedulers $TOR_SCHEDULERS"
        return 0
    }
    for a in a1 a2 a3; do
        d="$WORK/tor/$a"
        { common "$a" "$d"; cat <<EOF
AuthoritativeDirectory 1
V3AuthoritativeDirectory 1
ContactInfo $a@test.test
TestingV3AuthInitialVotingInterval 10
TestingV3AuthInitialVoteDelay 2
TestingV3AuthInitialDistDelay 2
V3AuthVotingInterval 10
V3AuthVoteDelay 2
V3AuthDistDelay 2
Address $(addr_of "$a")
ORPort $(addr_of "$a"):5000
DirPort $(addr_of "$a"):7000
SocksPort 0
ExitRelay 0
EOF
        } > "$d/torrc"
    done
    for i in 1 2 3 4 5 6 7; do
        d="$WORK/tor/n$i"
        mkdir -p "$d"
        { common "n$i" "$d"; cat <<EOF
Address $(addr_of "n$i")
ORPort $(addr_of "n$i"):5000
SocksPort 0
ServerDNSDetectHijacking 0
ServerDNSTestAddresses
ServerDNSResolvConfFile /dev/null
EOF
        if [ "$i" -ge 5 ]; then printf 'ExitRelay 1\nExitPolicyRejectPrivate 0\nExitPolicy accept *:*\n'; else echo "ExitRelay 0"; fi
        } > "$d/torrc"
    done
    d="$WORK/tor/client"
    mkdir -p "$d"
    { common client "$d"; printf 'SocksPort 127.0.0.1:9050\nControlPort 127.0.0.1:9051\n'; } > "$d/torrc"

    t0=$(now)
    NODE_PIDS=()
    for m in a1 a2 a3 n1 n2 n3 n4 n5 n6 n7 client; do
        ip netns exec "bo$m" tor -f "$WORK/tor/$m/torrc" --quiet & PIDS+=($!)
        case $m in n*) NODE_PIDS+=($!) ;; esac
    done
    local ok=""
    for _ in $(seq 1 1200); do
        if ip netns exec boclient curl -sf -m 5 -x socks5h://127.0.0.1:9050 -o "$WORK/client/1k.tor" http://10.60.0.1:8000/1k.bin 2>/dev/null; then ok=1; break; fi
        sleep 0.1
    done
    t1=$(now)
    if [ -z "$ok" ]; then
        echo "Tor did not bootstrap in 2 minutes; its client log:" >&2
        tail -20 "$WORK/tor/client/notice.log" >&2
        stop_all
        return
    fi
    R[tor.cold]=$(echo "scale=2; ($t1 - $t0) / 1" | bc)
    sleep 1
    R[tor.rss_idle]=$(rss_of "${NODE_PIDS[@]}")
    # Circuit builds on the control port: EXTENDCIRCUIT 0 (Tor picks a 3-hop
    # path) to the BUILT event, circuits closed after.
    ip netns exec boclient timeout 120 python3 - "$SAMPLES" > tor.builds <<'EOF' || echo "tor: circuit builds did not finish in 120 s" >&2
import socket, sys, time
s = socket.create_connection(("127.0.0.1", 9051))
f = s.makefile("rwb", buffering=0)
def send(line):
    f.write(line.encode() + b"\r\n")
def reply():
    while True:
        line = f.readline().decode().strip()
        if not line.startswith("650"):
            return line
send("AUTHENTICATE")
assert reply().startswith("250"), "control port refused AUTHENTICATE"
send("SETEVENTS CIRC")
assert reply().startswith("250")
n = 0
while n < int(sys.argv[1]):
    t = time.monotonic()
    send("EXTENDCIRCUIT 0")
    r = reply()
    if not r.startswith("250 EXTENDED"):
        continue
    cid = r.split()[2]
    while True:
        line = f.readline().decode().strip()
        p = line.split()
        if len(p) >= 4 and p[0] == "650" and p[1] == "CIRC" and p[2] == cid and p[3] in ("BUILT", "FAILED", "CLOSED"):
            break
    if p[3] == "BUILT":
        print("%.3f" % ((time.monotonic() - t) * 1000))
        n += 1
    send("CLOSECIRCUIT " + cid)
EOF
    R[tor.build]="$(pct 50 < tor.builds) / $(pct 90 < tor.builds)"
    socks_figures tor 9050 "${PIDS[@]}"
    R[tor.rss_after]=$(rss_of "${NODE_PIDS[@]}")
    stop_all
}

for s in $SYSTEMS; do "run_$s"; done

# --- the table ------------------------------------------------------------------
ratio() { # burrow tor higher-is-better(1|0)
    local b=${1%% *} t=${2%% *}
    [[ $b =~ ^[0-9.]+$ && $t =~ ^[0-9.]+$ ]] || { echo "-"; return; }
    if [ "$3" = 1 ]; then echo "$(echo "scale=1; $b / $t" | bc)x"; else echo "$(echo "scale=1; $t / $b" | bc)x"; fi
}
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); tor $(tor --version | head -1 | awk '{print $3}' | sed 's/\.$//')${TOR_SCHEDULERS:+ Schedulers $TOR_SCHEDULERS}; web: nginx"
row() { printf '%-44s %-16s %-16s %s\n' "$1" "$2" "$3" "$4"; }
row "figure" "burrow" "tor" "burrow vs tor"
row "cold start to first page (s)" "${R[burrow.cold]:--}" "${R[tor.cold]:--}" "$(ratio "${R[burrow.cold]:--}" "${R[tor.cold]:--}" 0)"
row "3-hop build p50 / p90 (ms)" "${R[burrow.build]:--}" "${R[tor.build]:--}" "$(ratio "${R[burrow.build]:--}" "${R[tor.build]:--}" 0)"
row "1 KiB TTFB via SOCKS p50 / p90 (ms)" "${R[burrow.ttfb]:--}" "${R[tor.ttfb]:--}" "$(ratio "${R[burrow.ttfb]:--}" "${R[tor.ttfb]:--}" 0)"
row "one circuit, $SIZE MiB (MB/s)" "${R[burrow.bulk]:--}" "${R[tor.bulk]:--}" "$(ratio "${R[burrow.bulk]:--}" "${R[tor.bulk]:--}" 1)"
row "CPU-seconds per MiB, all processes" "${R[burrow.cpu]:--}" "${R[tor.cpu]:--}" "$(ratio "${R[burrow.cpu]:--}" "${R[tor.cpu]:--}" 0)"
echo "burrow fetch, 1 KiB on its first circuit (request rides with the stream open): TTFB p50 / p90 ${R[burrow.fetch_ttfb]:--} ms"
echo "plain curl to the server, no circuit: 1 KiB TTFB p50 $PLAIN_TTFB ms, $SIZE MiB at $PLAIN_MBS MB/s"
echo "RSS per relay, idle (MiB):        burrow ${R[burrow.rss_idle]:--} | tor ${R[tor.rss_idle]:--}"
echo "RSS per relay, after bulk (MiB):  burrow ${R[burrow.rss_after]:--} | tor ${R[tor.rss_after]:--}"
echo "RSS per relay, ${R[burrow.load]:-0} circuits open (MiB): burrow ${R[burrow.rss_load]:--}"
[ -n "${R[burrow.load_note]:-}" ] && echo "  (${R[burrow.load_note]})"
exit 0
