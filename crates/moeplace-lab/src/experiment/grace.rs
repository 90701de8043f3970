//! `moeplace-lab experiment grace`: GRACE-MoE (docs/METHODS.md, "GRACE-MoE") against the other
//! placers with flat and hierarchical communication, its ablation ladder, and the
//! issue's targets; docs/GRACE.md quotes its tables.
//!
//! Workloads: the held-out ESFT DeepSeek-V2-Lite requests (calibration = even request
//! ordinals within each family, held out = odd, families interleaved; see
//! [`super::common`]) and synthetic DeepSeek-V3-shaped traffic from the `synth`
//! generator (one model, calibration stream seed 1, held-out stream seed 2). Clusters:
//! 2 nodes x 4 GPUs with the `a100-eth` preset's links (25 Gb/s Ethernet between
//! nodes, the paper's testbed) and 8 nodes x 8 GPUs with the `h100` preset's. For the
//! ESFT rows the model sizes are DeepSeek-V2-Lite's (hidden 2048, expert intermediate
//! 1408, bf16), for the synthetic rows DeepSeek-V3's (the presets' default).
//!
//! One replay gives both schemes: the dispatcher's choices do not depend on how
//! tokens then travel, so a row's flat and hierarchical figures come from the same
//! replay (cross-node sends: cross-node GPUs with flat communication, remote nodes
//! with hierarchical, docs/DESIGN.md, "Metrics"). Homes are round-robin over all GPUs
//! (the baseline's, docs/DESIGN.md), except one labelled row that serves tacg+gesr by its
//! family groups.

use std::path::PathBuf;

use anyhow::{bail, Result};
use moeplace_core::cluster::{expert_flops, Cluster, Machine, DEEPSEEK_V3_EXPERT_INTERMEDIATE, DEEPSEEK_V3_HIDDEN};
use moeplace_core::dispatch::{Dispatcher, Grace, Random};
use moeplace_core::placers::{Params, PlacerOutput};
use moeplace_core::simulate::{cut_percent, simulate, HomePolicy, SimResult};
use moeplace_core::stats::Statistics;
use moeplace_core::synth::{self, SynthConfig};
use moeplace_core::trace::{TokenBatch, Trace};

use super::common::{self, dispatcher_for, profile, request_lengths, split};
use crate::io::{print_stdout, read_trace};

#[derive(clap::Args)]
pub(super) struct GraceArgs {
    /// The ESFT log folder (family folders of expert_weights_<layer>.txt).
    #[arg(long, value_name = "DIR", default_value = "../shared/data/esft-deepseek-v2-lite")]
    data: PathBuf,
    /// Requests in each synthetic DeepSeek-V3 stream (calibration and held out).
    #[arg(long, value_name = "N", default_value_t = 48)]
    v3_requests: usize,
    /// Reduced run: the ESFT workload on 2 nodes x 4 GPUs only (main table, ladder,
    /// targets).
    #[arg(long)]
    quick: bool,
    /// Seed of the topology-blind `random` dispatcher of ladder steps 3-5.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A parameter of the grace placer, key=value (repeatable), for every grace plan
    /// (main table, ladder, targets), e.g. `--param locality=0.5`.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
}

/// DeepSeek-V2-Lite's hidden size and routed-expert intermediate size.
const V2_LITE_HIDDEN: usize = 2048;
const V2_LITE_EXPERT_INTERMEDIATE: usize = 1408;

/// Placers of the main table, in row order.
const PLACERS: &[&str] = &["eplb", "balance", "coact", "tacg+gesr", "grace"];

struct Workload {
    name: &'static str,
    calib: Trace,
    test: Trace,
    stats: Statistics,
    /// Model sizes for the cost model: hidden size, expert intermediate size.
    sizes: (usize, usize),
}

/// One cluster of the experiment.
struct Setup<'a> {
    w: &'a Workload,
    label: String,
    /// With the redundant slots of this setup.
    cluster: Cluster,
    /// The same layout and links without redundant slots.
    bare: Cluster,
    baseline: SimResult,
    /// Parameters of every grace plan (`--param`).
    grace: Params,
}

