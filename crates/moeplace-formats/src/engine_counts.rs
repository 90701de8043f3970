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

use moeplace_core::stats::ExpertLoads;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::error::{FormatError, Location};

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
    path.is_dir() && path.join("meta_info.json").is_file() && !rank_files(path).unwrap_or_default().is_empty()
}

fn rank_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.starts_with("rank") && n.ends_with(".safetensors")
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

/// Reads a TensorRT-LLM expert statistics folder.
pub fn read_trtllm(dir: &Path) -> Result<ExpertLoads, FormatError> {
    let meta_path = dir.join("meta_info.json");
    let meta_text = std::fs::read_to_string(&meta_path).map_err(|e| FormatError::io(&meta_path, e))?;
    let meta: Value = serde_json::from_str(&meta_text)
        .map_err(|e| FormatError::line(&meta_path, e.line() as u64, format!("not JSON: {e}")))?;
    if !meta.is_object() {
        return Err(FormatError::file(&meta_path, "expected a JSON object"));
    }
    let declared_experts = meta.get("num_experts").and_then(Value::as_u64).map(|x| x as usize);
    let files = rank_files(dir).map_err(|e| FormatError::io(dir, e))?;
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
    ExpertLoads::new(layers.len(), e, steps).map_err(|err| FormatError::file(dir, err.to_string()))
}

/// Reads engine counts from `path` if it is one of the supported dumps.
pub fn read_engine_counts(path: &Path) -> Option<Result<ExpertLoads, FormatError>> {
    let loads = if is_sglang_logical_count(path) {
        read_sglang_logical_count(path)
    } else if is_trtllm_dir(path) {
        read_trtllm(path)
    } else {
        return None;
    };
    Some(loads.and_then(|l| check_totals(path, l)))
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
