#!/usr/bin/env bash
# Benchmark, all in one run:
#  (a) relay path: one file from `burrow send --relay-only` to `burrow receive`
#      through a local `burrow relay`, against
#        plaintext  the same bytes through `socat -b 262144` as a TCP forwarder
#        wormhole   magic-wormhole (PyPI) with a local mailbox server and transit
#                   relay, both sides --no-listen so the transit relay carries the bytes
#  (b) direct path: burrow with direct paths allowed (the race picks direct),
#      against `iperf3` (plaintext, memory to memory) and magic-wormhole with
#      its direct connection hints
#  (c) 20,000 files of 4 KiB (files/s)
#  (d) the end-to-end time of one 1 KiB file (median of 20)
#  (e) resume: the receiver is killed halfway through, both sides run again
#      with a new code; the bytes moved the second time, as a share of the file
# Prints MB/s, the ratios, and every burrow process's peak RSS. (a) and (b)
# alternate baseline and burrow ROUNDS times (default 3) and compare medians.
#
# Usage: [ROUNDS=3] scripts/bench-transfer.sh [SIZE_MIB]      (default 1024)
# Runs itself inside a private network namespace (unshare --net: lo, plus a
# veth interface 10.99.0.1 so that direct paths have an address to advertise),
# so nothing is advertised to or reaches any other address. Data lives in
# /dev/shm, so the page cache, not a disk, is what is measured.
# Installs what it needs if missing (scripts/bench-install.sh): socat,
# iperf3, GNU time, b3sum, python3-venv (Debian), and magic-wormhole with its
# mailbox server and transit relay (PyPI, in a venv under target/).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${1:-1024}

if [ -z "${BURROW_BENCH_IN_NS:-}" ]; then
    # shellcheck source=scripts/bench-install.sh
    . "$ROOT/scripts/bench-install.sh"
    need_commands socat:socat iperf3:iperf3 /usr/bin/time:time b3sum:b3sum unshare:util-linux ip:iproute2
    python3 -c 'import venv, ensurepip' 2>/dev/null || need_commands no-such-command:python3-venv
    need_wormhole
    [ -n "${BURROW_BIN:-}" ] || (cd "$ROOT" && cargo build --release -q -p burrow-cli)
    exec unshare --net env BURROW_BENCH_IN_NS=1 bash "$0" "$@"
fi
ip link set lo up

WORK_NAME=burrow-bench
# shellcheck source=scripts/bench-common.sh
. "$ROOT/scripts/bench-common.sh"
lan_address
trap 'echo "bench failed at line $LINENO" >&2; for f in r1-recv.err r2-recv.err r2-send.err r1-send.err; do [ -f "$f" ] && tail -3 "$f" >&2; done' ERR
cd "$WORK"

BYTES=$((SIZE_MIB * 1024 * 1024))
head -c "$BYTES" /dev/urandom > data.bin
warm_memory $((SIZE_MIB * 3))
SUM=$(b3sum --no-names data.bin 2>/dev/null || sha256sum data.bin | cut -d' ' -f1)
check() { # file
    local s
    s=$(b3sum --no-names "$1" 2>/dev/null || sha256sum "$1" | cut -d' ' -f1)
    [ "$s" = "$SUM" ] || { echo "MISMATCH in $1" >&2; exit 1; }
}
mbps() { python3 -c "print(f'{$BYTES / ($2 - $1) / 1e6:.0f}')"; }

echo "== $SIZE_MIB MiB, $(nproc) cores, in a private network namespace"

maxrss() { # files...: the largest peak RSS among them
    cat "$@" | grep -oP 'Maximum resident set size \(kbytes\): \K[0-9]+' | sort -n | tail -1 | awk '{printf "%.1f MiB", $1/1024}'
}
# This VM's speed moves by ±30% from minute to minute: each baseline and
# burrow run alternate ROUNDS times and the medians are compared.
ROUNDS=${ROUNDS:-3}

