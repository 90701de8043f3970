//! `tacg+gesr`: `tacg` plus generic-expert shared replication (docs/METHODS.md,
//! "TACG and GESR"): the redundant slots hold copies of the experts every family uses, one per
//! family group where that pays, so that each family finds them in its own group.
//! Serve the plan with the `gesr` dispatcher (`--dispatcher gesr`).
//!
//! Per layer, with `tacg`'s family model (`u_f`, `p_f`, pooled co-activation `C`):
//! - centrality `c(e) = d(e) / max_e' d(e')`, `d(e) = sum_b C(e,b)`;
//! - cross-family consistency `k(e) = min_f u_f(e) / max_f u_f(e)` (1: every family
//!   uses e alike);
//! - task specificity `s(e) = (max_f p_f(e) - 1/F) / (1 - 1/F)` (0: no preference);
//! - generic score `g(e) = c(e) + lambda1 k(e) - lambda2 s(e)` (defaults 1 and 1).
//!
//! Replicas: experts in decreasing generic score (ties to the lower id). Family f's
//! group "pays" for a copy of e when its demand `F pi_f u_f(e) >= pay * k / E`: the
//! picks of e per token that the group's copy would serve, scaled to an even mix
//! (`F pi_f` = 1 when the F families have equal shares), at least `pay` times an
//! average expert's (default pay 1.5, chosen on calibration requests by `moeplace
//! experiment tacg --tune`). The paper does not say when a group pays; we weigh usage
//! by traffic share so that the group of a family with a tenth of the traffic does
//! not take a slot for a copy that would serve little while the dominant family's
//! copies run hot: plans re-planned for a mix dominated by one family (`plan
//! --family-share`) and replayed on held-out traffic of that mix are more balanced
//! by load than with `pay_by_load=false` (demand `u_f(e)` alone; docs/TACG.md,
//! "Re-planned for the shifted mix"). An expert with at least two paying groups gets one copy per
//! paying group (all but one of them new copies, while the R = S - E redundant slots
//! last; when fewer are left, the groups with the highest demand get them), each copy
//! pinned to its group and serving that family's picks; the other
//! families' picks of e are shared evenly by its copies. The partition (see `coact`)
//! then chooses the GPU of every copy inside its group by co-activation affinity and
//! balance, and places every other expert as `tacg` does. Redundant slots left over
//! (no more expert is paid for by two groups) take extra copies of the hottest
//! single-copy experts, unpinned (and, once every single-copy expert is on every
//! GPU, unpinned extras of replicated experts, serving the families without a pinned
//! copy). With R = 0 this is `tacg`.
//!
//! Then `tacg`'s token-level refinement (step 6) moves single-copy experts; the
//! pinned copies stay.
//!
//! Locality copies (ours, off by default): with `locality=F` > 0 and a token-path
//! sample, a share F of the redundant slots is kept out of the steps above and filled
//! by [`crate::refine::locality_copies`] with each family's tokens homed on its group
//! (the copy that makes the most sampled tokens node-local first); slots those leave
//! take copies of the hottest experts. Under gesr's default rule more locality copies
//! raise the remote-node cut a little and lower Jain more, so the default stays 0;
//! served with gesr's `free_first` at a wide tolerance, which keeps the balance the
//! copies cost, small shares with `alpha=0` pay (chosen on calibration halves by
//! `moeplace-lab experiment tacg --tune`; its ablation table in docs/TACG.md has the
//! figures).
//!
//! Shift robustness (`robust` > 0, `tacg`'s step 7): no pinned generic copies; the
//! redundant slots hold unpinned copies of the experts hottest for any single family.
//! A copy pinned to one family's group serves that family's picks there, which is
//! exactly the concentration a shift toward that family turns into a hot spot, while
//! an unpinned copy lets the dispatcher send any family's picks to the less loaded
//! copy.
//!
//! Parameters (`--param`): those of `tacg` and `lambda1`, `lambda2`, `pay`,
//! `locality`; `moeplace placers tacg+gesr` and docs/PARAMETERS.md list them with
//! their defaults.

