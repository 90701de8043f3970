//! Plans in the formats serving engines load (docs/DESIGN.md, "Exports"), and readers for
//! each so a round trip can be checked. Every export takes the plan's [`LayerMap`]
//! (the decoder-layer index of each row, the model's hidden-layer count) and numbers
//! rows as its engine does:
//!
//! - `sglang`: SGLang's `--init-expert-location` JSON, `{"physical_to_logical_map":
//!   [[expert per slot] x hidden layers]}`: one row per hidden (decoder) layer, dense
//!   layers included (SGLang indexes the rows by decoder-layer id). A dense layer's row
//!   is never read but must be a valid map: slot s holds expert s mod E.
//! - `trtllm`: TensorRT-LLM's MoE load-balancer YAML: `num_slots: S` and
//!   `initial_global_assignments:` mapping the decoder-layer index of each MoE layer to
//!   its slot -> expert list (flow style, one layer a line). The reader accepts exactly
//!   this shape (`key: value` lines, `  layer: [ids]` entries, `#` comments).
//! - `vllm`: the JSONL record of vLLM PR #41141: one line `{"record_type":
//!   "eplb_initial_mapping", "version": 1, "num_redundant_experts": R, "num_slots": S,
//!   "initial_global_assignments": {"<MoE-layer ordinal>": [expert per slot]}}` with
//!   R = S - E and keys as decimal strings in layer order.
//! - `vllm-map`: the JSON of vLLM PR #49572 (`eplb_config.initial_expert_map_path`),
//!   `[[expert per slot] per MoE layer]`; the reader also takes the PR's single list
//!   `[slots]` (the same map for every layer).
//! - `eplb`: DeepSeek-EPLB's arrays as JSON, MoE-layer ordinals: `phy2log`
//!   `[layers][slots]`, `log2phy` `[layers][experts][max copies]` padded with -1,
//!   `logcnt` `[layers][experts]`.
//!
//! Slot numbering is the plan's: GPU g owns slots [g*S/G, (g+1)*S/G). Every engine,
//! and EPLB's arrays, give each GPU the same number of slots, so a plan with unequal
//! counts is refused.

use std::fmt::Write as _;
use std::path::Path;

use moeplace_core::model::LayerMap;
use moeplace_core::placement::Placement;
use serde_json::Value;

use crate::atomic;
use crate::error::FormatError;

/// An engine format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Sglang,
    Vllm,
    VllmMap,
    Trtllm,
    Eplb,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 5] =
        [ExportFormat::Sglang, ExportFormat::Vllm, ExportFormat::VllmMap, ExportFormat::Trtllm, ExportFormat::Eplb];

    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Sglang => "sglang",
            ExportFormat::Vllm => "vllm",
            ExportFormat::VllmMap => "vllm-map",
            ExportFormat::Trtllm => "trtllm",
            ExportFormat::Eplb => "eplb",
        }
    }

    pub fn parse(s: &str) -> Option<ExportFormat> {
        Self::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(s))
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Vllm => "jsonl",
            ExportFormat::Trtllm => "yaml",
            _ => "json",
        }
    }

    /// Whether the file's rows are keyed by decoder-layer id (else MoE-layer ordinal).
    pub fn decoder_layer_keys(self) -> bool {
        matches!(self, ExportFormat::Sglang | ExportFormat::Trtllm)
    }
}

