//! `coact`: task-agnostic co-activation grouping (TACG's baseline, docs/METHODS.md):
//! one pooled co-activation graph per layer, partitioned into GPUs with exact slot
//! counts by [`crate::partition`] (nodes first, then GPUs inside each node).
//!
//! Also the shared machinery of the family-aware placers (`tacg`, `tacg+gesr`): a
//! layer is described by per-family rates ([`LayerModel`]) and a list of expert copies
//! ([`Item`]) that says which share of each family's picks of its expert a copy
//! serves. From these, for items i and j:
//!
//! ```text
//! w(i,j)    = sum_f r_i(f) r_j(f) pi_f C_f(e_i, e_j) m(e_i, e_j)     (0 when e_i = e_j)
//! load(i)   = sum_f r_i(f) pi_f u_f(e_i)
//! bias(i,g) = eta * sum_{f : g in G_f} r_i(f) pi_f u_f(e_i) / |G_f|   (-inf outside G_f
//!             for a copy pinned to family f's group)
//! ```
//!
//! where `pi_f` is family f's share of calibration tokens, `u_f(e)` picks of e per
//! token of f, `C_f(a, b)` tokens of f picking both a and b per token of f, `r_i(f)`
//! the share of f's picks of `e_i` that copy i serves, `m` the task modulation of
//! `tacg` (1 here) and `G_f` family f's GPU group. All three are in "token sends per
//! calibration token": `w` counts the sends saved when two experts a token picks
//! together share a GPU (one send instead of two), `bias` the sends saved when an
//! expert sits on the GPU where the token lives. The partition maximises
//! `sum w + sum bias - balance * spread` (see [`crate::partition`]); with the
//! family-aware placers' `robust` knob, also minus the spreads of each family's own
//! load `sum_f r_i(f) u_f(e_i)`.
//!
//! `coact` has one pooled "family", no groups, and fills redundant slots with extra
//! copies of the hottest experts (each slot to the expert of highest load per copy,
//! every copy serving an equal share); the partition then puts those copies on the
//! GPUs where they have most affinity at acceptable balance (copies of one expert on
//! different GPUs).
//!
//! Parameters (`--param`):
//! - `load_spread=B` (default 8, chosen with `moeplace-lab experiment tacg --tune` on the
//!   ESFT calibration requests): weight of the load-spread term.
//! - `passes=N` (default 30): the most swap passes per partition.
//! - `stay=S` (default 0; needs the deployed plan, `plan --previous`): re-planning
//!   keeps copies in place. A copy on a GPU that held its expert in the deployed plan
//!   earns `bias = S * mean copy load` (the mean of `load(i)`), so the partition
//!   moves a copy only where that saves more sends or balance than S average copies'
//!   worth; `tacg`'s token-level refinement then leaves such copies where they are.
//!   Slots inside a GPU follow the deployed plan, so its slot-by-slot comparison
//!   counts only real moves (ours).

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::{check_fits, Kind, Level, Param, PlaceError, Placer, PlacerInput, PlacerOutput, Value};
use crate::cluster::Cluster;
use crate::partition::{partition_hierarchical, Problem, ScenarioLoads};
use crate::placement::Placement;
use crate::stats::{pair_count, pair_index, Statistics};

pub struct Coact;

/// `load_spread` and `passes`, shared by the grouping placers.
pub(crate) const LOAD_SPREAD: Param = Param {
    name: "load_spread",
    kind: Kind::NonNegative,
    default: Value::Number(8.0),
    about: "weight of the load-spread term against co-activation affinity (0: ignore loads)",
    level: Level::Stable,
};
pub(crate) const PASSES: Param = Param {
    name: "passes",
    kind: Kind::Count,
    default: Value::Count(30),
    about: "most swap passes of the partition",
    level: Level::Stable,
};
pub(crate) const PARTITION_PARAMS: [Param; 2] = [LOAD_SPREAD, PASSES];

/// `stay`, shared by the grouping placers that keep experts in place when re-planning.
pub(crate) const STAY: Param = Param {
    name: "stay",
    kind: Kind::NonNegative,
    default: Value::Number(0.0),
    about: "with plan --previous: worth of keeping a copy on a GPU that held its expert, in mean copy loads \
            (0: place afresh)",
    level: Level::Stable,
};