use rayon::prelude::*;

use super::coact::{hottest_copies, solve_layer, to_placement, Item, LayerModel};
use super::tacg::{tacg_params, FamilyModel, SHIFT_ROBUST};
use super::{check_fits, Kind, Level, Param, PlaceError, Placer, PlacerInput, PlacerOutput, Preset, Value};
use crate::refine::RefineOutcome;
use crate::stats::pair_index;

pub struct TacgGesr;

impl Placer for TacgGesr {
    fn serving(&self) -> crate::serving::Serving {
        // Its replicas are placed for gesr's choice among copies, its families homed.
        crate::serving::Serving::new("gesr", crate::serving::Homes::Family)
    }

    fn name(&self) -> &'static str {
        "tacg+gesr"
    }

    fn about(&self) -> &'static str {
        "tacg plus copies of generic experts in each family group that uses them (serve with --dispatcher gesr)"
    }

    fn tuning(&self) -> crate::tune::TuneGrid {
        use crate::tune::TuneGrid;
        // Around the defaults: the task-modulated graph, locality copies, per-family balance, and gesr's load tolerance
        // with and without free first.
        TuneGrid {
            placer: vec![("alpha", &["0", "0.25"]), ("locality", &["0", "0.25"]), ("robust", &["0", "0.25", "0.5"])],
            serving: vec![&[("theta", "0.15")], &[("theta", "1"), ("free_first", "true")]],
        }
    }

    fn params(&self) -> Vec<Param> {
        [tacg_params(), vec![LAMBDA1, LAMBDA2, PAY, LOCALITY]].concat()
    }

    fn presets(&self) -> &'static [Preset] {
        &[
            Preset {
                name: "min-remote-nodes",
                about: "fewer remote nodes for a little balance: the pooled graph, a quarter of the redundant \
                        slots for node-local copies, served with a wide tolerance, free first",
                placer: &[("alpha", "0"), ("locality", "0.25")],
                serving: &[("theta", "1.5"), ("free_first", "true")],
            },
            SHIFT_ROBUST,
        ]
    }

    fn place(&self, input: &PlacerInput<'_>) -> Result<PlacerOutput, PlaceError> {
        input.params.allow_only(self)?;
        check_fits(input.shape, input.cluster)?;
        let lambda1 = input.params.number(&LAMBDA1)?;
        let lambda2 = input.params.number(&LAMBDA2)?;
        let pay = input.params.number(&PAY)?;
        let locality = input.params.number(&LOCALITY)?;
        if !(0.0..=1.0).contains(&locality) {
            return Err(PlaceError::BadParam(format!("locality={locality} must lie in [0, 1]")));
        }
        let fm = FamilyModel::build(input, self.name())?;
        let k = input.shape.top_k as f64;
        let rule = PayRule { threshold: pay * k / input.shape.experts as f64 };
        let full = input.cluster;
        // Slots kept back from the partition for locality copies (only with a sample),
        // as many as the slot layout allows: GPU g owns [g*S/G, (g+1)*S/G), so with
        // fewer slots a GPU may own more than before; such counts are skipped.
        let wanted = match (input.stats, &fm.refine) {
            (Some(_), Some(_)) => (locality * full.slots().saturating_sub(input.shape.experts) as f64).round() as usize,
            _ => 0,
        };
        let fits = |c: &crate::cluster::Cluster| (0..c.gpus).all(|g| c.gpu_slot_count(g) <= full.gpu_slot_count(g));
        let reduced = (0..=wanted)
            .rev()
            .filter_map(|h| full.clone().with_slots(full.slots() - h).ok())
            .find(|c| fits(c))
            .expect("holding back no slot always fits");
        let held = full.slots() - reduced.slots();
        let slots = reduced.slots();
        let results: Vec<(Vec<Vec<usize>>, usize, RefineOutcome)> = fm
            .layers
            .par_iter()
            .zip(&fm.pref)
            .enumerate()
            .map(|(layer, (m, pref))| {
                let items = if fm.knobs.robust > 0.0 {
                    hottest_copies(m, slots, input.cluster.gpus, true)
                } else {
                    let scores = generic_scores(m, pref, lambda1, lambda2);
                    generic_items(m, &scores, slots, input.cluster.gpus, rule)
                };
                let replicated = items.iter().filter(|it| it.pin.is_some()).count();
                let mut lists = solve_layer(m, &items, &reduced, &fm.groups, fm.kept(layer), &fm.knobs)?;
                if held > 0 {
                    fm.locality_copies(input, layer, m, &mut lists, held);
                    fill_hottest(m, full, &mut lists);
                }
                let refined = fm.refine(input, layer, m, &mut lists);
                Ok((lists, replicated, refined))
            })
            .collect::<Result<_, PlaceError>>()?;
        let lists: Vec<Vec<Vec<usize>>> = results.iter().map(|(l, _, _)| l.clone()).collect();
        let (placement, swaps) = super::hold_balance(to_placement(input, &lists)?, input.loads)?;
        let mut out = fm.output(placement);
        out.notes.insert(super::BALANCE_FALLBACK_NOTE.into(), swaps as f64);
        fm.refine_notes(&mut out, results.iter().map(|r| r.2).collect());
        let pinned: usize = results.iter().map(|(_, r, _)| r).sum();
        out.notes.insert("pinned_copies_per_layer".into(), pinned as f64 / results.len().max(1) as f64);
        super::served::hold_served_balance(input, out, &self.serving())
    }
}

