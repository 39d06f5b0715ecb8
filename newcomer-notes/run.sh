#!/bin/sh
# How the crate was run (from /tmp/newcomer-crate, a copy of this directory).
set -x
export CARGO_TARGET_DIR=/work/wt/newcomer/target/newcomer-crate
export SMOLVM_HARNESS_STATE_DIR=$(mktemp -d) SMOLVM_FAKE_STATE=$(mktemp -d)
cargo test                      # unit mode: real-mode tests SKIPPED
cargo nextest run
export SMOLVM_BIN=$CARGO_TARGET_DIR/debug/examples/smolvm-fake
cargo test                      # real mode through the fake
SMOLVM_HARNESS_GOLDEN_GRACE=2s SMOLVM_HARNESS_REQUIRE=1 cargo nextest run
sleep 4; "$SMOLVM_BIN" machine ls   # "No machines found"
NEWCOMER_FAIL=1 cargo nextest run --no-fail-fast   # 4 failing tests: artifacts
NEWCOMER_NO_DNS=1 SMOLVM_FAKE_VERSION=0.8.2 cargo test   # cold golden fallback
