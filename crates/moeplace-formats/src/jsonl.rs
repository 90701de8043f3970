//! The project's own JSONL trace format: a header line, then one token per line.
//!
//! ```text
//! {"format":"moeplace-trace","version":1,"layers":2,"experts":8,"top_k":2}
//! {"request":"r0","family":"code","phase":"prefill","position":0,"experts":[[3,5],[0,7]]}
//! {"request":"r0","family":"code","phase":"decode","position":1,"experts":[[1,5],[2,7]],"gate_weights":[[0.6,0.4],[0.5,0.5]]}
//! ```
//! `family`, `phase` and `gate_weights` are optional. `experts` holds one list of k
//! ids per MoE layer, layers in order. See docs/FORMATS.md.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use moeplace_core::trace::{expert_id, ModelShape, Phase, TokenBatch, TokenRef};

use crate::atomic::AtomicFile;
use crate::detect::TraceReader;
use crate::error::FormatError;

/// The `format` value of the header line.
pub const FORMAT_NAME: &str = "moeplace-trace";
/// The version this build writes and reads.
pub const VERSION: u64 = 1;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u64,
    layers: usize,
    experts: usize,
    top_k: usize,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(borrow)]
    request: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    family: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    phase: Option<Phase>,
    /// Required (docs/FORMATS.md): a missing one must not read as 0.
    position: u32,
    experts: Vec<Vec<i64>>,
    #[serde(default)]
    gate_weights: Option<Vec<Vec<f32>>>,
}

/// Streams a JSONL trace in batches.
pub struct JsonlReader {
    path: PathBuf,
    reader: BufReader<CountingRead<File>>,
    shape: ModelShape,
    line_no: u64,
    batch_tokens: usize,
    total_bytes: u64,
    done: bool,
    buf: String,
    ids: Vec<u16>,
    weights: Vec<f32>,
}

/// Counts bytes read, for progress.
struct CountingRead<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for CountingRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

impl JsonlReader {
    pub fn open(path: &Path, batch_tokens: usize) -> Result<JsonlReader, FormatError> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut reader = BufReader::with_capacity(1 << 20, CountingRead { inner: file, count });
        let mut first = String::new();
        let n = reader.read_line(&mut first).map_err(|e| FormatError::line(path, 1, e.to_string()))?;
        if n == 0 || first.trim().is_empty() {
            return Err(FormatError::line(path, 1, "empty file: expected a header line like {\"format\":\"moeplace-trace\",\"version\":1,\"layers\":..,\"experts\":..,\"top_k\":..}"));
        }
        let h: Header = serde_json::from_str(first.trim())
            .map_err(|e| FormatError::line(path, 1, format!("not a moeplace JSONL header: {e}")))?;
        if h.format != FORMAT_NAME {
            return Err(FormatError::line(
                path,
                1,
                format!("header format is {:?}, expected {FORMAT_NAME:?}", h.format),
            ));
        }
        if h.version != VERSION {
            return Err(FormatError::line(
                path,
                1,
                format!("trace version {} is not supported (this build reads {VERSION})", h.version),
            ));
        }
        let shape =
            ModelShape::new(h.layers, h.experts, h.top_k).map_err(|e| FormatError::line(path, 1, e.to_string()))?;
        Ok(JsonlReader {
            path: path.to_path_buf(),
            reader,
            shape,
            line_no: 1,
            batch_tokens: batch_tokens.max(1),
            total_bytes,
            done: false,
            buf: String::new(),
            ids: Vec::new(),
            weights: Vec::new(),
        })
    }

    fn parse_line(&mut self, batch: &mut TokenBatch) -> Result<(), FormatError> {
        let line_no = self.line_no;
        let path = &self.path;
        let text = self.buf.trim();
        let rec: Line<'_> = serde_json::from_str(text)
            .map_err(|e| FormatError::line(path, line_no, format!("not a token record: {e}")))?;
        let shape = self.shape;
        if rec.experts.len() != shape.layers {
            return Err(FormatError::line(
                path,
                line_no,
                format!("`experts` has {} layers, the header says {}", rec.experts.len(), shape.layers),
            ));
        }
        self.ids.clear();
        for (layer, picks) in rec.experts.iter().enumerate() {
            if picks.len() != shape.top_k {
                return Err(FormatError::line(
                    path,
                    line_no,
                    format!("layer {layer} has {} expert ids, the header says top-{}", picks.len(), shape.top_k),
                ));
            }
            for &id in picks {
                self.ids.push(
                    expert_id(id, layer, shape.experts).map_err(|e| FormatError::line(path, line_no, e.to_string()))?,
                );
            }
        }
        let weights = match &rec.gate_weights {
            None => None,
            Some(w) => {
                self.weights.clear();
                if w.len() != shape.layers || w.iter().any(|l| l.len() != shape.top_k) {
                    return Err(FormatError::line(
                        path,
                        line_no,
                        format!("`gate_weights` must be {} lists of {} numbers", shape.layers, shape.top_k),
                    ));
                }
                w.iter().for_each(|l| self.weights.extend_from_slice(l));
                Some(&self.weights[..])
            }
        };
        batch
            .push(TokenRef {
                request: &rec.request,
                family: rec.family.as_deref(),
                phase: rec.phase,
                position: rec.position,
                experts: &self.ids,
                gate_weights: weights,
            })
            .map_err(|e| FormatError::line(path, line_no, e.to_string()))
    }
}

