//! `grace`: GRACE-MoE's placement (METHODS.md section 4), per layer on the pooled
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
//!    of the layer's load (at least one when rho > 1); each gets copies first (the one
//!    of highest load per copy next), every copy on the least-loaded GPU with a free
//!    slot that lacks the expert. The plan rules need every slot filled, so after the
//!    hot experts the remaining free slots take the next copies by load per copy
//!    (where the paper would leave slots empty). `hot_experts` reports the mean count.
//!
//! Slot counts per GPU stay the cluster's (unequal counts allowed). The paper sets r
//! by hand for its testbed; the automatic knee is our choice.
//!
//! Parameters (`--param`): `balance=B` (default: `coact`'s) and `passes=N`, as for
//! `coact`; `r=X` fixes the size tolerance instead of choosing the knee;
//! `replication=dynamic|fixed` (default `dynamic`, step 2 above): `fixed` replaces
//! the measured rule by a fixed one for ablations (the paper's "fixed replicas"
//! rung): the R hottest experts, R = the free slots after grouping (the cluster's
//! redundant slots), get one extra copy each, each on the least-loaded GPU with a
//! free slot that lacks it; a copy that fits nowhere passes to the next hottest.

use rayon::prelude::*;

use super::coact::{needs_pairs, LayerModel, DEFAULT_BALANCE, DEFAULT_PASSES};
use super::{check_fits, PlaceError, Placer, PlacerInput, PlacerOutput};
use crate::cluster::Cluster;
use crate::partition::{partition_hierarchical, Problem};
use crate::placement::Placement;
use crate::stats::pair_index;

pub struct Grace;

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
    let p =
        Problem { n, weight: &weight, load: &load, bias: None, class: None, caps: &room, balance, max_passes: passes };
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

/// Fills every GPU's free slots with copies (module documentation, step 2; with
/// `fixed`, the fixed rule of `replication=fixed`). Returns the number of hot experts.
fn replicate(m: &LayerModel, cluster: &Cluster, lists: &mut [Vec<usize>], fixed: bool) -> usize {
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
    let mut hot = 0;
    let free_slots = (0..g).map(|gpu| cluster.gpu_slot_count(gpu) - lists[gpu].len()).sum::<usize>();
    if fixed {
        hot = free_slots.min(e);
    } else if mean > 0.0 && max > mean {
        let excess = (max / mean - 1.0) / (max / mean) * total;
        let mut acc = 0.0;
        while hot < e && (hot == 0 || acc < excess) {
            acc += w[order[hot]];
            hot += 1;
        }
    }
    let free = |lists: &[Vec<usize>], gpu: usize| cluster.gpu_slot_count(gpu) - lists[gpu].len();
    loop {
        if (0..g).all(|gpu| free(lists, gpu) == 0) {
            return hot;
        }
        // Hot experts first, then any expert; highest load per copy, lower id on ties.
        // The fixed rule caps the hot experts at one extra copy each.
        let pick = |pool: &[usize], cap: usize| {
            pool.iter()
                .copied()
                .filter(|&x| cnt[x] < cap && (0..g).any(|gpu| free(lists, gpu) > 0 && !lists[gpu].contains(&x)))
                .max_by(|&a, &b| (w[a] / cnt[a] as f64).total_cmp(&(w[b] / cnt[b] as f64)).then(b.cmp(&a)))
        };
        let hot_cap = if fixed { 2.min(g) } else { g };
        let Some(x) = pick(&order[..hot], hot_cap).or_else(|| pick(&order, g)) else { return hot };
        let gpu = (0..g)
            .filter(|&gpu| free(lists, gpu) > 0 && !lists[gpu].contains(&x))
            .min_by(|&a, &b| gpu_load(lists, &cnt, a).total_cmp(&gpu_load(lists, &cnt, b)).then(a.cmp(&b)))
            .expect("pick checked a GPU with room");
        lists[gpu].push(x);
        cnt[x] += 1;
    }
}

impl Placer for Grace {
    fn name(&self) -> &'static str {
        "grace"
    }

    fn about(&self) -> &'static str {
        "GRACE-MoE: affinity groups by node then GPU with sizes at the knee, then replicas of hot experts"
    }

    fn place(&self, input: &PlacerInput<'_>) -> Result<PlacerOutput, PlaceError> {
        input.params.allow_only(self.name(), &["balance", "passes", "r", "replication"])?;
        check_fits(input.shape, input.cluster)?;
        let balance = input.params.f64("balance", DEFAULT_BALANCE)?;
        let passes = input.params.usize("passes", DEFAULT_PASSES)?;
        let fixed_r = match input.params.0.get("r") {
            Some(_) => Some(input.params.f64("r", 0.0)?)
                .filter(|r| *r >= 0.0)
                .map(Some)
                .ok_or_else(|| PlaceError::BadParam("parameter r must be at least 0".into()))?,
            None => None,
        };
        let fixed = match input.params.0.get("replication").map(String::as_str) {
            None | Some("dynamic") => false,
            Some("fixed") => true,
            Some(v) => {
                return Err(PlaceError::BadParam(format!("parameter replication={v:?} is not dynamic or fixed")))
            }
        };
        let stats = needs_pairs(input, self.name())?;
        let models = LayerModel::pooled(stats);
        let c = input.cluster;
        let solved: Vec<(Vec<Vec<usize>>, f64, usize)> = models
            .par_iter()
            .map(|m| {
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
                let hot = replicate(m, c, &mut lists, fixed);
                Ok((lists, r, hot))
            })
            .collect::<Result<_, PlaceError>>()?;
        let layers = solved.len().max(1) as f64;
        let knee_r = solved.iter().map(|s| s.1).sum::<f64>() / layers;
        let hot = solved.iter().map(|s| s.2 as f64).sum::<f64>() / layers;
        let rows: Vec<Vec<i64>> =
            solved.into_iter().map(|(lists, _, _)| lists.into_iter().flatten().map(|x| x as i64).collect()).collect();
        let placement = Placement::with_slots(input.shape.experts, c.gpus, c.slots(), rows)?;
        let mut out = PlacerOutput::placement(placement);
        out.notes.insert("knee_r".into(), knee_r);
        out.notes.insert("hot_experts".into(), hot);
        Ok(out)
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
    fn fixed_replication_gives_the_hottest_one_copy_each() {
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
        let mut fixed = start.clone();
        assert_eq!(replicate(&m, &cluster, &mut fixed, true), 4);
        assert_eq!((0..8).map(|x| count(&fixed, x)).collect::<Vec<_>>(), [2, 2, 2, 2, 1, 1, 1, 1]);
        // The measured rule spends the free slots on the dominant expert instead.
        let mut dynamic = start;
        replicate(&m, &cluster, &mut dynamic, false);
        assert_eq!(count(&dynamic, 0), 4);
        assert!(dynamic.iter().all(|l| l.len() == 3));
    }
}
