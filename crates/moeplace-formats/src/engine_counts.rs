//! Aggregated expert counts exported by serving engines, read as
//! [`ExpertLoads`] (one entry per step) for load balancers and the report.
//!
//! - SGLang: a JSON file `{"logical_count": ...}` holding `[steps][layers][experts]`
//!   (the expert-distribution recorder's dump) or `[layers][experts]`.
//! - TensorRT-LLM: a folder with `meta_info.json` and `rank<r>.safetensors` files
//!   whose tensors are named `<iteration>_<layer>`, each a 1-D count per expert. Counts
//!   are summed over ranks; iterations become steps (in increasing order) and layer
//!   ids are mapped, in increasing order, to MoE layers 0..L-1; every iteration must
//!   have every layer. `meta_info.json` is checked to be a JSON object; when it gives
//!   `num_experts` the tensors must match.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use moeplace_core::model::{LayerMap, LayerSource};
use moeplace_core::stats::ExpertLoads;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::detect::ReadOptions;
pub use crate::engine_layers::EngineCounts;
use crate::engine_layers::SlotMap;
use crate::error::{FormatError, Location};
use crate::sglang_dump::{self, DumpMode};

/// Whether `path` looks like an SGLang `logical_count` JSON file.
pub fn is_sglang_logical_count(path: &Path) -> bool {
    use std::io::Read;
    if !path.is_file() {
        return false;
    }
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    String::from_utf8_lossy(&head[..n]).contains("\"logical_count\"")
}

/// Whether `path` is a TensorRT-LLM expert statistics folder.
pub fn is_trtllm_dir(path: &Path) -> bool {
    path.is_dir() && path.join("meta_info.json").is_file() && !rank_files(path, false).unwrap_or_default().is_empty()
}

/// The `rank<r>.safetensors` files of `dir`, or with `raw` its `rank<r>_raw.safetensors`.
pub(crate) fn rank_files(dir: &Path, raw: bool) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.starts_with("rank") && n.ends_with(".safetensors") && n.ends_with("_raw.safetensors") == raw
        })
        .collect();
    v.sort();
    Ok(v)
}

fn number(v: &Value, path: &Path, at: &str) -> Result<f64, FormatError> {
    v.as_f64().filter(|x| x.is_finite() && *x >= 0.0).ok_or_else(|| {
        FormatError::new(path, Location::Part(at.to_string()), format!("{v} is not a non-negative count"))
    })
}

/// Reads an SGLang `logical_count` JSON file.
pub fn read_sglang_logical_count(path: &Path) -> Result<ExpertLoads, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    if text.trim().is_empty() {
        return Err(FormatError::file(path, "empty file: expected {\"logical_count\": ...}"));
    }
    let v: Value =
        serde_json::from_str(&text).map_err(|e| FormatError::line(path, e.line() as u64, format!("not JSON: {e}")))?;
    let lc = v.get("logical_count").ok_or_else(|| FormatError::file(path, "no `logical_count` key"))?;
    let rows = lc
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| FormatError::file(path, "`logical_count` must be a non-empty list"))?;
    // Depth 3 = [steps][layers][experts]; depth 2 = [layers][experts].
    let depth3 = rows[0].as_array().and_then(|a| a.first()).map(Value::is_array).unwrap_or(false);
    let steps: Vec<&Value> = if depth3 { rows.iter().collect() } else { vec![lc] };
    let mut shape: Option<(usize, usize)> = None;
    let mut out = Vec::with_capacity(steps.len());
    for (s, step) in steps.iter().enumerate() {
        let layers = step
            .as_array()
            .ok_or_else(|| FormatError::file(path, format!("logical_count[{s}] is not a list of layers")))?;
        let mut flat = Vec::new();
        let experts = layers.first().and_then(Value::as_array).map(Vec::len).unwrap_or(0);
        for (l, row) in layers.iter().enumerate() {
            let at = if depth3 { format!("logical_count[{s}][{l}]") } else { format!("logical_count[{l}]") };
            let row = row
                .as_array()
                .ok_or_else(|| FormatError::new(path, Location::Part(at.clone()), "not a list of counts"))?;
            if row.len() != experts {
                return Err(FormatError::new(
                    path,
                    Location::Part(at),
                    format!("{} counts, the first layer has {experts}", row.len()),
                ));
            }
            for (e, x) in row.iter().enumerate() {
                flat.push(number(x, path, &format!("{at}[{e}]"))?);
            }
        }
        match shape {
            None => shape = Some((layers.len(), experts)),
            Some(sh) if sh != (layers.len(), experts) => {
                return Err(FormatError::file(
                    path,
                    format!("step {s} is {} x {experts}, step 0 is {} x {}", layers.len(), sh.0, sh.1),
                ))
            }
            _ => {}
        }
        out.push(flat);
    }
    let (l, e) = shape.expect("at least one step");
    ExpertLoads::new(l, e, out).map_err(|err| FormatError::file(path, err.to_string()))
}

