//! Plans in the formats serving engines load (DESIGN.md "Exports"), and readers for
//! each so a round trip can be checked.
//!
//! - `sglang`: SGLang's `--init-expert-location` JSON, `{"physical_to_logical_map":
//!   [[expert per slot] x layers]}`.
//! - `vllm`: vLLM's static EPLB mapping JSONL: one line
//!   `{"record_type": "eplb_initial_mapping", "version": 1, "num_redundant_experts":
//!   R, "num_slots": S, "initial_global_assignments": {"<layer>": [expert per slot]}}`
//!   with R = S - E (total redundant slots over all GPUs) and layer keys as decimal
//!   strings in layer order.
//! - `trtllm`: TensorRT-LLM's MoE load-balancer YAML: `num_slots: S` and
//!   `initial_global_assignments:` mapping each layer index to its slot -> expert
//!   list (flow style, one layer a line). Written by hand; the reader accepts exactly
//!   this shape (`key: value` lines, `  layer: [ids]` entries, `#` comments).
//! - `eplb`: DeepSeek-EPLB's arrays as JSON: `phy2log` `[layers][slots]`, `log2phy`
//!   `[layers][experts][max copies]` padded with -1, `logcnt` `[layers][experts]`.
//!
//! Slot numbering is the plan's: GPU g owns slots [g*S/G, (g+1)*S/G).

use std::fmt::Write as _;
use std::path::Path;

use moeplace_core::placement::Placement;
use serde_json::Value;

use crate::atomic;
use crate::error::FormatError;

/// An engine format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Sglang,
    Vllm,
    Trtllm,
    Eplb,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 4] =
        [ExportFormat::Sglang, ExportFormat::Vllm, ExportFormat::Trtllm, ExportFormat::Eplb];

    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Sglang => "sglang",
            ExportFormat::Vllm => "vllm",
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
}

fn ints<T: ToString>(xs: impl IntoIterator<Item = T>) -> String {
    xs.into_iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

/// The text of `placement` in `format`.
pub fn render(placement: &Placement, format: ExportFormat) -> String {
    let rows = placement.phy2log();
    let mut s = String::new();
    match format {
        ExportFormat::Sglang => {
            s.push_str("{\"physical_to_logical_map\": [\n");
            for (l, r) in rows.iter().enumerate() {
                let _ = writeln!(s, "  [{}]{}", ints(r.iter()), if l + 1 < rows.len() { "," } else { "" });
            }
            s.push_str("]}\n");
        }
        ExportFormat::Vllm => {
            let layers: Vec<String> =
                rows.iter().enumerate().map(|(l, r)| format!("\"{l}\": [{}]", ints(r.iter()))).collect();
            let _ = writeln!(
                s,
                "{{\"record_type\": \"eplb_initial_mapping\", \"version\": 1, \"num_redundant_experts\": {}, \"num_slots\": {}, \"initial_global_assignments\": {{{}}}}}",
                placement.slots() - placement.experts(),
                placement.slots(),
                layers.join(", ")
            );
        }
        ExportFormat::Trtllm => {
            let _ = writeln!(s, "num_slots: {}", placement.slots());
            s.push_str("initial_global_assignments:\n");
            for (l, r) in rows.iter().enumerate() {
                let _ = writeln!(s, "  {l}: [{}]", ints(r.iter()));
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
    s
}

/// Writes `placement` in `format` to `path` atomically. The engines (SGLang, vLLM,
/// TensorRT-LLM) give every GPU the same number of slots, so a plan with unequal
/// counts (S not a multiple of G) is refused for them; the `eplb` arrays take it.
pub fn write(path: &Path, placement: &Placement, format: ExportFormat) -> Result<(), FormatError> {
    if format != ExportFormat::Eplb && placement.uniform_slots_per_gpu().is_none() {
        return Err(FormatError::file(
            path,
            format!(
                "{} needs the same number of slots on every GPU, but this plan has {} slots on {} GPUs; \
                 plan with a slot count divisible by the GPUs, or export to eplb",
                format.name(),
                placement.slots(),
                placement.gpus()
            ),
        ));
    }
    atomic::write_bytes(path, render(placement, format).as_bytes())
}

/// Reads an export back: the `physical_to_logical_map` rows it carries (validate them
/// with [`Placement::new`] and the plan's GPU count, which SGLang's file lacks).
pub fn read(path: &Path, format: ExportFormat) -> Result<Vec<Vec<i64>>, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    parse(path, &text, format)
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

/// Parses export text (`path` names it in errors).
pub fn parse(path: &Path, text: &str, format: ExportFormat) -> Result<Vec<Vec<i64>>, FormatError> {
    match format {
        ExportFormat::Sglang => {
            rows_of(path, json(path, text)?.get("physical_to_logical_map"), "physical_to_logical_map")
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
            finish_layers(path, rows, slots)
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
            finish_layers(path, rows, slots)
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
            Ok(rows)
        }
    }
}

fn finish_layers(
    path: &Path,
    mut rows: Vec<(usize, Vec<i64>)>,
    slots: Option<u64>,
) -> Result<Vec<Vec<i64>>, FormatError> {
    rows.sort_by_key(|r| r.0);
    for (i, (l, r)) in rows.iter().enumerate() {
        if *l != i {
            return Err(FormatError::file(
                path,
                format!("layers are not numbered 0..{}: missing layer {i}", rows.len()),
            ));
        }
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

    #[test]
    fn every_format_reads_back() {
        let p = Placement::new(4, 2, 3, vec![vec![0, 1, 2, 3, 2, 0], vec![3, 2, 1, 0, 1, 2]]).unwrap();
        for f in ExportFormat::ALL {
            let text = render(&p, f);
            let rows = parse(Path::new("x"), &text, f).unwrap();
            assert_eq!(Placement::new(4, 2, 3, rows).unwrap(), p, "{}", f.name());
        }
        assert!(render(&p, ExportFormat::Vllm).contains("\"num_redundant_experts\": 2, \"num_slots\": 6"));
        assert!(render(&p, ExportFormat::Eplb).contains("[[0, 5], [1, -1], [2, 4], [3, -1]]"));
    }

    #[test]
    fn engines_refuse_unequal_slot_counts() {
        let p = Placement::with_slots(4, 2, 5, vec![vec![0, 1, 2, 3, 0]]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let e = write(&dir.path().join("x.json"), &p, ExportFormat::Sglang).unwrap_err().to_string();
        assert!(e.contains("same number of slots on every GPU"), "{e}");
        assert!(!dir.path().join("x.json").exists());
        write(&dir.path().join("y.json"), &p, ExportFormat::Eplb).unwrap();
    }

    #[test]
    fn inconsistent_eplb_arrays_are_refused() {
        let p = Placement::new(2, 2, 1, vec![vec![0, 1]]).unwrap();
        let text = render(&p, ExportFormat::Eplb);
        assert!(text.contains("\"logcnt\": [\n    [1, 1]"), "{text}");
        let bad = text.replace("\"logcnt\": [\n    [1, 1]", "\"logcnt\": [\n    [1, 2]");
        assert!(parse(Path::new("x"), &bad, ExportFormat::Eplb).is_err());
    }
}
