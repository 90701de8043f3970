//! `moeplace eval`: replay a held-out trace against plans, side by side.

use std::path::PathBuf;

use anyhow::Result;
use moeplace_core::protocol;
use moeplace_core::stats::Statistics;
use moeplace_formats::plan_file;

use crate::cluster_args::ClusterArgs;
use crate::evaluate::{evaluate_windows, report_statistics, write_report, ServingArgs};
use crate::input::{open_trace_for_replay, read_windows, TraceArgs};
use crate::model_args::ModelArgs;
use crate::output::check_output_of;

/// Replay a held-out trace (never the calibration tokens) against one or more plans
/// and print one table: every plan side by side with the baseline (linear placement,
/// no replicas, requests round-robin over all GPUs) and the "cut" of each traffic
/// metric: 100 x (1 - plan / baseline).
///
/// The baseline on the plan's GPUs and nodes: expert e on GPU floor(e x G / E),
/// primary copies. With more GPUs than experts (e.g. 256 experts on 320 GPUs) a GPU
/// left without an expert holds an unserved copy of its lower neighbour's expert: it
/// serves nothing and counts as idle in the balance figures (docs/PLANS.md).
///
/// Metrics per token and MoE layer: remote GPUs (distinct GPUs other than home the
/// token is sent to), remote nodes, cross-node GPUs, remote hops (picks served off
/// home); per layer over GPUs: Jain, balancedness (mean/max, SGLang's form), MaxVio
/// (max/mean - 1) and max/mean, averaged over layers; balancedness as vLLM logs it (sum
/// over layers of mean / sum over layers of max); home load max/mean; bytes; estimated all-to-all and expert
/// compute time from the cluster's links (h100 links unless --machine/--cluster).
///
/// Examples:
///   moeplace eval --trace test.jsonl --plan linear.json --plan grouped.json
///   moeplace eval --trace test.jsonl --plan p.json --homes family --dispatcher gesr \
///       --dispatcher-param theta=1.5 --json --report report.html
///
/// The trace is read and replayed in windows of 262,144 tokens, so memory holds one
/// window whatever the trace's length; families interleave within a window, and a
/// request keeps its home GPU across windows.
///
/// Each plan is served as it says (its `serving`: the dispatcher its placer was made
/// for, with its parameters, and where requests are served); --dispatcher,
/// --dispatcher-param and --homes change that for every plan.
/// Tokens per replay window (whole batches; see the command's documentation).
const WINDOW_TOKENS: usize = 1 << 18;

#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The held-out trace to replay.
    #[arg(long = "trace", value_name = "TRACE")]
    trace_path: PathBuf,
    #[command(flatten)]
    trace: TraceArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// A plan file (repeatable; all are shown side by side).
    #[arg(long = "plan", value_name = "PLAN.json", required = true)]
    plans: Vec<PathBuf>,
    #[command(flatten)]
    serving: ServingArgs,
    /// Replay the trace in its own order. By default whole requests are reordered so
    /// that families interleave as in a mixed serving stream (logs that list one
    /// family after another would otherwise fill every replay chunk, the dispatchers'
    /// load window, with one family).
    #[arg(long)]
    no_interleave: bool,
    /// Seed of the random dispatcher.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Link figures: --machine h100|a100-eth, or --cluster FILE matching the plans.
    #[command(flatten)]
    links: LinkArgs,
    /// Print JSON (per plan: metrics and cut_* percentages) instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report with plots (`-`: standard output; the
    /// table or JSON then goes to standard error).
    #[arg(short = 'o', long, visible_alias = "output", value_name = "OUT.html")]
    report: Option<PathBuf>,
    /// Layer of the report's co-activation heatmap (default: the middle layer).
    #[arg(long, value_name = "L", requires = "report")]
    report_layer: Option<usize>,
}

/// The link flags of `eval` (the layout comes from each plan).
#[derive(clap::Args)]
pub struct LinkArgs {
    /// Link figures of a named machine (h100, a100-eth; default: h100's links).
    #[arg(long, value_name = "NAME", conflicts_with = "cluster")]
    machine: Option<String>,
    /// A cluster TOML file whose layout matches the plans.
    #[arg(long, value_name = "CLUSTER.toml")]
    cluster: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let overrides = args.serving.overrides()?;
    crate::output::refuse_repeated(&args.plans, "its row would be replayed twice beside itself")?;
    if let Some(path) = &args.report {
        let mut inputs: Vec<&std::path::Path> = args.plans.iter().map(|p| p.as_path()).collect();
        inputs.push(&args.trace_path);
        inputs.extend(args.links.cluster.as_deref());
        check_output_of(path, &inputs)?;
    }
    let model = args.model.resolve()?;
    let mut plans = Vec::new();
    for p in &args.plans {
        let plan = plan_file::read(p)?;
        crate::model_args::plan_layers(p, &plan, model.as_ref())?;
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string());
        let label = if plans.iter().any(|(l, _)| *l == stem) { p.display().to_string() } else { stem };
        plans.push((label, plan));
    }
    let reader = open_trace_for_replay(&args.trace_path, &args.trace, model.as_ref())?;
    let shape = reader.shape();
    for ((_, plan), path) in plans.iter().zip(&args.plans) {
        let p = &plan.placement;
        if p.layers() != shape.layers || p.experts() != shape.experts {
            anyhow::bail!(
                "{}: the plan is for {} layers x {} experts but the trace {} is {}",
                path.display(),
                p.layers(),
                p.experts(),
                args.trace_path.display(),
                shape
            );
        }
    }
    if let Some(layer) = args.report_layer.filter(|&l| l >= shape.layers) {
        anyhow::bail!("--report-layer {layer}: the trace has {} layers", shape.layers);
    }
    warn_calibration_input(&args.trace_path, &plans)?;
    let links =
        ClusterArgs { machine: args.links.machine.clone(), cluster: args.links.cluster.clone(), ..Default::default() };
    // The co-activation the report shows, counted window by window.
    let mut seen: Option<Statistics> = None;
    let eval = evaluate_windows(shape, &plans, &overrides, args.seed, &|n, g, s| links.for_layout(n, g, s), |feed| {
        read_windows(&args.trace_path, reader, WINDOW_TOKENS, |window| {
            let window = if args.no_interleave { window } else { protocol::interleave_families(&window) };
            feed(&window)?;
            if args.report.is_some() {
                let w = report_statistics(&window)?;
                match &mut seen {
                    Some(s) => s.merge(&w)?,
                    None => seen = Some(w),
                }
            }
            Ok(())
        })
    })?;
    let text = if args.json { serde_json::to_string_pretty(&eval.json())? + "\n" } else { eval.table() };
    crate::output::print_summary(args.report.as_deref(), &text)?;
    if let (Some(path), Some(seen)) = (&args.report, &seen) {
        write_report(path, &eval, seen, args.report_layer)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Warns about every plan calibrated on the very trace being replayed: its figures
/// would flatter it (a plan is judged on held-out requests; `moeplace split`).
fn warn_calibration_input(trace_path: &std::path::Path, plans: &[(String, plan_file::Plan)]) -> Result<()> {
    if plans.iter().all(|(_, p)| p.provenance.input_digest.is_empty()) {
        return Ok(());
    }
    // `plan --trace` records the digest of its input's bytes, so the same file gives the same digest.
    let d = plan_file::digest_file(trace_path)?;
    for (label, plan) in plans {
        if plan.provenance.input_digest == d {
            eprintln!(
                "warning: {label} was calibrated on this very trace; its figures are not held-out figures \
                 (split the trace by request with `moeplace split`)"
            );
        }
    }
    Ok(())
}
