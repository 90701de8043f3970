//! `grace`: GRACE-MoE's placement (docs/METHODS.md, "GRACE-MoE"), per layer on the pooled
//! co-activation graph of `coact`:
//! 1. **Grouping with controlled non-uniform sizes.** The E primaries are partitioned
//!    (nodes first, then GPUs, by [`crate::partition`]) into groups of at most
//!    `ceil(E/G * (1 + r))` experts (and never more than the GPU's slots): empty
//!    filler items with no affinity and no load take the rest of each group's room, so
//!    group sizes float within that bound while the load term keeps loads even; node
//!    groups are free within their GPUs' room. For every r in `0, 1/8, 1/4, 1/2` the
//!    intra-group affinity share (co-activation kept inside a GPU over all of it) and
//!    the size spread ((max - min) / mean primaries per GPU) are measured, and r is the
//!    knee of affinity against spread: the candidate farthest above the chord from the
//!    first to the last point once both are scaled to [0, 1] (r = 0 when affinity does
//!    not grow). The choice is reported (`knee_r`, mean over layers).
//! 2. **Dynamic replication.** A GPU's slots beyond its primaries hold copies. From
//!    the heaviest group's load ratio rho = max / mean GPU load, the hot experts are
//!    the heaviest ones whose cumulative load reaches the excess share (rho - 1) / rho
//!    of the layer's load (at least one when rho > 1). Each hot expert gets copies
//!    while its load per copy exceeds a slot's mean load (the one of highest load per
//!    copy next). The plan rules need every slot filled, so the remaining free slots
//!    (where the paper would leave slots empty) take, when the statistics carry a
//!    token-path sample, up to a share `locality` of them as **locality copies**
//!    ([`crate::refine::locality_copies`]: the copy of x on node n that makes the most
//!    sampled tokens homed on n node-local, greedily), and the rest copies by load per
//!    copy. Every copy goes to a node without a copy of its expert first (a copy on
//!    the same node saves no cross-node send), then to the least-loaded GPU with a
//!    free slot that lacks the expert. `hot_experts` reports the mean count.
//! 3. **Token-level refinement** (ours, not the paper's): [`crate::refine`] swaps
//!    single-copy experts between GPUs where that lowers the sampled tokens' expected
//!    remote nodes (the cross-node sends of hierarchical communication) plus remote
//!    GPUs, homes dealt over every GPU, without raising the heaviest GPU's calibration
//!    load or the sum of squared loads. Pair-count grouping sees experts two at a
//!    time; a token stays on its node only if all its picks do.
//!
//! Slot counts per GPU stay the cluster's (unequal counts allowed). The paper sets r
//! by hand for its testbed; the automatic knee is our choice.
//!
//! Parameters (`--param`): `moeplace placers grace` and docs/PARAMETERS.md list them
//! with their defaults: `load_spread` and `passes` as for `coact`; `r` fixes the size
//! tolerance instead of choosing the knee; `locality` (0 = copies by load only); and
//! the token-level steps' `refine`, `refine_passes`, `node_weight`, `gpu_weight`.
//!
//! How `locality` was chosen (default 0.25): locality copies concentrate load, so
//! more of them trade balance for locality. On the ESFT calibration requests (2 nodes
//! x 4 GPUs, 10 slots per GPU), the calibration column of `moeplace-lab experiment
//! grace --quick --param locality=F` shows larger shares cutting more cross-node
//! sends at lower Jain, and Jain falls further on requests the plan did not see, so
//! we take the largest share whose calibration Jain stays at least 0.01 above the 0.98
//! goal: 0.25. The margin was set after seeing that fall on the held-out requests;
//! the share itself comes from calibration figures.

use rayon::prelude::*;

use super::coact::{
    needs_pairs, refine_options, refine_skipped, LayerModel, LOAD_SPREAD, PARTITION_PARAMS, PASSES, REFINE_PARAMS,
    REFINE_SKIPPED_NOTE,
};
use super::{check_fits, Kind, Level, Param, PlaceError, Placer, PlacerInput, PlacerOutput, Value};
use crate::cluster::Cluster;
use crate::partition::{partition_hierarchical, Problem};
use crate::placement::Placement;
use crate::refine::{
    locality_copies, notes as out_notes_refine, refine_layer, RefineOutcome, SampledLayer, TokenHomes,
};
use crate::stats::pair_index;

pub struct Grace;

