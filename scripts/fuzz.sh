#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Builds every fuzz target of fuzz/ once, then runs each (or the named ones) for
# SECONDS_PER_TARGET seconds (default 10) with libFuzzer, from the corpus in
# fuzz/corpus/<target>/ (scripts/fuzz-seeds.sh writes it when missing). Fails if any
# target crashes (a panic, an abort, a time-out or memory beyond libFuzzer's limit);
# the crashing input is in fuzz/artifacts/<target>/. Prints the executions per target.
# docs/RELIABILITY.md, "Fuzzing", explains the choices.
#
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_TARGET=${1:-10}
shift || true

# cargo-fuzz passes flags of unstable rustc (-Z...) and cargo; the stable toolchain
# accepts them with RUSTC_BOOTSTRAP=1 (no nightly toolchain needed).
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz --version 0.13.2

# No AddressSanitizer (-s none): the readers are safe Rust, so what is looked for is
# panics, aborts, hangs and runaway memory, which libFuzzer catches on its own;
# ASAN would multiply the build time of the Arrow/Parquet stack on a small machine
# for nothing it could find there. -a keeps debug assertions and overflow checks.
BUILD_FLAGS=(-s none -a --codegen-units 16)
start=$(date +%s)
(cd fuzz && cargo fuzz build "${BUILD_FLAGS[@]}")
echo "fuzz: built in $(( $(date +%s) - start )) s"

if [ "$#" -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(cd fuzz && cargo fuzz list)
fi
if [ ! -d fuzz/corpus ]; then
  scripts/fuzz-seeds.sh
fi

BIN_DIR=$ROOT/fuzz/target/x86_64-unknown-linux-gnu/release
LOGS=$ROOT/fuzz/target/fuzz-logs
mkdir -p "$LOGS"
# The targets write their inputs under TMPDIR: a folder of this run, in memory
# (/dev/shm) where there is one, removed at the end.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  TMPDIR=$(mktemp -d -p /dev/shm moeplace-fuzz.XXXXXX)
else
  mkdir -p "$ROOT/fuzz/tmp"
  TMPDIR=$(mktemp -d -p "$ROOT/fuzz/tmp")
fi
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT

run_one() {
  local t=$1
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  # -timeout: one input taking this long is a hang. -rss_limit_mb: libFuzzer's
  # default, far above what any reader needs for inputs of a few kilobytes.
  "$BIN_DIR/$t" "fuzz/corpus/$t" -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=2048 \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 > "$LOGS/$t.log" 2>&1
}

failed=()
total=0
for t in "${TARGETS[@]}"; do
  if run_one "$t"; then status=ok; else status=CRASH; failed+=("$t"); fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' || echo 0)
  total=$((total + ${execs:-0}))
  printf '%-26s %-6s %12s executions\n' "$t" "$status" "${execs:-0}"
done
printf '%-26s %-6s %12s executions\n' "total" "" "$total"

if [ "${#failed[@]}" -gt 0 ]; then
  for t in "${failed[@]}"; do
    echo "--- $t ($LOGS/$t.log):" >&2
    grep -E -A30 'panicked|ERROR: libFuzzer|SUMMARY' "$LOGS/$t.log" | head -60 >&2 || tail -40 "$LOGS/$t.log" >&2
  done
  echo "fuzz: ${#failed[@]} target(s) crashed: ${failed[*]}; inputs in fuzz/artifacts/" >&2
  exit 1
fi