/// TensorRT-LLM's `meta_info.json`: `num_experts` (the slot count when the load
/// balancer was on) and `num_experts_per_token`.
pub(crate) fn trtllm_meta(dir: &Path) -> Result<(Option<usize>, Option<usize>), FormatError> {
    let meta_path = dir.join("meta_info.json");
    let meta_text = std::fs::read_to_string(&meta_path).map_err(|e| FormatError::io(&meta_path, e))?;
    let meta: Value = serde_json::from_str(&meta_text)
        .map_err(|e| FormatError::line(&meta_path, e.line() as u64, format!("not JSON: {e}")))?;
    if !meta.is_object() {
        return Err(FormatError::file(&meta_path, "expected a JSON object"));
    }
    let get = |k: &str| -> Result<Option<usize>, FormatError> {
        match meta.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&x| x > 0)
                .map(|x| Some(x as usize))
                .ok_or_else(|| FormatError::file(&meta_path, format!("`{k}` is {v}, not a positive integer"))),
        }
    };
    Ok((get("num_experts")?, get("num_experts_per_token")?))
}

/// Reads TensorRT-LLM's MoE load-balancer YAML: `initial_global_assignments`, each
/// decoder-layer id mapped to its slot -> expert list (`  3: [0, 1, ...]`).
pub fn read_slot_assignments(path: &Path) -> Result<BTreeMap<usize, Vec<i64>>, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    let mut rows = BTreeMap::new();
    let mut in_map = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| FormatError::line(path, i as u64 + 1, m.to_string());
        if !line.starts_with(' ') {
            in_map = line.trim_end() == "initial_global_assignments:";
            continue;
        }
        if !in_map {
            continue;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| bad("expected `<decoder layer>: [experts per slot]`"))?;
        let l: usize = k.trim().trim_matches(['"', '\'']).parse().map_err(|_| bad("layer key is not an integer"))?;
        let inner =
            v.trim().strip_prefix('[').and_then(|x| x.strip_suffix(']')).ok_or_else(|| bad("expected [ids]"))?;
        let r: Result<Vec<i64>, _> =
            inner.split(',').filter(|x| !x.trim().is_empty()).map(|x| x.trim().parse::<i64>()).collect();
        if rows.insert(l, r.map_err(|_| bad("an expert id is not an integer"))?).is_some() {
            return Err(bad(&format!("layer {l} appears twice")));
        }
    }
    if rows.is_empty() {
        return Err(FormatError::file(path, "no `initial_global_assignments:` rows"));
    }
    Ok(rows)
}

/// How the ids of TensorRT-LLM statistics become experts: as they are, or through
/// the load balancer's slot assignments (one row per recorded decoder layer).
pub(crate) fn trtllm_slots(
    dir: &Path,
    ids: usize,
    layers: &[i64],
    opts: &ReadOptions,
) -> Result<Option<SlotMap>, FormatError> {
    match &opts.slot_assignments {
        Some(p) => {
            let rows = read_slot_assignments(p)?;
            let mut ordered = Vec::with_capacity(layers.len());
            for &l in layers {
                let row = usize::try_from(l).ok().and_then(|l| rows.get(&l)).ok_or_else(|| {
                    FormatError::file(p, format!("no row for decoder layer {l}, which the statistics record"))
                })?;
                if row.len() != ids {
                    return Err(FormatError::file(
                        p,
                        format!("decoder layer {l} has {} slots, the statistics count {ids}", row.len()),
                    ));
                }
                ordered.push(row.clone());
            }
            Ok(Some(SlotMap::new(p, "initial_global_assignments", ordered, opts.experts)?))
        }
        None => match opts.experts {
            Some(e) if e != ids => Err(FormatError::file(
                dir,
                format!(
                    "the statistics count {ids} ids per layer but the model has {e} experts: they were taken with \
                     the MoE load balancer on (ids are slots); pass --slot-assignments with the load balancer's \
                     YAML (initial_global_assignments)"
                ),
            )),
            _ => Ok(None),
        },
    }
}

