# Shared by the bench scripts, sourced once they run inside their private
# network namespace: the binary, a scratch folder in /dev/shm (set WORK_NAME
# first) removed on exit with every process in PIDS, and small helpers.
# BURROW_BIN: another build to measure (scripts/bench-compare.sh runs an
# old and a new one alternately); BENCH_DIR: where data is written
# (default /dev/shm, the page cache; /tmp for a disk file system).
BIN="${BURROW_BIN:-$ROOT/target/release/burrow}"
WORK=$(mktemp -d "${BENCH_DIR:-/dev/shm}/${WORK_NAME:-burrow-bench}.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
lan_address() { # a veth address (10.99.0.1), so that direct paths have one to advertise
    ip link add bench0 type veth peer name bench1
    ip addr add 10.99.0.1/24 dev bench0
    ip link set bench0 up
    ip link set bench1 up
}
wait_for() { # file pattern
    for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}
# Peak RSS from a `/usr/bin/time -v` log.
rss() { grep -oP 'Maximum resident set size \(kbytes\): \K[0-9]+' "$1" | awk '{printf "%.1f MiB", $1/1024}'; }
# Median of the arguments, rounded.
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "%.0f", (a[int((NR+1)/2)] + a[int(NR/2)+1]) / 2}'; }
# The same with two decimals.
median2() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "%.2f", (a[int((NR+1)/2)] + a[int(NR/2)+1]) / 2}'; }
# This VM's memory is backed by the host on first touch: writing into pages
# the guest never used runs at ~0.45 GB/s, into pages it used before at
# ~1.5 GB/s (dd to /dev/shm), and only writers into tmpfs (the receivers,
# socat) pay it, iperf3 does not. Touch MiB of fresh memory once, up front,
# so that every round pays the same.
warm_memory() { # MiB
    dd if=/dev/zero of="$WORK/warm" bs=1M count="$1" status=none
    rm -f "$WORK/warm"
}
