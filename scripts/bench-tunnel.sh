#!/usr/bin/env bash
# Benchmark of the exit/proxy tunnel (issue 5), in one run, inside a private
# network namespace (unshare --net, lo only):
#   direct     curl straight to a local nginx on 127.0.0.1
#   ssh -D     curl through `ssh -D` (-c aes256-gcm@openssh.com) to a private sshd on 127.0.0.1
#   burrow     curl through `burrow proxy` -> `burrow relay` -> `burrow exit --allow 127.0.0.1/32`
# For each: MB/s for a 1 GiB file (the three alternate ROUNDS times, default
# 3, and the medians are compared; curl writes to /dev/null, one download per
# path beforehand checks the bytes), the CPU each path costs per GiB, and time
# to first byte of a 1 KiB file (median of 20, a new connection each). Peak
# RSS of the proxy and the exit.
#
# Usage: [ROUNDS=3] scripts/bench-tunnel.sh [SIZE_MIB]     (default 1024)
# Installs what it needs if missing (scripts/bench-install.sh): nginx,
# openssh-server and -client, curl, GNU time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${1:-1024}
if [ -z "${BURROW_BENCH_IN_NS:-}" ]; then
    # shellcheck source=scripts/bench-install.sh
    . "$ROOT/scripts/bench-install.sh"
    need_commands nginx:nginx-light /usr/sbin/sshd:openssh-server ssh:openssh-client curl:curl \
        /usr/bin/time:time unshare:util-linux
    [ -n "${BURROW_BIN:-}" ] || (cd "$ROOT" && cargo build --release -q -p burrow-cli)
    exec unshare --net env BURROW_BENCH_IN_NS=1 bash "$0" "$@"
fi
ip link set lo up
WORK_NAME=burrow-tunnel
# shellcheck source=scripts/bench-common.sh
. "$ROOT/scripts/bench-common.sh"
cd "$WORK"

# --- the web server ------------------------------------------------------------------
mkdir -p www nginx
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > www/big.bin
head -c 1024 /dev/urandom > www/small.bin
warm_memory $((SIZE_MIB * 2))
cat > nginx/nginx.conf <<EOF
user root;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    server { listen 127.0.0.1:8080; root $WORK/www; }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx"
PIDS+=("$(sleep 0.3; cat "$WORK/nginx/nginx.pid")")

# --- sshd on 127.0.0.1:2222 and ssh -D 1081 ----------------------------------------------
mkdir -p ssh && chmod 700 ssh
ssh-keygen -q -t ed25519 -N '' -f ssh/host_key
ssh-keygen -q -t ed25519 -N '' -f ssh/user_key
cp ssh/user_key.pub ssh/authorized_keys
mkdir -p /run/sshd
/usr/sbin/sshd -f /dev/null -D -p 2222 -o ListenAddress=127.0.0.1 -h "$WORK/ssh/host_key" \
    -o AuthorizedKeysFile="$WORK/ssh/authorized_keys" -o StrictModes=no -o PermitRootLogin=yes \
    -o PasswordAuthentication=no -o PidFile=none 2> ssh/sshd.log & PIDS+=($!)
sleep 0.5
ssh -N -D 127.0.0.1:1081 -p 2222 -c aes256-gcm@openssh.com -i ssh/user_key \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 & PIDS+=($!)

# --- burrow: relay, pairing, exit, proxy ---------------------------------------------------
export HOME_A=$WORK/home-a HOME_B=$WORK/home-b
mkdir -p "$HOME_A" "$HOME_B"
"$BIN" relay --listen 127.0.0.1:7000 --key "$WORK/relay.key" 2> relay.err & RELAY=$!; PIDS+=($RELAY)
wait_for relay.err "listening on"
HOME=$HOME_A "$BIN" pair --relay 127.0.0.1:7000 --name laptop 2> pair-a.err > /dev/null & PA=$!
wait_for pair-a.err "^code:"
CODE=$(grep '^code:' pair-a.err | cut -d' ' -f2)
HOME=$HOME_B "$BIN" pair --relay 127.0.0.1:7000 --name home "$CODE" > /dev/null
wait "$PA"
HOME=$HOME_A /usr/bin/time -v "$BIN" exit --relay 127.0.0.1:7000 --allow 127.0.0.1/32 2> exit.err & EP=$!; PIDS+=($EP)
wait_for exit.err "exit ready"
HOME=$HOME_B /usr/bin/time -v "$BIN" proxy home --relay 127.0.0.1:7000 --listen 127.0.0.1:1080 2> proxy.err & PP=$!; PIDS+=($PP)
wait_for proxy.err "proxy listening"
sleep 0.5