/// Parameters of the token-level refinement ([`crate::refine`]) that `tacg`,
/// `tacg+gesr` and `grace` accept.
pub(crate) const REFINE: Param = Param {
    name: "refine",
    kind: Kind::Flag,
    default: Value::Flag(true),
    about: "token-level steps on the statistics' token sample (false skips them)",
    level: Level::Stable,
};
pub(crate) const NODE_WEIGHT: Param = Param {
    name: "node_weight",
    kind: Kind::NonNegative,
    default: Value::Number(1.0),
    about: "weight of a remote node in the token-level steps",
    level: Level::Experimental,
};
pub(crate) const GPU_WEIGHT: Param = Param {
    name: "gpu_weight",
    kind: Kind::NonNegative,
    default: Value::Number(1.0),
    about: "weight of a remote GPU in the token-level steps",
    level: Level::Experimental,
};
pub(crate) const REFINE_PASSES: Param = Param {
    name: "refine_passes",
    kind: Kind::Count,
    default: Value::Count(8),
    about: "most swap passes of the refinement (0: no swaps)",
    level: Level::Experimental,
};
pub(crate) const REFINE_PARAMS: [Param; 4] = [REFINE, NODE_WEIGHT, GPU_WEIGHT, REFINE_PASSES];

/// Plan note (value 1) of a placer whose token-level steps were asked for (the
/// default) but skipped because the statistics carry no token-path sample.
pub const REFINE_SKIPPED_NOTE: &str = "refine_skipped_no_sample";

/// Whether the token-level steps are asked for but the statistics cannot feed them.
pub(crate) fn refine_skipped(params: &super::Params, stats: &Statistics) -> Result<bool, PlaceError> {
    Ok(params.flag(&REFINE)? && stats.token_sample().is_empty())
}

/// The refinement options from a placer's parameters, or `None` when it is turned
/// off or the statistics carry no token-path sample.
pub(crate) fn refine_options(
    params: &super::Params,
    stats: &Statistics,
) -> Result<Option<crate::refine::RefineOptions>, PlaceError> {
    if !params.flag(&REFINE)? || stats.token_sample().is_empty() {
        return Ok(None);
    }
    let node_weight = params.number(&NODE_WEIGHT)?;
    let gpu_weight = params.number(&GPU_WEIGHT)?;
    let passes = params.count(&REFINE_PASSES)?;
    Ok(Some(crate::refine::RefineOptions { node_weight, gpu_weight, passes, ..Default::default() }))
}

impl Placer for Coact {
    fn serving(&self) -> crate::serving::Serving {
        // Its plans give families their GPUs: requests are served there.
        crate::serving::Serving::new("nearest", crate::serving::Homes::Family)
    }

    fn name(&self) -> &'static str {
        "coact"
    }

    fn about(&self) -> &'static str {
        "pooled co-activation graph per layer, exact-capacity partition (nodes, then GPUs); hottest experts copied"
    }

    fn needs(&self) -> crate::stats::Parts {
        crate::stats::Parts { pairs: true, token_sample: true, ..crate::stats::Parts::LOADS }
    }

    fn tuning(&self) -> crate::tune::TuneGrid {
        use crate::tune::TuneGrid;
        // Around the defaults: the load-spread weight against co-activation affinity.
        TuneGrid { placer: vec![("load_spread", &["2", "8", "32"])], serving: vec![] }
    }

    fn params(&self) -> Vec<Param> {
        [&PARTITION_PARAMS[..], &[STAY]].concat()
    }

    fn place(&self, input: &PlacerInput<'_>) -> Result<PlacerOutput, PlaceError> {
        input.params.allow_only(self)?;
        check_fits(input.shape, input.cluster)?;
        let knobs = Knobs {
            balance: input.params.number(&LOAD_SPREAD)?,
            passes: input.params.count(&PASSES)?,
            eta: 0.0,
            robust: 0.0,
            stay: stay(input)?,
        };
        let stats = needs_pairs(input, self.name())?;
        let previous = if knobs.stay > 0.0 { previous_lists(input)? } else { None };
        let models = LayerModel::pooled(stats);
        let lists: Vec<Vec<Vec<usize>>> = models
            .par_iter()
            .enumerate()
            .map(|(l, m)| {
                let items = hottest_copies(m, input.cluster.slots(), input.cluster.gpus, false);
                let kept = previous.as_ref().map(|p| p[l].as_slice());
                solve_layer(m, &items, input.cluster, &[], kept, &knobs)
            })
            .collect::<Result<_, _>>()?;
        let placement = to_placement(input, &lists)?;
        Ok(PlacerOutput { placement, family_gpus: None, notes: BTreeMap::new() })
    }
}

