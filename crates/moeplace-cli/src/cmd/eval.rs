//! `moeplace eval`: replay a held-out trace against plans, side by side.

use std::path::PathBuf;

use anyhow::Result;
use moeplace_core::dispatch;
use moeplace_formats::plan_file;

use crate::cluster_args::ClusterArgs;
use crate::evaluate::{evaluate, write_report, Homes};
use crate::input::{read_trace, TraceArgs};
use crate::output::check_output_of;

/// Replay a held-out trace (never the calibration tokens) against one or more plans
/// and print one table: every plan side by side with the baseline (linear placement,
/// no replicas, requests round-robin over all GPUs) and the "cut" of each traffic
/// metric: 100 x (1 - plan / baseline).
///
/// Metrics per token and MoE layer: remote GPUs (distinct GPUs other than home the
/// token is sent to), remote nodes, cross-node GPUs, remote hops (picks served off
/// home); per layer over GPUs: Jain, balancedness (mean/max, SGLang's form), MaxVio
/// (max/mean - 1) and max/mean, averaged over layers; balancedness as vLLM logs it (sum
/// over layers of mean / sum over layers of max); home load max/mean; bytes; estimated all-to-all and expert
/// compute time from the cluster's links (h100 preset unless --preset/--cluster).
///
/// Examples:
///   moeplace eval --trace test.jsonl --plan linear.json --plan grouped.json
///   moeplace eval --trace test.jsonl --plan p.json --homes family --dispatcher nearest \
///       --json --report report.html
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The held-out trace to replay.
    #[arg(long = "trace", value_name = "TRACE")]
    trace_path: PathBuf,
    #[command(flatten)]
    trace: TraceArgs,
    /// A plan file (repeatable; all are shown side by side).
    #[arg(long = "plan", value_name = "PLAN.json", required = true)]
    plans: Vec<PathBuf>,
    /// Where requests are served: rr (round-robin over all GPUs) or family (by the
    /// plan's family_gpus; round-robin for plans or families without it).
    #[arg(long, value_enum, default_value = "rr")]
    homes: Homes,
    /// Replica choice per token pick: primary (first copy), random (seeded), nearest
    /// (home GPU, a GPU already sent to, home node, a node already sent to, least
    /// loaded), grace, gesr (`moeplace placers` describes them all).
    #[arg(long, value_name = "NAME", default_value = "nearest")]
    dispatcher: String,
    /// Load tolerance of the gesr dispatcher: copies up to this fraction above the
    /// least loaded copy (or the mean GPU load) are candidates.
    #[arg(long, value_name = "THETA", default_value_t = dispatch::gesr_default_theta())]
    gesr_theta: f64,
    /// gesr: choose by cost tiers, least loaded first: a copy the token reaches at no
    /// new send (home, a GPU it already sends to), then one at no new inter-node send
    /// (home node, a node it already crosses to), each while not above the reference
    /// load, then the busier ones; with a wider --gesr-theta (1.5 on ESFT with
    /// `--param alpha=0 --param locality=0.125` plans, docs/TACG.md).
    #[arg(long)]
    gesr_free_first: bool,
    /// Seed of the random dispatcher.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Link figures: --preset h100|a100-eth, or --cluster FILE matching the plans.
    #[command(flatten)]
    links: LinkArgs,
    /// Print JSON (per plan: metrics and cut_* percentages) instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report with plots.
    #[arg(long, value_name = "OUT.html")]
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
    preset: Option<String>,
    /// A cluster TOML file whose layout matches the plans.
    #[arg(long, value_name = "CLUSTER.toml")]
    cluster: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        args.gesr_theta.is_finite() && args.gesr_theta >= 0.0,
        "--gesr-theta {} must be a non-negative number",
        args.gesr_theta
    );
    anyhow::ensure!(
        !args.gesr_free_first || args.dispatcher == "gesr",
        "--gesr-free-first is a rule of the gesr dispatcher; add --dispatcher gesr"
    );
    let d: Box<dyn dispatch::Dispatcher> = match args.dispatcher.as_str() {
        "gesr" => Box::new(dispatch::Gesr {
            theta: args.gesr_theta,
            free_first: args.gesr_free_first,
            ..dispatch::Gesr::default()
        }),
        name => dispatch::by_name(name, args.seed).ok_or_else(|| {
            anyhow::anyhow!("unknown dispatcher {:?} (known: {})", name, dispatch::names().join(", "))
        })?,
    };
    if let Some(path) = &args.report {
        let mut inputs: Vec<&std::path::Path> = args.plans.iter().map(|p| p.as_path()).collect();
        inputs.push(&args.trace_path);
        inputs.extend(args.links.cluster.as_deref());
        check_output_of(path, &inputs)?;
    }
    let mut plans = Vec::new();
    for p in &args.plans {
        let plan = plan_file::read(p)?;
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string());
        let label = if plans.iter().any(|(l, _)| *l == stem) { p.display().to_string() } else { stem };
        plans.push((label, plan));
    }
    let trace = read_trace(&args.trace_path, &args.trace)?;
    for ((_, plan), path) in plans.iter().zip(&args.plans) {
        let p = &plan.placement;
        if p.layers() != trace.shape.layers || p.experts() != trace.shape.experts {
            anyhow::bail!(
                "{}: the plan is for {} layers x {} experts but the trace {} is {}",
                path.display(),
                p.layers(),
                p.experts(),
                args.trace_path.display(),
                trace.shape
            );
        }
    }
    let links =
        ClusterArgs { preset: args.links.preset.clone(), cluster: args.links.cluster.clone(), ..Default::default() };
    let eval = evaluate(&trace, &plans, d.as_ref(), args.homes, &|n, g, s| links.for_layout(n, g, s))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&eval.json())?);
    } else {
        print!("{}", eval.table());
    }
    if let Some(path) = &args.report {
        write_report(path, &eval, &trace, args.report_layer)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
