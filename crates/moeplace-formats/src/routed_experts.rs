//! Per-token routed experts returned by serving engines, one row per hidden layer:
//!
//! - SGLang (`--enable-return-routed-experts`, request `"return_routed_experts": true`):
//!   HTTP responses saved one JSON object per line; `meta_info.routed_experts` is
//!   base64 of little-endian int32 [tokens, hidden layers, k]; `meta_info.id` names the
//!   request; the first `meta_info.prompt_tokens` tokens are prefill, the rest decode.
//!   The file records neither the layer count nor k: one of them must be known (the
//!   model's layers, or top-k) and the other follows from the data, with the token
//!   count `prompt_tokens + completion_tokens - 1` (the last generated token never
//!   runs through the model).
//! - vLLM (`routed_experts` of a request output): a `.npy` of uint8 or uint16
//!   [tokens, hidden layers, k]; the request is named by the file name; phases are not
//!   recorded.
//!
//! Dense layers are rows of zeros. With the model's layers (`ReadOptions::layer_map`)
//! they are the model's dense layers (and must be zero); without, a layer whose every
//! row in the first response (or the `.npy`) is all zeros is taken as dense: a real MoE
//! layer with k >= 2 never picks expert 0 twice. With k = 1 that cannot be told, and
//! the model's layers are needed.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use moeplace_core::model::LayerMap;
use moeplace_core::trace::{expert_id, ModelShape, Phase, TokenBatch, TokenRef};
use serde_json::Value;

use crate::detect::{ReadOptions, TraceReader};
use crate::engine_layers::{check_shape, moe_rows, Batcher, DecodedTrace};
use crate::error::FormatError;

/// Decodes standard base64 (with or without padding; whitespace refused).
pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for (i, c) in s.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return Err(format!("byte {i} ({:?}) is not base64", c as char)),
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return Err("its length is not that of base64 data".into());
    }
    Ok(out)
}

/// Whether a JSONL file's first line is an SGLang response carrying routed experts.
pub fn is_sglang_responses(first_line: &str) -> bool {
    first_line.contains("\"meta_info\"") && first_line.contains("\"routed_experts\"")
}