const LAMBDA1: Param = Param {
    name: "lambda1",
    kind: Kind::NonNegative,
    default: Value::Number(1.0),
    about: "weight of cross-family consistency in the generic score",
    level: Level::Experimental,
};
const LAMBDA2: Param = Param {
    name: "lambda2",
    kind: Kind::NonNegative,
    default: Value::Number(1.0),
    about: "weight of task specificity (subtracted) in the generic score",
    level: Level::Experimental,
};
/// How much more than an average expert a group must demand of an expert to pay for
/// its own copy (module documentation).
const PAY: Param = Param {
    name: "pay",
    kind: Kind::NonNegative,
    default: Value::Number(1.5),
    about: "a family group gets its own copy of a generic expert when its demand for it (its usage scaled by \
            its share of the traffic) is at least pay times an average expert's",
    level: Level::Stable,
};
/// Share of the redundant slots kept for locality copies (module documentation).
const LOCALITY: Param = Param {
    name: "locality",
    kind: Kind::Number,
    default: Value::Number(0.0),
    about: "share of the redundant slots, in [0, 1], given to copies that make sampled tokens node-local",
    level: Level::Stable,
};

/// Fills every GPU's free slots (lists shorter than the cluster's slot counts) with
/// copies of the expert of highest load per copy that the GPU lacks, least-loaded GPU
/// first (ties: lower id).
fn fill_hottest(m: &LayerModel, cluster: &crate::cluster::Cluster, lists: &mut [Vec<usize>]) {
    let e = m.experts;
    let load: Vec<f64> = (0..e).map(|x| m.load(x)).collect();
    let mut copies = vec![0usize; e];
    lists.iter().flatten().for_each(|&x| copies[x] += 1);
    loop {
        let gpu_load = |l: &Vec<usize>| -> f64 { l.iter().map(|&x| load[x] / copies[x].max(1) as f64).sum() };
        let Some(g) = (0..cluster.gpus)
            .filter(|&g| lists[g].len() < cluster.gpu_slot_count(g))
            .min_by(|&a, &b| gpu_load(&lists[a]).total_cmp(&gpu_load(&lists[b])).then(a.cmp(&b)))
        else {
            return;
        };
        let x = (0..e)
            .filter(|x| !lists[g].contains(x))
            .max_by(|&a, &b| (load[a] / copies[a] as f64).total_cmp(&(load[b] / copies[b] as f64)).then(b.cmp(&a)))
            .expect("a GPU owns at most as many slots as there are experts");
        lists[g].push(x);
        copies[x] += 1;
    }
}

