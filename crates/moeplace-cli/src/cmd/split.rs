//! `moeplace split`: a trace split by request into calibration and held-out parts.

use std::path::PathBuf;

use anyhow::{bail, Result};
use moeplace_core::protocol::{requests, split_by_request};
use moeplace_core::trace::Trace;
use moeplace_formats::writer::{output_format, TraceWriter};

use crate::input::{read_trace, TraceArgs};
use crate::output::check_output;

/// Split a trace by request into a calibration part (to plan from) and a held-out
/// part (to evaluate on), so that no request has tokens on both sides. In each
/// family, the given fraction of its requests, drawn with the seed, is held out; a
/// family with two requests or more keeps at least one on each side. Both parts keep
/// the trace's token order; output formats follow the extensions (.jsonl, .parquet,
/// .npz).
///
/// Example:
///   moeplace split trace.jsonl --holdout 0.2 --calibration calib.jsonl --held-out held.jsonl
///   moeplace plan --trace calib.jsonl --placer tacg+gesr --gpus 16 --nodes 4 -o p.json
///   moeplace eval --trace held.jsonl --plan p.json
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The trace to split.
    input: PathBuf,
    #[command(flatten)]
    trace: TraceArgs,
    /// Fraction of each family's requests held out, strictly between 0 and 1.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.2)]
    holdout: f64,
    /// Seed of the draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the calibration requests.
    #[arg(long, value_name = "OUT")]
    calibration: PathBuf,
    /// Where to write the held-out requests.
    #[arg(long = "held-out", value_name = "OUT")]
    held_out: PathBuf,
}

fn write(path: &std::path::Path, trace: Trace) -> Result<()> {
    let format = output_format(path, None)?;
    let mut w = TraceWriter::create(path, format, trace.shape)?;
    for b in trace.batches {
        w.write_batch(b)?;
    }
    w.finish()?;
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    if args.calibration == args.held_out {
        bail!("--calibration and --held-out are both {}; give two files", args.calibration.display());
    }
    for p in [&args.calibration, &args.held_out] {
        output_format(p, None)?;
        check_output(p)?;
        if *p == args.input {
            bail!("{}: is the input; give other output files", p.display());
        }
    }
    let trace = read_trace(&args.input, &args.trace)?;
    let (calib, held) = split_by_request(&trace, args.holdout, args.seed)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.input.display()))?;
    let (nc, nh) = (requests(&calib).len(), requests(&held).len());
    let (tc, th) = (calib.tokens(), held.tokens());
    write(&args.calibration, calib)?;
    write(&args.held_out, held)?;
    eprintln!(
        "wrote {nc} requests ({tc} tokens) to {} and {nh} requests ({th} tokens) to {}",
        args.calibration.display(),
        args.held_out.display()
    );
    Ok(())
}