fn ints<T: ToString>(xs: impl IntoIterator<Item = T>) -> String {
    xs.into_iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

/// Why `placement` with `layers` cannot be exported, if it cannot.
pub fn check(placement: &Placement, layers: &LayerMap) -> Result<(), String> {
    if layers.len() != placement.layers() {
        return Err(format!("the layer map has {} MoE layers but the plan {} rows", layers.len(), placement.layers()));
    }
    if placement.uniform_slots_per_gpu().is_none() {
        return Err(format!(
            "every engine (and EPLB) needs the same number of slots on every GPU, but this plan has {} slots on {} GPUs; \
             plan with a slot count divisible by the GPUs",
            placement.slots(),
            placement.gpus()
        ));
    }
    Ok(())
}

/// The SGLang rows: one per hidden layer, MoE rows at their decoder index and every
/// dense row the map slot s -> expert s mod E.
pub fn sglang_rows(placement: &Placement, layers: &LayerMap) -> Vec<Vec<u32>> {
    let e = placement.experts();
    let dense: Vec<u32> = (0..placement.slots()).map(|s| (s % e) as u32).collect();
    let mut rows = vec![dense; layers.hidden_layers()];
    for (ordinal, row) in placement.phy2log().iter().enumerate() {
        rows[layers.moe_layers()[ordinal]] = row.clone();
    }
    rows
}

/// The text of `placement` in `format`; `layers` numbers its rows (see [`check`]).
pub fn render(placement: &Placement, layers: &LayerMap, format: ExportFormat) -> Result<String, String> {
    check(placement, layers)?;
    let rows = placement.phy2log();
    let mut s = String::new();
    let nested = |s: &mut String, rows: &[Vec<u32>]| {
        for (l, r) in rows.iter().enumerate() {
            let _ = writeln!(s, "  [{}]{}", ints(r.iter()), if l + 1 < rows.len() { "," } else { "" });
        }
    };
    match format {
        ExportFormat::Sglang => {
            s.push_str("{\"physical_to_logical_map\": [\n");
            nested(&mut s, &sglang_rows(placement, layers));
            s.push_str("]}\n");
        }
        ExportFormat::VllmMap => {
            s.push_str("[\n");
            nested(&mut s, rows);
            s.push_str("]\n");
        }
        ExportFormat::Vllm => {
            let items: Vec<String> =
                rows.iter().enumerate().map(|(l, r)| format!("\"{l}\": [{}]", ints(r.iter()))).collect();
            let _ = writeln!(
                s,
                "{{\"record_type\": \"eplb_initial_mapping\", \"version\": 1, \"num_redundant_experts\": {}, \"num_slots\": {}, \"initial_global_assignments\": {{{}}}}}",
                placement.slots() - placement.experts(),
                placement.slots(),
                items.join(", ")
            );
        }
        ExportFormat::Trtllm => {
            let _ = writeln!(s, "num_slots: {}", placement.slots());
            s.push_str("initial_global_assignments:\n");
            for (l, r) in rows.iter().enumerate() {
                let _ = writeln!(s, "  {}: [{}]", layers.moe_layers()[l], ints(r.iter()));
            }
        }
        ExportFormat::Eplb => {
            let l2p = placement.log2phy_padded();
            let cnt = placement.logcnt();
            let block = |name: &str, items: Vec<String>, last: bool| {
                format!("  \"{name}\": [\n{}\n  ]{}\n", items.join(",\n"), if last { "" } else { "," })
            };
            s.push_str("{\n");
            s.push_str(&block("phy2log", rows.iter().map(|r| format!("    [{}]", ints(r.iter()))).collect(), false));
            s.push_str(&block(
                "log2phy",
                l2p.iter()
                    .map(|l| {
                        format!(
                            "    [{}]",
                            l.iter().map(|c| format!("[{}]", ints(c.iter()))).collect::<Vec<_>>().join(", ")
                        )
                    })
                    .collect(),
                false,
            ));
            s.push_str(&block("logcnt", cnt.iter().map(|r| format!("    [{}]", ints(r.iter()))).collect(), true));
            s.push_str("}\n");
        }
    }
    Ok(s)
}

/// Writes `placement` in `format` to `path` atomically (nothing is written when the
/// plan cannot be exported, see [`check`]).
pub fn write(path: &Path, placement: &Placement, layers: &LayerMap, format: ExportFormat) -> Result<(), FormatError> {
    let text =
        render(placement, layers, format).map_err(|e| FormatError::file(path, format!("{}: {e}", format.name())))?;
    atomic::write_bytes(path, text.as_bytes())
}

/// Reads an export back as the plan's rows, one per MoE layer in order, using `layers`
/// to find them (validate them with [`Placement::new`] and the plan's GPU count).
pub fn read(path: &Path, format: ExportFormat, layers: &LayerMap) -> Result<Vec<Vec<i64>>, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    parse(path, &text, format, layers)
}

