//! What the fuzz targets share: writing the input where a reader expects a file,
//! and reading a trace to its end while checking every batch against its shape.
//!
//! A target passes when every input gives `Ok` or `Err`; a panic or an abort is a
//! defect (docs/RELIABILITY.md, "Fuzzing").

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use moeplace_core::trace::ModelShape;
use moeplace_formats::error::FormatError;
use moeplace_formats::TraceReader;

/// A folder of this process under the temporary folder (`TMPDIR`; scripts/fuzz.sh
/// points it to a folder of its own, in memory where it can, and removes it
/// afterwards). Inputs are written under the same names run after run, so no file
/// accumulates.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("moeplace-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder under TMPDIR");
        dir
    })
}

/// An empty folder `name` under [`scratch`] (emptied if it exists).
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("scratch folder removable");
    }
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Writes `bytes` to `path`, creating its folder.
pub fn put(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("scratch folder");
    }
    // A new file each time: rewriting one in place (truncate, write, close) makes
    // ext4 flush it to disk on close, which slows the fuzzer tenfold.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("scratch file not removable: {e}"),
        _ => {}
    }
    std::fs::write(path, bytes).expect("scratch file");
}

/// Writes `bytes` to a file called `name` in the scratch folder and returns its path.
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    put(&path, bytes);
    path
}

/// Every error must name the file it is about.
pub fn check_error(e: &FormatError, path: &Path) {
    let text = e.to_string();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    assert!(text.contains(&name), "error does not name {name}: {text}");
}

/// Reads a trace to its end (or its first error), checking that every batch has the
/// reader's shape and that every token's expert ids are within it: a reader must not
/// hand on what the rest of moeplace would index out of range.
pub fn drain(reader: Result<impl TraceReader, FormatError>, path: &Path) {
    let mut reader = match reader {
        Ok(r) => r,
        Err(e) => return check_error(&e, path),
    };
    let shape: ModelShape = reader.shape();
    assert!(shape.validate().is_ok(), "reader gave an invalid shape {shape:?}");
    let _ = reader.layer_map();
    let _ = reader.progress();
    for batch in reader.by_ref() {
        match batch {
            Ok(batch) => {
                assert_eq!(batch.shape(), shape, "a batch's shape differs from the reader's");
                for token in batch.tokens() {
                    assert_eq!(token.experts.len(), shape.layers * shape.top_k, "a token has the wrong pick count");
                    assert!(
                        token.experts.iter().all(|&e| (e as usize) < shape.experts),
                        "an expert id is out of range (experts {})",
                        shape.experts
                    );
                    if let Some(w) = token.gate_weights {
                        assert_eq!(w.len(), token.experts.len(), "gate weights and picks differ in length");
                    }
                }
            }
            Err(e) => return check_error(&e, path),
        }
    }
}

/// Reads a boxed trace reader (from `open_trace`) to its end, as [`drain`].
pub fn drain_boxed(reader: Result<Box<dyn TraceReader>, FormatError>, path: &Path) {
    drain(reader.map(Boxed), path)
}

struct Boxed(Box<dyn TraceReader>);

impl Iterator for Boxed {
    type Item = Result<moeplace_core::trace::TokenBatch, FormatError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

impl TraceReader for Boxed {
    fn shape(&self) -> ModelShape {
        self.0.shape()
    }
    fn layer_map(&self) -> Option<moeplace_core::model::LayerMap> {
        self.0.layer_map()
    }
    fn progress(&self) -> (u64, u64) {
        self.0.progress()
    }
}

/// A safetensors file holding one 1-D int64 tensor `name` (for the folders that
/// need a well-formed rank file beside the fuzzed one).
pub fn safetensors_i64(name: &str, values: &[i64]) -> Vec<u8> {
    let header =
        format!(r#"{{"{name}":{{"dtype":"I64","shape":[{}],"data_offsets":[0,{}]}}}}"#, values.len(), values.len() * 8);
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}
