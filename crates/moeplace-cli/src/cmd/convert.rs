//! `moeplace convert`: rewrite a trace in another format.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use moeplace_formats::jsonl::JsonlWriter;
use moeplace_formats::parquet::ParquetWriter;
use moeplace_formats::TraceFormat;

use crate::input::{byte_progress, TraceArgs};

/// Convert a routing trace between formats, streaming (memory stays bounded).
/// The output format follows the output's extension (.jsonl, .parquet, .npz) or --to.
///
/// Example:
///   moeplace convert traces/esft esft.jsonl
///   moeplace convert trace.jsonl trace.parquet
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The trace to read.
    input: PathBuf,
    /// The file to write.
    output: PathBuf,
    #[command(flatten)]
    trace: TraceArgs,
    /// Output format (default: from the output's extension).
    #[arg(long, value_name = "FORMAT")]
    to: Option<String>,
}

fn output_format(path: &Path, to: Option<&str>) -> Result<TraceFormat> {
    if let Some(t) = to {
        return TraceFormat::parse(t).ok_or_else(|| anyhow::anyhow!("unknown output format {t:?}"));
    }
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("jsonl") => Ok(TraceFormat::Jsonl),
        Some("parquet") => Ok(TraceFormat::Parquet),
        Some("npz") => Ok(TraceFormat::Npz),
        _ => bail!("{}: cannot tell the output format from the name; use --to jsonl|parquet|npz", path.display()),
    }
}

pub fn run(args: Args) -> Result<()> {
    let format = output_format(&args.output, args.to.as_deref())?;
    let mut reader = args.trace.open(&args.input)?;
    let pb = byte_progress(reader.progress().1, &format!("converting {}", args.input.display()));
    let mut tokens = 0usize;
    match format {
        TraceFormat::Jsonl => {
            let mut w = JsonlWriter::create(&args.output, reader.shape())?;
            while let Some(b) = reader.next() {
                let b = b?;
                tokens += b.len();
                w.write_batch(&b)?;
                pb.set_position(reader.progress().0);
            }
            w.finish()?;
        }
        TraceFormat::Parquet => {
            let mut w = ParquetWriter::create(&args.output, reader.shape())?;
            while let Some(b) = reader.next() {
                let b = b?;
                tokens += b.len();
                w.write_batch(&b)?;
                pb.set_position(reader.progress().0);
            }
            w.finish()?;
        }
        TraceFormat::Npz => {
            // NumPy archives are written whole: the trace is held in memory.
            let shape = reader.shape();
            let mut batches = Vec::new();
            while let Some(b) = reader.next() {
                let b = b?;
                tokens += b.len();
                batches.push(b);
                pb.set_position(reader.progress().0);
            }
            moeplace_formats::npz::write_npz(&args.output, shape, &batches)?;
        }
        other => bail!("writing {} traces is not available in this build", other.name()),
    }
    pb.finish_and_clear();
    eprintln!("wrote {tokens} tokens to {}", args.output.display());
    Ok(())
}
