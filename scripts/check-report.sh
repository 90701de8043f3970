#!/usr/bin/env bash
# Renders an HTML report of `moeplace eval --report` in headless Chromium: checks that
# the page's key parts are in the DOM Chromium built (the summary table, the traffic,
# load and co-activation plots, and, with --tuned, the tuning plot with its chosen
# point) and that a screenshot was drawn. No external assets are loaded: networking
# is off and the page has none.
#
# Usage:
#   scripts/check-report.sh REPORT.html [SCREENSHOT.png] [--tuned]
#   scripts/check-report.sh --make [--bin MOEPLACE]   # builds a small report, then checks it
# --make writes a synthetic trace, tunes a tacg plan on half its requests and
# evaluates it with balance's on the other half, in a temporary folder (kept when the
# check fails). Needs chromium (Debian/Ubuntu: apt-get install chromium).
set -euo pipefail

die() { echo "check-report: $*" >&2; exit 1; }

make=0 tuned=0 bin="" args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --make) make=1 ;;
    --tuned) tuned=1 ;;
    --bin) bin="$2"; shift ;;
    *) args+=("$1") ;;
  esac
  shift
done

browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$browser" ] || die "no chromium found (apt-get install chromium)"

work="$(mktemp -d)"
keep=0
cleanup() { if [ "$keep" = 0 ]; then rm -rf "$work"; else echo "check-report: files kept in $work" >&2; fi; }
trap cleanup EXIT

if [ "$make" = 1 ]; then
  bin="${bin:-$(dirname "$0")/../target/debug/moeplace}"
  [ -x "$bin" ] || die "no moeplace binary at $bin (cargo build -p moeplace-cli, or --bin)"
  cluster=(--gpus 8 --nodes 2 --slots-per-gpu 3)
  "$bin" synth --layers 6 --experts 16 --top-k 2 --families a=1,b=1,c=1 --requests 96 \
    --prefill-len 20..40 --decode-len 8 --seed 1 -o "$work/t.jsonl" 2>/dev/null
  "$bin" split "$work/t.jsonl" --holdout 0.5 --calibration "$work/calib.jsonl" \
    --held-out "$work/held.jsonl" 2>/dev/null
  "$bin" plan --placer tacg --trace "$work/calib.jsonl" "${cluster[@]}" -o "$work/tacg.json" 2>/dev/null
  "$bin" plan --placer balance --trace "$work/calib.jsonl" "${cluster[@]}" -o "$work/balance.json" 2>/dev/null
  "$bin" eval --trace "$work/held.jsonl" --plan "$work/balance.json" --plan "$work/tacg.json" \
    --report "$work/report.html" >/dev/null 2>&1
  report="$work/report.html"
  shot="$work/report.png"
  tuned=1
else
  [ "${#args[@]}" -ge 1 ] || die "usage: scripts/check-report.sh REPORT.html [SCREENSHOT.png] [--tuned] | --make"
  report="$(realpath "${args[0]}")"
  shot="$(realpath -m "${args[1]:-${report%.html}.png}")"
fi

flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
  --disable-component-update --disable-sync --hide-scrollbars)
# A fresh profile per run: nothing from an earlier run (or a user's browser) is read.
timeout 60 "$browser" "${flags[@]}" --user-data-dir="$work/profile-dom" --dump-dom "file://$report" \
  >"$work/dom.html" 2>"$work/chromium-dom.log" || { keep=1; die "chromium failed to load the page (log: $work/chromium-dom.log)"; }
timeout 60 "$browser" "${flags[@]}" --user-data-dir="$work/profile-shot" --window-size=1400,2400 \
  --screenshot="$shot" "file://$report" >/dev/null 2>"$work/chromium-shot.log" || true

need=(id=\"summary\" id=\"plans\" id=\"plot-remote-gpus\" id=\"plot-remote-nodes\" id=\"plot-inter-node-bytes\"
  id=\"plot-by-layer\" id=\"load-0\" id=\"coact-0\" class=\"best\")
[ "$tuned" = 1 ] && need+=(id=\"tuning\" class=\"chosen\" class=\"floor\")
missing=()
for n in "${need[@]}"; do
  grep -qF "$n" "$work/dom.html" || missing+=("$n")
done
if [ "${#missing[@]}" -gt 0 ]; then
  keep=1
  die "the rendered page lacks: ${missing[*]} (DOM: $work/dom.html)"
fi
# An 8-bit RGBA PNG of 1400x2400 that is all one colour compresses to a few kB; a
# drawn page is larger.
[ -s "$shot" ] || { keep=1; die "no screenshot (log: $work/chromium-shot.log)"; }
size=$(stat -c %s "$shot")
[ "$size" -gt 20000 ] || { keep=1; die "the screenshot is nearly empty ($size bytes): $shot"; }
if [ "$make" = 1 ]; then
  mkdir -p "$(dirname "$0")/../target"
  cp "$shot" "$(dirname "$0")/../target/check-report.png"
  shot="target/check-report.png"
fi
echo "check-report: the page renders with every part (${#need[@]} checked); screenshot: $shot ($size bytes)"
