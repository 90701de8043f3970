//! `cluster-homes`: activation-pattern micro-batching (docs/METHODS.md,
//! "Activation-pattern micro-batching").
//!
//! Offline, from calibration requests:
//! 1. each request's activation vector (tokens per (layer, expert); decode tokens when
//!    the trace records phases, else all its tokens), L2-normalised, clustered by
//!    K-means into one cluster per GPU group (size-balanced by default, so every group
//!    serves about the same number of requests);
//! 2. cluster c is served by GPU group c (groups: `groups` equal runs of consecutive
//!    GPUs, by default one per node; GPUs are interchangeable, so the identity map
//!    loses nothing). Groups whose size neither divides nor is a multiple of the
//!    GPUs per node straddle nodes; the plan note `groups_split_across_nodes` counts
//!    them and `plan` warns;
//! 3. per layer, experts are placed to maximise node-local tokens (picks of cluster
//!    c's tokens whose expert has a copy in group c) under exact slot capacity (a
//!    group holds as many copies as its GPUs own slots, at most one copy of an expert
//!    per GPU). Choice, since the paper does not publish its solver: each group
//!    first takes the experts its cluster picks most (as many copies as it has
//!    slots), an expert its cluster picks more than a GPU's share of the group's
//!    picks taking that many copies (one per GPU at most), since the group's copies
//!    share its picks; then every expert left without a copy replaces, in the group
//!    where that loses the fewest local picks (a copy is worth the picks it serves,
//!    its cluster's picks of the expert over its copies in the group), a copy of an
//!    expert copied elsewhere (hottest uncovered experts first); then, inside a
//!    group, experts with several copies go first to the GPUs with the most free
//!    slots, the rest heaviest first to the GPU with the least load that has a free
//!    slot (load balance inside the group); finally the served balance fallback
//!    (`placers/served.rs`);
//! 4. a prefill signature model ([`SignatureModel`]) and, per cluster, the mean of its
//!    members' signatures: the classifier.
//!
//! Online ([`HomeAssigner`]): a new request's prefill signature is compared (cosine)
//! with each cluster's signature centroid and the request goes to the best cluster's
//! group, unless that group is full, in which case it spills to the next-best cluster
//! whose group is not. Spill-over rule (ours): a group is full when taking the request
//! would give it more than `(1 + slack) x` its fair share (its GPUs' fraction) of the
//! requests assigned so far, rounded up. Inside its group a request goes to the GPU
//! with the fewest requests (ties: lower id).
//!
//! As a registry placer (statistics with per-request vectors) it returns the
//! placement, each family's GPUs (the groups holding most of the family's calibration
//! requests, for the `family_gpus` home policy) and notes; per-request homes for a
//! held-out stream come from [`ClusterHomes::homes`] (the `requests` experiment and
//! [`crate::simulate::HomePolicy::Request`]).

use std::collections::BTreeMap;

use crate::cluster::Cluster;
use crate::placement::Placement;
use crate::requests::kmeans::{kmeans, KMeansOptions};
use crate::requests::l2_normalise;
use crate::requests::signature::{SignatureModel, SignatureOptions};
use crate::trace::{ModelShape, Phase};

use super::{check_fits, Kind, Level, Param, PlaceError, Placer, PlacerInput, PlacerOutput, Value};

/// One calibration request.
#[derive(Clone, Copy, Debug)]
pub struct CalibRequest<'a> {
    pub family: Option<&'a str>,
    /// Prefill tokens per (layer, expert), `[layers * experts]`.
    pub prefill: &'a [u32],
    /// The activation vector to cluster (decode tokens per (layer, expert)).
    pub activation: &'a [u32],
}

/// Options of [`ClusterHomes::fit`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClusterHomesOptions {
    /// GPU groups (= clusters); 0: one per node.
    pub groups: usize,
    /// Size-balanced K-means (each cluster at most ceil(N/K) requests).
    pub balanced: bool,
    /// Spill-over slack over a group's fair share of requests.
    pub slack: f64,
    pub signature: SignatureOptions,
    pub seed: u64,
}

