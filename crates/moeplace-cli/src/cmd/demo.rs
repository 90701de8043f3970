//! `moeplace demo`: the whole job on a built-in multi-task workload, no downloads.
//!
//! The workload comes from [`synthesize_workload`], the one place to switch to a
//! richer generator. Calibration and test streams are split by request within each
//! family ([`split_calibration`]), as one would split an ESFT log: the first half of
//! each family's requests calibrate, the rest are replayed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use moeplace_core::cluster::Cluster;
use moeplace_core::dispatch;
use moeplace_core::placers::{registry, Params};
use moeplace_core::stats::{ProfileOptions, Statistics};
use moeplace_core::trace::{ModelShape, TokenBatch, TokenRef, Trace};

use crate::cmd::plan::make_plan;
use crate::evaluate::{evaluate, write_report, Homes};

/// Run moeplace end to end on a synthetic multi-task workload (4 task families with
/// their own favourite experts plus a few generic experts every family uses):
/// calibrate on half of each family's requests, plan with every placer available,
/// replay the other half against every plan side by side with the linear baseline,
/// print the table and write the HTML report.
///
/// Example:
///   moeplace demo --report demo.html
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Seed of the workload and of the placers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// GPUs (4 nodes).
    #[arg(long, default_value_t = 16)]
    gpus: usize,
    /// Slots per GPU (64 experts: 4 is no replicas, 5 adds one replica per GPU).
    #[arg(long, default_value_t = 5)]
    slots_per_gpu: usize,
    /// Replica choice per token pick (primary, random, nearest).
    #[arg(long, default_value = "nearest")]
    dispatcher: String,
    /// Where to write the HTML report.
    #[arg(long, value_name = "OUT.html", default_value = "moeplace-demo.html")]
    report: PathBuf,
}

/// A tiny deterministic generator (64-bit LCG).
struct Lcg(u64);
impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n - 1)
    }
}

/// The demo workload: 12 MoE layers, 64 experts, top-6; families code, math, law and
/// chat with 40 requests each of 24-63 tokens. At layer l, family f favours a block of
/// 16 experts starting at 16f + 5l (mod 64): 60% of picks come from it, 15% from the
/// generic experts {0, 17, 34, 51}, the rest uniformly.
pub fn synthesize_workload(seed: u64) -> Trace {
    let shape = ModelShape::new(12, 64, 6).expect("valid shape");
    let families = ["chat", "code", "law", "math"];
    let generic = [0usize, 17, 34, 51];
    let mut rng = Lcg(seed ^ 0x9E37_79B9_7F4A_7C15);
    let mut batch = TokenBatch::new(shape);
    let mut ids = vec![0u16; shape.picks_per_token()];
    for r in 0..40 {
        for (f, fam) in families.iter().enumerate() {
            let name = format!("{fam}-{r}");
            let len = 24 + rng.below(40);
            for pos in 0..len {
                for l in 0..shape.layers {
                    let row = &mut ids[l * 6..(l + 1) * 6];
                    let mut n = 0;
                    while n < 6 {
                        let u = rng.unit();
                        let e = if u < 0.6 {
                            (16 * f + 5 * l + rng.below(16)) % 64
                        } else if u < 0.75 {
                            generic[rng.below(4)]
                        } else {
                            rng.below(64)
                        } as u16;
                        if !row[..n].contains(&e) {
                            row[n] = e;
                            n += 1;
                        }
                    }
                }
                batch
                    .push(TokenRef {
                        request: &name,
                        family: Some(fam),
                        phase: None,
                        position: pos as u32,
                        experts: &ids,
                        gate_weights: None,
                    })
                    .expect("generated tokens fit the shape");
            }
        }
    }
    Trace { shape, batches: vec![batch] }
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
    let trace = synthesize_workload(args.seed);
    let (calib, test) = split_calibration(&trace);
    let mut stats = Statistics::new(trace.shape, ProfileOptions::default());
    for b in &calib.batches {
        stats.add_batch(b)?;
    }
    let cluster = Cluster::new(4, args.gpus, args.slots_per_gpu).context("demo cluster")?;
    eprintln!(
        "workload: {} ({} tokens); calibrate on {} tokens, test on {} tokens; {} GPUs in 4 nodes x {} slots",
        trace.shape,
        trace.tokens(),
        calib.tokens(),
        test.tokens(),
        cluster.gpus,
        cluster.slots_per_gpu
    );
    let mut plans = Vec::new();
    for p in registry() {
        match make_plan(p.name(), &stats, &cluster, &Params::default(), args.seed, None) {
            Ok(plan) => plans.push((p.name().to_string(), plan)),
            Err(e) => eprintln!("skipping placer {}: {e:#}", p.name()),
        }
    }
    let d = dispatch::by_name(&args.dispatcher, args.seed).ok_or_else(|| {
        anyhow::anyhow!("unknown dispatcher {:?} (known: {})", args.dispatcher, dispatch::names().join(", "))
    })?;
    let eval = evaluate(&test, &plans, d.as_ref(), Homes::Family, &|n, g, s| Ok(Cluster::new(n, g, s)?))?;
    print!("{}", eval.table());
    write_report(&args.report, &eval, &test, None)?;
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
        for fam in ["chat", "code", "law", "math"] {
            assert!(a.iter().any(|x| x.family == Some(fam)) && b.iter().any(|x| x.family == Some(fam)));
        }
        assert_eq!(synthesize_workload(3), t);
    }
}