/usr/bin/time -v "$BIN" relay --listen 127.0.0.1:7100 2> relay.err & RP=$!; PIDS+=($RP)
wait_for relay.err "listening on"
PLAINS=(); BURROWS=(); IPERFS=(); DIRECTS=(); PDIRECTS=()
for round in $(seq 1 "$ROUNDS"); do
    # --- plaintext baseline: socat as the relay -------------------------------
    rm -f out.socat
    timeout 300 socat -b 262144 -u TCP-LISTEN:7002,reuseaddr OPEN:out.socat,creat,trunc & R=$!; PIDS+=($R)
    timeout 300 socat -b 262144 TCP-LISTEN:7001,reuseaddr TCP:127.0.0.1:7002 & F=$!; PIDS+=($F)
    sleep 0.3
    t0=$(now)
    timeout 300 socat -b 262144 -u OPEN:data.bin TCP:127.0.0.1:7001
    wait "$R"
    t1=$(now)
    check out.socat; rm -f out.socat
    PLAINS+=("$(mbps "$t0" "$t1")")

    # --- burrow through its relay ---------------------------------------------
    mkdir -p out.burrow
    /usr/bin/time -v timeout 300 "$BIN" send --relay-only --relay 127.0.0.1:7100 data.bin 2> send.err.$round & SP=$!; PIDS+=($SP)
    wait_for send.err.$round "^code:"
    CODE=$(grep '^code:' send.err.$round | cut -d' ' -f2)
    t0=$(now)
    /usr/bin/time -v timeout 300 "$BIN" receive --relay-only --relay 127.0.0.1:7100 --yes --out out.burrow "$CODE" 2> recv.err.$round
    wait "$SP"
    t1=$(now)
    check out.burrow/data.bin; rm -rf out.burrow
    BURROWS+=("$(mbps "$t0" "$t1")")

    # --- direct: iperf3 baseline, then burrow with the race --------------------
    iperf3 -s -1 -B 10.99.0.1 -p 7400 > iperf-s.log 2>&1 & IP=$!; PIDS+=($IP)
    sleep 0.3
    IPERFS+=("$(iperf3 -c 10.99.0.1 -p 7400 -n "$BYTES" -J | python3 -c "import json,sys; print(f\"{json.load(sys.stdin)['end']['sum_received']['bits_per_second'] / 8e6:.0f}\")")")
    wait "$IP" || true
    # The same work as burrow direct, in plaintext: read the file, one TCP
    # connection, write the file in the same place.
    rm -f out.pdirect
    timeout 300 socat -b 262144 -u TCP-LISTEN:7402,bind=10.99.0.1,reuseaddr OPEN:out.pdirect,creat,trunc & R=$!; PIDS+=($R)
    sleep 0.3
    t0=$(now)
    timeout 300 socat -b 262144 -u OPEN:data.bin TCP:10.99.0.1:7402
    wait "$R"
    t1=$(now)
    check out.pdirect; rm -f out.pdirect
    PDIRECTS+=("$(mbps "$t0" "$t1")")
    mkdir -p out.direct
    /usr/bin/time -v timeout 300 "$BIN" send --json --relay 127.0.0.1:7100 data.bin > dsend.json 2> dsend.err.$round & SP=$!; PIDS+=($SP)
    wait_for dsend.json '"code"'
    CODE=$(python3 -c "import json; print(json.loads(open('dsend.json').readline())['code'])")
    t0=$(now)
    /usr/bin/time -v timeout 300 "$BIN" receive --json --relay 127.0.0.1:7100 --yes --out out.direct "$CODE" > drecv.json 2> drecv.err.$round
    wait "$SP"
    t1=$(now)
    grep -q '"path":"direct"' drecv.json || { echo "the direct path did not win:" >&2; grep connected drecv.json >&2; exit 1; }
    check out.direct/data.bin; rm -rf out.direct
    DIRECTS+=("$(mbps "$t0" "$t1")")
    echo "round $round: socat ${PLAINS[-1]}, burrow relay ${BURROWS[-1]}, iperf3 ${IPERFS[-1]}, socat direct to file ${PDIRECTS[-1]}, burrow direct ${DIRECTS[-1]} MB/s"
done
pkill -TERM -P "$RP"; wait "$RP" || true
PLAIN=$(median "${PLAINS[@]}"); BURROW=$(median "${BURROWS[@]}")
IPERF=$(median "${IPERFS[@]}"); DIRECT=$(median "${DIRECTS[@]}"); PDIRECT=$(median "${PDIRECTS[@]}")
echo "plaintext (socat forwarder): $PLAIN MB/s (median of $ROUNDS)"
echo "burrow via relay:            $BURROW MB/s   (peak RSS: sender $(maxrss send.err.*), receiver $(maxrss recv.err.*))"
echo "plaintext direct (iperf3):   $IPERF MB/s (memory to memory)"
echo "plaintext direct to a file:  $PDIRECT MB/s (socat, file to file in $(df --output=fstype "$WORK" | tail -1 | tr -d ' '))"
echo "burrow direct:               $DIRECT MB/s   (peak RSS: sender $(maxrss dsend.err.*), receiver $(maxrss drecv.err.*); relay over all runs $(rss relay.err))"

# --- magic-wormhole through its transit relay -------------------------------
timeout 600 twist wormhole-mailbox --port=tcp:7200:interface=127.0.0.1 > mailbox.log 2>&1 & M=$!; PIDS+=($M)
timeout 600 twist transitrelay --port=tcp:7201:interface=127.0.0.1 > transit.log 2>&1 & T=$!; PIDS+=($T)
sleep 2
WH=(wormhole --relay-url ws://127.0.0.1:7200/v1 --transit-helper tcp:127.0.0.1:7201)
mkdir -p out.wh
timeout 600 "${WH[@]}" send --no-listen --hide-progress --code 7-bench-mark data.bin > wh-send.log 2>&1 & WS=$!; PIDS+=($WS)
sleep 1
t0=$(now)
timeout 600 "${WH[@]}" receive --no-listen --hide-progress --accept-file -o out.wh/data.bin 7-bench-mark > wh-recv.log 2>&1
wait "$WS"
t1=$(now)
check out.wh/data.bin; rm -rf out.wh
WORM=$(mbps "$t0" "$t1")
echo "magic-wormhole via transit:  $WORM MB/s"
mkdir -p out.wh
timeout 600 "${WH[@]}" send --hide-progress --code 8-bench-mark data.bin > whd-send.log 2>&1 & WS=$!; PIDS+=($WS)
sleep 1
t0=$(now)
timeout 600 "${WH[@]}" receive --hide-progress --accept-file -o out.wh/data.bin 8-bench-mark > whd-recv.log 2>&1
wait "$WS"
t1=$(now)
check out.wh/data.bin; rm -rf out.wh
WORMD=$(mbps "$t0" "$t1")
echo "magic-wormhole direct:       $WORMD MB/s"

# --- many small files: 20,000 x 4 KiB -----------------------------------------
python3 - <<'PY'
import os
for i in range(20000):
    d = f"many/d{i // 1000:02d}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:05d}", "wb") as f:
        f.write(os.urandom(4096))
PY
"$BIN" relay --listen 127.0.0.1:7300 2> relay2.err & RP=$!; PIDS+=($RP)
wait_for relay2.err "listening on"
mkdir -p out.many
/usr/bin/time -v timeout 300 "$BIN" send --relay 127.0.0.1:7300 many 2> many-send.err & SP=$!; PIDS+=($SP)
wait_for many-send.err "^code:"
CODE=$(grep '^code:' many-send.err | cut -d' ' -f2)
t0=$(now)
/usr/bin/time -v timeout 300 "$BIN" receive --relay 127.0.0.1:7300 --yes --out out.many "$CODE" 2> many-recv.err
wait "$SP"
t1=$(now)
diff -r many out.many/many > /dev/null || { echo "MISMATCH in many files" >&2; exit 1; }
FILES=$(python3 -c "print(f'{20000 / ($t1 - $t0):.0f}')")
echo "burrow 20,000 x 4 KiB files:  $FILES files/s   (peak RSS: sender $(rss many-send.err), receiver $(rss many-recv.err))"

# --- latency: one 1 KiB file, end to end, median of 20 -------------------------
head -c 1024 /dev/urandom > small.bin
LAT=()
for i in $(seq 1 20); do
    rm -rf out.small; mkdir out.small
    timeout 30 "$BIN" send --relay 127.0.0.1:7300 --code "9$i-absorb-zebra-captain" small.bin 2> small-send.err & SP=$!
    wait_for small-send.err "^code:"
    t0=$(now)
    timeout 30 "$BIN" receive --relay 127.0.0.1:7300 --yes --out out.small "9$i-absorb-zebra-captain" 2> /dev/null
    wait "$SP"
    t1=$(now)
    cmp -s small.bin out.small/small.bin || { echo "MISMATCH in small file" >&2; exit 1; }
    LAT+=("$(python3 -c "print(($t1 - $t0) * 1000)")")
done
pkill -TERM -P "$RP" 2>/dev/null || kill "$RP"
MEDIAN=$(printf '%s\n' "${LAT[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", (a[int((NR+1)/2)] + a[int(NR/2)+1]) / 2}')
echo "burrow 1 KiB end to end:      $MEDIAN ms (median of 20; receiver start to both done)"

# --- resume: kill the receiver halfway, run both sides again -----------------------
"$BIN" relay --listen 127.0.0.1:7500 2> relay3.err & RP=$!; PIDS+=($RP)
wait_for relay3.err "listening on"
mkdir -p out.resume
timeout 300 "$BIN" send --relay-only --reconnect 0 --relay 127.0.0.1:7500 data.bin 2> r1-send.err & SP=$!; PIDS+=($SP)
wait_for r1-send.err "^code:"
CODE=$(grep '^code:' r1-send.err | cut -d' ' -f2)
"$BIN" receive --json --relay-only --relay 127.0.0.1:7500 --yes --out out.resume "$CODE" > r1.json 2> r1-recv.err & RV=$!; PIDS+=($RV)
HALF=$((BYTES / 2))
# Watch the hidden partial file grow; kill the receiver once it holds half.
for _ in $(seq 1 20000); do
    P=$(stat -c %s out.resume/.*part 2>/dev/null || echo 0)
    [ "$P" -ge "$HALF" ] && break
    kill -0 "$RV" 2>/dev/null || break
done
kill -KILL "$RV" 2>/dev/null || { echo "resume: the receiver finished before it could be killed" >&2; exit 1; }
wait "$RV" 2>/dev/null || true
wait "$SP" 2>/dev/null || true
PART=$(stat -c %s out.resume/.*part 2>/dev/null || echo 0)
timeout 300 "$BIN" send --relay-only --relay 127.0.0.1:7500 data.bin 2> r2-send.err & SP=$!; PIDS+=($SP)
wait_for r2-send.err "^code:"
CODE=$(grep '^code:' r2-send.err | cut -d' ' -f2)
timeout 300 "$BIN" receive --json --relay-only --relay 127.0.0.1:7500 --yes --out out.resume "$CODE" > r2.json 2> r2-recv.err
wait "$SP"
check out.resume/data.bin
MOVED=$(grep '"event":"done"' r2.json | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['bytes'])")
pkill -TERM -P "$RP" 2>/dev/null || kill "$RP"
echo "resume: killed at $PART bytes kept; the second run moved $MOVED of $BYTES bytes ($(python3 -c "print(f'{$MOVED / $BYTES * 100:.0f}')")%), file identical"

python3 - "$BURROW" "$PLAIN" "$WORM" "$DIRECT" "$IPERF" "$WORMD" "$PDIRECT" <<'PY'
import sys
b, p, w, d, i, wd, pd = map(float, sys.argv[1:])
print(f"relay:  burrow / plaintext relay path (socat): {b / p * 100:.0f}%   burrow / magic-wormhole relay:  {b / w:.1f}x")
print(f"direct: burrow / plaintext direct (iperf3):    {d / i * 100:.0f}%   burrow / magic-wormhole direct: {d / wd:.1f}x")
print(f"direct: burrow / plaintext direct to a file:   {d / pd * 100:.0f}%")
PY
