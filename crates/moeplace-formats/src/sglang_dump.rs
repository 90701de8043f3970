//! SGLang's expert-distribution recorder dumps (`torch.save` files written by
//! `/dump_expert_distribution_record`), one per rank, in the three recorder modes:
//!
//! - `stat`: `logical_count` [steps, hidden layers, experts] (or [hidden layers,
//!   experts]), already logical: read as counts, one step per entry;
//! - `per_pass`: `records`, each with `forward_pass_id` and `global_physical_count`
//!   [hidden layers, physical slots], and `last_physical_to_logical_map` [hidden layers,
//!   slots]: counts per slot summed onto the logical expert each slot holds; one step
//!   per forward pass, the ranks' records of one pass summed (each rank counts the
//!   tokens of its own forward pass);
//! - `per_token`: records with `topk_ids_of_layer` [hidden layers, tokens, width] of
//!   physical slot ids padded with `-1`, `positions`, `extend_seq_lens` and
//!   `forward_mode`: read as a trace, slots mapped to logical experts.
//!
//! Rows are per hidden layer; the dense layers' rows (all zero, or all `-1`) are
//! dropped and the decoder-layer id of each MoE layer kept (see
//! [`crate::engine_layers::moe_rows`]). A path may be one dump or a folder of them
//! (several ranks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use moeplace_core::model::LayerMap;
use moeplace_core::stats::ExpertLoads;
use moeplace_core::trace::{Phase, TokenRef};

use crate::detect::ReadOptions;
use crate::engine_layers::{check_shape, moe_rows, Batcher, DecodedTrace, EngineCounts, SlotMap};
use crate::error::FormatError;
use crate::torch_pt::{self, Tensor, Value};

/// The recorder mode a dump was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpMode {
    Stat,
    PerPass,
    PerToken,
}

impl DumpMode {
    pub fn name(self) -> &'static str {
        match self {
            DumpMode::Stat => "stat",
            DumpMode::PerPass => "per_pass",
            DumpMode::PerToken => "per_token",
        }
    }
}

/// SGLang's `ForwardMode` values that are prefill (EXTEND) and decode (DECODE).
const FORWARD_MODE_EXTEND: i64 = 1;
const FORWARD_MODE_DECODE: i64 = 2;

/// The dump files of `path`: itself, or the `.pt` files of a folder, sorted.
pub fn dump_files(path: &Path) -> Result<Vec<PathBuf>, FormatError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| FormatError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pt") && p.is_file())
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(FormatError::file(path, "a folder without .pt recorder dumps"));
    }
    Ok(v)
}

/// Whether `path` is a folder of `.pt` files.
pub fn is_dump_dir(path: &Path) -> bool {
    path.is_dir() && dump_files(path).map(|v| v.iter().all(|p| torch_pt::is_zip(p))).unwrap_or(false)
}

/// The mode of a loaded dump.
pub fn mode_of(path: &Path, v: &Value) -> Result<DumpMode, FormatError> {
    if v.get("logical_count").is_some() {
        return Ok(DumpMode::Stat);
    }
    if let Some(records) = v.get("records").and_then(Value::as_list) {
        let per_token = records.iter().any(|r| r.get("topk_ids_of_layer").is_some());
        return Ok(if per_token { DumpMode::PerToken } else { DumpMode::PerPass });
    }
    Err(FormatError::file(
        path,
        format!(
            "not an SGLang expert-distribution dump: expected `logical_count` (stat mode) or `records`, found keys {:?}",
            v.keys()
        ),
    ))
}

/// Loads every dump of `path` and checks they share one mode.
pub fn load(path: &Path) -> Result<(DumpMode, Vec<(PathBuf, Value)>), FormatError> {
    let mut out = Vec::new();
    let mut mode = None;
    for f in dump_files(path)? {
        let v = torch_pt::read(&f)?;
        let m = mode_of(&f, &v)?;
        match mode {
            None => mode = Some(m),
            Some(first) if first != m => {
                return Err(FormatError::file(
                    &f,
                    format!("recorded in {} mode, the other dumps in {} mode", m.name(), first.name()),
                ))
            }
            _ => {}
        }
        out.push((f, v));
    }
    Ok((mode.expect("at least one file"), out))
}

/// The recorder mode of the dump(s) at `path`, if it is one.
pub fn detect_mode(path: &Path) -> Option<DumpMode> {
    let first = dump_files(path).ok()?.into_iter().next()?;
    if !torch_pt::is_zip(&first) {
        return None;
    }
    let v = torch_pt::read(&first).ok()?;
    mode_of(&first, &v).ok()
}

