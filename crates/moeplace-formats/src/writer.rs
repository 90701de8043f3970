//! Writing a trace in any writable format (JSONL, Parquet, NumPy), so that commands
//! that produce traces (`convert`, `synth`) pick the format once and then only feed
//! batches. The file appears only when [`TraceWriter::finish`] succeeds (each writer
//! writes to a temporary file, then renames).

use std::path::{Path, PathBuf};

use moeplace_core::trace::{ModelShape, TokenBatch};

use crate::detect::TraceFormat;
use crate::error::FormatError;
use crate::jsonl::JsonlWriter;
use crate::parquet::ParquetWriter;

/// The format to write `path` in: `to` (a format name) if given, else from the
/// extension (`.jsonl`, `.parquet`, `.npz`); JSONL for standard output (`-`).
/// NumPy archives are zip files, which need a seekable file: never standard output.
pub fn output_format(path: &Path, to: Option<&str>) -> Result<TraceFormat, FormatError> {
    let format = match to {
        Some(t) => {
            TraceFormat::parse(t).ok_or_else(|| FormatError::file(path, format!("unknown output format {t:?}")))?
        }
        None if crate::atomic::is_stdout(path) => TraceFormat::Jsonl,
        None => match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("jsonl") => TraceFormat::Jsonl,
            Some("parquet") => TraceFormat::Parquet,
            Some("npz") => TraceFormat::Npz,
            _ => {
                return Err(FormatError::file(
                    path,
                    "cannot tell the output format from the name; use --to jsonl|parquet|npz",
                ))
            }
        },
    };
    match format {
        TraceFormat::Npz if crate::atomic::is_stdout(path) => Err(FormatError::file(
            path,
            "an npz archive cannot go to standard output (a zip file needs a seekable file); give a file name or --to jsonl|parquet",
        )),
        TraceFormat::Jsonl | TraceFormat::Parquet | TraceFormat::Npz => Ok(format),
        other => Err(FormatError::file(path, format!("{} traces can be read but not written", other.name()))),
    }
}

/// A trace being written.
pub struct TraceWriter(Sink);

enum Sink {
    Jsonl(JsonlWriter),
    Parquet(Box<ParquetWriter>),
    /// NumPy archives are written whole: the batches are held until `finish`.
    Npz {
        path: PathBuf,
        shape: ModelShape,
        batches: Vec<TokenBatch>,
    },
}

impl TraceWriter {
    /// Starts writing `path` in `format` (one of [`output_format`]'s).
    pub fn create(path: &Path, format: TraceFormat, shape: ModelShape) -> Result<TraceWriter, FormatError> {
        Ok(TraceWriter(match format {
            TraceFormat::Jsonl => Sink::Jsonl(JsonlWriter::create(path, shape)?),
            TraceFormat::Parquet => Sink::Parquet(Box::new(ParquetWriter::create(path, shape)?)),
            TraceFormat::Npz => Sink::Npz { path: path.to_path_buf(), shape, batches: Vec::new() },
            other => {
                return Err(FormatError::file(path, format!("{} traces can be read but not written", other.name())))
            }
        }))
    }

    /// Adds a batch (owned: a NumPy archive keeps it until `finish`).
    pub fn write_batch(&mut self, batch: TokenBatch) -> Result<(), FormatError> {
        match &mut self.0 {
            Sink::Jsonl(w) => w.write_batch(&batch),
            Sink::Parquet(w) => w.write_batch(&batch),
            Sink::Npz { batches, .. } => {
                batches.push(batch);
                Ok(())
            }
        }
    }

    /// Completes the file (and only then puts it in place).
    pub fn finish(self) -> Result<(), FormatError> {
        match self.0 {
            Sink::Jsonl(w) => w.finish(),
            Sink::Parquet(w) => w.finish(),
            Sink::Npz { path, shape, batches } => crate::npz::write_npz(&path, shape, &batches),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_comes_from_the_flag_or_the_extension() {
        let f = |p: &str, to: Option<&str>| output_format(Path::new(p), to).map_err(|e| e.to_string());
        assert_eq!(f("a.parquet", None), Ok(TraceFormat::Parquet));
        assert_eq!(f("a.NPZ", None), Ok(TraceFormat::Npz));
        assert_eq!(f("a.out", Some("jsonl")), Ok(TraceFormat::Jsonl));
        assert!(f("a.out", None).unwrap_err().contains("--to"));
        assert!(f("a.jsonl", Some("csv")).unwrap_err().contains("unknown output format"));
        assert!(f("a.jsonl", Some("esft")).unwrap_err().contains("not written"));
    }
}
