//! The evaluation protocol: how a plan is judged, in one place for `eval`, `demo`,
//! the lab's experiments and the Python package.
//!
//! - **Split by request**: calibration and held-out tokens never share a request.
//!   [`split_by_request`] holds out a seeded random fraction of the requests of each
//!   family; [`split_alternate`] (the docs' split of the ESFT logs) takes requests of
//!   even ordinal within their family for calibration and odd ones for holding out.
//! - **Interleaving**: logs often list one family after another; replayed as they
//!   are, every replay chunk (the dispatchers' load window) would hold one family.
//!   [`interleave_families`] reorders whole requests into a mixed stream.
//! - **Baseline** (docs/DESIGN.md, "Baseline"): [`baseline_placement`]: no replicas,
//!   GPU g holds experts [g*E/G, (g+1)*E/G) (contiguous blocks, counts differing by at
//!   most one), primary copies, requests round-robin over all GPUs, on the plan's GPUs
//!   and nodes, replayed on the same stream. When GPUs outnumber experts (G > E, e.g.
//!   256 experts on 320 GPUs) expert e goes to GPU floor(e x G / E) and a GPU may hold
//!   no expert of a layer; since a cluster gives every GPU at least one slot, such a
//!   GPU gets one slot with a copy of the expert of the nearest lower-numbered GPU,
//!   which the primary-copy rule never serves: the replay is the one of a placement in
//!   which that GPU holds nothing.
//! - **Metrics**: [`METRICS`] lists every figure of a replay (both balancedness
//!   forms: SGLang's mean over layers of mean/max, vLLM's sum of means over sum of
//!   maxima) with the cut against the baseline for the traffic metrics.

use std::collections::{BTreeMap, HashSet};

use crate::cluster::{Cluster, ClusterError};
use crate::dispatch::Primary;
use crate::placement::{Placement, PlacementError};
use crate::simulate::{simulate, HomePolicy, SimError, SimResult};
use crate::synth::rng::{derive, hash_name, Rng};
use crate::trace::{TokenBatch, TokenRef, Trace};

/// Why the protocol cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("baseline placement: {0}")]
    Placement(#[from] PlacementError),
    #[error("baseline replay: {0}")]
    Replay(#[from] SimError),
    #[error("{0}")]
    Split(String),
}

/// One request of a trace: its name, family and token count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub name: String,
    pub family: Option<String>,
    pub tokens: u64,
}

/// Requests in order of first appearance.
pub fn requests(trace: &Trace) -> Vec<RequestInfo> {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out: Vec<RequestInfo> = Vec::new();
    for t in trace.iter() {
        let i = match index.get(t.request) {
            Some(&i) => i,
            None => {
                out.push(RequestInfo { name: t.request.to_string(), family: t.family.map(str::to_string), tokens: 0 });
                index.insert(t.request, out.len() - 1);
                out.len() - 1
            }
        };
        out[i].tokens += 1;
    }
    out
}

/// The trace's whole requests in `order` (names), in one batch.
fn reorder(trace: &Trace, order: &[String]) -> Trace {
    let mut by_request: BTreeMap<&str, Vec<TokenRef<'_>>> = BTreeMap::new();
    for t in trace.iter() {
        by_request.entry(t.request).or_default().push(t);
    }
    let mut batch = TokenBatch::with_capacity(trace.shape, trace.tokens());
    for name in order {
        for t in &by_request[name.as_str()] {
            batch.push(*t).expect("tokens of a trace already match its shape");
        }
    }
    Trace { shape: trace.shape, batches: vec![batch] }
}

/// The trace's requests reordered so that families interleave as in a mixed serving
/// stream: next comes the family that has had the smallest share of its tokens so far
/// (ties to the first family in name order), its next request in order of first
/// appearance. A request's tokens stay together and in order.
pub fn interleave_families(trace: &Trace) -> Trace {
    let reqs = requests(trace);
    let mut families: Vec<Option<String>> = reqs.iter().map(|r| r.family.clone()).collect();
    families.sort();
    families.dedup();
    let queue: Vec<Vec<usize>> =
        families.iter().map(|f| (0..reqs.len()).filter(|&i| &reqs[i].family == f).collect()).collect();
    let total: Vec<u64> = queue.iter().map(|q| q.iter().map(|&i| reqs[i].tokens).sum()).collect();
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
        done[f] += reqs[i].tokens;
        order.push(reqs[i].name.clone());
    }
    reorder(trace, &order)
}

/// The docs' split of the ESFT logs: requests of even ordinal within their family
/// calibrate, odd ones are held out; both with families interleaved.
pub fn split_alternate(trace: &Trace) -> (Trace, Trace) {
    let mut ordinal: BTreeMap<Option<String>, usize> = BTreeMap::new();
    let mut calib = HashSet::new();
    for r in requests(trace) {
        let o = ordinal.entry(r.family).or_insert(0);
        if o.is_multiple_of(2) {
            calib.insert(r.name);
        }
        *o += 1;
    }
    (
        interleave_families(&trace.filter(|t| calib.contains(t.request))),
        interleave_families(&trace.filter(|t| !calib.contains(t.request))),
    )
}