pub(super) fn grace(args: GraceArgs) -> Result<()> {
    if !args.data.is_dir() {
        bail!("{}: no such folder (give --data, the ESFT DeepSeek-V2-Lite logs)", args.data.display());
    }
    let grace_params = Params::parse(args.params.iter().map(String::as_str))?;
    let mut out = String::new();
    eprintln!("reading and splitting the ESFT logs ...");
    let (calib, test) = split(&read_trace(&args.data)?);
    let esft = Workload {
        name: "held-out ESFT DeepSeek-V2-Lite",
        stats: profile(&calib)?,
        sizes: (V2_LITE_HIDDEN, V2_LITE_EXPERT_INTERMEDIATE),
        calib,
        test,
    };
    out.push_str(&format!(
        "ESFT DeepSeek-V2-Lite ({}): calibration {} tokens ({} requests, even ordinals within each family), \
         held out {} tokens ({} requests, odd ordinals), families interleaved.\n",
        esft.test.shape,
        esft.calib.tokens(),
        request_lengths(&esft.calib).len(),
        esft.test.tokens(),
        request_lengths(&esft.test).len(),
    ));
    let mut workloads = vec![esft];
    if !args.quick {
        eprintln!("generating synthetic DeepSeek-V3 traffic ...");
        let mut sc = SynthConfig::preset("deepseek-v3")?;
        sc.requests = args.v3_requests;
        let stream = |seed: u64| -> Result<Trace> {
            let batches: Vec<TokenBatch> = synth::generate(&sc, seed)?.collect();
            Ok(Trace { shape: sc.shape, batches })
        };
        let (calib, test) = (stream(1)?, stream(2)?);
        out.push_str(&format!(
            "Synthetic DeepSeek-V3 ({}, `synth` preset deepseek-v3, four families, {} requests per stream): \
             calibration stream seed 1 ({} tokens), held-out stream seed 2 ({} tokens).\n",
            sc.shape,
            args.v3_requests,
            calib.tokens(),
            test.tokens(),
        ));
        workloads.push(Workload {
            name: "synthetic DeepSeek-V3",
            stats: profile(&calib)?,
            sizes: (DEEPSEEK_V3_HIDDEN, DEEPSEEK_V3_EXPERT_INTERMEDIATE),
            calib,
            test,
        });
    }
    out.push_str(
        "Homes round-robin over all GPUs. Cross-node sends per token-layer: cross-node GPUs with flat \
         communication, remote nodes with hierarchical (one crossing per destination node, then NVLink). \
         Bytes: dispatch and combine over the whole held-out stream. All-to-all: the estimated time of the \
         whole held-out stream as one batch, summed over layers. Load sd: standard deviation of the per-GPU \
         load (picks served) over its mean, per layer, averaged over layers.\n\n",
    );
    let mut setups = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let esft = i == 0;
        let mut layouts: Vec<(&str, usize, usize)> = vec![("a100-eth", 2, if esft { 80 } else { 288 })];
        if !args.quick {
            layouts.push(("h100", 8, if esft { 128 } else { 288 }));
        }
        for (preset, nodes, slots) in layouts {
            let links = links(preset, nodes, w.sizes)?;
            let cluster = links.clone().with_slots(slots)?;
            let bare = links.with_slots(w.test.shape.experts)?;
            let label = format!(
                "{}, {nodes} nodes x {} GPUs ({preset} links), {}",
                w.name,
                cluster.gpus_per_node(),
                cluster.slots_label()
            );
            eprintln!("{label}: baseline ...");
            let baseline = common::baseline(&w.test, &bare)?;
            setups.push(Setup { w, label, cluster, bare, baseline, grace: grace_params.clone() });
        }
    }
    let mut graces = Vec::new();
    for s in &setups {
        graces.push(main_table(s, &mut out)?);
    }
    for s in &setups {
        ladder_table(s, args.seed, &mut out)?;
    }
    targets_table(&setups[0], &graces[0], &mut out)?;
    print_stdout(&out)
}

/// A preset's links for `nodes` nodes with the model sizes of the workload.
fn links(preset: &str, nodes: usize, (hidden, intermediate): (usize, usize)) -> Result<Cluster> {
    let p = Machine::by_name(preset).ok_or_else(|| anyhow::anyhow!("preset {preset} is defined"))?;
    let mut c = p.cluster(nodes, 1)?;
    c.hidden_size = hidden;
    c.expert_flops_per_token = expert_flops(hidden, intermediate);
    Ok(c)
}

/// Mean over layers of the per-GPU load's standard deviation over its mean.
fn load_sd(r: &SimResult) -> f64 {
    let per: Vec<f64> = r
        .layers
        .iter()
        .map(|l| {
            let n = l.load.len() as f64;
            let mean = l.load.iter().sum::<u64>() as f64 / n;
            let var = l.load.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
            if mean > 0.0 {
                var.sqrt() / mean
            } else {
                0.0
            }
        })
        .collect();
    per.iter().sum::<f64>() / per.len().max(1) as f64
}

/// The figures of one row under one communication scheme.
struct Comm {
    sends: f64,
    inter: u64,
    intra: u64,
    a2a_us: f64,
}

