#!/usr/bin/env bash
# Measures the statistics file on DeepSeek-V3-shaped synthetic traces (58 layers, 256
# experts, top-8; 4 families, prefill and decode): its size, the time to write it and
# to read it back (`moeplace merge FILE -o OUT` reports both), profiling with and
# without writing it, and `plan --stats` from it. Prints a Markdown table for
# docs/PERFORMANCE.md ("Statistics file").
# Usage: scripts/bench-stats-file.sh [TOKENS ...]   (default: 10000 33000 40000 160000)
set -euo pipefail
cd "$(dirname "$0")/.."
# MOEPLACE_BIN: a release binary already built (skips the build).
if [ -z "${MOEPLACE_BIN:-}" ]; then
  cargo build --release -q -p moeplace-cli
fi
bin="${MOEPLACE_BIN:-$PWD/target/release/moeplace}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sizes=("${@:-10000 33000 40000 160000}")
# Seconds of wall time of a command (its output discarded).
wall() { /usr/bin/time -f %e -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; cat "$work/t"; }
mb() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f", b / 1e6 }'; }
echo "Load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
echo
echo "| tokens | requests | trace (Parquet) MB | statistics MB | JSON MB | write s | read s | profile s | profile -o s | plan linear s |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in ${sizes[*]}; do
  t="$work/t$n.parquet"
  "$bin" synth --preset deepseek-v3 --tokens "$n" --seed 1 -o "$t" 2>/dev/null
  requests=$("$bin" profile "$t" --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("requests", "?"))')
  p=$(wall "$bin" profile "$t")
  po=$(wall "$bin" profile "$t" -o "$work/s.bin")
  "$bin" merge "$work/s.bin" -o "$work/again.bin" 2>"$work/merge"
  cmp -s "$work/s.bin" "$work/again.bin" || { echo "read and written again, the file changed" >&2; exit 1; }
  read_s=$(sed -n 's/.*read and added in \([0-9.]*\) s.*/\1/p' "$work/merge")
  write_s=$(sed -n 's/.*written in \([0-9.]*\) s.*/\1/p' "$work/merge")
  json="-"
  if [ "$n" -le 40000 ]; then
    "$bin" merge "$work/s.bin" -o "$work/s.json" 2>/dev/null
    json=$(mb "$work/s.json")
    rm -f "$work/s.json"
  fi
  plan=$(wall "$bin" plan --placer linear --stats "$work/s.bin" --gpus 64 --nodes 8 -o "$work/p.json")
  echo "| $n | $requests | $(mb "$t") | $(mb "$work/s.bin") | $json | $write_s | $read_s | $p | $po | $plan |"
  rm -f "$t" "$work/s.bin" "$work/again.bin"
done
echo
echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