/// Splits by request: in each family, round(`holdout` x its requests) requests, drawn
/// with `seed` (a seeded shuffle keyed by the family's name), are held out, the rest
/// calibrate; a family with at least two requests keeps at least one on each side.
/// Both parts keep the trace's token order. `holdout` lies in (0, 1).
pub fn split_by_request(trace: &Trace, holdout: f64, seed: u64) -> Result<(Trace, Trace), ProtocolError> {
    if !(holdout > 0.0 && holdout < 1.0) {
        return Err(ProtocolError::Split(format!("the held-out fraction {holdout} must lie strictly between 0 and 1")));
    }
    let reqs = requests(trace);
    if reqs.len() < 2 {
        return Err(ProtocolError::Split(format!(
            "the trace holds {} request(s); splitting by request needs at least two",
            reqs.len()
        )));
    }
    let mut by_family: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for r in reqs {
        by_family.entry(r.family).or_default().push(r.name);
    }
    let mut held: HashSet<String> = HashSet::new();
    for (family, mut names) in by_family {
        let key = hash_name(family.as_deref().unwrap_or(""));
        let mut rng = Rng::new(derive(seed, &[key]));
        for i in (1..names.len()).rev() {
            names.swap(i, rng.below(i + 1));
        }
        let n = names.len();
        let mut k = (holdout * n as f64).round() as usize;
        if n >= 2 {
            k = k.clamp(1, n - 1);
        }
        held.extend(names.into_iter().take(k));
    }
    Ok((trace.filter(|t| !held.contains(t.request)), trace.filter(|t| held.contains(t.request))))
}

/// The baseline placement (see the module documentation) for `experts` experts per
/// layer on `gpus` GPUs, and its slots per layer: E when E >= G, else G.
pub fn baseline_placement(layers: usize, experts: usize, gpus: usize) -> Result<Placement, ProtocolError> {
    if layers == 0 || experts == 0 || gpus == 0 {
        return Err(ProtocolError::Split(format!(
            "a baseline needs layers, experts and GPUs (got {layers}, {experts}, {gpus})"
        )));
    }
    let lists: Vec<Vec<usize>> = if experts >= gpus {
        (0..gpus).map(|g| (g * experts / gpus..(g + 1) * experts / gpus).collect()).collect()
    } else {
        let mut lists = vec![Vec::new(); gpus];
        for e in 0..experts {
            lists[e * gpus / experts].push(e);
        }
        // GPU 0 holds expert 0, so every empty GPU has a lower-numbered full one.
        let mut last = 0;
        for list in lists.iter_mut() {
            match list.first() {
                Some(&e) => last = e,
                None => list.push(last),
            }
        }
        lists
    };
    Ok(Placement::from_gpu_lists(experts, &vec![lists; layers])?)
}

/// The baseline's replay of `trace` on the GPUs, nodes and link figures of `links`:
/// the cluster it ran on (slots set to the baseline's), its placement and its result.
pub fn baseline(trace: &Trace, links: &Cluster) -> Result<(Cluster, Placement, SimResult), ProtocolError> {
    let (cluster, p) = baseline_layout(trace.shape.layers, trace.shape.experts, links)?;
    let r = simulate(trace, &p, &cluster, BASELINE_DISPATCHER, &BASELINE_HOMES)?;
    Ok((cluster, p, r))
}

/// The baseline's cluster (the GPUs, nodes and link figures of `links`, slots set to
/// the baseline's) and placement, for replaying a stream window by window.
pub fn baseline_layout(layers: usize, experts: usize, links: &Cluster) -> Result<(Cluster, Placement), ProtocolError> {
    let p = baseline_placement(layers, experts, links.gpus)?;
    Ok((links.clone().with_slots(p.slots())?, p))
}

/// How the baseline is served: every pick to its expert's first copy.
pub const BASELINE_DISPATCHER: &Primary = &Primary;
/// Where the baseline's requests are served: round-robin over all GPUs.
pub const BASELINE_HOMES: HomePolicy = HomePolicy::RoundRobin;

/// vLLM's balancedness: sum over layers of the mean GPU load / sum over layers of the
/// maximum GPU load (1 when nothing is served).
pub fn balancedness_vllm(r: &SimResult) -> f64 {
    let (mut mean, mut max) = (0.0, 0.0);
    for l in &r.layers {
        mean += l.load.iter().sum::<u64>() as f64 / l.load.len().max(1) as f64;
        max += l.load.iter().copied().max().unwrap_or(0) as f64;
    }
    if max > 0.0 {
        mean / max
    } else {
        1.0
    }
}

