#!/usr/bin/env bash
# Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (ignored by
# git; docs/RELIABILITY.md, "Fuzzing"): small files from moeplace's own writers
# (synth, convert, profile, plan, export), the first lines of the real traces and
# the engine recordings in ../shared/data when it is there, and hand-written
# strings and small files. Nothing here is committed; run it before scripts/fuzz.sh
# (which calls it when a corpus is missing).
#
# MOEPLACE_BIN: the moeplace binary to write with (default: target/release/moeplace,
# built with `cargo build --release -p moeplace-cli` when absent: the profile the
# README's commands build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=${MOEPLACE_SHARED_DATA:-$ROOT/../shared/data}
CORPUS=$ROOT/fuzz/corpus

BIN=${MOEPLACE_BIN:-$ROOT/target/release/moeplace}
if [ ! -x "$BIN" ]; then
  cargo build --release --quiet -p moeplace-cli
  BIN=$ROOT/target/release/moeplace
fi

rm -rf "$CORPUS"
TARGETS=(jsonl_trace parquet_trace numpy_trace esft_log sglang_trace stats_json stats_binary plan_file
  cluster_file model_config export_file engine_count_json vllm_load_stats trtllm_stats
  trtllm_slot_assignments torch_pt routed_experts_json routed_experts_npy trtllm_raw placer_params
  family_mix length_dist)
for t in "${TARGETS[@]}"; do mkdir -p "$CORPUS/$t"; done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
m() { "$BIN" "$@" >/dev/null 2>"$WORK/stderr" || { cat "$WORK/stderr" >&2; return 1; }; }

# Traces from the synthetic generator: every writable format, with families,
# phases and gate weights as the writers record them.
m synth --layers 3 --experts 16 --top-k 4 --requests 3 --prefill-len 4..12 --decode-len 2..6 \
  --families code=2,math=1 --seed 1 "$WORK/a.jsonl"
m synth --layers 2 --experts 8 --top-k 2 --requests 2 --prefill-len 3 --decode-len 2 --seed 2 "$WORK/b.jsonl"
m synth --layers 3 --experts 16 --top-k 4 --requests 3 --prefill-len 4..12 --decode-len 2..6 \
  --families code=2,math=1 --seed 1 "$WORK/a.parquet"
m synth --layers 2 --experts 8 --top-k 2 --requests 2 --prefill-len 3 --decode-len 2 --seed 2 "$WORK/b.npz"
cp "$WORK/a.jsonl" "$WORK/b.jsonl" "$CORPUS/jsonl_trace/"
cp "$WORK/a.parquet" "$CORPUS/parquet_trace/"
cp "$WORK/b.npz" "$CORPUS/numpy_trace/"
m convert "$WORK/a.jsonl" "$WORK/a-conv.npz"
m convert "$WORK/b.jsonl" "$WORK/b-conv.parquet"
m convert "$WORK/a.parquet" "$WORK/a-conv.jsonl"
cp "$WORK/a-conv.npz" "$CORPUS/numpy_trace/"
cp "$WORK/b-conv.parquet" "$CORPUS/parquet_trace/"
cp "$WORK/a-conv.jsonl" "$CORPUS/jsonl_trace/"

# Statistics in both encodings, plans of several placers, and every export.
m profile "$WORK/a.jsonl" -o "$WORK/a-stats.json"
m profile "$WORK/a.jsonl" -o "$WORK/a-stats.mps"
m profile "$WORK/b.npz" -o "$WORK/b-stats.json"
m profile "$WORK/b.npz" -o "$WORK/b-stats.mps"
cp "$WORK/a-stats.json" "$WORK/b-stats.json" "$CORPUS/stats_json/"
cp "$WORK/a-stats.mps" "$WORK/b-stats.mps" "$CORPUS/stats_binary/"
for placer in linear eplb balance coact; do
  m plan --placer "$placer" --stats "$WORK/a-stats.json" --gpus 4 --slots-per-gpu 5 -o "$WORK/plan-$placer.json"
  cp "$WORK/plan-$placer.json" "$CORPUS/plan_file/"
