//! `moeplace-lab experiment tune`: plans that tune themselves (`plan` with a trace),
//! judged on requests they have never seen, over several seeded splits of the ESFT
//! requests; docs/TUNING.md quotes its tables.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use moeplace_core::cluster::Cluster;
use moeplace_core::placers::{by_name, Params};
use moeplace_core::protocol;
use moeplace_core::serving::Serving;
use moeplace_core::simulate::{cut_percent, simulate, SimResult};
use moeplace_core::stats::ProfileOptions;
use moeplace_core::trace::Trace;
use moeplace_core::tune::{self, Objective, Spread, TuneOptions};

use super::common::{self, profile};
use crate::io::{print_stdout, read_trace};

#[derive(clap::Args)]
pub(super) struct TuneArgs {
    /// The ESFT log folder (family folders of expert_weights_<layer>.txt).
    #[arg(long, value_name = "DIR", default_value = "../shared/data/esft-deepseek-v2-lite")]
    data: PathBuf,
    /// Seeded splits of the requests (seeds 1 to N).
    #[arg(long, default_value_t = 5)]
    splits: u64,
    /// Share of each family's requests held out in every split.
    #[arg(long, default_value_t = 0.5)]
    holdout: f64,
}

const NODES: usize = 4;
const GPUS: usize = 16;
const SLOTS_PER_GPU: usize = 5;

/// The rows: placer and the Jain floor `plan` tunes it for (as with a trace and
/// `--min-jain`), or `None` for its defaults (`--no-tune`).
const ROWS: [(&str, Option<f64>); 6] = [
    ("balance", None),
    ("coact", None),
    ("coact", Some(tune::DEFAULT_MIN_JAIN)),
    ("tacg+gesr", None),
    ("tacg+gesr", Some(tune::DEFAULT_MIN_JAIN)),
    ("tacg+gesr", Some(0.98)),
];

/// A row's name in tables.
fn row_name(placer: &str, floor: Option<f64>) -> String {
    match floor {
        None => placer.to_string(),
        Some(f) if f == tune::DEFAULT_MIN_JAIN => format!("{placer} (tuned)"),
        Some(f) => format!("{placer} (tuned, --min-jain {f})"),
    }
}

/// One row's figures on one split.
struct Figures {
    nodes_cut: f64,
    gpus_cut: f64,
    jain: f64,
    setting: String,
    /// Cross-validated expectation of the remote-node cut (tuned rows).
    expected: Option<f64>,
}

pub(super) fn tune(args: TuneArgs) -> Result<()> {
    if !args.data.is_dir() {
        bail!("{}: no such folder (give --data, the ESFT DeepSeek-V2-Lite logs)", args.data.display());
    }
    anyhow::ensure!(args.splits >= 1, "--splits must be at least 1");
    let trace = read_trace(&args.data)?;
    let cluster = Cluster::new(NODES, GPUS, SLOTS_PER_GPU)?;
    let mut per_row: Vec<Vec<Figures>> = ROWS.iter().map(|_| Vec::new()).collect();
    for seed in 1..=args.splits {
        let (calib, held) = protocol::split_by_request(&trace, args.holdout, seed)?;
        let held = protocol::interleave_families(&held);
        let stats = profile(&calib)?;
        let base = common::baseline(&held, &cluster)?;
        for (i, &(placer, floor)) in ROWS.iter().enumerate() {
            let f = row(placer, floor, &calib, &held, &stats, &cluster, &base, seed)
                .with_context(|| format!("split {seed}: {placer}"))?;
            eprintln!("split {seed}: {}: {:.1}% remote nodes", row_name(placer, floor), f.nodes_cut);
            per_row[i].push(f);
        }
    }
    print_stdout(&render(&args, &trace, &per_row))
}

