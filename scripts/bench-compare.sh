#!/usr/bin/env bash
# Before/after in one run: a bench script (transfer or tunnel) alternately
# with an old build and this tree's, PAIRS times each, so that both see
# the same minutes of this VM. The old build is any `burrow` binary, e.g.
#   git worktree add /tmp/old <commit> && \
#     (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p burrow-cli)
#
# Usage: [PAIRS=2] [ROUNDS=3] [BENCH_DIR=/tmp] scripts/bench-compare.sh transfer|tunnel OLD_BIN [SIZE_MIB]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHICH=${1:?transfer or tunnel}
OLD=$(realpath "${2:?the old burrow binary}")
shift 2
(cd "$ROOT" && cargo build --release -q -p burrow-cli)
NEW="$ROOT/target/release/burrow"
for pair in $(seq 1 "${PAIRS:-2}"); do
    for which in old new; do
        bin=$OLD; [ "$which" = new ] && bin=$NEW
        echo "######## pair $pair: $which ($bin)"
        BURROW_BIN=$bin bash "$ROOT/scripts/bench-$WHICH.sh" "$@"
    done
done
