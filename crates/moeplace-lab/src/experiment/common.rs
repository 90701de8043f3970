//! Pieces shared by the experiments that plan on calibration requests and replay
//! held-out ones (`tacg`, `grace`): the ESFT calibration/held-out split (even/odd
//! request ordinals within each family), family interleaving, profiling, planning
//! with a registered placer, the baseline replay (docs/DESIGN.md, "Baseline"), and the
//! dispatcher each placer is served with.

use std::time::Instant;

use anyhow::{Context, Result};
use moeplace_core::cluster::Cluster;
use moeplace_core::dispatch::{Dispatcher, Gesr, Grace, Nearest};
use moeplace_core::placement::Placement;
use moeplace_core::placers::{by_name, Params, PlacerInput, PlacerOutput};
use moeplace_core::protocol;
use moeplace_core::simulate::SimResult;
use moeplace_core::stats::{ProfileOptions, Statistics};
use moeplace_core::trace::Trace;

/// Requests in order of first appearance with their family and token count.
pub(super) fn requests(trace: &Trace) -> Vec<(String, Option<String>, u64)> {
    protocol::requests(trace).into_iter().map(|r| (r.name, r.family, r.tokens)).collect()
}

pub(super) fn request_lengths(trace: &Trace) -> Vec<u64> {
    protocol::requests(trace).iter().map(|r| r.tokens).collect()
}

/// The docs' split: [`protocol::split_alternate`].
pub(super) fn split(trace: &Trace) -> (Trace, Trace) {
    protocol::split_alternate(trace)
}

/// Statistics of `trace` as `moeplace profile` keeps them (with per-request
/// activation vectors, which cluster-homes plans need).
pub(super) fn profile(trace: &Trace) -> Result<Statistics> {
    Ok(Statistics::from_batches(
        trace.shape,
        ProfileOptions { request_vectors: true, ..Default::default() },
        &trace.batches,
    )?)
}

/// The protocol's baseline on `test` ([`protocol::baseline`]) on the layout and
/// link figures of `links`.
pub(super) fn baseline(test: &Trace, links: &Cluster) -> Result<SimResult> {
    Ok(protocol::baseline(test, links)?.2)
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
