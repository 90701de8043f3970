//! Routing traces recorded in SGLang in the `simllm-preplay-trace-v2` JSONL schema.
//!
//! Rows, told apart by `row_type`:
//! - `header` (first line): `provenance.expert_count`, `provenance.top_k` and
//!   `provenance.moe_layer_indices` (the framework's layer ids of the MoE layers, in
//!   order; MoE layer i of moeplace is the i-th of them);
//! - `request`: `request_id`, `input_token_ids` (the prompt), optionally `family`;
//! - `observed-dispatch`: one token: `request_id`, `phase` (prefill/decode),
//!   `token_index`, and `routing`: a list of `{layer_index, expert_ids}`, one per MoE
//!   layer;
//! - `kv-event`: not routing;
//! - `footer` (last line, required): not routing; its dispatch counts are checked.
//!
//! Position: a prefill token's `token_index`; a decode token comes after the prompt,
//! at prompt length + `token_index` (the prompt length is known once the request row
//! has been read; without one, `token_index`). Family: the request row's `family`,
//! if any.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use moeplace_core::trace::{expert_id, ModelShape, Phase, TokenBatch, TokenRef};
use serde_json::Value;

use crate::detect::TraceReader;
use crate::error::FormatError;

/// The schema name in the header.
pub const SCHEMA: &str = "simllm-preplay-trace-v2";

struct RequestInfo {
    prompt_len: u32,
    family: Option<String>,
}

/// Streams an SGLang trace in batches.
pub struct SglangReader {
    path: PathBuf,
    reader: BufReader<File>,
    shape: ModelShape,
    /// Framework layer id -> MoE layer index.
    layer_of: HashMap<i64, usize>,
    requests: HashMap<String, RequestInfo>,
    line_no: u64,
    batch_tokens: usize,
    bytes_read: u64,
    total_bytes: u64,
    dispatch_counts: [u64; 2],
    footer_seen: bool,
    done: bool,
    buf: String,
    ids: Vec<u16>,
}

fn field<'a>(v: &'a Value, key: &str, path: &Path, line: u64) -> Result<&'a Value, FormatError> {
    v.get(key).ok_or_else(|| FormatError::line(path, line, format!("missing field `{key}`")))
}

fn as_usize(v: &Value, what: &str, path: &Path, line: u64) -> Result<usize, FormatError> {
    v.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| FormatError::line(path, line, format!("`{what}` must be a non-negative integer")))
}