done
# A tuned plan carries the optional `tuning` block.
m synth --layers 2 --experts 8 --top-k 2 --families a=1,b=1 --requests 16 --prefill-len 4..8 --decode-len 2 \
  --seed 3 "$WORK/t.jsonl"
m plan --placer coact --trace "$WORK/t.jsonl" --gpus 4 --nodes 2 --slots-per-gpu 3 -o "$WORK/plan-tuned.json"
grep -q '"tuning"' "$WORK/plan-tuned.json"
cp "$WORK/plan-tuned.json" "$CORPUS/plan_file/"
for format in sglang vllm vllm-map trtllm eplb; do
  m export "$WORK/plan-balance.json" --to "$format" -o "$WORK/export-$format"
  cp "$WORK/export-$format" "$CORPUS/export_file/"
done
cp "$WORK/export-trtllm" "$CORPUS/trtllm_slot_assignments/"

# Real traces and engine recordings (first lines of the large ones: libFuzzer's
# inputs stay small, the layouts are the real ones).
if [ -d "$DATA" ]; then
  # The first sequences of each family's layers 1 and 2, as seeds and as a small
  # log converted to the other formats.
  for f in "$DATA"/esft-deepseek-v2-lite/*/expert_weights_[12].txt; do
    [ -f "$f" ] || continue
    family=$(basename "$(dirname "$f")")
    mkdir -p "$WORK/esft/$family"
    # Two sequences of their first 20 tokens (k = 6 ids, two tabs, 6 weights each).
    head -n 2 "$f" | awk -F'\t' -v OFS='\t' '{
      for (gap = 1; gap <= NF && $gap != ""; gap++) {}
      ids = ""; w = ""
      for (i = 1; i < gap && i <= 120; i++) ids = ids (i > 1 ? OFS : "") $i
      for (i = gap + 1; i <= NF && i <= gap + 120; i++) w = w (i > gap + 1 ? OFS : "") $i
      print ids OFS OFS w
    }' > "$WORK/esft/$family/$(basename "$f")"
    cp "$WORK/esft/$family/$(basename "$f")" "$CORPUS/esft_log/$family-$(basename "$f")"
  done
  if [ -d "$WORK/esft" ]; then
    m convert "$WORK/esft" "$WORK/esft.jsonl"
    m convert "$WORK/esft" "$WORK/esft.parquet"
    m convert "$WORK/esft" "$WORK/esft.npz"
    cp "$WORK/esft.jsonl" "$CORPUS/jsonl_trace/"
    cp "$WORK/esft.parquet" "$CORPUS/parquet_trace/"
    cp "$WORK/esft.npz" "$CORPUS/numpy_trace/"
  fi
  if [ -f "$DATA/sglang-granite/routing-trace.jsonl" ]; then
    head -n 8 "$DATA/sglang-granite/routing-trace.jsonl" > "$CORPUS/sglang_trace/granite-head.jsonl"
  fi
  [ -f "$DATA/eplb-readme-example.json" ] && cp "$DATA/eplb-readme-example.json" "$CORPUS/engine_count_json/"
  E=$DATA/engines
  if [ -d "$E" ]; then
    cp "$E"/sglang/*.pt "$CORPUS/torch_pt/"
    cp "$E/sglang/responses_routed_experts.jsonl" "$CORPUS/routed_experts_json/"
    cp "$E/vllm/routed_experts.npy" "$CORPUS/routed_experts_npy/"
    cp "$E/vllm/routed_experts.npy" "$CORPUS/numpy_trace/"
    cp "$E/vllm/eplb_load_stats.jsonl" "$CORPUS/vllm_load_stats/"
    for d in stats_no_load_balancer stats_with_load_balancer; do
      for f in "$E/trtllm/$d"/rank*_raw.safetensors; do cp "$f" "$CORPUS/trtllm_raw/$d-$(basename "$f")"; done
      for f in "$E/trtllm/$d"/rank?.safetensors; do cp "$f" "$CORPUS/trtllm_stats/$d-$(basename "$f")"; done
      cp "$E/trtllm/$d/meta_info.json" "$CORPUS/trtllm_stats/$d-meta_info.json"
    done
  fi
else
  echo "fuzz-seeds: no $DATA; seeding from moeplace's writers only" >&2
fi

# Small files in the documented layouts (docs/FORMATS.md).
# ESFT: k=6 ids per token, two tabs, then the gate weights.
printf '0\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t\t0.3\t0.2\t0.2\t0.1\t0.1\t0.1\t0.4\t0.2\t0.1\t0.1\t0.1\t0.1\n1\t2\t3\t4\t5\t6\t\t0.3\t0.2\t0.2\t0.1\t0.1\t0.1\n' \
  > "$CORPUS/esft_log/layer.txt"
cat > "$CORPUS/engine_count_json/steps.json" <<'EOF'
{"logical_count": [[[3, 0, 1, 4], [2, 2, 2, 2]], [[1, 1, 1, 1], [0, 5, 0, 3]]]}
EOF
cat > "$CORPUS/engine_count_json/layers.json" <<'EOF'
{"logical_count": [[3, 0, 1, 4], [2, 2, 2, 2]]}
EOF
cat > "$CORPUS/trtllm_slot_assignments/balancer.yaml" <<'EOF'
initial_global_assignments:
  1: [0, 1, 2, 3, 0]
  2: [3, 2, 1, 0, 1]
EOF
cat > "$CORPUS/cluster_file/full.toml" <<'EOF'
preset = "h100"
nodes = 2
gpus = 16
slots_per_gpu = 5
intra_node_gbps = 450.0
inter_node_gbps = 50.0
intra_node_latency_us = 2.0
inter_node_latency_us = 5.0
hidden_size = 7168
bytes_per_element = 2
expert_flops_per_token = 88080384.0
gpu_tflops = 400.0
EOF
printf 'nodes = 1\ngpus = 4\nslots = 18\n' > "$CORPUS/cluster_file/slots.toml"
cat > "$CORPUS/model_config/deepseek.json" <<'EOF'
{"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "num_hidden_layers": 5,
 "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_routed_experts": 16, "num_experts_per_tok": 4,
 "n_group": 4, "topk_group": 2, "hidden_size": 1024}
EOF
cat > "$CORPUS/model_config/mixtral.json" <<'EOF'
{"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "num_hidden_layers": 4,
 "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_size": 512}
EOF
cat > "$CORPUS/model_config/qwen.json" <<'EOF'
{"model_type": "qwen3_moe", "num_hidden_layers": 6, "num_experts": 32, "num_experts_per_tok": 4,
 "decoder_sparse_step": 2, "mlp_only_layers": [0], "hidden_size": 256}
EOF
printf 'move_slack=0.1\n' > "$CORPUS/placer_params/a"
printf 'stay=0.5\ngroups=4\nseed=3\n' > "$CORPUS/placer_params/b"
printf 'refine=true\niterations=10\nweight=-1\n' > "$CORPUS/placer_params/c"
printf 'code=2,math=1' > "$CORPUS/family_mix/a"
printf 'law' > "$CORPUS/family_mix/b"
printf 'a=0.5, b=1e-3 ,c' > "$CORPUS/family_mix/c"
printf 'without:law' > "$CORPUS/family_mix/d"
printf 'law=0.7\ncode=0.1\n' > "$CORPUS/family_mix/e"
printf 'law=0\ncode=1\n' > "$CORPUS/family_mix/f"
printf '128' > "$CORPUS/length_dist/a"
printf '16..512' > "$CORPUS/length_dist/b"
printf 'lognormal:200:0.8' > "$CORPUS/length_dist/c"

for t in "${TARGETS[@]}"; do
  echo "$t: $(find "$CORPUS/$t" -type f | wc -l) seeds"
done