/// When a family group pays for its own copy of an expert (module documentation).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PayRule {
    /// Demand at which a group pays: `pay * k / E`, an average expert's picks per token
    /// times `pay`.
    pub threshold: f64,
}

impl PayRule {
    /// Family `f`'s demand for expert `x`: its usage scaled by its share of the
    /// traffic (`F pi_f u_f(e)`), so that a family with little traffic does not pay.
    fn demand(&self, m: &LayerModel, f: usize, x: usize) -> f64 {
        m.families() as f64 * m.pi[f] * m.u[f][x]
    }
}

/// Generic score of every expert (see the module documentation).
pub(crate) fn generic_scores(m: &LayerModel, pref: &[Vec<f64>], lambda1: f64, lambda2: f64) -> Vec<f64> {
    let e = m.experts;
    let nf = m.families();
    let mut d = vec![0.0; e];
    for a in 0..e {
        for b in a + 1..e {
            let p = pair_index(a, b, e);
            let x: f64 = (0..nf).map(|f| m.pi[f] * m.c[f][p]).sum();
            d[a] += x;
            d[b] += x;
        }
    }
    let dmax = d.iter().copied().fold(0.0, f64::max).max(1e-300);
    (0..e)
        .map(|x| {
            let (lo, hi) = m.u.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), u| (lo.min(u[x]), hi.max(u[x])));
            let consistency = if hi > 0.0 { lo / hi } else { 0.0 };
            let pmax = pref.iter().map(|p| p[x]).fold(0.0, f64::max);
            let spec = if nf > 1 { (pmax - 1.0 / nf as f64) / (1.0 - 1.0 / nf as f64) } else { 0.0 };
            d[x] / dmax + lambda1 * consistency - lambda2 * spec
        })
        .collect()
}