fn comm(r: &SimResult, hier: bool) -> Comm {
    if hier {
        Comm {
            sends: r.remote_nodes,
            inter: r.hier_inter_node_bytes,
            intra: r.hier_intra_node_bytes,
            a2a_us: r.hier_all_to_all_us,
        }
    } else {
        Comm { sends: r.cross_node_gpus, inter: r.inter_node_bytes, intra: r.intra_node_bytes, a2a_us: r.all_to_all_us }
    }
}

fn cut(a: f64, b: f64) -> String {
    cut_percent(a, b).map_or("-".to_string(), |c| format!("{c:.1}"))
}

fn gb(bytes: u64) -> String {
    format!("{:.3}", bytes as f64 / 1e9)
}

/// One replay: the placer's plan for `cluster`, served by `dispatcher` with `homes`.
fn replay(
    s: &Setup<'_>,
    placer: &str,
    cluster: &Cluster,
    params: &Params,
    dispatcher: &dyn Dispatcher,
    family_homes: bool,
) -> Result<(SimResult, PlacerOutput, f64)> {
    let (o, ms) = common::plan(&s.w.stats, placer, cluster, params)?;
    let homes = match (&o.family_gpus, family_homes) {
        (Some(f), true) => HomePolicy::Family(f.clone()),
        _ => HomePolicy::RoundRobin,
    };
    let r = simulate(&s.w.test, &o.placement, cluster, dispatcher, &homes)?;
    Ok((r, o, ms))
}