echo "== $SIZE_MIB MiB, $(nproc) cores, in a private network namespace"
SUM=$(sha256sum www/big.bin | cut -d' ' -f1)
# CPU time the whole machine spent (user + system + irq + softirq, in clock
# ticks; idle and steal excluded), and that of the tunnel's own processes
# (ssh + sshd, or burrow's proxy, relay and exit; all threads): wall-clock
# rates on this shared VM swing by ±30%, the CPU a path costs per byte less.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
own_ticks() { # program names...: their processes' utime + stime
    local p t=0
    for p in $(for n in "$@"; do pgrep -x "$n"; done); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
per_gib() { python3 -c "print(f'{($2 - $1) / $(getconf CLK_TCK) / ($SIZE_MIB / 1024):.2f}')"; }
check_once() { # curl-proxy-args...: the big file arrives byte-identical
    curl -sS "$@" -o got.bin http://127.0.0.1:8080/big.bin
    [ "$(sha256sum got.bin | cut -d' ' -f1)" = "$SUM" ] || { echo "MISMATCH via $*" >&2; exit 1; }
    rm -f got.bin
}
# MB/s for the big file (to /dev/null: writing 1 GiB into tmpfs costs this VM
# more than the tunnel does, see docs/benchmarks.md; check_once checks the
# bytes); CPU-s per GiB into CPU_PER_GIB and OWN_PER_GIB.
throughput() { # curl-proxy-args...
    local t c0 c1 o0 o1
    c0=$(busy_ticks); o0=$(own_ticks burrow ssh sshd)
    t=$(curl -sS "$@" -o /dev/null -w '%{time_total} %{size_download}' http://127.0.0.1:8080/big.bin)
    c1=$(busy_ticks); o1=$(own_ticks burrow ssh sshd)
    [ "${t#* }" = "$((SIZE_MIB * 1048576))" ] || { echo "SHORT DOWNLOAD via $*: ${t#* } bytes" >&2; exit 1; }
    CPU_PER_GIB=$(per_gib "$c0" "$c1")
    OWN_PER_GIB=$(per_gib "$o0" "$o1")
    python3 -c "print(f'{$SIZE_MIB * 1048576 / ${t% *} / 1e6:.0f}')"
}
ttfb() { # curl-proxy-args...: median time to first byte of the small file, ms
    local all=()
    for _ in $(seq 1 20); do
        all+=("$(curl -sS "$@" -o /dev/null -w '%{time_starttransfer}' http://127.0.0.1:8080/small.bin)")
    done
    printf '%s\n' "${all[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.2f", (a[int((NR+1)/2)] + a[int(NR/2)+1]) / 2 * 1000}'
}
# This VM's speed moves by ±30% from minute to minute: the three paths
# alternate ROUNDS times and the medians are compared.
ROUNDS=${ROUNDS:-3}
if [ -n "${BURROW_PERF:-}" ]; then
    perf record -q -g -o "$ROOT/exit.perf" -p "$(pgrep -P "$EP")" 2>/dev/null & PE=$!
    perf record -q -g -o "$ROOT/proxy.perf" -p "$(pgrep -P "$PP")" 2>/dev/null & PX=$!
    sleep 0.5
fi
if [ -n "${BURROW_PERF_ALL:-}" ]; then
    # System-wide, during one burrow download only.
    perf record -q -a -o "$ROOT/all.perf" -- curl -sS --socks5-hostname 127.0.0.1:1080 -o /dev/null http://127.0.0.1:8080/big.bin
fi
check_once; check_once --socks5-hostname 127.0.0.1:1081; check_once --socks5-hostname 127.0.0.1:1080
echo "byte-identical through all three paths"
T_DIRECT=(); T_SSH=(); T_BURROW=(); C_DIRECT=(); C_SSH=(); C_BURROW=(); O_SSH=(); O_BURROW=()
for round in $(seq 1 "$ROUNDS"); do
    throughput > rate; T_DIRECT+=("$(cat rate)"); C_DIRECT+=("$CPU_PER_GIB")
    throughput --socks5-hostname 127.0.0.1:1081 > rate; T_SSH+=("$(cat rate)"); C_SSH+=("$CPU_PER_GIB"); O_SSH+=("$OWN_PER_GIB")
    throughput --socks5-hostname 127.0.0.1:1080 > rate; T_BURROW+=("$(cat rate)"); C_BURROW+=("$CPU_PER_GIB"); O_BURROW+=("$OWN_PER_GIB")
    echo "round $round: direct ${T_DIRECT[-1]}, ssh -D ${T_SSH[-1]}, burrow ${T_BURROW[-1]} MB/s;" \
        "CPU-s per GiB, whole machine: ${C_DIRECT[-1]}, ${C_SSH[-1]}, ${C_BURROW[-1]};" \
        "the tunnel's own processes: ${O_SSH[-1]}, ${O_BURROW[-1]}"
done
# Each burrow process's CPU over everything so far, per GiB the rounds moved.
total_per_gib() { python3 -c "print(f'{$(awk '{print $14 + $15}' "/proc/$1/stat") / $(getconf CLK_TCK) / (($ROUNDS + 1) * $SIZE_MIB / 1024):.2f}')"; }
BY_PROCESS="proxy $(total_per_gib "$(pgrep -P "$PP")"), relay $(total_per_gib "$RELAY"), exit $(total_per_gib "$(pgrep -P "$EP")")"
if [ -n "${BURROW_PERF:-}" ]; then kill -INT "$PE" "$PX"; wait "$PE" "$PX" 2>/dev/null || true; fi
R_DIRECT="direct $(median "${T_DIRECT[@]}") $(ttfb)"
R_SSH="ssh $(median "${T_SSH[@]}") $(ttfb --socks5-hostname 127.0.0.1:1081)"
R_BURROW="burrow $(median "${T_BURROW[@]}") $(ttfb --socks5-hostname 127.0.0.1:1080)"
pkill -TERM -P "$PP" || true; pkill -TERM -P "$EP" || true
wait "$PP" 2>/dev/null || true; wait "$EP" 2>/dev/null || true
printf '%-8s %10s %14s\n' path "MB/s" "1 KiB TTFB ms"
for r in "$R_DIRECT" "$R_SSH" "$R_BURROW"; do
    # shellcheck disable=SC2086
    printf '%-8s %10s %14s\n' $r
done
echo "(MB/s: median of $ROUNDS alternating rounds)"
echo "CPU-s per GiB, whole machine (medians): direct $(median2 "${C_DIRECT[@]}"), ssh -D $(median2 "${C_SSH[@]}"), burrow $(median2 "${C_BURROW[@]}")"
echo "CPU-s per GiB, the tunnel's own processes (medians): ssh + sshd $(median2 "${O_SSH[@]}"), burrow proxy + relay + exit $(median2 "${O_BURROW[@]}")"
echo "burrow's CPU-s per GiB by process (over all rounds): $BY_PROCESS"
echo "peak RSS: proxy $(rss proxy.err), exit $(rss exit.err)"
python3 - "$R_SSH" "$R_BURROW" <<'PY'
import sys
s = sys.argv[1].split(); b = sys.argv[2].split()
print(f"burrow / ssh -D throughput: {float(b[1]) / float(s[1]):.2f}x   TTFB burrow - ssh: {float(b[2]) - float(s[2]):+.2f} ms")
PY
