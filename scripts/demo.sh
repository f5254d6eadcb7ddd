#!/usr/bin/env bash
# Builds burrow and runs its main job on this machine with nothing configured:
# `burrow send` serves a relay itself and announces it on the local network,
# `burrow receive CODE` finds it, and this repository's README moves across
# (directly, when a direct path wins). Everything it starts is stopped when it ends.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$ROOT/Cargo.toml" -p burrow-cli
BIN="$ROOT/target/release/burrow"
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
unset BURROW_RELAY
export BURROW_CONFIG=/dev/null

"$BIN" send "$ROOT/README.md" 2> "$WORK/send.log" & PIDS+=($!)
for _ in $(seq 1 100); do grep -q '^code:' "$WORK/send.log" && break; sleep 0.05; done
cat "$WORK/send.log"
CODE=$(grep '^code:' "$WORK/send.log" | cut -d' ' -f2)
echo "receiving $CODE into $WORK/out ..."

"$BIN" receive --yes --out "$WORK/out" "$CODE"
wait "${PIDS[0]}"
cmp "$ROOT/README.md" "$WORK/out/README.md" && echo "README.md arrived byte-identical."