/// The main table of one setup; returns grace's replay (for the targets).
fn main_table(s: &Setup<'_>, out: &mut String) -> Result<SimResult> {
    out.push_str(&format!(
        "### {}\n\nDispatchers: grace for grace, gesr for tacg+gesr, nearest for eplb, balance and coact; the \
         baseline is linear with no replicas and primary copies.\n\n",
        s.label
    ));
    out.push_str(
        "| placer | dispatcher | comm | cross-node sends | cut % vs linear flat | cut % vs linear hier | \
         inter-node GB | intra-node GB | remote GPUs | load sd % | Jain | all-to-all ms |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let base = &s.baseline;
    let row = |out: &mut String, label: &str, d: &str, r: &SimResult| {
        for hier in [false, true] {
            let c = comm(r, hier);
            out.push_str(&format!(
                "| {label} | {d} | {} | {:.4} | {} | {} | {} | {} | {:.4} | {:.1} | {:.4} | {:.1} |\n",
                if hier { "hier" } else { "flat" },
                c.sends,
                cut(c.sends, base.cross_node_gpus),
                cut(c.sends, base.remote_nodes),
                gb(c.inter),
                gb(c.intra),
                r.remote_gpus,
                100.0 * load_sd(r),
                r.jain,
                c.a2a_us / 1e3,
            ));
        }
    };
    row(out, "linear (baseline)", "primary", base);
    let mut times = Vec::new();
    let mut grace_result = None;
    let mut notes = String::new();
    for &placer in PLACERS {
        eprintln!("{}: {placer} ...", s.label);
        let d = dispatcher_for(placer, moeplace_core::dispatch::gesr_default_theta());
        let params = if placer == "grace" { s.grace.clone() } else { Params::default() };
        let (r, o, ms) = replay(s, placer, &s.cluster, &params, d.as_ref(), false)?;
        row(out, placer, d.name(), &r);
        times.push(format!("{placer} {:.0} ms", ms));
        if placer == "tacg+gesr" && o.family_gpus.is_some() {
            let (rf, _, _) = replay(s, placer, &s.cluster, &Params::default(), d.as_ref(), true)?;
            row(out, "tacg+gesr (family homes)", d.name(), &rf);
        }
        if placer == "grace" {
            notes = format!(
                "grace chose a size tolerance r of {:.3} and {:.1} hot experts per layer (means over layers). ",
                o.notes.get("knee_r").copied().unwrap_or(f64::NAN),
                o.notes.get("hot_experts").copied().unwrap_or(f64::NAN),
            );
            grace_result = Some(r);
        }
    }
    out.push_str(&format!("\n{notes}\n"));
    // Times move with the machine: on standard error, so the tables regenerate exactly.
    eprintln!("{}: plan times (one run, this machine): {}", s.label, times.join(", "));
    Ok(grace_result.expect("grace is among the placers"))
}

/// The ablation ladder of one setup.
fn ladder_table(s: &Setup<'_>, seed: u64, out: &mut String) -> Result<()> {
    eprintln!("{}: ladder ...", s.label);
    out.push_str(&format!(
        "### Ablation ladder: {}\n\nStep 3 plans on the same layout without redundant slots ({} slots per \
         layer, one per expert); steps 4-5 use the setup's {} slots per layer. Steps 3-4 serve copies with the \
         topology-blind `random` dispatcher (seed {seed}; a uniform choice among an expert's copies), step 5 \
         with grace's.\n\n",
        s.label,
        s.bare.slots(),
        s.cluster.slots(),
    ));
    out.push_str(
        "| step | placer | slots | dispatcher | comm | cross-node sends | cut % vs step 1 | cut % vs previous step | \
         inter-node GB | intra-node GB | load sd % | Jain | all-to-all ms |\n\
         |---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let random = Random::new(seed);
    let mut rungs: Vec<(&str, String, usize, &str, SimResult, bool)> = vec![
        ("1. linear, flat communication", "linear".into(), s.bare.slots(), "primary", s.baseline.clone(), false),
        ("2. + hierarchical communication", "linear".into(), s.bare.slots(), "primary", s.baseline.clone(), true),
    ];
    let (r, _, _) = replay(s, "grace", &s.bare, &s.grace, &random, false)?;
    rungs.push(("3. + grouping (no replicas)", "grace".into(), s.bare.slots(), "random", r, true));
    let (r, _, _) = replay(s, "grace", &s.cluster, &s.grace, &random, false)?;
    rungs.push(("4. + dynamic replication", "grace".into(), s.cluster.slots(), "random", r.clone(), true));
    let (r6, _, _) = replay(s, "grace", &s.cluster, &s.grace, &Grace, false)?;
    rungs.push(("5. + topology-aware routing", "grace".into(), s.cluster.slots(), "grace", r6, true));
    let first = s.baseline.cross_node_gpus;
    let mut previous = first;
    for (label, placer, slots, d, r, hier) in &rungs {
        let c = comm(r, *hier);
        out.push_str(&format!(
            "| {label} | {placer} | {slots} | {d} | {} | {:.4} | {} | {} | {} | {} | {:.1} | {:.4} | {:.1} |\n",
            if *hier { "hier" } else { "flat" },
            c.sends,
            cut(c.sends, first),
            if previous == c.sends && label.starts_with('1') { "-".to_string() } else { cut(c.sends, previous) },
            gb(c.inter),
            gb(c.intra),
            100.0 * load_sd(r),
            r.jain,
            c.a2a_us / 1e3,
        ));
        previous = c.sends;
    }
    out.push('\n');
    Ok(())
}

/// Issue 7's targets on the first setup (held-out ESFT, 2 nodes x 4 GPUs): grace's
/// held-out replay `g` against the baseline, plus the same plan replayed on the
/// calibration requests themselves (in-sample, a reference only: it tells a
/// generalisation gap from a gap of the method).
fn targets_table(s: &Setup<'_>, g: &SimResult, out: &mut String) -> Result<()> {
    eprintln!("{}: targets ...", s.label);
    let (o, _) = common::plan(&s.w.stats, "grace", &s.cluster, &s.grace)?;
    let gi = simulate(&s.w.calib, &o.placement, &s.cluster, &Grace, &HomePolicy::RoundRobin)?;
    let bi = common::baseline(&s.w.calib, &s.bare)?;
    let figures = |g: &SimResult, b: &SimResult| {
        [
            cut_percent(g.remote_nodes, b.cross_node_gpus).unwrap_or(f64::NAN),
            cut_percent(g.remote_nodes, b.remote_nodes).unwrap_or(f64::NAN),
            g.jain,
        ]
    };
    let (held, ins) = (figures(g, &s.baseline), figures(&gi, &bi));
    let need = [60.0, 20.0, 0.98];
    let names = ["cross-node sends cut vs linear flat", "cross-node sends cut vs linear hierarchical", "Jain"];
    out.push_str(&format!(
        "### Against the targets: grace with hierarchical communication (grace dispatcher), {}\n\n\
         Held out: {:.4} cross-node sends per token-layer against linear's {:.4} (flat) and {:.4} \
         (hierarchical). The calibration column replays the same plan on its own calibration requests \
         (in-sample, a reference only).\n\n\
         | target | required | held out | result | calibration (in-sample) |\n|---|---|---:|---|---:|\n",
        s.label, g.remote_nodes, s.baseline.cross_node_gpus, s.baseline.remote_nodes,
    ));
    let show = |i: usize, x: f64| if i == 2 { format!("{x:.4}") } else { format!("{x:.1}%") };
    for i in 0..3 {
        let req = if i == 2 { "at least 0.98".to_string() } else { format!("at least {:.0}%", need[i]) };
        out.push_str(&format!(
            "| {} | {req} | {} | {} | {} |\n",
            names[i],
            show(i, held[i]),
            if held[i] >= need[i] { "reached" } else { "not reached" },
            show(i, ins[i]),
        ));
    }
    let all = (0..3).all(|i| held[i] >= need[i]);
    out.push_str(&format!("| all three | | | {} | |\n\n", if all { "reached" } else { "not reached" }));
    Ok(())
}