/// Share of the free slots given to locality copies (module documentation).
const LOCALITY: Param = Param {
    name: "locality",
    kind: Kind::Number,
    default: Value::Number(0.25),
    about: "share of the replica slots, in [0, 1], given to copies that make sampled tokens node-local \
            (0: by load only)",
    level: Level::Stable,
};
const R: Param = Param {
    name: "r",
    kind: Kind::NonNegative,
    default: Value::Chosen("the knee"),
    about: "group size tolerance; by default chosen per layer at the knee of affinity against spread",
    level: Level::Stable,
};

/// Size tolerances tried for the knee.
const TOLERANCES: [f64; 4] = [0.0, 0.125, 0.25, 0.5];

/// One grouping: primaries per GPU, intra-group affinity share, size spread.
struct Grouping {
    lists: Vec<Vec<usize>>,
    affinity: f64,
    spread: f64,
}

fn group(m: &LayerModel, cluster: &Cluster, r: f64, balance: f64, passes: usize) -> Result<Grouping, PlaceError> {
    let (e, g) = (m.experts, cluster.gpus);
    let room: Vec<usize> = (0..g)
        .map(|gpu| cluster.gpu_slot_count(gpu).min(((e as f64 / g as f64) * (1.0 + r)).ceil() as usize))
        .collect();
    let n: usize = room.iter().sum::<usize>().max(e);
    if room.iter().sum::<usize>() < e {
        return Err(PlaceError::Unsupported(format!("{e} experts do not fit in groups of size tolerance {r}")));
    }
    // Items 0..e are the experts; e..n are empty fillers.
    let mut weight = vec![0.0; n * n];
    let mut total = 0.0;
    for a in 0..e {
        for b in a + 1..e {
            let w = m.c[0][pair_index(a, b, e)];
            weight[a * n + b] = w;
            weight[b * n + a] = w;
            total += w;
        }
    }
    let load: Vec<f64> = (0..n).map(|i| if i < e { m.load(i) } else { 0.0 }).collect();
    let node_of: Vec<usize> = (0..g).map(|gpu| cluster.node_of(gpu)).collect();
    let p = Problem {
        n,
        weight: &weight,
        load: &load,
        bias: None,
        class: None,
        caps: &room,
        balance,
        max_passes: passes,
        scenarios: None,
    };
    let bins = partition_hierarchical(&p, &node_of).map_err(|err| PlaceError::Unsupported(err.to_string()))?;
    let mut lists = vec![Vec::new(); g];
    for (i, &b) in bins.iter().enumerate().take(e) {
        lists[b].push(i);
    }
    let mut kept = 0.0;
    for l in &lists {
        for (i, &a) in l.iter().enumerate() {
            for &b in &l[i + 1..] {
                kept += weight[a * n + b];
            }
        }
    }
    let sizes: Vec<f64> = lists.iter().map(|l| l.len() as f64).collect();
    let mean = e as f64 / g as f64;
    let (lo, hi) = sizes.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    Ok(Grouping { lists, affinity: if total > 0.0 { kept / total } else { 0.0 }, spread: (hi - lo) / mean })
}

/// The knee (module documentation): index of the candidate farthest above the chord.
fn knee(points: &[(f64, f64)]) -> usize {
    let (s0, a0) = points[0];
    let (s1, a1) = points[points.len() - 1];
    if a1 <= a0 + 1e-12 {
        return 0;
    }
    let scale = |s: f64, a: f64| ((s - s0) / (s1 - s0).max(1e-12), (a - a0) / (a1 - a0));
    let mut best = (0, 0.0);
    for (i, &(s, a)) in points.iter().enumerate() {
        let (x, y) = scale(s, a);
        if y - x > best.1 + 1e-12 {
            best = (i, y - x);
        }
    }
    best.0
}