/// Copies one token's MoE rows (of `hidden * k` ids) into `out`, checking that the
/// dense rows are zero and the MoE rows are not.
fn token_picks(row: &[i64], map: &LayerMap, k: usize, experts: usize, out: &mut [u16]) -> Result<(), String> {
    for d in 0..map.hidden_layers() {
        let r = &row[d * k..(d + 1) * k];
        match map.moe_ordinal(d) {
            None if r.iter().any(|&x| x != 0) => {
                return Err(format!("decoder layer {d} is dense but its row {r:?} is not zero"))
            }
            None => {}
            Some(o) => {
                if k > 1 && r.iter().all(|&x| x == 0) {
                    return Err(format!("MoE decoder layer {d} has an all-zero row (a dense layer's?)"));
                }
                for (j, &x) in r.iter().enumerate() {
                    out[o * k + j] = expert_id(x, o, experts).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    Ok(())
}

fn dense_by_zeros(path: &Path, data: &[i64], tokens: usize, hidden: usize, k: usize) -> Result<LayerMap, FormatError> {
    if k < 2 {
        return Err(FormatError::file(
            path,
            "with top-1 a dense layer's zero row cannot be told from expert 0: give the model (its layers)",
        ));
    }
    let empty =
        |d: usize| (0..tokens).all(|t| data[(t * hidden + d) * k..(t * hidden + d + 1) * k].iter().all(|&x| x == 0));
    moe_rows(path, hidden, empty, None)
}

fn need_experts(path: &Path, opts: &ReadOptions) -> Result<usize, FormatError> {
    opts.experts.ok_or_else(|| {
        FormatError::file(path, "routed experts do not record the expert count: pass --experts (or the model)")
    })
}

/// Streams SGLang responses (one JSON object per line).
pub struct SglangResponsesReader {
    path: PathBuf,
    reader: BufReader<File>,
    shape: ModelShape,
    map: LayerMap,
    hidden: usize,
    batch_tokens: usize,
    line_no: u64,
    bytes_read: u64,
    total_bytes: u64,
    /// The first response, decoded when opening (it fixed the layers).
    first: Option<(u64, Response)>,
    done: bool,
    ids: Vec<u16>,
}

struct Response {
    id: String,
    prompt: usize,
    data: Vec<i64>,
    tokens: usize,
}

fn parse_response(path: &Path, line: u64, text: &str) -> Result<(String, usize, usize, Vec<i64>), FormatError> {
    let err = |m: String| FormatError::line(path, line, m);
    let v: Value = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
    let meta = v.get("meta_info").ok_or_else(|| err("no `meta_info`".into()))?;
    let id = match meta.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(err("no `meta_info.id` (the request id)".into())),
    };
    let count = |key: &str| {
        meta.get(key)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| err(format!("no `meta_info.{key}` (a non-negative integer)")))
    };
    let prompt = count("prompt_tokens")?;
    let completion = count("completion_tokens")?;
    let b64 = meta.get("routed_experts").and_then(Value::as_str).ok_or_else(|| {
        err("no `meta_info.routed_experts` (start the server with --enable-return-routed-experts)".into())
    })?;
    let bytes = base64_decode(b64).map_err(|e| err(format!("`meta_info.routed_experts` is not base64: {e}")))?;
    if bytes.len() % 4 != 0 {
        return Err(err(format!("`meta_info.routed_experts` holds {} bytes, not int32 values", bytes.len())));
    }
    let data = bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64).collect();
    Ok((id, prompt, prompt + completion, data))
}

impl SglangResponsesReader {
    pub fn open(path: &Path, opts: &ReadOptions) -> Result<SglangResponsesReader, FormatError> {
        let experts = need_experts(path, opts)?;
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        let mut line_no = 0;
        let mut bytes_read = 0;
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| FormatError::line(path, line_no + 1, e.to_string()))?;
            line_no += 1;
            bytes_read += n as u64;
            if n == 0 {
                return Err(FormatError::file(path, "no response in the file"));
            }
            if !line.trim().is_empty() {
                break;
            }
        }
        let (id, prompt, seen, data) = parse_response(path, line_no, line.trim())?;
        let err = |m: String| FormatError::line(path, line_no, m);
        let n = data.len();
        // Tokens that ran through the model: all but the last generated one.
        let tokens_guess = seen.saturating_sub(1).max(1);
        let hidden_given = opts.layer_map.as_ref().map(LayerMap::hidden_layers);
        let (tokens, hidden, k) = match (hidden_given, opts.top_k) {
            (Some(h), Some(k)) => (n / (h * k).max(1), h, k),
            (Some(h), None) => (tokens_guess, h, n / (tokens_guess * h).max(1)),
            (None, Some(k)) => (tokens_guess, n / (tokens_guess * k).max(1), k),
            (None, None) => {
                return Err(err(
                    "the responses record neither the layer count nor top-k: pass --top-k (or the model)".into()
                ))
            }
        };
        if tokens * hidden * k != n || tokens == 0 || hidden == 0 || k == 0 {
            return Err(err(format!(
                "`meta_info.routed_experts` holds {n} values, which is not [tokens, {}, {}] for this request \
                 ({seen} prompt + completion tokens): its shape contradicts the model",
                hidden_given.map(|h| h.to_string()).unwrap_or("layers".into()),
                opts.top_k.map(|k| k.to_string()).unwrap_or("k".into())
            )));
        }
        let map = match &opts.layer_map {
            // Dense rows are checked token by token as they are read.
            Some(m) => moe_rows(path, hidden, |_| true, Some(m))?,
            None => dense_by_zeros(path, &data, tokens, hidden, k)?,
        };
        let shape = check_shape(path, map.len(), experts, k)?;
        Ok(SglangResponsesReader {
            path: path.to_path_buf(),
            reader,
            shape,
            map,
            hidden,
            batch_tokens: opts.batch_tokens.max(1),
            line_no,
            bytes_read,
            total_bytes,
            first: Some((line_no, Response { id, prompt, data, tokens })),
            done: false,
            ids: vec![0; shape.layers * shape.top_k],
        })
    }

    fn push(&mut self, line: u64, r: &Response, batch: &mut TokenBatch) -> Result<(), FormatError> {
        let k = self.shape.top_k;
        let width = self.hidden * k;
        for t in 0..r.tokens {
            token_picks(&r.data[t * width..(t + 1) * width], &self.map, k, self.shape.experts, &mut self.ids)
                .map_err(|m| FormatError::line(&self.path, line, format!("request {}, token {t}: {m}", r.id)))?;
            let phase = if t < r.prompt { Phase::Prefill } else { Phase::Decode };
            batch
                .push(TokenRef {
                    request: &r.id,
                    family: None,
                    phase: Some(phase),
                    position: t as u32,
                    experts: &self.ids,
                    gate_weights: None,
                })
                .map_err(|e| FormatError::line(&self.path, line, format!("request {}, token {t}: {e}", r.id)))?;
        }
        Ok(())
    }

    fn next_response(&mut self) -> Result<Option<(u64, Response)>, FormatError> {
        if let Some(f) = self.first.take() {
            return Ok(Some(f));
        }
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| FormatError::line(&self.path, self.line_no + 1, e.to_string()))?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            self.bytes_read += n as u64;
            if !line.trim().is_empty() {
                break;
            }
        }
        let at = self.line_no;
        let (id, prompt, _seen, data) = parse_response(&self.path, at, line.trim())?;
        let width = self.hidden * self.shape.top_k;
        if data.len() % width != 0 {
            return Err(FormatError::line(
                &self.path,
                at,
                format!(
                    "`meta_info.routed_experts` holds {} values, not a multiple of {} hidden layers x top-{}",
                    data.len(),
                    self.hidden,
                    self.shape.top_k
                ),
            ));
        }
        let tokens = data.len() / width;
        Ok(Some((at, Response { id, prompt, data, tokens })))
    }
}

