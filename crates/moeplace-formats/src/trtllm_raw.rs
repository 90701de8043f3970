//! TensorRT-LLM's raw expert statistics (`rank<r>_raw.safetensors`, next to the
//! counts of an expert-statistics folder): tensors `<iteration>_<decoder layer>` of
//! int32 [tokens, top-k], the experts each token of the rank's forward pass selected.
//! Row t of every layer of one (rank, iteration) is the same token, so they read as a
//! trace: one request per (rank, iteration), named `rank<r>-iter<i>`, tokens at their
//! row index, phase not recorded.
//!
//! With the load balancer on, ids are slots: mapped to experts through the slot
//! assignments, as the counts are (see [`crate::engine_counts`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use moeplace_core::trace::TokenRef;
use safetensors::{Dtype, SafeTensors};

use crate::detect::ReadOptions;
use crate::engine_counts::{rank_files, trtllm_layers, trtllm_meta, trtllm_slots};
use crate::engine_layers::{check_shape, Batcher, DecodedTrace};
use crate::error::{FormatError, Location};

/// Whether `dir` is a TensorRT-LLM statistics folder with raw per-token files.
pub fn is_trtllm_raw_dir(dir: &Path) -> bool {
    dir.is_dir() && dir.join("meta_info.json").is_file() && !rank_files(dir, true).unwrap_or_default().is_empty()
}

fn rank_of(f: &Path) -> String {
    let n = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    n.trim_start_matches("rank").trim_end_matches("_raw.safetensors").to_string()
}

/// Reads the raw files of `dir` as a trace.
pub fn open(dir: &Path, opts: &ReadOptions) -> Result<DecodedTrace, FormatError> {
    let (declared, meta_k) = trtllm_meta(dir)?;
    let files = rank_files(dir, true).map_err(|e| FormatError::io(dir, e))?;
    if files.is_empty() {
        return Err(FormatError::file(dir, "no rank<r>_raw.safetensors files"));
    }
    // (rank file, iteration) -> layer -> (tokens, ids).
    type Pass = BTreeMap<i64, (usize, Vec<i64>)>;
    let mut passes: BTreeMap<(usize, u64), Pass> = BTreeMap::new();
    let mut k: Option<usize> = meta_k;
    let mut total_bytes = 0;
    for (fi, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).map_err(|e| FormatError::io(f, e))?;
        total_bytes += bytes.len() as u64;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| FormatError::file(f, format!("not a safetensors file: {e}")))?;
        for (name, view) in st.tensors() {
            let part = |m: String| FormatError::new(f, Location::Part(format!("tensor {name}")), m);
            let (iter, layer) = name
                .split_once('_')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<i64>().ok()?)))
                .ok_or_else(|| part("name is not <iteration>_<layer>".into()))?;
            let [tokens, width] = view.shape()[..] else {
                return Err(part(format!("shape {:?}; expected [tokens, top-k]", view.shape())));
            };
            match k {
                None => k = Some(width),
                Some(k) if k != width => {
                    return Err(part(format!("{width} experts per token; num_experts_per_token is {k}")))
                }
                _ => {}
            }
            let data = view.data();
            let ids: Vec<i64> = match view.dtype() {
                Dtype::I32 => {
                    data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64).collect()
                }
                Dtype::I64 => data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect(),
                other => return Err(part(format!("dtype {other:?}; expected int32 expert ids"))),
            };
            passes.entry((fi, iter)).or_default().insert(layer, (tokens, ids));
        }
    }
    let k = k.ok_or_else(|| FormatError::file(dir, "no raw tensors found"))?;
    let layer_ids: Vec<i64> = {
        let mut v: Vec<i64> = passes.values().flat_map(|p| p.keys().copied()).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let layer_map = trtllm_layers(dir, &layer_ids, opts)?;
    let ids_per_layer = match declared {
        Some(e) => e,
        None => {
            opts.experts.ok_or_else(|| FormatError::file(dir, "meta_info.json has no num_experts: pass --experts"))?
        }
    };
    let slots = trtllm_slots(dir, ids_per_layer, &layer_ids, opts)?;
    let experts = slots.as_ref().map(|s| s.experts).unwrap_or(ids_per_layer);
    let shape = check_shape(dir, layer_ids.len(), experts, k)?;
    let mut b = Batcher::new(shape, opts.batch_tokens);
    let mut picks = vec![0u16; layer_ids.len() * k];
    for ((fi, iter), pass) in &passes {
        let f: &PathBuf = &files[*fi];
        if let Some(missing) = layer_ids.iter().find(|l| !pass.contains_key(l)) {
            return Err(FormatError::new(
                f,
                Location::Part(format!("tensor {iter}_{missing}")),
                "missing: the other layers of this iteration are recorded",
            ));
        }
        let tokens = pass[&layer_ids[0]].0;
        let request = format!("rank{}-iter{iter}", rank_of(f));
        for t in 0..tokens {
            for (o, l) in layer_ids.iter().enumerate() {
                let (n, ids) = &pass[l];
                let part = |m: String| FormatError::new(f, Location::Part(format!("tensor {iter}_{l}")), m);
                if *n != tokens {
                    return Err(part(format!("{n} tokens, layer {} of the iteration has {tokens}", layer_ids[0])));
                }
                for j in 0..k {
                    let x = ids[t * k + j];
                    let bound = ids_per_layer;
                    if x < 0 || x as usize >= bound {
                        let what = if slots.is_some() { "slot id" } else { "expert id" };
                        return Err(part(format!("row {t}: {what} {x} is beyond the count {bound}")));
                    }
                    picks[o * k + j] = match &slots {
                        Some(sm) => sm.logical(f, o, x)?,
                        None => x as u16,
                    };
                }
            }
            b.current
                .push(TokenRef {
                    request: &request,
                    family: None,
                    phase: None,
                    position: t as u32,
                    experts: &picks,
                    gate_weights: None,
                })
                .map_err(|e| {
                    FormatError::new(f, Location::Part(format!("iteration {iter}")), format!("row {t}: {e}"))
                })?;
            b.roll();
        }
    }
    Ok(DecodedTrace { shape, layer_map: Some(layer_map), batches: b.finish(), total_bytes })
}