impl Iterator for JsonlReader {
    type Item = Result<TokenBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut batch = TokenBatch::with_capacity(self.shape, self.batch_tokens);
        while batch.len() < self.batch_tokens {
            self.buf.clear();
            match self.reader.read_line(&mut self.buf) {
                Ok(0) => {
                    self.done = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(FormatError::line(&self.path, self.line_no + 1, e.to_string())));
                }
            }
            self.line_no += 1;
            if !self.buf.ends_with('\n') {
                // The last line of a complete file ends with a newline; one that does not
                // was cut off (truncated copy or a writer that died).
                if self.buf.trim().is_empty() {
                    continue;
                }
                if serde_json::from_str::<serde_json::Value>(self.buf.trim()).is_err() {
                    self.done = true;
                    return Some(Err(FormatError::line(
                        &self.path,
                        self.line_no,
                        "truncated: the last line is cut off before its end",
                    )));
                }
            }
            if self.buf.trim().is_empty() {
                continue;
            }
            if let Err(e) = self.parse_line(&mut batch) {
                self.done = true;
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

impl TraceReader for JsonlReader {
    fn shape(&self) -> ModelShape {
        self.shape
    }

    fn progress(&self) -> (u64, u64) {
        (self.reader.get_ref().count.load(std::sync::atomic::Ordering::Relaxed), self.total_bytes)
    }
}

/// Writes a JSONL trace: header first, then each batch's tokens; the file appears
/// only when [`JsonlWriter::finish`] succeeds.
pub struct JsonlWriter {
    file: AtomicFile,
    shape: ModelShape,
    line: String,
}

impl JsonlWriter {
    pub fn create(path: &Path, shape: ModelShape) -> Result<JsonlWriter, FormatError> {
        let mut file = AtomicFile::create(path)?;
        let header = serde_json::json!({
            "format": FORMAT_NAME, "version": VERSION,
            "layers": shape.layers, "experts": shape.experts, "top_k": shape.top_k,
        });
        writeln!(file.writer(), "{header}").map_err(|e| FormatError::io(path, e))?;
        Ok(JsonlWriter { file, shape, line: String::new() })
    }

    pub fn write_batch(&mut self, batch: &TokenBatch) -> Result<(), FormatError> {
        use std::fmt::Write as _;
        if batch.shape() != self.shape {
            return Err(FormatError::file(
                self.file.path(),
                format!("batch shape {} differs from the file's {}", batch.shape(), self.shape),
            ));
        }
        let k = self.shape.top_k;
        for t in batch.tokens() {
            let s = &mut self.line;
            s.clear();
            s.push_str("{\"request\":");
            s.push_str(&serde_json::to_string(t.request).expect("strings serialise"));
            if let Some(f) = t.family {
                s.push_str(",\"family\":");
                s.push_str(&serde_json::to_string(f).expect("strings serialise"));
            }
            if let Some(p) = t.phase {
                let _ = write!(s, ",\"phase\":\"{}\"", p.as_str());
            }
            let _ = write!(s, ",\"position\":{},\"experts\":[", t.position);
            for (l, picks) in t.experts.chunks_exact(k).enumerate() {
                s.push_str(if l == 0 { "[" } else { ",[" });
                for (i, e) in picks.iter().enumerate() {
                    let _ = write!(s, "{}{e}", if i == 0 { "" } else { "," });
                }
                s.push(']');
            }
            s.push(']');
            if let Some(w) = t.gate_weights {
                s.push_str(",\"gate_weights\":[");
                for (l, ws) in w.chunks_exact(k).enumerate() {
                    s.push_str(if l == 0 { "[" } else { ",[" });
                    for (i, x) in ws.iter().enumerate() {
                        // serde_json prints the shortest text that reads back the same f32.
                        let _ =
                            write!(s, "{}{}", if i == 0 { "" } else { "," }, serde_json::to_string(x).expect("finite"));
                    }
                    s.push(']');
                }
                s.push(']');
            }
            s.push_str("}\n");
            let path = self.file.path().to_path_buf();
            self.file.writer().write_all(self.line.as_bytes()).map_err(|e| FormatError::io(&path, e))?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<(), FormatError> {
        self.file.commit()
    }
}
