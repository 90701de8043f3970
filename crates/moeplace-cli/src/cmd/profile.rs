//! `moeplace profile`: characterise routing traces and save mergeable statistics.

use std::path::PathBuf;

use anyhow::Result;
use moeplace_core::report::ProfileReport;
use moeplace_core::stats::ProfileOptions;
use moeplace_formats::stats_file::{self, Encoding};

use crate::input::{profile_inputs, TraceArgs};
use crate::model_args::ModelArgs;

/// Characterise routing traces: expert load skew, entropy, how differently task
/// families use experts, co-activation structure, generic experts and (with prefill
/// and decode) how well a request's prefill predicts its decode.
///
/// Inputs may be traces (JSONL, Parquet, NPZ, an ESFT log folder, an SGLang trace),
/// statistics files from an earlier `profile -o`, or engine counts (an SGLang
/// `logical_count` JSON file, a TensorRT-LLM statistics folder; loads only, give
/// --top-k); all are added up.
///
/// Examples:
///   moeplace profile traces/esft --json
///   moeplace profile day1.parquet day2.parquet -o stats.bin
///   moeplace profile day1.parquet -o stats.json      (JSON, to look inside)
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Traces, statistics files or engine counts to profile together.
    #[arg(required = true, value_name = "TRACE")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    trace: TraceArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Save the statistics (mergeable with `moeplace merge`) to this file: compact
    /// binary, or JSON for a `.json` name and for `-` (standard output; the report
    /// then goes to standard error) (docs/FORMATS.md).
    #[arg(short, long, value_name = "STATS")]
    output: Option<PathBuf>,
    /// Encoding of --output whatever its name: binary or json.
    #[arg(long, value_name = "FORMAT", value_parser = crate::output::parse_stats_encoding, requires = "output")]
    output_format: Option<Encoding>,
    /// Skip per-request activation vectors (memory then does not grow with the
    /// number of requests; the prefill/decode correlation is not reported).
    #[arg(long)]
    no_request_vectors: bool,
    /// Tokens of the sample of whole token paths kept in the statistics (a bottom-k
    /// sample by token hash, mergeable like the counts); the token-level steps of
    /// `tacg`, `tacg+gesr` and `grace` read it. 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = moeplace_core::stats::DEFAULT_TOKEN_SAMPLE)]
    token_sample: usize,
}

pub fn run(args: Args) -> Result<()> {
    let options = ProfileOptions { request_vectors: !args.no_request_vectors, token_sample: args.token_sample };
    if let Some(out) = &args.output {
        let inputs: Vec<&std::path::Path> = args.inputs.iter().map(|p| p.as_path()).collect();
        crate::output::check_output_of(out, &inputs)?;
    }
    let model = args.model.resolve()?;
    let stats = profile_inputs(&args.inputs, &args.trace, model.as_ref(), options)?;
    if let Some(out) = &args.output {
        stats_file::write_as(out, &stats, args.output_format.unwrap_or_else(|| Encoding::for_path(out)))?;
    }
    let report = ProfileReport::from_statistics(&stats);
    let text = if args.json { serde_json::to_string_pretty(&report)? + "\n" } else { report.render_text() };
    // With `-o -` standard output carries the statistics alone.
    crate::output::print_summary(args.output.as_deref(), &text)?;
    Ok(())
}