/// The layer map of TensorRT-LLM statistics: the recorded decoder-layer ids (the
/// model's map when given, which must hold the same ids).
pub(crate) fn trtllm_layers(dir: &Path, layers: &[i64], opts: &ReadOptions) -> Result<LayerMap, FormatError> {
    let ids: Vec<usize> = layers
        .iter()
        .map(|&l| usize::try_from(l).map_err(|_| FormatError::file(dir, format!("negative layer id {l}"))))
        .collect::<Result<_, _>>()?;
    match &opts.layer_map {
        Some(m) if m.moe_layers() != ids.as_slice() => Err(FormatError::file(
            dir,
            format!("the statistics record MoE decoder layers {ids:?}, the model has {:?}", m.moe_layers()),
        )),
        Some(m) => Ok(m.clone().with_source(LayerSource::Model)),
        None => {
            let hidden = ids.last().map(|&l| l + 1).unwrap_or(0);
            LayerMap::new(hidden, ids, LayerSource::Recorded).map_err(|e| FormatError::file(dir, e.to_string()))
        }
    }
}

/// Reads a TensorRT-LLM expert statistics folder (default options).
pub fn read_trtllm(dir: &Path) -> Result<ExpertLoads, FormatError> {
    read_trtllm_counts(dir, &ReadOptions::default()).map(|c| c.loads)
}

