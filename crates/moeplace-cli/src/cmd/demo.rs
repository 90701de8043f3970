//! `moeplace demo`: the whole job on a built-in multi-task workload, no downloads.
//!
//! The workload comes from [`synthesize_workload`], the one place to switch to a
//! richer generator. Calibration and test streams are split by request within each
//! family ([`split_calibration`]), as one would split an ESFT log: the first half of
//! each family's requests calibrate, the rest are replayed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use moeplace_core::cluster::Cluster;
use moeplace_core::placers::{registry, Params};
use moeplace_core::stats::{ProfileOptions, Statistics};
use moeplace_core::trace::Trace;

use crate::cmd::plan::make_plan;
use crate::evaluate::{evaluate, report_statistics, write_report, ServingArgs};
use crate::output::check_output;

/// Run moeplace end to end on a synthetic multi-task workload (4 task families with
/// their own favourite experts plus a few generic experts every family uses):
/// calibrate on half of each family's requests, plan with every placer available,
/// replay the other half against every plan side by side with the linear baseline
/// (each plan served as its placer says: the table names how), print the table and
/// write the HTML report.
///
/// Example:
///   moeplace demo --report demo.html
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Seed of the workload and of the placers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// GPUs, in 4 nodes (a multiple of 4).
    #[arg(long, value_name = "G", default_value_t = 16)]
    gpus: usize,
    /// Expert slots per GPU per layer. The workload has 32 experts per layer, so
    /// G x S - 32 slots hold replicas (on 16 GPUs: 2 is no replicas, 5 gives 48).
    #[arg(long, value_name = "S", default_value_t = 5)]
    slots_per_gpu: usize,
    /// How plans are served: each as its placer says unless these change it.
    #[command(flatten)]
    serving: ServingArgs,
    /// Where to write the HTML report (`-`: standard output; the table then goes to
    /// standard error).
    #[arg(short = 'o', long, visible_alias = "output", value_name = "OUT.html", default_value = "moeplace-demo.html")]
    report: PathBuf,
}

/// The built-in workload: the synthetic generator's small demo (4 task families,
/// 8 MoE layers x 32 experts, top-4, a few thousand tokens), with the request count
/// doubled so the held-out half is not tiny.
pub fn synthesize_workload(seed: u64) -> Trace {
    let mut config = moeplace_core::synth::SynthConfig::small_demo();
    config.requests *= 2;
    let batches = moeplace_core::synth::generate_all(&config, seed).expect("the built-in demo configuration is valid");
    Trace { shape: config.shape, batches }
}

/// Splits by request within each family: the first half (rounded up) of each family's
/// requests, in order of first appearance, calibrate; the rest are the test stream.
pub fn split_calibration(trace: &Trace) -> (Trace, Trace) {
    let mut order: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for t in trace.iter() {
        let reqs = order.entry(t.family.map(str::to_string)).or_default();
        if reqs.last().map(String::as_str) != Some(t.request) && !reqs.iter().any(|r| r == t.request) {
            reqs.push(t.request.to_string());
        }
    }
    let calib: std::collections::HashSet<String> =
        order.values().flat_map(|reqs| reqs[..reqs.len().div_ceil(2)].iter().cloned()).collect();
    (trace.filter(|t| calib.contains(t.request)), trace.filter(|t| !calib.contains(t.request)))
}

pub fn run(args: Args) -> Result<()> {
    check_output(&args.report)?;
    let overrides = args.serving.overrides()?;
    // Everything that can be refused is refused before the workload is generated.
    let cluster = Cluster::new(4, args.gpus, args.slots_per_gpu).context("demo cluster")?;
    let experts = moeplace_core::synth::SynthConfig::small_demo().shape.experts;
    if cluster.slots() < experts {
        bail!(
            "--gpus {} x --slots-per-gpu {} = {} slots per layer cannot hold the workload's {experts} experts; \
             give at least {} slots per GPU",
            args.gpus,
            args.slots_per_gpu,
            cluster.slots(),
            experts.div_ceil(args.gpus)
        );
    }
    if args.slots_per_gpu > experts {
        bail!(
            "--slots-per-gpu {} is more than the workload's {experts} experts: a GPU would hold two copies of one \
             expert; give at most {experts}",
            args.slots_per_gpu
        );
    }
    let trace = synthesize_workload(args.seed);
    let (calib, test) = split_calibration(&trace);
    let stats = Statistics::from_batches(trace.shape, ProfileOptions::default(), &calib.batches)?;
    eprintln!(
        "workload: {} ({} tokens); calibrate on {} tokens, test on {} tokens; {} GPUs in 4 nodes, {}",
        trace.shape,
        trace.tokens(),
        calib.tokens(),
        test.tokens(),
        cluster.gpus,
        cluster.slots_label()
    );
    // The statistics exist in memory only: the digest is of their file's bytes.
    let digest = moeplace_formats::plan_file::digest(&moeplace_formats::stats_file::to_bytes(
        &stats,
        moeplace_formats::stats_file::Encoding::Binary,
    ));
    let mut plans = Vec::new();
    for p in registry() {
        match make_plan(p.name(), &stats, digest.clone(), None, &cluster, &Params::default(), args.seed, None) {
            Ok(plan) => plans.push((p.name().to_string(), plan)),
            Err(e) => eprintln!("skipping placer {}: {e:#}", p.name()),
        }
    }
    // `s` is a plan's slots per layer (over all its GPUs).
    let layout = |n, g, s| Ok(Cluster::new(n, g, 1)?.with_slots(s)?);
    let eval = evaluate(&test, &plans, &overrides, args.seed, &layout)?;
    crate::output::print_summary(Some(&args.report), &eval.table())?;
    write_report(&args.report, &eval, &report_statistics(&test)?, None)?;
    eprintln!("wrote {}", args.report.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_tokens_apart_and_covers_every_family() {
        let t = synthesize_workload(3);
        let (a, b) = split_calibration(&t);
        assert_eq!(a.tokens() + b.tokens(), t.tokens());
        let ra: std::collections::HashSet<&str> = a.iter().map(|x| x.request).collect();
        assert!(b.iter().all(|x| !ra.contains(x.request)));
        for fam in ["chat", "code", "general", "math"] {
            assert!(a.iter().any(|x| x.family == Some(fam)) && b.iter().any(|x| x.family == Some(fam)));
        }
        assert_eq!(synthesize_workload(3), t);
    }
}