impl Iterator for SglangResponsesReader {
    type Item = Result<TokenBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut batch = TokenBatch::new(self.shape);
        while batch.len() < self.batch_tokens {
            match self.next_response() {
                Ok(Some((line, r))) => {
                    if let Err(e) = self.push(line, &r, &mut batch) {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        if batch.is_empty() {
            None
        } else {
            Some(Ok(batch))
        }
    }
}

impl TraceReader for SglangResponsesReader {
    fn shape(&self) -> ModelShape {
        self.shape
    }

    fn layer_map(&self) -> Option<LayerMap> {
        Some(self.map.clone())
    }

    fn progress(&self) -> (u64, u64) {
        (self.bytes_read, self.total_bytes)
    }
}

/// The dtype and shape of an `.npy` header, and where its data starts.
fn npy_header(path: &Path, bytes: &[u8]) -> Result<(String, Vec<usize>, usize), FormatError> {
    let bad = |m: &str| FormatError::file(path, format!("not a NumPy .npy file: {m}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no magic"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().expect("4")) as usize, 12),
        _ => return Err(bad("unknown version")),
    };
    let text = bytes.get(start..start + len).ok_or_else(|| bad("truncated header"))?;
    let text = std::str::from_utf8(text).map_err(|_| bad("header is not text"))?;
    let descr = text
        .split("'descr':")
        .nth(1)
        .and_then(|s| s.trim_start().strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| bad("no descr"))?;
    if text.contains("'fortran_order': True") {
        return Err(bad("Fortran order is not supported"));
    }
    let dims = text
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.trim_start().strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("bad shape"))?;
    Ok((descr.to_string(), shape, start + len))
}

/// Whether `path` is an `.npy` of uint8/uint16 [tokens, layers, k] (vLLM's routed experts).
pub fn is_vllm_routed_npy(path: &Path) -> bool {
    let mut head = vec![0u8; 512];
    let Ok(n) = File::open(path).and_then(|mut f| f.read(&mut head)) else { return false };
    head.truncate(n);
    matches!(npy_header(path, &head), Ok((d, s, _)) if (d == "|u1" || d == "<u2") && s.len() == 3)
}

/// Reads a vLLM routed-experts `.npy` (one request).
pub fn open_vllm_npy(path: &Path, opts: &ReadOptions) -> Result<DecodedTrace, FormatError> {
    let experts = need_experts(path, opts)?;
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    let (descr, shape, start) = npy_header(path, &bytes)?;
    let width = match descr.as_str() {
        "|u1" => 1,
        "<u2" => 2,
        other => {
            return Err(FormatError::file(path, format!("dtype {other}: vLLM routed experts are uint8 or uint16")))
        }
    };
    let [tokens, hidden, k] = shape[..] else {
        return Err(FormatError::file(path, format!("shape {shape:?}; expected [tokens, hidden layers, k]")));
    };
    let n = tokens
        .checked_mul(hidden)
        .and_then(|x| x.checked_mul(k))
        .filter(|&n| n.checked_mul(width).is_some_and(|b| start + b <= bytes.len()))
        .ok_or_else(|| {
            FormatError::file(
                path,
                format!("truncated or corrupt: shape {shape:?} needs more data than the file holds"),
            )
        })?;
    let raw = &bytes[start..start + n * width];
    let data: Vec<i64> = if width == 1 {
        raw.iter().map(|&b| b as i64).collect()
    } else {
        raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect()
    };
    if let Some(k0) = opts.top_k.filter(|&g| g != k) {
        return Err(FormatError::file(path, format!("the file has top-{k} but {k0} was given")));
    }
    let map = match &opts.layer_map {
        Some(m) => {
            let w = hidden * k;
            moe_rows(
                path,
                hidden,
                |d| (0..tokens).all(|t| data[t * w + d * k..t * w + (d + 1) * k].iter().all(|&x| x == 0)),
                Some(m),
            )?
        }
        None => dense_by_zeros(path, &data, tokens, hidden, k)?,
    };
    let shape = check_shape(path, map.len(), experts, k)?;
    let request = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut b = Batcher::new(shape, opts.batch_tokens);
    let mut ids = vec![0u16; map.len() * k];
    for t in 0..tokens {
        token_picks(&data[t * hidden * k..(t + 1) * hidden * k], &map, k, experts, &mut ids)
            .map_err(|m| FormatError::row(path, t as u64, m))?;
        b.current
            .push(TokenRef {
                request: &request,
                family: None,
                phase: None,
                position: t as u32,
                experts: &ids,
                gate_weights: None,
            })
            .map_err(|e| FormatError::row(path, t as u64, e.to_string()))?;
        b.roll();
    }
    Ok(DecodedTrace { shape, layer_map: Some(map), batches: b.finish(), total_bytes: bytes.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_decodes_padded_and_unpadded_and_refuses_the_rest() {
        assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
        assert_eq!(base64_decode("TWE=").unwrap(), b"Ma");
        assert_eq!(base64_decode("TQ==").unwrap(), b"M");
        assert_eq!(base64_decode("TQ").unwrap(), b"M");
        assert_eq!(base64_decode("AAAAAQ==").unwrap(), [0, 0, 0, 1]);
        assert!(base64_decode("T").unwrap_err().contains("length"));
        assert!(base64_decode("TW u").unwrap_err().contains("byte 2"));
    }
}