/// A metric's value in a replay.
pub type Getter = fn(&SimResult) -> f64;

/// One metric of the protocol.
pub struct Metric {
    /// Key in JSON outputs.
    pub key: &'static str,
    /// Label in tables.
    pub label: &'static str,
    pub get: Getter,
    /// Whether tables and JSON give its cut against the baseline.
    pub cut: bool,
}

/// Every metric of a replay, in table order.
pub const METRICS: &[Metric] = &[
    Metric { key: "remote_gpus", label: "remote GPUs / token-layer", get: |r| r.remote_gpus, cut: true },
    Metric { key: "remote_nodes", label: "remote nodes / token-layer", get: |r| r.remote_nodes, cut: true },
    Metric { key: "cross_node_gpus", label: "cross-node GPUs / token-layer", get: |r| r.cross_node_gpus, cut: true },
    Metric { key: "remote_hops", label: "remote hops / token-layer", get: |r| r.remote_hops, cut: true },
    Metric { key: "jain", label: "Jain (load)", get: |r| r.jain, cut: false },
    Metric {
        key: "balancedness",
        label: "balancedness SGLang (mean of mean/max)",
        get: |r| r.balancedness,
        cut: false,
    },
    Metric {
        key: "balancedness_vllm",
        label: "balancedness vLLM (sum mean/sum max)",
        get: balancedness_vllm,
        cut: false,
    },
    Metric { key: "maxvio", label: "MaxVio (max/mean - 1)", get: |r| r.maxvio, cut: true },
    Metric { key: "max_over_mean", label: "max/mean (mean over layers)", get: |r| r.maxvio + 1.0, cut: false },
    Metric { key: "home_max_over_mean", label: "home load max/mean", get: |r| r.home_max_over_mean, cut: false },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{generate_all, SynthConfig};

    fn demo_trace() -> Trace {
        let config = SynthConfig::small_demo();
        Trace { shape: config.shape, batches: generate_all(&config, 5).unwrap() }
    }

    #[test]
    fn baseline_is_linear_when_experts_outnumber_gpus() {
        let p = baseline_placement(2, 10, 4).unwrap();
        assert_eq!(p.slots(), 10);
        assert_eq!(p.gpu_experts(0, 0), &[0, 1]);
        assert_eq!(p.gpu_experts(1, 3), &[7, 8, 9]);
        assert!(p.logcnt().iter().flatten().all(|&c| c == 1));
    }

    #[test]
    fn baseline_with_more_gpus_than_experts_serves_only_primaries() {
        let p = baseline_placement(1, 4, 10).unwrap();
        assert_eq!(p.slots(), 10);
        for e in 0..4usize {
            let primary = p.replicas(0, e)[0] as usize;
            assert_eq!(p.gpu_of_slot(primary), e * 10 / 4);
        }
        let trace = demo_trace();
        let links = Cluster::new(2, 2 * trace.shape.experts, 1).unwrap();
        let (_, bp, r) = baseline(&trace, &links).unwrap();
        assert_eq!(bp.gpus(), 2 * trace.shape.experts);
        // Odd GPUs hold only unused copies: they serve nothing.
        for l in &r.layers {
            assert!(l.load.iter().skip(1).step_by(2).all(|&x| x == 0), "{:?}", l.load);
        }
    }

    #[test]
    fn split_by_request_is_seeded_disjoint_and_complete() {
        let t = demo_trace();
        let (a, b) = split_by_request(&t, 0.25, 7).unwrap();
        assert_eq!(a.tokens() + b.tokens(), t.tokens());
        let ra: HashSet<&str> = a.iter().map(|x| x.request).collect();
        assert!(b.iter().all(|x| !ra.contains(x.request)));
        let (n, nb) = (requests(&t).len(), requests(&b).len());
        assert!(nb * 5 > n && nb * 3 < n, "{nb} of {n} held out");
        let (a2, b2) = split_by_request(&t, 0.25, 7).unwrap();
        assert_eq!((a2, b2), (a.clone(), b.clone()));
        let (_, b3) = split_by_request(&t, 0.25, 8).unwrap();
        assert_ne!(b3, b);
        assert!(split_by_request(&t, 1.0, 7).is_err());
    }

    #[test]
    fn interleaving_keeps_requests_whole_and_mixes_families() {
        let t = demo_trace();
        let i = interleave_families(&t);
        assert_eq!(i.tokens(), t.tokens());
        let order = requests(&i);
        let mut seen = HashSet::new();
        let mut last: Option<&str> = None;
        for tok in i.iter() {
            if last != Some(tok.request) {
                assert!(seen.insert(tok.request.to_string()), "request {} split", tok.request);
                last = Some(tok.request);
            }
        }
        let first_four: HashSet<_> = order.iter().take(4).map(|r| r.family.clone()).collect();
        assert!(first_four.len() > 1);
    }
}
