#!/usr/bin/env bash
# Plans at the shapes of large deployments, from a statistics file, for every placer:
# wall seconds and peak resident memory of `moeplace plan --stats FILE` (release build,
# `/usr/bin/time`), then `moeplace eval` of every plan of a shape on a held-out trace.
# Prints Markdown tables for docs/PERFORMANCE.md ("Planning at fleet shapes").
#
# Shapes (synthetic traces, 4 families, prefill and decode, profiled with `profile -o`):
#   DeepSeek-V3 (58 x 256, top-8) on 64 GPUs / 8 nodes, 5 slots per GPU (64 redundant)
#   DeepSeek-V3 on 320 GPUs / 40 nodes (EP320), 1 slot per GPU (64 redundant)
#   61 x 384, top-8 (Kimi-K2-like) on 256 GPUs / 32 nodes, 2 slots per GPU (128 redundant)
#
# Usage: scripts/bench-plan-fleet.sh [TOKENS]   (calibration tokens, default 33000)
#        PLACERS="linear eplb" scripts/bench-plan-fleet.sh   (a subset of placers)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p moeplace-cli
bin="$PWD/target/release/moeplace"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tokens="${1:-33000}"
held=$((tokens / 4))
placers="${PLACERS:-linear round-robin eplb balance coact tacg tacg+gesr cluster-homes grace}"

# "seconds peak-MB" of a command (its standard output discarded), or "refused" when
# it fails (a placer may refuse a shape, e.g. too few requests for its GPU groups).
measure() {
  if /usr/bin/time -f '%e %M' -o "$work/t" "$@" >/dev/null 2>"$work/err"; then
    awk '{ printf "%s %.0f", $1, $2 / 1024 }' "$work/t"
  else
    echo "refused -"
    grep -m1 '^error' "$work/err" >&2 || true
  fi
}

shapes=(
  "DeepSeek-V3, 64 GPUs / 8 nodes, 5 slots/GPU|--preset deepseek-v3|--gpus 64 --nodes 8 --slots-per-gpu 5"
  "DeepSeek-V3, 320 GPUs / 40 nodes, 1 slot/GPU|--preset deepseek-v3|--gpus 320 --nodes 40 --slots-per-gpu 1"
  "61 x 384 top-8, 256 GPUs / 32 nodes, 2 slots/GPU|--layers 61 --experts 384 --top-k 8|--gpus 256 --nodes 32 --slots-per-gpu 2"
)

echo "Calibration: $tokens tokens (synth --seed 1); held out: $held tokens (synth --seed 2)."
echo
echo "| shape | statistics MB | placer | plan s | peak MB | eval: remote GPUs cut % | eval: max/mean |"
echo "|---|---:|---|---:|---:|---:|---:|"
i=0
for entry in "${shapes[@]}"; do
  IFS='|' read -r name model cluster <<<"$entry"
  i=$((i + 1))
  # shellcheck disable=SC2086
  "$bin" synth $model --tokens "$tokens" --seed 1 -o "$work/calib$i.parquet" 2>/dev/null
  # shellcheck disable=SC2086
  "$bin" synth $model --tokens "$held" --seed 2 -o "$work/held$i.parquet" 2>/dev/null
  "$bin" profile "$work/calib$i.parquet" -o "$work/s$i.bin" >/dev/null 2>&1
  rm -f "$work/calib$i.parquet"
  size=$(awk -v b="$(stat -c %s "$work/s$i.bin")" 'BEGIN { printf "%.1f", b / 1e6 }')
  plans=()
  declare -A figures=()
  for p in $placers; do
    # shellcheck disable=SC2086
    figures[$p]=$(measure "$bin" plan --placer "$p" --stats "$work/s$i.bin" $cluster -o "$work/$p.json")
    [ -f "$work/$p.json" ] && plans+=(--plan "$work/$p.json")
  done
  "$bin" eval --trace "$work/held$i.parquet" "${plans[@]}" --json >"$work/eval.json" 2>/dev/null
  for p in $placers; do
    read -r secs peak <<<"${figures[$p]}"
    if [ "$secs" = refused ]; then
      echo "| $name | $size | $p | refused | - | - | - |"
      continue
    fi
    read -r cut mom < <(python3 - "$work/eval.json" "$p" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
row = next(r for r in v["plans"] if r["placer"] == sys.argv[2])
print(f'{row["cut_remote_gpus"]:.1f} {row["max_over_mean"]:.4f}')
EOF
    )
    echo "| $name | $size | $p | $secs | $peak | $cut | $mom |"
  done
  unset figures
  rm -f "$work/s$i.bin" "$work/held$i.parquet" "$work"/*.json
done