const GROUPS_DEFAULT: usize = 0;
const GROUPS: Param = Param {
    name: "groups",
    kind: Kind::Count,
    default: Value::Count(GROUPS_DEFAULT),
    about: "GPU groups (= request clusters), dividing the GPUs; 0: one per node",
    level: Level::Stable,
};
const BALANCED_DEFAULT: bool = true;
const BALANCED: Param = Param {
    name: "balanced",
    kind: Kind::Flag,
    default: Value::Flag(BALANCED_DEFAULT),
    about: "size-balanced K-means (each cluster at most ceil(N/K) requests)",
    level: Level::Experimental,
};
const SLACK_DEFAULT: f64 = 0.25;
const SLACK: Param = Param {
    name: "slack",
    kind: Kind::NonNegative,
    default: Value::Number(SLACK_DEFAULT),
    about: "online homes: a group takes requests up to (1 + slack) x its fair share, then spills over",
    level: Level::Stable,
};

impl Default for ClusterHomesOptions {
    /// The declared defaults of `cluster-homes`'s parameters.
    fn default() -> Self {
        ClusterHomesOptions {
            groups: GROUPS_DEFAULT,
            balanced: BALANCED_DEFAULT,
            slack: SLACK_DEFAULT,
            signature: SignatureOptions { max_layers: 8, per_layer: 0, sample: 200 },
            seed: 0,
        }
    }
}

/// A fitted `cluster-homes` model (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterHomes {
    pub shape: ModelShape,
    /// GPUs of each group; cluster c is served by group c.
    pub groups: Vec<Vec<usize>>,
    /// `k x (layers * experts)` normalised activation centroids.
    pub activation_centroids: Vec<f32>,
    pub signature: SignatureModel,
    /// `k x signature dims` normalised signature centroids.
    pub signature_centroids: Vec<f32>,
    /// Cluster of each calibration request.
    pub assignment: Vec<usize>,
    pub placement: Placement,
    /// Share of calibration picks that are node-local under `placement` and the
    /// calibration clusters' homes.
    pub local_share: f64,
    pub slack: f64,
}