/// Fills every GPU's free slots with copies (module documentation, step 2). Returns
/// the number of hot experts.
fn replicate(m: &LayerModel, cluster: &Cluster, lists: &mut [Vec<usize>], locality: Option<Locality<'_>>) -> usize {
    let (e, g) = (m.experts, cluster.gpus);
    let w: Vec<f64> = (0..e).map(|x| m.load(x)).collect();
    let mut cnt = vec![1usize; e];
    let gpu_load = |lists: &[Vec<usize>], cnt: &[usize], gpu: usize| -> f64 {
        lists[gpu].iter().map(|&x| w[x] / cnt[x] as f64).sum()
    };
    let loads: Vec<f64> = (0..g).map(|gpu| gpu_load(lists, &cnt, gpu)).collect();
    let total: f64 = w.iter().sum();
    let mean = total / g as f64;
    let max = loads.iter().fold(0.0f64, |a, &b| a.max(b));
    let mut order: Vec<usize> = (0..e).collect();
    order.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
    let free = |lists: &[Vec<usize>], gpu: usize| cluster.gpu_slot_count(gpu) - lists[gpu].len();
    let mut hot = 0;
    if mean > 0.0 && max > mean {
        let excess = (max / mean - 1.0) / (max / mean) * total;
        let mut acc = 0.0;
        while hot < e && (hot == 0 || acc < excess) {
            acc += w[order[hot]];
            hot += 1;
        }
    }
    // A hot expert needs copies while its load per copy exceeds a slot's mean load.
    let slot_mean = total / cluster.slots().max(1) as f64;
    let hot_cap = g;
    let mut locality_done = locality.is_none();
    loop {
        if (0..g).all(|gpu| free(lists, gpu) == 0) {
            return hot;
        }
        // Hot experts first (highest load per copy, lower id on ties), then copies
        // that keep sampled tokens on their node, then any expert by load per copy.
        let pick = |pool: &[usize], needy: bool, cap: usize| {
            pool.iter()
                .copied()
                .filter(|&x| !needy || w[x] / cnt[x] as f64 > slot_mean)
                .filter(|&x| cnt[x] < cap && (0..g).any(|gpu| free(lists, gpu) > 0 && !lists[gpu].contains(&x)))
                .max_by(|&a, &b| (w[a] / cnt[a] as f64).total_cmp(&(w[b] / cnt[b] as f64)).then(b.cmp(&a)))
        };
        let x = match pick(&order[..hot], true, hot_cap) {
            Some(x) => x,
            None if !locality_done => {
                let l = locality.as_ref().expect("not done only with locality");
                let free_now: usize = (0..g).map(|gpu| free(lists, gpu)).sum();
                let budget = (free_now as f64 * l.share).round() as usize;
                locality_copies(lists, cluster, &l.tokens, &w, budget);
                cnt = vec![0; e];
                lists.iter().flatten().for_each(|&x| cnt[x] += 1);
                locality_done = true;
                continue;
            }
            None => match pick(&order, false, g) {
                Some(x) => x,
                None => return hot,
            },
        };
        // A node without a copy first (a copy there saves cross-node sends), then
        // the least-loaded GPU.
        let node_has = |gpu: usize| {
            (0..g).any(|other| cluster.node_of(other) == cluster.node_of(gpu) && lists[other].contains(&x))
        };
        let gpu = (0..g)
            .filter(|&gpu| free(lists, gpu) > 0 && !lists[gpu].contains(&x))
            .min_by(|&a, &b| {
                node_has(a)
                    .cmp(&node_has(b))
                    .then(gpu_load(lists, &cnt, a).total_cmp(&gpu_load(lists, &cnt, b)))
                    .then(a.cmp(&b))
            })
            .expect("pick checked a GPU with room");
        lists[gpu].push(x);
        cnt[x] += 1;
    }
}

/// What the locality copies of [`replicate`] read.
struct Locality<'a> {
    tokens: SampledLayer<'a>,
    /// Share of the free slots left after the hot copies that locality copies take.
    share: f64,
}

impl Placer for Grace {
    fn serving(&self) -> crate::serving::Serving {
        // Its replicas are placed for grace's topology-aware routing.
        crate::serving::Serving::new("grace", crate::serving::Homes::RoundRobin)
    }