/// The items of one layer: generic copies pinned to family groups, then leftover
/// redundant slots to the hottest single-copy experts (see the module documentation).
pub(crate) fn generic_items(m: &LayerModel, scores: &[f64], slots: usize, gpus: usize, rule: PayRule) -> Vec<Item> {
    let e = m.experts;
    let nf = m.families();
    let mut budget = slots.saturating_sub(e);
    let mut order: Vec<usize> = (0..e).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    // Pinned families of each replicated expert.
    let mut pins: Vec<Vec<usize>> = vec![Vec::new(); e];
    for &x in &order {
        if budget == 0 {
            break;
        }
        let mut paying: Vec<usize> = (0..nf).filter(|&f| rule.demand(m, f, x) >= rule.threshold).collect();
        if paying.len() < 2 {
            continue;
        }
        paying.sort_by(|&a, &b| rule.demand(m, b, x).total_cmp(&rule.demand(m, a, x)).then(a.cmp(&b)));
        let copies = paying.len().min(budget + 1).min(gpus);
        paying.truncate(copies);
        budget -= copies - 1;
        pins[x] = paying;
    }
    // Copies of each expert: its pinned ones (at least one), plus unpinned extras.
    // Single-copy experts come first; when none can take another copy (small
    // layouts where slots approach G x E), replicated experts take unpinned extras.
    let mut copies: Vec<usize> = pins.iter().map(|p| p.len().max(1)).collect();
    let load: Vec<f64> = (0..e).map(|x| m.load(x)).collect();
    for _ in 0..budget {
        let best = |pinned: bool| {
            (0..e)
                .filter(|&x| pins[x].is_empty() != pinned && copies[x] < gpus)
                .max_by(|&a, &b| (load[a] / copies[a] as f64).total_cmp(&(load[b] / copies[b] as f64)).then(b.cmp(&a)))
        };
        match best(false).or_else(|| best(true)) {
            Some(x) => copies[x] += 1,
            None => break,
        }
    }
    let mut items = Vec::with_capacity(slots);
    for x in 0..e {
        let c = copies[x] as f64;
        if pins[x].is_empty() {
            for _ in 0..copies[x] {
                items.push(Item { expert: x, route: vec![1.0 / c; nf], pin: None });
            }
            continue;
        }
        // A pinned family's picks go to its copy; the other families' picks are
        // shared by all copies (an unpinned extra serves only those).
        let share = |g: usize, own: Option<usize>| {
            if own == Some(g) {
                1.0
            } else if pins[x].contains(&g) {
                0.0
            } else {
                1.0 / c
            }
        };
        for &f in &pins[x] {
            items.push(Item { expert: x, route: (0..nf).map(|g| share(g, Some(f))).collect(), pin: Some(f) });
        }
        for _ in pins[x].len()..copies[x] {
            items.push(Item { expert: x, route: (0..nf).map(|g| share(g, None)).collect(), pin: None });
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two families, 4 experts: expert 0 used by both alike (generic), 1 by family 0
    /// only, 2 and 3 by family 1 only.
    fn model() -> LayerModel {
        LayerModel {
            experts: 4,
            pi: vec![0.5, 0.5],
            u: vec![vec![1.0, 1.0, 0.0, 0.0], vec![1.0, 0.0, 0.5, 0.5]],
            c: vec![vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0], vec![0.0, 0.5, 0.5, 0.0, 0.0, 0.5]],
            m: Vec::new(),
        }
    }

    #[test]
    fn generic_expert_gets_one_copy_per_family() {
        let m = model();
        let pref = vec![vec![0.5, 1.0, 0.0, 0.0], vec![0.5, 0.0, 1.0, 1.0]];
        let s = generic_scores(&m, &pref, 1.0, 1.0);
        assert!(s[0] > s[1] && s[0] > s[2], "{s:?}");
        let rule = PayRule { threshold: 0.25 };
        let items = generic_items(&m, &s, 6, 3, rule);
        assert_eq!(items.len(), 6);
        let copies0: Vec<&Item> = items.iter().filter(|it| it.expert == 0).collect();
        assert_eq!(copies0.len(), 2);
        assert_eq!(copies0[0].pin, Some(0));
        assert_eq!(copies0[0].route, vec![1.0, 0.0]);
        assert_eq!(copies0[1].pin, Some(1));
        // The sixth slot: the hottest single-copy expert (1, load 0.5 = 2 and 3's x2).
        assert_eq!(items.iter().filter(|it| it.expert == 1).count(), 2);
        // No redundant slots: one copy each, unpinned.
        let items = generic_items(&m, &s, 4, 3, rule);
        assert_eq!(items.len(), 4);
        assert!(items.iter().all(|it| it.pin.is_none()));
    }

    #[test]
    fn a_family_with_little_traffic_does_not_pay_for_a_copy() {
        // Family 1 picks expert 0 as often as family 0 does but brings a tenth of the
        // tokens: its demand by load is 2 x 0.1 x 1 = 0.2, below the threshold 0.25.
        let s = vec![1.0, 0.0, 0.0, 0.0];
        let pinned = |pi: Vec<f64>| {
            let m = LayerModel { pi, ..model() };
            let items = generic_items(&m, &s, 6, 3, PayRule { threshold: 0.25 });
            items.iter().filter(|it| it.pin.is_some()).count()
        };
        assert_eq!(pinned(vec![0.9, 0.1]), 0);
        // With even traffic both families pay for their own copy.
        assert_eq!(pinned(vec![0.5, 0.5]), 2);
    }
}