impl SglangReader {
    pub fn open(path: &Path, batch_tokens: usize) -> Result<SglangReader, FormatError> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut first = String::new();
        let n = reader.read_line(&mut first).map_err(|e| FormatError::line(path, 1, e.to_string()))?;
        if n == 0 || first.trim().is_empty() {
            return Err(FormatError::line(path, 1, format!("empty file: expected a {SCHEMA} header row")));
        }
        let h: Value = serde_json::from_str(first.trim())
            .map_err(|e| FormatError::line(path, 1, format!("header is not JSON: {e}")))?;
        if h.get("row_type").and_then(Value::as_str) != Some("header") {
            return Err(FormatError::line(path, 1, "the first row must have row_type \"header\""));
        }
        let schema = h.get("schema").and_then(Value::as_str).unwrap_or("");
        if schema != SCHEMA {
            return Err(FormatError::line(
                path,
                1,
                format!("schema {schema:?} is not supported (expected {SCHEMA:?})"),
            ));
        }
        let prov = field(&h, "provenance", path, 1)?;
        let experts = as_usize(field(prov, "expert_count", path, 1)?, "provenance.expert_count", path, 1)?;
        let top_k = as_usize(field(prov, "top_k", path, 1)?, "provenance.top_k", path, 1)?;
        let layer_ids = field(prov, "moe_layer_indices", path, 1)?
            .as_array()
            .ok_or_else(|| FormatError::line(path, 1, "`provenance.moe_layer_indices` must be a list"))?;
        let mut layer_of = HashMap::new();
        for (i, id) in layer_ids.iter().enumerate() {
            let id = id.as_i64().ok_or_else(|| FormatError::line(path, 1, "`moe_layer_indices` must hold integers"))?;
            if layer_of.insert(id, i).is_some() {
                return Err(FormatError::line(path, 1, format!("layer id {id} appears twice in `moe_layer_indices`")));
            }
        }
        let shape =
            ModelShape::new(layer_ids.len(), experts, top_k).map_err(|e| FormatError::line(path, 1, e.to_string()))?;
        Ok(SglangReader {
            path: path.to_path_buf(),
            reader,
            shape,
            layer_of,
            requests: HashMap::new(),
            line_no: 1,
            batch_tokens: batch_tokens.max(1),
            bytes_read: n as u64,
            total_bytes,
            dispatch_counts: [0, 0],
            footer_seen: false,
            done: false,
            buf: String::new(),
            ids: Vec::new(),
        })
    }

    fn parse_row(&mut self, batch: &mut TokenBatch) -> Result<(), FormatError> {
        let (path, line) = (&self.path, self.line_no);
        let v: Value = serde_json::from_str(self.buf.trim())
            .map_err(|e| FormatError::line(path, line, format!("not a JSON row: {e}")))?;
        let row_type = v
            .get("row_type")
            .and_then(Value::as_str)
            .ok_or_else(|| FormatError::line(path, line, "missing `row_type`"))?;
        if self.footer_seen {
            return Err(FormatError::line(path, line, "row after the footer"));
        }
        match row_type {
            "request" => {
                let id = field(&v, "request_id", path, line)?
                    .as_str()
                    .ok_or_else(|| FormatError::line(path, line, "`request_id` must be a string"))?;
                // Absent: prompt length 0. Present, it must be the list (its length places
                // the decode tokens).
                let prompt_len = match v.get("input_token_ids") {
                    None | Some(Value::Null) => 0,
                    Some(ids) => ids.as_array().map(|a| a.len() as u32).ok_or_else(|| {
                        FormatError::line(path, line, "`input_token_ids` must be a list of token ids")
                    })?,
                };
                let family = match v.get("family") {
                    None | Some(Value::Null) => None,
                    Some(f) => Some(
                        f.as_str()
                            .ok_or_else(|| FormatError::line(path, line, "`family` must be a string"))?
                            .to_string(),
                    ),
                };
                self.requests.insert(id.to_string(), RequestInfo { prompt_len, family });
            }
            "observed-dispatch" => {
                let id = field(&v, "request_id", path, line)?
                    .as_str()
                    .ok_or_else(|| FormatError::line(path, line, "`request_id` must be a string"))?;
                let phase_s = field(&v, "phase", path, line)?.as_str().unwrap_or("");
                let phase = Phase::parse(phase_s).ok_or_else(|| {
                    FormatError::line(path, line, format!("phase {phase_s:?} is neither prefill nor decode"))
                })?;
                let token_index = as_usize(field(&v, "token_index", path, line)?, "token_index", path, line)?;
                let token_index = u32::try_from(token_index).map_err(|_| {
                    FormatError::line(
                        path,
                        line,
                        format!("token_index {token_index} is too large (at most {})", u32::MAX),
                    )
                })?;
                let routing = field(&v, "routing", path, line)?
                    .as_array()
                    .ok_or_else(|| FormatError::line(path, line, "`routing` must be a list"))?;
                let shape = self.shape;
                if routing.len() != shape.layers {
                    return Err(FormatError::line(
                        path,
                        line,
                        format!("`routing` has {} layers, the header lists {} MoE layers", routing.len(), shape.layers),
                    ));
                }
                self.ids.clear();
                self.ids.resize(shape.layers * shape.top_k, 0);
                let mut seen = vec![false; shape.layers];
                for r in routing {
                    let lid = field(r, "layer_index", path, line)?
                        .as_i64()
                        .ok_or_else(|| FormatError::line(path, line, "`layer_index` must be an integer"))?;
                    let layer = *self.layer_of.get(&lid).ok_or_else(|| {
                        FormatError::line(
                            path,
                            line,
                            format!("layer_index {lid} is not one of the header's MoE layers"),
                        )
                    })?;
                    if std::mem::replace(&mut seen[layer], true) {
                        return Err(FormatError::line(path, line, format!("layer_index {lid} appears twice")));
                    }
                    let ids = field(r, "expert_ids", path, line)?
                        .as_array()
                        .ok_or_else(|| FormatError::line(path, line, "`expert_ids` must be a list"))?;
                    if ids.len() != shape.top_k {
                        return Err(FormatError::line(
                            path,
                            line,
                            format!(
                                "layer_index {lid} has {} expert ids, the header says top-{}",
                                ids.len(),
                                shape.top_k
                            ),
                        ));
                    }
                    for (i, x) in ids.iter().enumerate() {
                        let x =
                            x.as_i64().ok_or_else(|| FormatError::line(path, line, "expert ids must be integers"))?;
                        self.ids[layer * shape.top_k + i] = expert_id(x, layer, shape.experts)
                            .map_err(|e| FormatError::line(path, line, e.to_string()))?;
                    }
                }
                let info = self.requests.get(id);
                let position = match phase {
                    Phase::Prefill => token_index,
                    Phase::Decode => {
                        let prompt = info.map(|r| r.prompt_len).unwrap_or(0);
                        prompt.checked_add(token_index).ok_or_else(|| {
                            FormatError::line(
                                path,
                                line,
                                format!(
                                    "decode position {prompt} (prompt) + {token_index} (token_index) is too large \
                                     (at most {})",
                                    u32::MAX
                                ),
                            )
                        })?
                    }
                };
                self.dispatch_counts[(phase == Phase::Decode) as usize] += 1;
                batch
                    .push(TokenRef {
                        request: id,
                        family: info.and_then(|r| r.family.as_deref()),
                        phase: Some(phase),
                        position,
                        experts: &self.ids,
                        gate_weights: None,
                    })
                    .map_err(|e| FormatError::line(path, line, e.to_string()))?;
            }
            "footer" => {
                self.footer_seen = true;
                for (key, i) in [("prefill_dispatch_count", 0), ("decode_dispatch_count", 1)] {
                    if let Some(n) = v.get(key).and_then(Value::as_u64) {
                        if n != self.dispatch_counts[i] {
                            return Err(FormatError::line(
                                path,
                                line,
                                format!(
                                    "footer says {key} = {n}, the file holds {}: rows are missing",
                                    self.dispatch_counts[i]
                                ),
                            ));
                        }
                    }
                }
            }
            "kv-event" => {}
            "header" => return Err(FormatError::line(path, line, "a second header row")),
            other => return Err(FormatError::line(path, line, format!("unknown row_type {other:?}"))),
        }
        Ok(())
    }
}