fn tensor<'a>(path: &Path, v: &'a Value, key: &str, dims: usize) -> Result<&'a Tensor, FormatError> {
    let t = v
        .get(key)
        .ok_or_else(|| FormatError::file(path, format!("no `{key}`")))?
        .as_tensor()
        .ok_or_else(|| FormatError::file(path, format!("`{key}` is not a tensor")))?;
    if t.shape.len() != dims {
        return Err(FormatError::file(path, format!("`{key}` has shape {:?}; expected {dims} dimensions", t.shape)));
    }
    Ok(t)
}

fn int_tensor<'a>(path: &Path, v: &'a Value, key: &str, dims: usize) -> Result<(&'a Tensor, &'a [i64]), FormatError> {
    let t = tensor(path, v, key, dims)?;
    let d =
        t.ints().ok_or_else(|| FormatError::file(path, format!("`{key}` holds {} values, not integers", t.storage)))?;
    Ok((t, d))
}

/// The physical-to-logical map of a dump, on its MoE rows.
fn slot_map(path: &Path, v: &Value, map: &LayerMap, experts: Option<usize>) -> Result<SlotMap, FormatError> {
    let (t, d) = int_tensor(path, v, "last_physical_to_logical_map", 2)?;
    if t.shape[0] != map.hidden_layers() {
        return Err(FormatError::file(
            path,
            format!(
                "`last_physical_to_logical_map` has {} rows, the counts {} hidden layers",
                t.shape[0],
                map.hidden_layers()
            ),
        ));
    }
    let slots = t.shape[1];
    let rows = map.moe_layers().iter().map(|&l| d[l * slots..(l + 1) * slots].to_vec()).collect();
    SlotMap::new(path, "last_physical_to_logical_map", rows, experts)
}

/// Reads stat or per_pass dumps as counts.
pub fn read_counts(path: &Path, opts: &ReadOptions) -> Result<EngineCounts, FormatError> {
    let (mode, dumps) = load(path)?;
    match mode {
        DumpMode::Stat => stat_counts(path, &dumps, opts),
        DumpMode::PerPass => per_pass_counts(path, &dumps, opts),
        DumpMode::PerToken => Err(FormatError::file(
            path,
            "a per_token dump is a trace, not counts; read it as a trace (profile, convert)",
        )),
    }
}

fn stat_counts(path: &Path, dumps: &[(PathBuf, Value)], opts: &ReadOptions) -> Result<EngineCounts, FormatError> {
    if dumps.len() > 1 {
        return Err(FormatError::file(
            path,
            "several stat-mode dumps: their counts are already summed over ranks; read one of them",
        ));
    }
    let (f, v) = &dumps[0];
    let t = v
        .get("logical_count")
        .and_then(Value::as_tensor)
        .filter(|t| t.shape.len() == 2 || t.shape.len() == 3)
        .ok_or_else(|| FormatError::file(f, "`logical_count` must be a tensor [steps, hidden layers, experts]"))?;
    let (steps, hidden, e) = match t.shape[..] {
        [s, h, e] => (s, h, e),
        [h, e] => (1, h, e),
        _ => unreachable!("checked above"),
    };
    if let Some(given) = opts.experts.filter(|&g| g != e) {
        return Err(FormatError::file(f, format!("`logical_count` has {e} experts but {given} were given")));
    }
    let data = t.to_f64();
    if let Some(x) = data.iter().find(|x| !x.is_finite() || **x < 0.0) {
        return Err(FormatError::file(f, format!("`logical_count` holds {x}, not a count")));
    }
    let at = |s: usize, l: usize| &data[(s * hidden + l) * e..(s * hidden + l + 1) * e];
    let empty = |l: usize| (0..steps).all(|s| at(s, l).iter().all(|&x| x == 0.0));
    let map = moe_rows(f, hidden, empty, opts.layer_map.as_ref())?;
    let out = (0..steps).map(|s| map.moe_layers().iter().flat_map(|&l| at(s, l).iter().copied()).collect()).collect();
    let loads = ExpertLoads::new(map.len(), e, out).map_err(|err| FormatError::file(f, err.to_string()))?;
    Ok(EngineCounts { loads, top_k: None, layer_map: Some(map) })
}