/// The statistics with co-activation counts, or a clear error.
pub(crate) fn needs_pairs<'a>(input: &PlacerInput<'a>, placer: &str) -> Result<&'a Statistics, PlaceError> {
    match input.stats {
        Some(s) if s.has_pairs() && s.tokens() > 0 => Ok(s),
        _ => Err(PlaceError::Unsupported(format!(
            "placer {placer} needs co-activation counts: plan from a trace or from `moeplace profile` statistics, \
             not from engine load counts"
        ))),
    }
}

/// The `stay` parameter; above 0 it needs the deployed plan to keep copies in.
pub(crate) fn stay(input: &PlacerInput<'_>) -> Result<f64, PlaceError> {
    let stay = input.params.number(&STAY)?;
    if stay > 0.0 && input.previous.is_none() {
        return Err(PlaceError::BadParam(format!(
            "stay={stay} keeps copies where the deployed plan has them: give that plan (plan --previous)"
        )));
    }
    Ok(stay)
}

/// The previous plan's experts per layer and GPU, when there is one; it must be for
/// the same model shape and GPUs.
pub(crate) fn previous_lists(input: &PlacerInput<'_>) -> Result<Option<Vec<Vec<Vec<usize>>>>, PlaceError> {
    let Some(prev) = input.previous else { return Ok(None) };
    if prev.layers() != input.shape.layers || prev.experts() != input.shape.experts || prev.gpus() != input.cluster.gpus
    {
        return Err(PlaceError::BadParam(format!(
            "the previous plan has {} layers x {} experts on {} GPUs; this plan is for {} x {} on {}",
            prev.layers(),
            prev.experts(),
            prev.gpus(),
            input.shape.layers,
            input.shape.experts,
            input.cluster.gpus
        )));
    }
    let lists = (0..prev.layers())
        .map(|l| (0..prev.gpus()).map(|g| prev.gpu_experts(l, g).iter().map(|&x| x as usize).collect()).collect())
        .collect();
    Ok(Some(lists))
}

/// The partition's knobs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Knobs {
    pub balance: f64,
    pub passes: usize,
    /// Weight of the home-affinity term (0: none).
    pub eta: f64,
    /// Weight of each family's own load spread, relative to `load_spread` (0: only the
    /// calibration mix is balanced).
    pub robust: f64,
    /// Worth of keeping a copy on a GPU that held its expert in the previous plan, in
    /// mean copy loads (0: the previous plan is ignored).
    pub stay: f64,
}

/// One layer's per-family rates (see the module documentation).
#[derive(Clone, Debug)]
pub(crate) struct LayerModel {
    pub experts: usize,
    /// Share of calibration tokens, per family.
    pub pi: Vec<f64>,
    /// `u[f][e]`: picks of e per token of f.
    pub u: Vec<Vec<f64>>,
    /// `c[f][pair_index]`: tokens of f picking both experts per token of f.
    pub c: Vec<Vec<f64>>,
    /// Task modulation `m[pair_index]` (empty: 1 everywhere).
    pub m: Vec<f64>,
}

impl LayerModel {
    /// One pooled family per layer.
    pub fn pooled(stats: &Statistics) -> Vec<LayerModel> {
        let shape = stats.shape();
        let g = stats.pooled(|_| true);
        let t = g.tokens.max(1) as f64;
        let (e, pc) = (shape.experts, pair_count(shape.experts));
        (0..shape.layers)
            .map(|l| LayerModel {
                experts: e,
                pi: vec![1.0],
                u: vec![g.load[l * e..(l + 1) * e].iter().map(|&x| x as f64 / t).collect()],
                c: vec![g.coact[l * pc..(l + 1) * pc].iter().map(|&x| x as f64 / t).collect()],
                m: Vec::new(),
            })
            .collect()
    }