fn normalised(v: &[u32]) -> Vec<f32> {
    let mut d: Vec<f32> = v.iter().map(|&c| c as f32).collect();
    l2_normalise(&mut d);
    d
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl ClusterHomes {
    /// Fits the model on calibration requests (see the module documentation).
    pub fn fit(
        shape: ModelShape,
        cluster: &Cluster,
        calib: &[CalibRequest<'_>],
        opts: ClusterHomesOptions,
    ) -> Result<ClusterHomes, PlaceError> {
        check_fits(shape, cluster)?;
        let k = if opts.groups == 0 { cluster.nodes } else { opts.groups };
        if k == 0 || !cluster.gpus.is_multiple_of(k) {
            return Err(PlaceError::BadParam(format!("groups={k} must divide the {} GPUs", cluster.gpus)));
        }
        let per = cluster.gpus / k;
        let groups: Vec<Vec<usize>> = (0..k).map(|c| (c * per..(c + 1) * per).collect()).collect();
        let dims = shape.layers * shape.experts;
        for (i, r) in calib.iter().enumerate() {
            if r.prefill.len() != dims || r.activation.len() != dims {
                return Err(PlaceError::BadParam(format!(
                    "calibration request {i}: activation vectors must have {dims} numbers (layers x experts)"
                )));
            }
        }
        let used: Vec<&CalibRequest> = calib.iter().filter(|r| r.activation.iter().any(|&c| c > 0)).collect();
        if used.len() < k {
            return Err(PlaceError::Unsupported(format!(
                "cluster-homes needs at least {k} calibration requests with tokens (one per GPU group), got {}",
                used.len()
            )));
        }
        // 1. Clusters of activation vectors.
        let points: Vec<f32> = used.iter().flat_map(|r| normalised(r.activation)).collect();
        let km = kmeans(&points, dims, KMeansOptions::new(k, opts.balanced, opts.seed))
            .map_err(|e| PlaceError::Unsupported(e.to_string()))?;
        let mut activation_centroids = km.centroids.clone();
        for c in 0..k {
            l2_normalise(&mut activation_centroids[c * dims..(c + 1) * dims]);
        }
        // 3. Placement.
        let (placement, local) = place_for_clusters(shape, cluster, &groups, &used, &km.assignment)?;
        let total: u64 = used.iter().map(|r| r.activation.iter().map(|&c| c as u64).sum::<u64>()).sum();
        // 4. Classifier.
        let pre: Vec<Vec<u32>> = used.iter().map(|r| r.prefill.to_vec()).collect();
        let act: Vec<Vec<u32>> = used.iter().map(|r| r.activation.to_vec()).collect();
        let signature = SignatureModel::fit(shape, &pre, &act, opts.signature, opts.seed)
            .map_err(|e| PlaceError::Unsupported(format!("prefill signatures: {e}")))?;
        let sd = signature.dims();
        let mut signature_centroids = vec![0f32; k * sd];
        for (r, &c) in pre.iter().zip(&km.assignment) {
            let s = signature.signature(r);
            for (&i, &v) in s.idx.iter().zip(&s.val) {
                signature_centroids[c * sd + i as usize] += v;
            }
        }
        for c in 0..k {
            l2_normalise(&mut signature_centroids[c * sd..(c + 1) * sd]);
        }
        Ok(ClusterHomes {
            shape,
            groups,
            activation_centroids,
            signature,
            signature_centroids,
            assignment: km.assignment,
            placement,
            local_share: if total > 0 { local as f64 / total as f64 } else { 0.0 },
            slack: opts.slack,
        })
    }

    pub fn clusters(&self) -> usize {
        self.groups.len()
    }

    /// The cluster an activation vector belongs to (nearest normalised centroid; ties:
    /// lower id). The reference a prefill classification is scored against.
    pub fn true_cluster(&self, activation: &[u32]) -> usize {
        let v = normalised(activation);
        let d = v.len();
        (0..self.clusters())
            .map(|c| (dot(&v, &self.activation_centroids[c * d..(c + 1) * d]), c))
            .fold((f32::NEG_INFINITY, 0), |b, x| if x.0 > b.0 { x } else { b })
            .1
    }

    /// Clusters ranked by the cosine similarity of the prefill signature to their
    /// signature centroids (best first; ties: lower id).
    pub fn rank(&self, prefill: &[u32]) -> Vec<usize> {
        let s = self.signature.signature(prefill);
        let sd = self.signature.dims();
        let mut scored: Vec<(f32, usize)> = (0..self.clusters())
            .map(|c| {
                let cen = &self.signature_centroids[c * sd..(c + 1) * sd];
                (s.idx.iter().zip(&s.val).map(|(&i, &v)| v * cen[i as usize]).sum::<f32>(), c)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|x| x.1).collect()
    }

    /// The cluster of a new request from its prefill counts.
    pub fn classify(&self, prefill: &[u32]) -> usize {
        self.rank(prefill)[0]
    }

    /// A fresh online home assigner for `gpus` GPUs.
    pub fn assigner(&self, gpus: usize) -> HomeAssigner<'_> {
        HomeAssigner { model: self, group_requests: vec![0; self.clusters()], gpu_requests: vec![0; gpus], total: 0 }
    }

    /// Homes of requests (prefill counts each), in arrival order.
    pub fn homes<'a>(&self, gpus: usize, prefills: impl IntoIterator<Item = &'a [u32]>) -> Vec<usize> {
        let mut a = self.assigner(gpus);
        prefills.into_iter().map(|p| a.assign(p)).collect()
    }
}

/// Online classification with spill-over (see the module documentation).
#[derive(Clone, Debug)]
pub struct HomeAssigner<'a> {
    model: &'a ClusterHomes,
    group_requests: Vec<u64>,
    gpu_requests: Vec<u64>,
    total: u64,
}

impl HomeAssigner<'_> {
    /// The home GPU of the next request.
    pub fn assign(&mut self, prefill: &[u32]) -> usize {
        let m = self.model;
        let gpus = self.gpu_requests.len() as f64;
        let ranking = m.rank(prefill);
        let n = self.total + 1;
        let full = |c: usize, counts: &[u64]| {
            let share = m.groups[c].len() as f64 / gpus;
            let cap = (share * n as f64 * (1.0 + m.slack)).ceil() as u64;
            counts[c] + 1 > cap
        };
        let c = ranking.iter().copied().find(|&c| !full(c, &self.group_requests)).unwrap_or(ranking[0]);
        let gpu = m.groups[c].iter().copied().min_by_key(|&g| (self.gpu_requests[g], g)).expect("groups are not empty");
        self.group_requests[c] += 1;
        self.gpu_requests[gpu] += 1;
        self.total = n;
        gpu
    }
}

