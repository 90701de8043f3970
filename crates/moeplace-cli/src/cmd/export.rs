//! `moeplace export`: a plan in a serving engine's format.

use std::path::PathBuf;

use anyhow::Result;
use moeplace_formats::export::{self, ExportFormat};
use moeplace_formats::plan_file;

/// Write a plan in the format a serving engine loads:
///   sglang  SGLang --init-expert-location JSON ({"physical_to_logical_map": ...})
///   vllm    vLLM static EPLB mapping JSONL (record_type eplb_initial_mapping)
///   trtllm  TensorRT-LLM load-balancer YAML (num_slots, initial_global_assignments)
///   eplb    DeepSeek-EPLB arrays as JSON (phy2log, log2phy padded with -1, logcnt)
///
/// Example:
///   moeplace export plan.json --to sglang -o expert-location.json
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The plan file.
    plan: PathBuf,
    /// Engine format: sglang, vllm, trtllm, eplb.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    to: ExportFormat,
    /// Output file (default: the plan's name with .<format>.<ext>).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
}

fn parse_format(s: &str) -> Result<ExportFormat, String> {
    ExportFormat::parse(s).ok_or_else(|| format!("unknown format {s:?}; expected sglang, vllm, trtllm or eplb"))
}

pub fn run(args: Args) -> Result<()> {
    let out =
        args.output.unwrap_or_else(|| args.plan.with_extension(format!("{}.{}", args.to.name(), args.to.extension())));
    crate::output::check_output_of(&out, &[&args.plan])?;
    let plan = plan_file::read(&args.plan)?;
    export::write(&out, &plan.placement, args.to)?;
    eprintln!("wrote {} ({})", out.display(), args.to.name());
    Ok(())
}