/// Reads a TensorRT-LLM expert statistics folder: counts summed over ranks, one step
/// per iteration, with top-k from `num_experts_per_token` and the decoder-layer ids.
pub fn read_trtllm_counts(dir: &Path, opts: &ReadOptions) -> Result<EngineCounts, FormatError> {
    let (declared_experts, top_k) = trtllm_meta(dir)?;
    let files = rank_files(dir, false).map_err(|e| FormatError::io(dir, e))?;
    if files.is_empty() {
        return Err(FormatError::file(dir, "no rank<r>.safetensors files"));
    }
    // (iteration, layer) -> summed counts.
    let mut sums: BTreeMap<(u64, i64), Vec<f64>> = BTreeMap::new();
    let mut experts: Option<usize> = declared_experts;
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| FormatError::io(f, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| FormatError::file(f, format!("not a safetensors file: {e}")))?;
        for (name, view) in st.tensors() {
            let part = |m: String| FormatError::new(f, Location::Part(format!("tensor {name}")), m);
            let (iter, layer) = name
                .split_once('_')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<i64>().ok()?)))
                .ok_or_else(|| part("name is not <iteration>_<layer>".into()))?;
            let n: usize = view.shape().iter().product();
            if view.shape().len() != 1 {
                return Err(part(format!("shape {:?}; expected one count per expert", view.shape())));
            }
            match experts {
                None => experts = Some(n),
                Some(e) if e != n => return Err(part(format!("{n} counts, expected {e} experts"))),
                _ => {}
            }
            let data = view.data();
            let vals: Vec<f64> = match view.dtype() {
                Dtype::I32 => data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::I64 => data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::U32 => data.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::U64 => data.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
                other => return Err(part(format!("dtype {other:?} is not a count type"))),
            };
            if let Some(x) = vals.iter().find(|x| !x.is_finite() || **x < 0.0) {
                return Err(part(format!("count {x} is negative or not finite")));
            }
            let acc = sums.entry((iter, layer)).or_insert_with(|| vec![0.0; n]);
            acc.iter_mut().zip(&vals).for_each(|(a, b)| *a += b);
        }
    }
    let e = experts.ok_or_else(|| FormatError::file(dir, "no count tensors found"))?;
    let iters: BTreeSet<u64> = sums.keys().map(|k| k.0).collect();
    let layers: BTreeSet<i64> = sums.keys().map(|k| k.1).collect();
    let layer_index: BTreeMap<i64, usize> = layers.iter().enumerate().map(|(i, &l)| (l, i)).collect();
    let mut steps = Vec::with_capacity(iters.len());
    for it in &iters {
        let mut flat = vec![0.0; layers.len() * e];
        let mut present = 0;
        for (&(i, l), v) in sums.range((*it, i64::MIN)..=(*it, i64::MAX)) {
            debug_assert_eq!(i, *it);
            let li = layer_index[&l];
            flat[li * e..(li + 1) * e].copy_from_slice(v);
            present += 1;
        }
        // Every forward pass of a recorded iteration goes through every MoE layer, so
        // a missing pair means a lost or cut file, not a layer without tokens; zeros
        // would read as a perfectly idle layer. Ranks may hold different layers
        // (pipeline stages), so the check is on the sum over ranks.
        if present != layers.len() {
            let missing = layers.iter().find(|&&l| !sums.contains_key(&(*it, l))).expect("one is missing");
            return Err(FormatError::new(
                dir,
                Location::Part(format!("tensor {it}_{missing}")),
                format!("missing: no rank file has iteration {it} of layer {missing} (other iterations have it)"),
            ));
        }
        steps.push(flat);
    }
    let layer_ids: Vec<i64> = layers.iter().copied().collect();
    let layer_map = trtllm_layers(dir, &layer_ids, opts)?;
    let (e, steps) = match trtllm_slots(dir, e, &layer_ids, opts)? {
        None => (e, steps),
        Some(sm) => {
            let le = sm.experts;
            let mapped = steps
                .iter()
                .map(|flat| {
                    let mut out = vec![0.0; layers.len() * le];
                    for l in 0..layers.len() {
                        sm.add_counts(l, &flat[l * e..(l + 1) * e], &mut out[l * le..(l + 1) * le]);
                    }
                    out
                })
                .collect();
            (le, mapped)
        }
    };
    let loads = ExpertLoads::new(layers.len(), e, steps).map_err(|err| FormatError::file(dir, err.to_string()))?;
    Ok(EngineCounts { loads, top_k, layer_map: Some(layer_map) })
}

/// Whether the first line of `path` is a vLLM `eplb_load_stats` record.
pub fn is_vllm_load_stats(path: &Path) -> bool {
    use std::io::{BufRead, BufReader, Read};
    if !path.is_file() {
        return false;
    }
    let Ok(f) = std::fs::File::open(path) else { return false };
    let mut first = String::new();
    let _ = BufReader::new(f).take(1 << 20).read_line(&mut first);
    first.contains("\"eplb_load_stats\"")
}

