//! Pieces shared by the experiments that plan on calibration requests and replay
//! held-out ones (`tacg`, `grace`): the ESFT calibration/held-out split (even/odd
//! request ordinals within each family), family interleaving, profiling, planning
//! with a registered placer, the DESIGN.md baseline replay, and the dispatcher each
//! placer is served with.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use anyhow::{Context, Result};
use moeplace_core::cluster::Cluster;
use moeplace_core::dispatch::{Dispatcher, Gesr, Grace, Nearest, Primary};
use moeplace_core::placement::Placement;
use moeplace_core::placers::{by_name, Params, PlacerInput, PlacerOutput};
use moeplace_core::simulate::{simulate, HomePolicy, SimResult};
use moeplace_core::stats::{ProfileOptions, Statistics};
use moeplace_core::trace::Trace;

use crate::evaluate::baseline_placement;

/// Requests in order of first appearance with their family and token count.
pub(super) fn requests(trace: &Trace) -> Vec<(String, Option<String>, u64)> {
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<(String, Option<String>, u64)> = Vec::new();
    for t in trace.iter() {
        let i = *index.entry(t.request.to_string()).or_insert_with(|| {
            out.push((t.request.to_string(), t.family.map(str::to_string), 0));
            out.len() - 1
        });
        out[i].2 += 1;
    }
    out
}

pub(super) fn request_lengths(trace: &Trace) -> Vec<u64> {
    requests(trace).iter().map(|r| r.2).collect()
}

/// The trace's requests reordered so that families interleave as in a mixed serving
/// stream: next comes the family that has had the smallest share of its tokens so far
/// (ties to the first family), its next request in order. (The ESFT logs list one
/// family after another; replayed as they are, every replay chunk, the dispatchers'
/// load window, would hold a single family.)
pub(super) fn interleave(trace: &Trace) -> Trace {
    let reqs = requests(trace);
    let mut families: Vec<Option<String>> = reqs.iter().map(|r| r.1.clone()).collect();
    families.sort();
    families.dedup();
    let queue: Vec<Vec<usize>> =
        families.iter().map(|f| (0..reqs.len()).filter(|&i| &reqs[i].1 == f).collect()).collect();
    let total: Vec<u64> = queue.iter().map(|q| q.iter().map(|&i| reqs[i].2).sum()).collect();
    let mut done = vec![0u64; families.len()];
    let mut next = vec![0usize; families.len()];
    let mut order = Vec::with_capacity(reqs.len());
    while order.len() < reqs.len() {
        let f = (0..families.len())
            .filter(|&f| next[f] < queue[f].len())
            .min_by(|&a, &b| {
                (done[a] as f64 / total[a].max(1) as f64).total_cmp(&(done[b] as f64 / total[b].max(1) as f64))
            })
            .expect("requests remain");
        let i = queue[f][next[f]];
        next[f] += 1;
        done[f] += reqs[i].2;
        order.push(reqs[i].0.clone());
    }
    let mut by_request: BTreeMap<&str, Vec<moeplace_core::trace::TokenRef<'_>>> = BTreeMap::new();
    for t in trace.iter() {
        by_request.entry(t.request).or_default().push(t);
    }
    let mut batch = moeplace_core::trace::TokenBatch::with_capacity(trace.shape, trace.tokens());
    for name in &order {
        for t in &by_request[name.as_str()] {
            batch.push(*t).expect("tokens of a trace already match its shape");
        }
    }
    Trace { shape: trace.shape, batches: vec![batch] }
}

/// Calibration = requests of even ordinal within their family, held out = odd; both
/// with families interleaved ([`interleave`]).
pub(super) fn split(trace: &Trace) -> (Trace, Trace) {
    let mut ordinal: BTreeMap<Option<String>, usize> = BTreeMap::new();
    let mut calib = HashSet::new();
    for (name, family, _) in requests(trace) {
        let o = ordinal.entry(family).or_insert(0);
        if o.is_multiple_of(2) {
            calib.insert(name);
        }
        *o += 1;
    }
    (
        interleave(&trace.filter(|t| calib.contains(t.request))),
        interleave(&trace.filter(|t| !calib.contains(t.request))),
    )
}

/// Statistics of `trace` as `moeplace profile` keeps them (with per-request
/// activation vectors, which `resample` plans need).
pub(super) fn profile(trace: &Trace) -> Result<Statistics> {
    Ok(Statistics::from_batches(
        trace.shape,
        ProfileOptions { request_vectors: true, ..Default::default() },
        &trace.batches,
    )?)
}

/// The baseline of DESIGN.md on `test`: the linear placement (no replicas) on the
/// layout of `links`, primary copies, requests round-robin over all GPUs; time
/// estimates from `links`' figures.
pub(super) fn baseline(test: &Trace, links: &Cluster) -> Result<SimResult> {
    let (_, p) = baseline_placement(test.shape.layers, test.shape.experts, links.nodes, links.gpus)?;
    let cluster = links.clone().with_slots(test.shape.experts)?;
    Ok(simulate(test, &p, &cluster, &Primary, &HomePolicy::RoundRobin)?)
}

/// Plans with `placer` from `stats` for `cluster`; also the plan time in ms.
pub(super) fn plan(
    stats: &Statistics,
    placer: &str,
    cluster: &Cluster,
    params: &Params,
) -> Result<(PlacerOutput, f64)> {
    plan_from(stats, placer, cluster, params, None)
}

/// [`plan`] with the deployed plan given (`plan --previous`).
pub(super) fn plan_from(
    stats: &Statistics,
    placer: &str,
    cluster: &Cluster,
    params: &Params,
    previous: Option<&Placement>,
) -> Result<(PlacerOutput, f64)> {
    let p = by_name(placer).with_context(|| format!("placer {placer} is registered"))?;
    let loads = stats.loads(|_| true);
    let start = Instant::now();
    let out = p
        .place(&PlacerInput {
            shape: stats.shape(),
            cluster,
            loads: &loads,
            stats: Some(stats),
            previous,
            params,
            seed: 0,
        })
        .with_context(|| format!("placer {placer}"))?;
    Ok((out, start.elapsed().as_secs_f64() * 1e3))
}

/// The dispatcher each placer is served with: gesr for tacg+gesr (load tolerance
/// `theta`), grace for grace, nearest otherwise.
pub(super) fn dispatcher_for(placer: &str, theta: f64) -> Box<dyn Dispatcher> {
    match placer {
        "tacg+gesr" => Box::new(Gesr { theta, ..Gesr::default() }),
        "grace" => Box::new(Grace),
        _ => Box::new(Nearest),
    }
}