fn rows_of(path: &Path, v: Option<&Value>, what: &str) -> Result<Vec<Vec<i64>>, FormatError> {
    let arr = v
        .and_then(Value::as_array)
        .ok_or_else(|| FormatError::file(path, format!("`{what}` missing or not an array")))?;
    arr.iter()
        .enumerate()
        .map(|(l, r)| {
            r.as_array()
                .and_then(|r| r.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>())
                .ok_or_else(|| FormatError::file(path, format!("`{what}` layer {l} is not an array of integers")))
        })
        .collect()
}

fn json(path: &Path, text: &str) -> Result<Value, FormatError> {
    serde_json::from_str(text).map_err(|e| FormatError::line(path, e.line() as u64, format!("not valid JSON: {e}")))
}

/// Parses export text (`path` names it in errors) into one row per MoE layer.
pub fn parse(path: &Path, text: &str, format: ExportFormat, layers: &LayerMap) -> Result<Vec<Vec<i64>>, FormatError> {
    let rows = match format {
        ExportFormat::Sglang => {
            let all = rows_of(path, json(path, text)?.get("physical_to_logical_map"), "physical_to_logical_map")?;
            if all.len() != layers.hidden_layers() {
                return Err(FormatError::file(
                    path,
                    format!(
                        "SGLang reads one row per hidden layer: expected {} rows, found {}",
                        layers.hidden_layers(),
                        all.len()
                    ),
                ));
            }
            if let Some(l) = all.iter().position(|r| r.len() != all[0].len()) {
                return Err(FormatError::file(
                    path,
                    format!("row {l} has {} slots, row 0 {}", all[l].len(), all[0].len()),
                ));
            }
            layers.moe_layers().iter().map(|&d| all[d].clone()).collect()
        }
        ExportFormat::VllmMap => {
            let v = json(path, text)?;
            let single = v.as_array().is_some_and(|a| a.iter().all(Value::is_i64));
            if single {
                let row = rows_of(path, Some(&Value::Array(vec![v])), "map")?.remove(0);
                vec![row; layers.len()]
            } else {
                rows_of(path, Some(&v), "map")?
            }
        }
        ExportFormat::Vllm => {
            let line =
                text.lines().find(|l| !l.trim().is_empty()).ok_or_else(|| FormatError::file(path, "empty file"))?;
            let v = json(path, line)?;
            if v.get("record_type").and_then(Value::as_str) != Some("eplb_initial_mapping") {
                return Err(FormatError::line(path, 1, "expected record_type \"eplb_initial_mapping\""));
            }
            let slots = v.get("num_slots").and_then(Value::as_u64);
            let map = v
                .get("initial_global_assignments")
                .and_then(Value::as_object)
                .ok_or_else(|| FormatError::line(path, 1, "`initial_global_assignments` missing"))?;
            let mut rows: Vec<(usize, Vec<i64>)> = Vec::new();
            for (k, r) in map {
                let l: usize =
                    k.parse().map_err(|_| FormatError::line(path, 1, format!("layer key {k:?} is not a number")))?;
                let r = rows_of(path, Some(&Value::Array(vec![r.clone()])), "initial_global_assignments")?.remove(0);
                rows.push((l, r));
            }
            let keys: Vec<usize> = (0..layers.len()).collect();
            finish_layers(path, rows, slots, &keys)?
        }
        ExportFormat::Trtllm => {
            let mut slots = None;
            let mut rows = Vec::new();
            let mut in_map = false;
            for (i, raw) in text.lines().enumerate() {
                let line = raw.split('#').next().unwrap_or("");
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |m: &str| FormatError::line(path, i as u64 + 1, m.to_string());
                let (k, v) = line.split_once(':').ok_or_else(|| bad("expected `key: value`"))?;
                if !line.starts_with(' ') {
                    in_map = false;
                    match k.trim() {
                        "num_slots" => {
                            slots = Some(v.trim().parse::<u64>().map_err(|_| bad("num_slots is not an integer"))?)
                        }
                        "initial_global_assignments" => in_map = true,
                        _ => {}
                    }
                } else if in_map {
                    let l: usize = k.trim().parse().map_err(|_| bad("layer key is not an integer"))?;
                    let v = v.trim();
                    let inner =
                        v.strip_prefix('[').and_then(|x| x.strip_suffix(']')).ok_or_else(|| bad("expected [ids]"))?;
                    let r: Result<Vec<i64>, _> =
                        inner.split(',').filter(|x| !x.trim().is_empty()).map(|x| x.trim().parse::<i64>()).collect();
                    rows.push((l, r.map_err(|_| bad("an expert id is not an integer"))?));
                }
            }
            finish_layers(path, rows, slots, layers.moe_layers())?
        }
        ExportFormat::Eplb => {
            let v = json(path, text)?;
            let rows = rows_of(path, v.get("phy2log"), "phy2log")?;
            // log2phy and logcnt must agree with phy2log.
            let cnt = rows_of(path, v.get("logcnt"), "logcnt")?;
            let l2p = v
                .get("log2phy")
                .and_then(Value::as_array)
                .ok_or_else(|| FormatError::file(path, "`log2phy` missing"))?;
            if cnt.len() != rows.len() || l2p.len() != rows.len() {
                return Err(FormatError::file(path, "phy2log, log2phy and logcnt have different layer counts"));
            }
            for (l, row) in rows.iter().enumerate() {
                let layer = rows_of(path, Some(&l2p[l]), "log2phy")?;
                for (e, &c) in cnt[l].iter().enumerate() {
                    let slots: Vec<i64> =
                        layer.get(e).map(|x| x.iter().copied().filter(|&s| s >= 0).collect()).unwrap_or_default();
                    let ok = slots.len() as i64 == c && slots.iter().all(|&s| row.get(s as usize) == Some(&(e as i64)));
                    if !ok {
                        return Err(FormatError::file(
                            path,
                            format!("layer {l}, expert {e}: log2phy/logcnt disagree with phy2log"),
                        ));
                    }
                }
            }
            rows
        }
    };
    if rows.len() != layers.len() {
        return Err(FormatError::file(
            path,
            format!("expected {} MoE layers (rows), found {}", layers.len(), rows.len()),
        ));
    }
    Ok(rows)
}