/// Reads vLLM's `eplb_load_stats` JSONL (`expert_load_stats_path`, open PR #41141):
/// per record (one step), `expert_load` [MoE layers][physical slots] mapped back to
/// logical experts through the record's own `p2l_map` (the map in force then).
/// Records of other types are skipped.
pub fn read_vllm_load_stats(path: &Path, opts: &ReadOptions) -> Result<EngineCounts, FormatError> {
    use std::io::{BufRead, BufReader};
    let f = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut steps = Vec::new();
    let mut dims: Option<(usize, usize)> = None;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let n = i as u64 + 1;
        let line = line.map_err(|e| FormatError::line(path, n, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| FormatError::line(path, n, format!("not JSON: {e}")))?;
        if v.get("record_type").and_then(Value::as_str) != Some("eplb_load_stats") {
            continue;
        }
        let rows = |key: &str| -> Result<Vec<Vec<i64>>, FormatError> {
            v.get(key)
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .map(|r| r.as_array().and_then(|r| r.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>()))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| FormatError::line(path, n, format!("`{key}` must be [layers][slots] integers")))
        };
        let load = rows("expert_load")?;
        let p2l = rows("p2l_map")?;
        if load.len() != p2l.len() || load.is_empty() {
            return Err(FormatError::line(
                path,
                n,
                format!("`expert_load` has {} layers, `p2l_map` {}", load.len(), p2l.len()),
            ));
        }
        let sm = SlotMap::new(path, "p2l_map", p2l, opts.experts).map_err(|e| FormatError::line(path, n, e.message))?;
        let (layers, e) = (load.len(), sm.experts);
        match dims {
            None => dims = Some((layers, e)),
            Some(d) if d != (layers, e) => {
                return Err(FormatError::line(
                    path,
                    n,
                    format!("{layers} layers x {e} experts, the first record {} x {}", d.0, d.1),
                ))
            }
            _ => {}
        }
        let mut out = vec![0.0; layers * e];
        for (l, row) in load.iter().enumerate() {
            if row.len() != sm.slots {
                return Err(FormatError::line(
                    path,
                    n,
                    format!("`expert_load` layer {l} has {} slots, `p2l_map` {}", row.len(), sm.slots),
                ));
            }
            if let Some(x) = row.iter().find(|&&x| x < 0) {
                return Err(FormatError::line(path, n, format!("`expert_load` layer {l}: negative load {x}")));
            }
            let counts: Vec<f64> = row.iter().map(|&x| x as f64).collect();
            sm.add_counts(l, &counts, &mut out[l * e..(l + 1) * e]);
        }
        steps.push(out);
    }
    let (layers, e) = dims.ok_or_else(|| FormatError::file(path, "no `eplb_load_stats` record"))?;
    let layer_map = match &opts.layer_map {
        Some(m) if m.len() != layers => {
            return Err(FormatError::file(path, format!("the records have {layers} MoE layers, the model {}", m.len())))
        }
        Some(m) => Some(m.clone().with_source(LayerSource::Model)),
        None => None,
    };
    let loads = ExpertLoads::new(layers, e, steps).map_err(|err| FormatError::file(path, err.to_string()))?;
    Ok(EngineCounts { loads, top_k: None, layer_map })
}

/// Reads engine counts from `path` if it is one of the supported dumps.
pub fn read_engine_counts(path: &Path) -> Option<Result<ExpertLoads, FormatError>> {
    read_engine_recording(path, &ReadOptions::default()).map(|r| r.map(|c| c.loads))
}

/// Reads engine counts (with top-k and layers when recorded) from `path` if it is one
/// of the supported count recordings: SGLang `logical_count` JSON, SGLang recorder
/// dumps in stat or per_pass mode, TensorRT-LLM statistics, vLLM `eplb_load_stats`.
pub fn read_engine_recording(path: &Path, opts: &ReadOptions) -> Option<Result<EngineCounts, FormatError>> {
    let counts = if is_sglang_logical_count(path) {
        read_sglang_logical_count(path).map(|loads| EngineCounts { loads, top_k: None, layer_map: None })
    } else if is_trtllm_dir(path) {
        read_trtllm_counts(path, opts)
    } else if is_vllm_load_stats(path) {
        read_vllm_load_stats(path, opts)
    } else if matches!(sglang_dump::detect_mode(path), Some(DumpMode::Stat | DumpMode::PerPass)) {
        sglang_dump::read_counts(path, opts)
    } else {
        return None;
    };
    Some(counts.and_then(|mut c| {
        c.loads = check_totals(path, c.loads)?;
        Ok(c)
    }))
}

/// Most picks one layer may count over all steps: 2^53, up to which f64 counts
/// exactly (statistics keep them as u64 sums, which larger values would overflow).
const MAX_LAYER_COUNT: f64 = 9_007_199_254_740_992.0;

/// Refuses counts that are all zero (there is no load to plan from; every plan would
/// look perfectly balanced) or too large to count exactly.
fn check_totals(path: &Path, loads: ExpertLoads) -> Result<ExpertLoads, FormatError> {
    let total = loads.total();
    for (layer, row) in total.chunks(loads.experts).enumerate() {
        let sum: f64 = row.iter().sum();
        if sum > MAX_LAYER_COUNT {
            return Err(FormatError::file(
                path,
                format!("layer {layer}: the counts sum to {sum}, more than 2^53 (not exact as counts)"),
            ));
        }
    }
    if total.iter().all(|&x| x == 0.0) {
        return Err(FormatError::file(path, "every count is zero: there is no load to profile or plan from"));
    }
    Ok(loads)
}