fn per_pass_counts(path: &Path, dumps: &[(PathBuf, Value)], opts: &ReadOptions) -> Result<EngineCounts, FormatError> {
    // (pass id) -> [hidden * slots] summed over ranks.
    let mut passes: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    let mut dims: Option<(usize, usize)> = None;
    for (f, v) in dumps {
        let records = v.get("records").and_then(Value::as_list).expect("checked by mode_of");
        for (i, r) in records.iter().enumerate() {
            let at = |m: String| FormatError::file(f, format!("records[{i}]: {m}"));
            let id = r.get("forward_pass_id").and_then(Value::as_int).ok_or_else(|| at("no forward_pass_id".into()))?;
            let (t, _) = int_tensor(f, r, "global_physical_count", 2).map_err(|e| at(e.message))?;
            let d = t.to_f64();
            if let Some(x) = d.iter().find(|x| **x < 0.0) {
                return Err(at(format!("negative count {x}")));
            }
            let sh = (t.shape[0], t.shape[1]);
            match dims {
                None => dims = Some(sh),
                Some(first) if first != sh => {
                    return Err(at(format!("global_physical_count is {sh:?}, the first record {first:?}")))
                }
                _ => {}
            }
            let acc = passes.entry(id).or_insert_with(|| vec![0.0; d.len()]);
            acc.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
    }
    let (hidden, slots) = dims.ok_or_else(|| FormatError::file(path, "no records"))?;
    let empty = |l: usize| passes.values().all(|p| p[l * slots..(l + 1) * slots].iter().all(|&x| x == 0.0));
    let (f0, v0) = &dumps[0];
    let map = moe_rows(f0, hidden, empty, opts.layer_map.as_ref())?;
    let sm = slot_map(f0, v0, &map, opts.experts)?;
    if sm.slots != slots {
        return Err(FormatError::file(
            f0,
            format!("the counts have {slots} physical slots, last_physical_to_logical_map {}", sm.slots),
        ));
    }
    // Every rank's dump carries the same map (the one in force); a different one
    // would map the other ranks' slots wrongly.
    for (f, v) in &dumps[1..] {
        let other = int_tensor(f, v, "last_physical_to_logical_map", 2)?.1;
        if other != int_tensor(f0, v0, "last_physical_to_logical_map", 2)?.1 {
            return Err(FormatError::file(f, "its last_physical_to_logical_map differs from the first dump's"));
        }
    }
    let e = sm.experts;
    let steps = passes
        .values()
        .map(|p| {
            let mut out = vec![0.0; map.len() * e];
            for (i, &l) in map.moe_layers().iter().enumerate() {
                sm.add_counts(i, &p[l * slots..(l + 1) * slots], &mut out[i * e..(i + 1) * e]);
            }
            out
        })
        .collect();
    let loads = ExpertLoads::new(map.len(), e, steps).map_err(|err| FormatError::file(path, err.to_string()))?;
    Ok(EngineCounts { loads, top_k: None, layer_map: Some(map) })
}

fn int_list(path: &Path, r: &Value, key: &str) -> Result<Option<Vec<i64>>, FormatError> {
    match r.get(key) {
        None | Some(Value::None) => Ok(None),
        Some(Value::Tensor(t)) => t
            .ints()
            .map(|d| Some(d.to_vec()))
            .ok_or_else(|| FormatError::file(path, format!("`{key}` is not integers"))),
        Some(v) => v
            .as_list()
            .and_then(|l| l.iter().map(Value::as_int).collect::<Option<Vec<i64>>>())
            .map(Some)
            .ok_or_else(|| FormatError::file(path, format!("`{key}` is not a list of integers"))),
    }
}

/// Reads per_token dumps as a trace. SGLang does not record request ids here: a
/// prefill (extend) pass's sequences are named `r<rank>-p<pass>-s<i>` by
/// `extend_seq_lens`, a decode pass's tokens `r<rank>-p<pass>-t<i>`.
pub fn open_trace(path: &Path, opts: &ReadOptions) -> Result<DecodedTrace, FormatError> {
    let (mode, dumps) = load(path)?;
    if mode != DumpMode::PerToken {
        return Err(FormatError::file(
            path,
            format!("a {} dump holds counts, not tokens: profile or plan from it (--stats)", mode.name()),
        ));
    }
    let total_bytes = dumps.iter().map(|(f, _)| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    // First pass: the hidden-layer count, the dense rows and top-k.
    let mut hidden = None;
    let mut nonempty: Vec<bool> = Vec::new();
    let mut width_k: Option<usize> = None;
    for (f, v) in &dumps {
        for (i, r) in v.get("records").and_then(Value::as_list).expect("checked").iter().enumerate() {
            let (t, d) = int_tensor(f, r, "topk_ids_of_layer", 3)
                .map_err(|e| FormatError::file(f, format!("records[{i}]: {}", e.message)))?;
            let (h, n, w) = (t.shape[0], t.shape[1], t.shape[2]);
            match hidden {
                None => {
                    hidden = Some(h);
                    nonempty = vec![false; h];
                }
                Some(x) if x != h => {
                    return Err(FormatError::file(f, format!("records[{i}]: {h} layers, the first record {x}")))
                }
                _ => {}
            }
            for l in 0..h {
                for tok in 0..n {
                    let row = &d[(l * n + tok) * w..(l * n + tok + 1) * w];
                    let valid = row.iter().filter(|&&x| x >= 0).count();
                    if valid > 0 {
                        nonempty[l] = true;
                        width_k.get_or_insert(valid);
                    }
                }
            }
        }
    }
    let hidden = hidden.ok_or_else(|| FormatError::file(path, "no records"))?;
    let map = moe_rows(&dumps[0].0, hidden, |l| !nonempty[l], opts.layer_map.as_ref())?;
    let k = width_k.ok_or_else(|| FormatError::file(path, "no routed token"))?;
    let (f0, v0) = &dumps[0];
    let sm = slot_map(f0, v0, &map, opts.experts)?;
    let shape = check_shape(f0, map.len(), sm.experts, k)?;
    let mut b = Batcher::new(shape, opts.batch_tokens);
    let mut ids = vec![0u16; map.len() * k];
    for (f, v) in &dumps {
        let rank = v.get("records").and_then(Value::as_list).and_then(|r| r.first()).and_then(|r| r.get("rank"));
        let rank_default = rank.and_then(Value::as_int).unwrap_or(0);
        for (i, r) in v.get("records").and_then(Value::as_list).expect("checked").iter().enumerate() {
            let at = |m: String| FormatError::file(f, format!("records[{i}]: {m}"));
            let (t, d) = int_tensor(f, r, "topk_ids_of_layer", 3).map_err(|e| at(e.message))?;
            let (n, w) = (t.shape[1], t.shape[2]);
            let pass = r.get("forward_pass_id").and_then(Value::as_int).unwrap_or(i as i64);
            let rank = r.get("rank").and_then(Value::as_int).unwrap_or(rank_default);
            let mode = r.get("forward_mode").and_then(Value::as_int);
            let phase = match mode {
                Some(FORWARD_MODE_EXTEND) => Some(Phase::Prefill),
                Some(FORWARD_MODE_DECODE) => Some(Phase::Decode),
                _ => None,
            };
            let positions = int_list(f, r, "positions")?;
            if let Some(p) = positions.as_ref().filter(|p| p.len() != n) {
                return Err(at(format!("{} positions for {n} tokens", p.len())));
            }
            // Sequence of each token: extend passes by extend_seq_lens, else one per token.
            let seq_lens = int_list(f, r, "extend_seq_lens")?.filter(|_| phase == Some(Phase::Prefill));
            let mut seq_of = Vec::with_capacity(n);
            match &seq_lens {
                Some(lens) => {
                    let sum = lens.iter().try_fold(0i64, |a, &l| if l < 0 { None } else { a.checked_add(l) });
                    if sum != Some(n as i64) {
                        return Err(at(format!("extend_seq_lens {lens:?} do not sum to the pass's {n} tokens")));
                    }
                    for (s, &len) in lens.iter().enumerate() {
                        seq_of.extend(std::iter::repeat_n(s, len as usize));
                    }
                    if seq_of.len() != n {
                        return Err(at(format!("extend_seq_lens sum to {}, the pass has {n} tokens", seq_of.len())));
                    }
                }
                None => seq_of.extend(0..n),
            }
            for tok in 0..n {
                for (o, &l) in map.moe_layers().iter().enumerate() {
                    let row = &d[(l * n + tok) * w..(l * n + tok + 1) * w];
                    let valid = row.iter().filter(|&&x| x >= 0).count();
                    if valid != k {
                        return Err(at(format!(
                            "token {tok}, decoder layer {l}: {valid} expert ids, the others top-{k}"
                        )));
                    }
                    for (j, &x) in row.iter().filter(|&&x| x >= 0).enumerate() {
                        ids[o * k + j] = sm.logical(f, o, x).map_err(|e| at(format!("token {tok}: {}", e.message)))?;
                    }
                }
                let request = match seq_lens {
                    Some(_) => format!("r{rank}-p{pass}-s{}", seq_of[tok]),
                    None => format!("r{rank}-p{pass}-t{tok}"),
                };
                let position = positions.as_ref().map(|p| p[tok]).unwrap_or(tok as i64);
                let position = u32::try_from(position).map_err(|_| at(format!("position {position} out of range")))?;
                b.current
                    .push(TokenRef {
                        request: &request,
                        family: None,
                        phase,
                        position,
                        experts: &ids,
                        gate_weights: None,
                    })
                    .map_err(|e| at(format!("token {tok}: {e}")))?;
                b.roll();
            }
        }
    }
    Ok(DecodedTrace { shape, layer_map: Some(map), batches: b.finish(), total_bytes })
}