/// Rows keyed by layer id, in the order of `keys`, which must be exactly the keys found.
fn finish_layers(
    path: &Path,
    mut rows: Vec<(usize, Vec<i64>)>,
    slots: Option<u64>,
    keys: &[usize],
) -> Result<Vec<Vec<i64>>, FormatError> {
    rows.sort_by_key(|r| r.0);
    let found: Vec<usize> = rows.iter().map(|r| r.0).collect();
    if found != keys {
        let missing: Vec<String> = keys.iter().filter(|k| !found.contains(k)).map(usize::to_string).collect();
        let extra: Vec<String> = found.iter().filter(|k| !keys.contains(k)).map(usize::to_string).collect();
        return Err(FormatError::file(
            path,
            format!(
                "layer keys do not match the model's MoE layers: missing [{}], unexpected [{}]",
                missing.join(", "),
                extra.join(", ")
            ),
        ));
    }
    for (l, r) in &rows {
        if let Some(s) = slots {
            if r.len() as u64 != s {
                return Err(FormatError::file(path, format!("layer {l} has {} slots, num_slots says {s}", r.len())));
            }
        }
    }
    Ok(rows.into_iter().map(|r| r.1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use moeplace_core::model::LayerSource;

    fn plan() -> (Placement, LayerMap) {
        let p = Placement::new(4, 2, 3, vec![vec![0, 1, 2, 3, 2, 0], vec![3, 2, 1, 0, 1, 2]]).unwrap();
        (p, LayerMap::new(4, vec![1, 3], LayerSource::Model).unwrap())
    }

    #[test]
    fn every_format_reads_back() {
        let (p, m) = plan();
        for f in ExportFormat::ALL {
            let text = render(&p, &m, f).unwrap();
            let rows = parse(Path::new("x"), &text, f, &m).unwrap();
            assert_eq!(Placement::new(4, 2, 3, rows).unwrap(), p, "{}", f.name());
        }
        let vllm = render(&p, &m, ExportFormat::Vllm).unwrap();
        assert!(vllm.contains("\"num_redundant_experts\": 2, \"num_slots\": 6"));
        assert!(vllm.contains("{\"0\": [0, 1, 2, 3, 2, 0], \"1\": "), "{vllm}");
        assert!(render(&p, &m, ExportFormat::Eplb).unwrap().contains("[[0, 5], [1, -1], [2, 4], [3, -1]]"));
        let trt = render(&p, &m, ExportFormat::Trtllm).unwrap();
        assert!(trt.contains("\n  1: [0, 1, 2, 3, 2, 0]\n  3: [3, 2, 1, 0, 1, 2]\n"), "{trt}");
    }

    #[test]
    fn sglang_has_a_row_per_hidden_layer() {
        let (p, m) = plan();
        let rows = sglang_rows(&p, &m);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0], vec![0, 1, 2, 3, 0, 1]);
        assert_eq!(rows[2], vec![0, 1, 2, 3, 0, 1]);
        assert_eq!(rows[1], p.phy2log()[0]);
        assert_eq!(rows[3], p.phy2log()[1]);
        let text = render(&p, &m, ExportFormat::Sglang).unwrap();
        let short = LayerMap::new(3, vec![1, 2], LayerSource::Model).unwrap();
        let e = parse(Path::new("x"), &text, ExportFormat::Sglang, &short).unwrap_err().to_string();
        assert!(e.contains("expected 3 rows, found 4"), "{e}");
    }

    #[test]
    fn shifted_keys_are_refused() {
        let (p, m) = plan();
        let text = render(&p, &m, ExportFormat::Trtllm).unwrap();
        let e = parse(Path::new("x"), &text, ExportFormat::Trtllm, &LayerMap::assumed(2)).unwrap_err().to_string();
        assert!(e.contains("missing [0], unexpected [3]"), "{e}");
        let single = "[0, 1, 2, 3, 2, 0]";
        let rows = parse(Path::new("x"), single, ExportFormat::VllmMap, &m).unwrap();
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn unequal_slot_counts_are_refused() {
        let p = Placement::with_slots(4, 2, 5, vec![vec![0, 1, 2, 3, 0]]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for f in ExportFormat::ALL {
            let e = write(&dir.path().join("x.json"), &p, &LayerMap::assumed(1), f).unwrap_err().to_string();
            assert!(e.contains("same number of slots"), "{e}");
            assert!(!dir.path().join("x.json").exists());
        }
    }

    #[test]
    fn inconsistent_eplb_arrays_are_refused() {
        let p = Placement::new(2, 2, 1, vec![vec![0, 1]]).unwrap();
        let m = LayerMap::assumed(1);
        let text = render(&p, &m, ExportFormat::Eplb).unwrap();
        assert!(text.contains("\"logcnt\": [\n    [1, 1]"), "{text}");
        let bad = text.replace("\"logcnt\": [\n    [1, 1]", "\"logcnt\": [\n    [1, 2]");
        assert!(parse(Path::new("x"), &bad, ExportFormat::Eplb, &m).is_err());
    }
}