/// Step 3 of the module documentation; also the node-local picks of the calibration
/// requests under their clusters' groups.
fn place_for_clusters(
    shape: ModelShape,
    cluster: &Cluster,
    groups: &[Vec<usize>],
    reqs: &[&CalibRequest<'_>],
    assignment: &[usize],
) -> Result<(Placement, u64), PlaceError> {
    let (layers, experts) = (shape.layers, shape.experts);
    let k = groups.len();
    let cap: Vec<usize> = groups.iter().map(|g| g.iter().map(|&x| cluster.gpu_slot_count(x)).sum()).collect();
    if let Some(c) = (0..k).find(|&c| cap[c] > experts) {
        return Err(PlaceError::Unsupported(format!(
            "GPU group {c} owns {} slots per layer, more than the {experts} experts; use more groups",
            cap[c]
        )));
    }
    let mut rows = Vec::with_capacity(layers);
    let mut local = 0u64;
    for layer in 0..layers {
        // w[c][e]: picks of cluster c's requests of expert e at this layer.
        let mut w = vec![vec![0u64; experts]; k];
        for (r, &c) in reqs.iter().zip(assignment) {
            for (x, &n) in w[c].iter_mut().zip(&r.activation[layer * experts..(layer + 1) * experts]) {
                *x += n as u64;
            }
        }
        let total: Vec<u64> = (0..experts).map(|e| (0..k).map(|c| w[c][e]).sum()).collect();
        // chosen[c][e]: copies of e in group c. An expert its cluster picks more
        // than a GPU's share of the group's picks gets that many copies on distinct
        // GPUs of the group (up to one per GPU): the home node serves it, and
        // `nearest` spreads a node's picks over the node's copies, so one copy
        // would make its GPU the group's bottleneck (at top-1 a hot expert is a
        // whole token's load).
        let mut chosen: Vec<Vec<usize>> = vec![vec![0; experts]; k];
        let mut copies = vec![0usize; experts];
        for c in 0..k {
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|&a, &b| w[c][b].cmp(&w[c][a]).then(total[b].cmp(&total[a])).then(a.cmp(&b)));
            let share = (w[c].iter().sum::<u64>() as f64 / groups[c].len() as f64).max(1.0);
            let mut room = cap[c];
            for &e in &order {
                if room == 0 {
                    break;
                }
                let want = ((w[c][e] as f64 / share).ceil() as usize).clamp(1, groups[c].len()).min(room);
                chosen[c][e] = want;
                copies[e] += want;
                room -= want;
            }
        }
        let mut uncovered: Vec<usize> = (0..experts).filter(|&e| copies[e] == 0).collect();
        uncovered.sort_by(|&a, &b| total[b].cmp(&total[a]).then(a.cmp(&b)));
        for u in uncovered {
            // The cheapest (group, victim) with the victim copied elsewhere; a copy
            // is worth the picks of its cluster it serves.
            let mut best: Option<(f64, usize, usize)> = None;
            for c in 0..k {
                for v in (0..experts).filter(|&v| chosen[c][v] > 0 && copies[v] >= 2) {
                    let loss = w[c][v] as f64 / chosen[c][v] as f64 - w[c][u] as f64;
                    if best.is_none_or(|b| loss < b.0) {
                        best = Some((loss, c, v));
                    }
                }
            }
            let (_, c, v) = best.expect("total slots >= experts leaves some expert with two copies");
            chosen[c][v] -= 1;
            copies[v] -= 1;
            chosen[c][u] += 1;
            copies[u] += 1;
        }
        let mut row = vec![0i64; cluster.slots()];
        for (c, gpus) in groups.iter().enumerate() {
            local += (0..experts).filter(|&e| chosen[c][e] > 0).map(|e| w[c][e]).sum::<u64>();
            let mut mine: Vec<usize> = (0..experts).filter(|&e| chosen[c][e] > 0).collect();
            let load = |e: usize| total[e] as f64 / copies[e] as f64;
            // Experts with several copies first, onto the GPUs with the most free
            // slots (so every copy finds a GPU without one), then the rest heaviest
            // first onto the least-loaded GPU with a free slot.
            mine.sort_by(|&a, &b| chosen[c][b].cmp(&chosen[c][a]).then(load(b).total_cmp(&load(a))).then(a.cmp(&b)));
            let mut held: Vec<Vec<usize>> = vec![Vec::new(); gpus.len()];
            let mut gload = vec![0f64; gpus.len()];
            for e in mine {
                for _ in 0..chosen[c][e] {
                    let free = |i: usize| cluster.gpu_slot_count(gpus[i]) - held[i].len();
                    let i = (0..gpus.len())
                        .filter(|&i| free(i) > 0 && !held[i].contains(&e))
                        .min_by(|&a, &b| {
                            let by_room =
                                if chosen[c][e] > 1 { free(b).cmp(&free(a)) } else { std::cmp::Ordering::Equal };
                            by_room.then(gload[a].total_cmp(&gload[b])).then(a.cmp(&b))
                        })
                        .expect("a group's chosen copies fit its slots, one per GPU");
                    row[cluster.gpu_slots(gpus[i]).start + held[i].len()] = e as i64;
                    held[i].push(e);
                    gload[i] += load(e);
                }
            }
        }
        rows.push(row);
    }
    Ok((Placement::with_slots(experts, cluster.gpus, cluster.slots(), rows)?, local))
}

