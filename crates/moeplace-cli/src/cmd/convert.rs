//! `moeplace convert`: rewrite a trace in another format.

use std::path::PathBuf;

use anyhow::Result;
use moeplace_formats::writer::{output_format, TraceWriter};

use crate::input::{read_progress, TraceArgs};
use crate::model_args::ModelArgs;

/// Convert a routing trace between formats, streaming (memory stays bounded).
/// The output format follows the output's extension (.jsonl, .parquet, .npz) or --to.
///
/// Examples:
///   moeplace convert traces/esft -o esft.jsonl
///   moeplace convert trace.jsonl -o trace.parquet
///   moeplace convert trace.parquet -o - | head -3
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The trace to read.
    input: PathBuf,
    #[command(flatten)]
    output: crate::output::TraceOutput,
    #[command(flatten)]
    trace: TraceArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Output format: jsonl, parquet or npz (default: from the output's extension).
    #[arg(long, value_name = "FORMAT")]
    to: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let out = args.output.path();
    let format = output_format(out, args.to.as_deref())?;
    crate::output::check_output_of(out, &[&args.input])?;
    let model = args.model.resolve()?;
    let mut reader = args.trace.open_for(&args.input, model.as_ref())?;
    crate::model_args::layers_of(&args.input, reader.layer_map(), model.as_ref())?;
    let pb = read_progress(reader.as_ref(), &format!("converting {}", args.input.display()));
    let mut tokens = 0usize;
    let mut w = TraceWriter::create(out, format, reader.shape())?;
    while let Some(b) = reader.next() {
        let b = b?;
        tokens += b.len();
        w.write_batch(b)?;
        pb.set_position(reader.progress().0);
    }
    pb.finish_and_clear();
    // The readers refuse a trace without tokens; dropping the writer unfinished
    // leaves no output.
    if tokens == 0 {
        anyhow::bail!("{}: the trace holds no tokens; nothing written", args.input.display());
    }
    w.finish()?;
    eprintln!("wrote {tokens} tokens to {}", out.display());
    Ok(())
}