    /// Picks of `e` per calibration token over all families.
    pub fn load(&self, e: usize) -> f64 {
        self.pi.iter().zip(&self.u).map(|(p, u)| p * u[e]).sum()
    }

    pub fn families(&self) -> usize {
        self.pi.len()
    }
}

/// One expert copy: its expert, the share `route[f]` of family f's picks of the
/// expert it serves, and the family group it is pinned to, if any.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Item {
    pub expert: usize,
    pub route: Vec<f64>,
    pub pin: Option<usize>,
}

/// One copy of every expert plus `slots - experts` extra copies of the hottest
/// (each slot to the expert of highest load per copy, ties to the lower id; at most
/// `gpus` copies of one expert); every copy of an expert serves an equal share. The
/// load is the calibration mix's, or with `robust` the heaviest single family's
/// (`max_f u_f(e)`): a shift toward one family makes that family's favourites the
/// cluster's hot spots, and only experts with copies can be relieved at serving time.
pub(crate) fn hottest_copies(m: &LayerModel, slots: usize, gpus: usize, robust: bool) -> Vec<Item> {
    let load: Vec<f64> = if robust {
        (0..m.experts).map(|e| m.u.iter().map(|u| u[e]).fold(0.0, f64::max)).collect()
    } else {
        (0..m.experts).map(|e| m.load(e)).collect()
    };
    let mut copies = vec![1usize; m.experts];
    add_hottest(&load, &mut copies, slots.saturating_sub(m.experts), gpus);
    even_items(m, &copies)
}

/// Adds `extra` copies, each to the expert of highest `load` per copy.
fn add_hottest(load: &[f64], copies: &mut [usize], extra: usize, gpus: usize) {
    for _ in 0..extra {
        let best = (0..load.len())
            .filter(|&e| copies[e] < gpus)
            .max_by(|&a, &b| (load[a] / copies[a] as f64).total_cmp(&(load[b] / copies[b] as f64)).then(b.cmp(&a)));
        match best {
            Some(e) => copies[e] += 1,
            None => break,
        }
    }
}

/// Items for the given copy counts, every copy serving an equal share.
pub(crate) fn even_items(m: &LayerModel, copies: &[usize]) -> Vec<Item> {
    let f = m.families();
    let mut items = Vec::new();
    for (e, &c) in copies.iter().enumerate() {
        for _ in 0..c {
            items.push(Item { expert: e, route: vec![1.0 / c as f64; f], pin: None });
        }
    }
    items
}