/// The registry placer.
pub struct ClusterHomesPlacer;

impl Placer for ClusterHomesPlacer {
    fn serving(&self) -> crate::serving::Serving {
        // Its plans give families their GPUs: requests are served there.
        crate::serving::Serving::new("nearest", crate::serving::Homes::Family)
    }

    fn name(&self) -> &'static str {
        "cluster-homes"
    }

    fn about(&self) -> &'static str {
        "K-means of requests' activation vectors, one cluster per GPU group; experts placed for node-local tokens \
         (needs profiled request vectors)"
    }

    fn needs(&self) -> crate::stats::Parts {
        crate::stats::Parts { request_vectors: true, ..crate::stats::Parts::LOADS }
    }

    fn tuning(&self) -> crate::tune::TuneGrid {
        use crate::tune::TuneGrid;
        // Around the defaults: how far a group may take more than its share of requests.
        TuneGrid { placer: vec![("slack", &["0.1", "0.25", "0.5"])], serving: vec![] }
    }

    fn params(&self) -> Vec<Param> {
        vec![GROUPS, BALANCED, SLACK]
    }

    fn place(&self, input: &PlacerInput<'_>) -> Result<PlacerOutput, PlaceError> {
        let p = input.params;
        p.allow_only(self)?;
        let opts = ClusterHomesOptions {
            groups: p.count(&GROUPS)?,
            balanced: p.flag(&BALANCED)?,
            slack: p.number(&SLACK)?,
            seed: input.seed,
            ..ClusterHomesOptions::default()
        };
        let stats = input.stats.filter(|s| s.has_request_vectors()).ok_or_else(|| {
            PlaceError::Unsupported(
                "cluster-homes needs per-request activation vectors: plan from a trace, or from statistics \
                 profiled with request vectors"
                    .into(),
            )
        })?;
        let dims = input.shape.layers * input.shape.experts;
        // Per request: prefill = recorded prefill, else all tokens; activation =
        // recorded decode, else all tokens.
        let mut owned: Vec<(Option<String>, Vec<u32>, Vec<u32>)> = Vec::new();
        for r in stats.requests().values() {
            let mut all = vec![0u32; dims];
            for v in r.by_phase.values() {
                all.iter_mut().zip(v).for_each(|(a, &b)| *a += b);
            }
            let pre = r.by_phase.get(&Some(Phase::Prefill)).cloned().unwrap_or_else(|| all.clone());
            let act = r.by_phase.get(&Some(Phase::Decode)).cloned().unwrap_or(all);
            owned.push((r.family.clone(), pre, act));
        }
        let calib: Vec<CalibRequest> =
            owned.iter().map(|(f, p, a)| CalibRequest { family: f.as_deref(), prefill: p, activation: a }).collect();
        let model = ClusterHomes::fit(input.shape, input.cluster, &calib, opts)?;
        // Family GPUs: the groups holding most of the family's requests (at least one).
        let used: Vec<&CalibRequest> = calib.iter().filter(|r| r.activation.iter().any(|&c| c > 0)).collect();
        let mut per_family: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (r, &c) in used.iter().zip(&model.assignment) {
            if let Some(f) = r.family {
                per_family.entry(f.to_string()).or_insert_with(|| vec![0; model.clusters()])[c] += 1;
            }
        }
        let family_gpus: BTreeMap<String, Vec<usize>> = per_family
            .into_iter()
            .map(|(f, counts)| {
                let max = *counts.iter().max().unwrap_or(&0);
                let gpus = (0..counts.len()).filter(|&c| counts[c] == max).flat_map(|c| model.groups[c].clone());
                (f, gpus.collect())
            })
            .collect();
        let (placement, swaps) = super::hold_balance(model.placement.clone(), input.loads)?;
        let mut out = PlacerOutput::placement(placement);
        out.notes.insert(super::BALANCE_FALLBACK_NOTE.into(), swaps as f64);
        out.family_gpus = (!family_gpus.is_empty()).then_some(family_gpus);
        out.notes.insert("clusters".into(), model.clusters() as f64);
        out.notes.insert("calibration_local_share".into(), model.local_share);
        // Equal groups follow nodes only when their size divides, or is a multiple
        // of, the GPUs per node; otherwise the plan says how many straddle.
        out.notes
            .insert(super::SPLIT_GROUPS_NOTE.into(), super::tacg::split_groups(&model.groups, input.cluster) as f64);
        super::served::hold_served_balance(input, out, &self.serving())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::rng::Rng;

    /// Requests of 4 kinds on 2 layers x 16 experts, top-2: kind q prefers experts
    /// 4q..4q+4 at both layers (prefill and decode alike, with noise).
    /// Per request: prefill counts, decode counts, kind.
    type Requests = Vec<(Vec<u32>, Vec<u32>, usize)>;

    fn workload(n: usize, seed: u64) -> (ModelShape, Requests) {
        let shape = ModelShape::new(2, 16, 2).unwrap();
        let mut rng = Rng::new(seed);
        let mut out = Vec::new();
        for i in 0..n {
            let q = i % 4;
            let mut gen = |tokens: usize| {
                let mut c = vec![0u32; 32];
                for _ in 0..tokens {
                    for l in 0..2 {
                        for _ in 0..2 {
                            let e = if rng.uniform() < 0.8 { 4 * q + rng.below(4) } else { rng.below(16) };
                            c[l * 16 + e] += 1;
                        }
                    }
                }
                c
            };
            out.push((gen(12), gen(20), q));
        }
        (shape, out)
    }

    #[test]
    fn plans_are_valid_and_classification_is_deterministic() {
        let (shape, reqs) = workload(80, 7);
        let calib: Vec<CalibRequest> =
            reqs.iter().map(|(p, a, _)| CalibRequest { family: None, prefill: p, activation: a }).collect();
        for spg in [4, 5] {
            let cluster = Cluster::new(2, 4, spg).unwrap();
            let opts = ClusterHomesOptions { seed: 3, ..Default::default() };
            let m = ClusterHomes::fit(shape, &cluster, &calib, opts).unwrap();
            m.placement.check_cluster(&cluster).unwrap();
            // Validate: every expert once per layer, no GPU twice the same expert.
            Placement::new(
                16,
                4,
                spg,
                m.placement.phy2log().iter().map(|r| r.iter().map(|&x| x as i64).collect()).collect(),
            )
            .unwrap();
            assert!(m.local_share > 0.6, "{}", m.local_share);
            assert_eq!(m, ClusterHomes::fit(shape, &cluster, &calib, opts).unwrap());
            let (_, test) = workload(40, 8);
            let classes: Vec<usize> = test.iter().map(|(p, _, _)| m.classify(p)).collect();
            let again: Vec<usize> = test.iter().map(|(p, _, _)| m.classify(p)).collect();
            assert_eq!(classes, again);
            let right = test.iter().zip(&classes).filter(|((_, a, _), &c)| m.true_cluster(a) == c).count();
            assert!(right * 10 >= test.len() * 8, "{right} of {}", test.len());
            // Homes balance: each 2-GPU group takes at most (1.25 x half) of requests.
            let homes = m.homes(4, test.iter().map(|(p, _, _)| p.as_slice()));
            for c in 0..2 {
                let n = homes.iter().filter(|&&g| g / 2 == c).count();
                assert!(n <= (40.0f64 * 0.5 * 1.25).ceil() as usize, "group {c}: {n}");
            }
        }
    }

    #[test]
    fn spill_over_moves_requests_off_a_full_group() {
        let (shape, reqs) = workload(40, 1);
        let calib: Vec<CalibRequest> =
            reqs.iter().map(|(p, a, _)| CalibRequest { family: None, prefill: p, activation: a }).collect();
        let cluster = Cluster::new(2, 4, 4).unwrap();
        let m = ClusterHomes::fit(shape, &cluster, &calib, ClusterHomesOptions::default()).unwrap();
        // All requests of one kind: without spill-over they would all share a group.
        let same: Vec<&[u32]> = reqs.iter().filter(|r| r.2 == 0).map(|r| r.0.as_slice()).collect();
        let homes = m.homes(4, same.iter().copied());
        let in_first = homes.iter().filter(|&&g| g / 2 == homes[0] / 2).count();
        assert!(in_first < homes.len() && in_first * 10 <= homes.len() * 7, "{homes:?}");
        let too_many = ClusterHomesOptions { groups: 3, ..Default::default() };
        assert!(ClusterHomes::fit(shape, &cluster, &calib, too_many).is_err());
    }
}