#[allow(clippy::too_many_arguments)]
fn row(
    placer: &str,
    floor: Option<f64>,
    calib: &Trace,
    held: &Trace,
    stats: &moeplace_core::stats::Statistics,
    cluster: &Cluster,
    base: &SimResult,
    seed: u64,
) -> Result<Figures> {
    let p = by_name(placer).context("a registered placer")?;
    let (params, serving, expected): (Params, Serving, Option<f64>) = if let Some(min_jain) = floor {
        let options = TuneOptions {
            objective: Objective::RemoteNodes,
            min_jain,
            folds: tune::DEFAULT_FOLDS,
            seed,
            profile: ProfileOptions::default(),
        };
        let t = tune::cross_validate(p.as_ref(), calib, cluster, &tune::Fixed::default(), options, None, &|| {})?;
        let c = t.chosen();
        (c.setting.params.clone(), c.setting.serving.clone(), Some(c.cut().mean))
    } else {
        (Params::default(), p.serving(), None)
    };
    let (out, _) = common::plan(stats, placer, cluster, &params)?;
    let d = serving.dispatcher(seed)?;
    let r = simulate(held, &out.placement, cluster, d.as_ref(), &serving.home_policy(out.family_gpus.as_ref()))?;
    let label = moeplace_core::tune::Setting { params, serving }.label();
    Ok(Figures {
        nodes_cut: cut_percent(r.remote_nodes, base.remote_nodes).unwrap_or(0.0),
        gpus_cut: cut_percent(r.remote_gpus, base.remote_gpus).unwrap_or(0.0),
        jain: r.jain,
        setting: label,
        expected,
    })
}

fn cell(x: &[f64], digits: usize) -> String {
    let s = Spread::of(x);
    format!("{:.d$} ({:.d$}..{:.d$})", s.mean, s.min, s.max, d = digits)
}

fn render(args: &TuneArgs, trace: &Trace, rows: &[Vec<Figures>]) -> String {
    let n = args.splits;
    let mut out = format!(
        "ESFT DeepSeek-V2-Lite, {} requests, {} tokens; {n} splits by request (seeds 1..={n}, {:.0}% of each \
         family's requests held out); {GPUS} GPUs in {NODES} nodes, {SLOTS_PER_GPU} slots per GPU; each plan served \
         as it says; cuts against the protocol's baseline on the same held-out requests. Tuned: `plan` with a \
         trace (4-fold cross-validation on the calibration requests, objective remote nodes, Jain >= 0.99 on \
         every fold); defaults: `plan --no-tune`. Mean (min..max) over the splits.\n\n\
         | plan | remote-node cut % | remote-GPU cut % | Jain | splits with Jain >= 0.99 |\n|---|---:|---:|---:|---:|\n",
        protocol::requests(trace).len(),
        trace.tokens(),
        args.holdout * 100.0
    );
    for ((placer, floor), figs) in ROWS.iter().zip(rows) {
        let get = |f: fn(&Figures) -> f64| figs.iter().map(f).collect::<Vec<f64>>();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} of {} |\n",
            row_name(placer, *floor),
            cell(&get(|f| f.nodes_cut), 1),
            cell(&get(|f| f.gpus_cut), 1),
            cell(&get(|f| f.jain), 4),
            figs.iter().filter(|f| f.jain >= 0.99).count(),
            figs.len()
        ));
    }
    out.push_str(
        "\nSettings chosen per split, and the remote-node cut the cross-validation expected against the one \
         measured on the held-out requests:\n\n| split | plan | setting chosen | expected % | measured % |\n\
         |---:|---|---|---:|---:|\n",
    );
    for ((placer, floor), figs) in ROWS.iter().zip(rows).filter(|((_, floor), _)| floor.is_some()) {
        for (i, f) in figs.iter().enumerate() {
            out.push_str(&format!(
                "| {} | {} | {} | {:.1} | {:.1} |\n",
                i + 1,
                row_name(placer, *floor),
                f.setting,
                f.expected.unwrap_or(f64::NAN),
                f.nodes_cut
            ));
        }
    }
    out
}