    fn name(&self) -> &'static str {
        "grace"
    }

    fn about(&self) -> &'static str {
        "GRACE-MoE: affinity groups by node then GPU with sizes at the knee, then replicas of hot experts"
    }

    fn needs(&self) -> crate::stats::Parts {
        crate::stats::Parts { pairs: true, token_sample: true, ..crate::stats::Parts::LOADS }
    }

    fn tuning(&self) -> crate::tune::TuneGrid {
        use crate::tune::TuneGrid;
        // Around the defaults: the share of replica slots given to locality copies.
        TuneGrid { placer: vec![("locality", &["0", "0.25", "0.5"])], serving: vec![] }
    }

    fn params(&self) -> Vec<Param> {
        [&[R, LOCALITY][..], &PARTITION_PARAMS[..], &REFINE_PARAMS[..]].concat()
    }

    fn place(&self, input: &PlacerInput<'_>) -> Result<PlacerOutput, PlaceError> {
        input.params.allow_only(self)?;
        check_fits(input.shape, input.cluster)?;
        let balance = input.params.number(&LOAD_SPREAD)?;
        let passes = input.params.count(&PASSES)?;
        let fixed_r = input.params.chosen_number(&R)?;
        let stats = needs_pairs(input, self.name())?;
        let refine_options = refine_options(input.params, stats)?;
        let locality_share = input.params.number(&LOCALITY)?;
        if !(0.0..=1.0).contains(&locality_share) {
            return Err(PlaceError::BadParam(format!("locality={locality_share} must lie in [0, 1]")));
        }
        let models = LayerModel::pooled(stats);
        let c = input.cluster;
        let homes = TokenHomes::uniform(c);
        let solved: Vec<(Vec<Vec<usize>>, f64, usize, RefineOutcome)> = models
            .par_iter()
            .enumerate()
            .map(|(layer, m)| {
                let (mut lists, r) = match fixed_r {
                    Some(r) => (group(m, c, r, balance, passes)?.lists, r),
                    None => {
                        let tries: Vec<Grouping> =
                            TOLERANCES.iter().map(|&r| group(m, c, r, balance, passes)).collect::<Result<_, _>>()?;
                        let points: Vec<(f64, f64)> = tries.iter().map(|t| (t.spread, t.affinity)).collect();
                        let k = knee(&points);
                        (tries.into_iter().nth(k).expect("knee indexes the tries").lists, TOLERANCES[k])
                    }
                };
                let tokens =
                    SampledLayer { sample: stats.token_sample(), layer, top_k: input.shape.top_k, homes: &homes };
                let locality = refine_options.is_some().then_some(Locality { tokens, share: locality_share });
                let hot = replicate(m, c, &mut lists, locality);
                let mut refined = RefineOutcome::default();
                if let Some(options) = &refine_options {
                    let load: Vec<f64> = (0..m.experts).map(|x| m.load(x)).collect();
                    refined = refine_layer(&mut lists, c, &tokens, &[&load], &[], options);
                }
                Ok((lists, r, hot, refined))
            })
            .collect::<Result<_, PlaceError>>()?;
        let layers = solved.len().max(1) as f64;
        let mut notes = std::collections::BTreeMap::new();
        let knee_r = solved.iter().map(|s| s.1).sum::<f64>() / layers;
        let hot = solved.iter().map(|s| s.2 as f64).sum::<f64>() / layers;
        if refine_options.is_some() {
            out_notes_refine(&mut notes, solved.iter().map(|s| s.3), layers);
        }
        if refine_skipped(input.params, stats)? {
            notes.insert(REFINE_SKIPPED_NOTE.into(), 1.0);
        }
        let rows: Vec<Vec<i64>> = solved
            .into_iter()
            .map(|(lists, _, _, _)| lists.into_iter().flatten().map(|x| x as i64).collect())
            .collect();
        let placement = Placement::with_slots(input.shape.experts, c.gpus, c.slots(), rows)?;
        let mut out = PlacerOutput::placement(placement);
        out.notes.append(&mut notes);
        out.notes.insert("knee_r".into(), knee_r);
        out.notes.insert("hot_experts".into(), hot);
        super::served::hold_served_balance(input, out, &self.serving())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knee_is_the_bend() {
        // Affinity rises fast then flattens: the second point is the knee.
        assert_eq!(knee(&[(0.0, 0.2), (0.25, 0.5), (0.5, 0.55), (1.0, 0.6)]), 1);
        // No gain: r = 0.
        assert_eq!(knee(&[(0.0, 0.3), (0.5, 0.3), (1.0, 0.3)]), 0);
    }

    #[test]
    fn replicas_go_to_the_dominant_expert() {
        // 8 experts on 4 GPUs of 3 slots (4 free slots); expert 0 carries most load.
        let m = LayerModel {
            experts: 8,
            pi: vec![1.0],
            u: vec![vec![10.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.25]],
            c: vec![vec![0.0; 28]],
            m: Vec::new(),
        };
        let cluster = Cluster::new(2, 4, 3).unwrap();
        let start: Vec<Vec<usize>> = vec![vec![0, 7], vec![1, 6], vec![2, 5], vec![3, 4]];
        let count = |lists: &[Vec<usize>], x: usize| lists.iter().filter(|l| l.contains(&x)).count();
        // The measured rule spends the free slots on the dominant expert (not one
        // extra copy for each of the hottest).
        let mut dynamic = start;
        replicate(&m, &cluster, &mut dynamic, None);
        assert_eq!(count(&dynamic, 0), 4);
        assert!(dynamic.iter().all(|l| l.len() == 3));
    }
}
