#!/usr/bin/env bash
# A/B of two burrow builds, transfer by transfer: for ROUNDS rounds, 1 GiB
# via the relay and direct, then 20,000 files of 4 KiB, each case run with
# the old build and then the new one right after, so both see the same
# minute of this VM (whose speed moves a lot between minutes). Prints each
# transfer's MB/s (or files/s) and the CPU seconds of each side's process.
# Leave the first round out when reading: whichever build runs first after
# the file is written pays for the page cache.
#
# Usage: [DIR=/dev/shm] [ROUNDS=3] [MODES="relay direct"] [FILES=1]
#        scripts/bench-ab.sh OLD_BIN NEW_BIN
# (MODES: which 1 GiB paths to run; FILES=0 leaves the small files out;
# WARM_MIB: fresh memory touched once before, default 16 GiB.)
# Runs inside a private network namespace (lo, plus a veth address so that
# direct paths have one to advertise); data in $DIR (/dev/shm, or /tmp for
# a disk file system). Needs GNU time (installed if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=$(realpath "${1:?the old burrow binary}")
NEW=$(realpath "${2:?the new burrow binary}")
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-relay direct}
FILES=${FILES:-1}
DIR=${DIR:-/dev/shm}
if [ -z "${BURROW_BENCH_IN_NS:-}" ]; then
    # shellcheck source=scripts/bench-install.sh
    . "$ROOT/scripts/bench-install.sh"
    need_commands /usr/bin/time:time unshare:util-linux ip:iproute2 python3:python3
    exec unshare --net env BURROW_BENCH_IN_NS=1 bash "$0" "$@"
fi
ip link set lo up
BENCH_DIR=$DIR
WORK_NAME=burrow-ab
# shellcheck source=scripts/bench-common.sh
. "$ROOT/scripts/bench-common.sh"
lan_address
cd "$WORK"
echo "== A/B, $(nproc) cores, data in $DIR: old $OLD, new $NEW"
# Fresh guest pages cost this VM a host fault on first touch (see
# warm_memory): unwarmed, whichever build happened to get fresh pages for
# its 1 GiB ran at half speed, which looked like a 2x difference between
# builds and followed the position in the round, not the build.
warm_memory "${WARM_MIB:-16384}"
head -c $((1024 * 1024 * 1024)) /dev/urandom > data.bin
python3 - <<'PY'
import os
for i in range(20000):
    d = f"many/d{i // 1000:02d}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:05d}", "wb") as f:
        f.write(os.urandom(4096))
PY
"$NEW" relay --listen 127.0.0.1:7300 2> relay.err & PIDS+=($!)
wait_for relay.err "listening on"
cpu() { grep -E 'User time|System time' "$1" | awk '{s+=$NF} END {printf "%.2f", s}'; }
n=0
one() { # n bin what [flag]: one transfer of `what` under code n; prints seconds
    local n=$1 bin=$2 what=$3 flag=${4:-}
    rm -rf out; mkdir out
    # Deleting the last run's 20,000 files leaves ext4 work behind (journal,
    # writeback) that the next transfer would pay for: settle it first.
    sync
    # shellcheck disable=SC2086
    /usr/bin/time -v timeout 300 "$bin" send $flag --relay 127.0.0.1:7300 --code "$n-absorb-zebra-captain" "$what" 2> send.err &
    local sp=$!
    wait_for send.err '^code:'
    local t0; t0=$(now)
    # shellcheck disable=SC2086
    /usr/bin/time -v timeout 300 "$bin" receive $flag --relay 127.0.0.1:7300 --yes --out out "$n-absorb-zebra-captain" 2> recv.err
    wait "$sp"
    local t1; t1=$(now)
    python3 -c "print(f'{$t1 - $t0:.4f}')"
}
for r in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
        flag=; [ "$mode" = relay ] && flag=--relay-only
        for which in old new; do
            bin=$OLD; [ "$which" = new ] && bin=$NEW
            n=$((n + 1))
            s=$(one "$n" "$bin" data.bin "$flag")
            cmp -s data.bin out/data.bin || { echo "MISMATCH" >&2; exit 1; }
            echo "round $r, 1 GiB $mode, $which: $(python3 -c "print(f'{1073741824 / $s / 1e6:.0f}')") MB/s  (CPU-s sender $(cpu send.err), receiver $(cpu recv.err))"
        done
    done
    [ "$FILES" = 1 ] || continue
    for which in old new; do
        bin=$OLD; [ "$which" = new ] && bin=$NEW
        n=$((n + 1))
        s=$(one "$n" "$bin" many --relay-only)
        diff -r many out/many > /dev/null || { echo "MISMATCH in many files" >&2; exit 1; }
        echo "round $r, 20,000 x 4 KiB, $which: $(python3 -c "print(f'{20000 / $s:.0f}')") files/s  (CPU-s sender $(cpu send.err), receiver $(cpu recv.err))"
    done
done