/// Partitions one layer's items onto the cluster's GPUs (exact slot counts);
/// `groups[f]` are family f's GPUs (empty: no home affinity); `kept[g]` the experts
/// GPU g held in the previous plan (drawn back there with `knobs.stay`). Returns the
/// experts of every GPU, sorted.
pub(crate) fn solve_layer(
    m: &LayerModel,
    items: &[Item],
    cluster: &Cluster,
    groups: &[Vec<usize>],
    kept: Option<&[Vec<usize>]>,
    knobs: &Knobs,
) -> Result<Vec<Vec<usize>>, PlaceError> {
    let n = items.len();
    let g = cluster.gpus;
    let e = m.experts;
    let f = m.families();
    let mut weight = vec![0.0; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (items[i].expert, items[j].expert);
            if a == b {
                continue;
            }
            let p = pair_index(a, b, e);
            let mut w = 0.0;
            for fam in 0..f {
                w += items[i].route[fam] * items[j].route[fam] * m.pi[fam] * m.c[fam][p];
            }
            if !m.m.is_empty() {
                w *= m.m[p];
            }
            weight[i * n + j] = w;
            weight[j * n + i] = w;
        }
    }
    let load: Vec<f64> =
        items.iter().map(|it| (0..f).map(|fam| it.route[fam] * m.pi[fam] * m.u[fam][it.expert]).sum()).collect();
    let kept = kept.filter(|_| knobs.stay > 0.0);
    let bias = if groups.is_empty() && kept.is_none() {
        None
    } else {
        let mut b = vec![0.0; n * g];
        // Keeping a copy in place is worth `stay` mean copy loads (sends saved per
        // calibration token, like the other terms).
        let bonus = knobs.stay * load.iter().sum::<f64>() / n.max(1) as f64;
        for (i, it) in items.iter().enumerate() {
            for (gpu, held) in kept.into_iter().flatten().enumerate() {
                if held.contains(&it.expert) {
                    b[i * g + gpu] += bonus;
                }
            }
            for (fam, gpus) in groups.iter().enumerate() {
                let v = knobs.eta * it.route[fam] * m.pi[fam] * m.u[fam][it.expert] / gpus.len().max(1) as f64;
                for &gpu in gpus {
                    b[i * g + gpu] += v;
                }
            }
            if let Some(pin) = it.pin {
                for gpu in 0..g {
                    if !groups[pin].contains(&gpu) {
                        b[i * g + gpu] = f64::NEG_INFINITY;
                    }
                }
            }
        }
        Some(b)
    };
    let class: Vec<u32> = items.iter().map(|it| it.expert as u32).collect();
    let caps: Vec<usize> = (0..g).map(|gpu| cluster.gpu_slot_count(gpu)).collect();
    let node_of: Vec<usize> = (0..g).map(|gpu| cluster.node_of(gpu)).collect();
    // Each family's traffic alone as a mix of its own (`robust` > 0); module docs.
    let mut mixes: Vec<Vec<f64>> = Vec::new();
    let mut weights = Vec::new();
    if knobs.robust > 0.0 && f > 1 {
        for fam in 0..f {
            mixes.push(items.iter().map(|it| it.route[fam] * m.u[fam][it.expert]).collect());
            weights.push(knobs.robust * knobs.balance / f as f64);
        }
    }
    let dims = mixes.len();
    let scenario_load: Vec<f64> = (0..n).flat_map(|i| mixes.iter().map(move |mix| mix[i])).collect();
    let scenarios = (dims > 0).then(|| ScenarioLoads { dims, load: &scenario_load, weights: &weights });
    let p = Problem {
        n,
        weight: &weight,
        load: &load,
        bias: bias.as_deref(),
        class: Some(&class),
        caps: &caps,
        balance: knobs.balance,
        max_passes: knobs.passes,
        scenarios,
    };
    let bins = partition_hierarchical(&p, &node_of).map_err(|err| PlaceError::Unsupported(err.to_string()))?;
    let mut lists = vec![Vec::new(); g];
    for (i, &b) in bins.iter().enumerate() {
        lists[b].push(items[i].expert);
    }
    lists.iter_mut().for_each(|l| l.sort_unstable());
    Ok(lists)
}

/// The placement of per-layer GPU lists.
pub(crate) fn to_placement(input: &PlacerInput<'_>, lists: &[Vec<Vec<usize>>]) -> Result<Placement, PlaceError> {
    let rows: Vec<Vec<i64>> = lists
        .iter()
        .enumerate()
        .map(|(l, layer)| {
            let gpus = layer.iter().enumerate();
            gpus.flat_map(|(g, list)| {
                match input.previous.filter(|p| p.layers() == lists.len() && p.gpus() == layer.len()) {
                    Some(prev) => in_previous_slots(list, prev.gpu_experts(l, g)),
                    None => list.clone(),
                }
            })
            .map(|e| e as i64)
            .collect()
        })
        .collect();
    Ok(Placement::with_slots(input.shape.experts, input.cluster.gpus, input.cluster.slots(), rows)?)
}