impl Iterator for SglangReader {
    type Item = Result<TokenBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut batch = TokenBatch::new(self.shape);
        while batch.len() < self.batch_tokens {
            self.buf.clear();
            match self.reader.read_line(&mut self.buf) {
                Ok(0) => {
                    self.done = true;
                    // The recorder ends every trace with a footer (it holds the row
                    // counts); a trace cut at a row boundary otherwise reads as a
                    // shorter, complete one.
                    if !self.footer_seen {
                        return Some(Err(FormatError::line(
                            &self.path,
                            self.line_no,
                            "truncated: no footer (a complete trace ends with a `footer` row)",
                        )));
                    }
                    break;
                }
                Ok(n) => self.bytes_read += n as u64,
                Err(e) => {
                    self.done = true;
                    return Some(Err(FormatError::line(&self.path, self.line_no + 1, e.to_string())));
                }
            }
            self.line_no += 1;
            if self.buf.trim().is_empty() {
                continue;
            }
            if let Err(e) = self.parse_row(&mut batch) {
                self.done = true;
                let e = if !self.buf.ends_with('\n') {
                    FormatError::line(
                        &self.path,
                        self.line_no,
                        format!("truncated: the last row is cut off ({})", e.message),
                    )
                } else {
                    e
                };
                return Some(Err(e));
            }
        }
        if batch.is_empty() {
            None
        } else {
            Some(Ok(batch))
        }
    }
}

impl TraceReader for SglangReader {
    fn shape(&self) -> ModelShape {
        self.shape
    }

    fn progress(&self) -> (u64, u64) {
        (self.bytes_read, self.total_bytes)
    }
}
