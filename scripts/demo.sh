#!/usr/bin/env bash
# Builds burrow and runs its main job on this machine: a relay on 127.0.0.1,
# a sender and a receiver, moving this repository's README through the relay.
# Needs nothing configured. Everything it starts is stopped when it ends.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$ROOT/Cargo.toml" -p burrow-cli
BIN="$ROOT/target/release/burrow"
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT

PORT=${BURROW_DEMO_PORT:-9019}
"$BIN" relay --listen "127.0.0.1:$PORT" 2> "$WORK/relay.log" & PIDS+=($!)
for _ in $(seq 1 100); do grep -q listening "$WORK/relay.log" && break; sleep 0.05; done
echo "relay: $(cat "$WORK/relay.log")"

"$BIN" send --relay "127.0.0.1:$PORT" "$ROOT/README.md" 2> "$WORK/send.log" & PIDS+=($!)
for _ in $(seq 1 100); do grep -q '^code:' "$WORK/send.log" && break; sleep 0.05; done
CODE=$(grep '^code:' "$WORK/send.log" | cut -d' ' -f2)
echo "sender printed the code $CODE; receiving it into $WORK/out ..."

"$BIN" receive --relay "127.0.0.1:$PORT" --yes --out "$WORK/out" "$CODE"
wait "${PIDS[1]}"
cmp "$ROOT/README.md" "$WORK/out/README.md" && echo "README.md arrived byte-identical."