/// A GPU's experts in slot order: each expert the GPU held before keeps its old slot
/// (so that a plan file's slot-by-slot comparison counts only real moves); the others
/// fill the free slots in order.
fn in_previous_slots(list: &[usize], before: &[u32]) -> Vec<usize> {
    let mut out: Vec<Option<usize>> = vec![None; list.len()];
    let mut rest = Vec::new();
    for &x in list {
        match before.iter().position(|&y| y as usize == x).filter(|&i| i < list.len()) {
            Some(i) => out[i] = Some(x),
            None => rest.push(x),
        }
    }
    let mut rest = rest.into_iter();
    out.into_iter().map(|x| x.or_else(|| rest.next()).expect("as many experts as slots")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Placement;
    use crate::placers::{by_name, Params};
    use crate::stats::ProfileOptions;
    use crate::trace::{ModelShape, TokenBatch, TokenRef};

    #[test]
    fn kept_experts_keep_their_slots() {
        assert_eq!(in_previous_slots(&[1, 2, 3], &[3, 9, 1]), vec![3, 2, 1]);
        assert_eq!(in_previous_slots(&[4, 5], &[7, 8]), vec![4, 5]);
        // A previous GPU with more slots: experts past the new count move up.
        assert_eq!(in_previous_slots(&[6, 7], &[1, 2, 7]), vec![6, 7]);
    }

    /// Planned from other statistics, `stay` keeps more copies where the previous
    /// plan had them; without a previous plan it is refused.
    #[test]
    fn stay_keeps_copies_in_place() {
        let shape = ModelShape::new(1, 8, 2).unwrap();
        let stats_of = |pairs: &[[u16; 2]]| {
            let mut b = TokenBatch::new(shape);
            for (t, ids) in pairs.iter().cycle().take(80).enumerate() {
                let t = TokenRef {
                    request: "r",
                    family: None,
                    phase: None,
                    position: t as u32,
                    experts: ids,
                    gate_weights: None,
                };
                b.push(t).unwrap();
            }
            Statistics::from_batches(shape, ProfileOptions::default(), &[b]).unwrap()
        };
        let before = stats_of(&[[0, 1], [2, 3], [4, 5], [6, 7]]);
        let after = stats_of(&[[0, 7], [1, 6], [2, 5], [3, 4]]);
        let cluster = Cluster::new(2, 4, 2).unwrap();
        let run = |stats: &Statistics, previous: Option<&Placement>, stay: &str| {
            let params = Params::parse([format!("stay={stay}").as_str()]).unwrap();
            let loads = stats.loads(|_| true);
            let input = PlacerInput {
                shape,
                cluster: &cluster,
                loads: &loads,
                stats: Some(stats),
                previous,
                params: &params,
                seed: 0,
            };
            by_name("coact").unwrap().place(&input).map(|o| o.placement)
        };
        let deployed = run(&before, None, "0").unwrap();
        let fresh = run(&after, Some(&deployed), "0").unwrap();
        let kept = run(&after, Some(&deployed), "100").unwrap();
        assert!(fresh.moves_from(&deployed) > 0);
        assert_eq!(kept.moves_from(&deployed), 0);
        let err = run(&after, None, "1").unwrap_err();
        assert!(err.to_string().contains("plan --previous"), "{err}");
    }

    /// Experts {0,2,4,6} always fire together, as do {1,3,5,7}; coact puts each set
    /// on one GPU, and every expert keeps a copy.
    #[test]
    fn co_activated_experts_share_a_gpu() {
        let shape = ModelShape::new(1, 8, 4).unwrap();
        let mut b = TokenBatch::new(shape);
        for t in 0..40u32 {
            let ids: &[u16] = if t % 2 == 0 { &[0, 2, 4, 6] } else { &[1, 3, 5, 7] };
            b.push(TokenRef { request: "r", family: None, phase: None, position: t, experts: ids, gate_weights: None })
                .unwrap();
        }
        let stats = Statistics::from_batches(shape, ProfileOptions::default(), &[b]).unwrap();
        let cluster = Cluster::new(2, 2, 5).unwrap();
        let loads = stats.loads(|_| true);
        let params = Params::default();
        let place = |cluster: &Cluster| {
            let input = PlacerInput {
                shape,
                cluster,
                loads: &loads,
                stats: Some(&stats),
                previous: None,
                params: &params,
                seed: 0,
            };
            by_name("coact").unwrap().place(&input).unwrap()
        };
        let out = place(&cluster);
        let p = &out.placement;
        let g0: Vec<u32> = p.gpu_experts(0, 0).to_vec();
        let evens = g0.iter().filter(|&&e| e % 2 == 0).count();
        assert!(evens >= 4 || evens <= 1, "{g0:?}");
        assert_eq!(p.logcnt()[0].iter().sum::<usize>(), 10);
        // Unequal slot counts: 11 slots on 2 GPUs (5 and 6), filled exactly.
        let cluster = Cluster::new(2, 2, 5).unwrap().with_slots(11).unwrap();
        let out = place(&cluster);
        assert_eq!(out.placement.gpu_experts(0, 0).len(), 5);
        assert_eq!(out.placement.gpu_experts(0, 1).len(), 6);
    }
}
