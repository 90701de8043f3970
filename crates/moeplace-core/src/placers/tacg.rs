//! `tacg`: task-aware co-activation grouping (docs/METHODS.md, "TACG and GESR"), with
//! family GPU groups where each family's requests are served.
//!
//! Per layer, from each family f's calibration tokens (families: the trace's family
//! labels; tokens without one are left out of the family model):
//! 1. usage `u_f(e)` = picks of e per token of f; co-activation `C_f(a,b)` = tokens of f
//!    picking both a and b per token of f; co-activation degree `d_f(e) = sum_b C_f(e,b)`.
//! 2. family advantage: z-scores across families,
//!    `z_u(f,e) = (u_f(e) - mean_f' u_f'(e)) / (sd_f' u_f'(e) + 0.05 mean_f' u_f'(e) + 1e-12)`,
//!    `z_d` the same for `d`; score `s_f(e) = (z_u + z_d) / 2`; preference
//!    `p_f(e) = softmax over f of s_f(e) / temperature` (default temperature 0.5). (The
//!    paper compares with "the mean of the other families"; the z-score across all
//!    families orders families the same way and is defined for two families.)
//! 3. task-modulated graph (the paper does not publish its combination; our choice):
//!    the pooled per-token co-activation `C(a,b) = sum_f pi_f C_f(a,b)` times
//!    `m(a,b) = (1 - alpha) + alpha * F * K(a,b)`, `K(a,b) = sum_f p_f(a) p_f(b)`.
//!    `F K` is 1 for experts without preference and F for two experts preferred by the
//!    same family, 0 for experts of different families: same-family pairs weigh up to
//!    `(1 - alpha) + alpha F` times more than across families. Default alpha 0.25
//!    (the paper's mixing weight).
//!    (We weight pairs that actually co-activate, not a free-standing kernel, because
//!    only co-activated pairs save sends.)
//! 4. family GPU groups that follow nodes ([`node_groups`]): each family's share
//!    `pi_f` of calibration tokens is its quota of GPUs; candidates are whole nodes
//!    by largest remainder, whole nodes plus remainders packed into the nodes left
//!    (only a group that needs part of a node shares one), and the node-blind
//!    contiguous ranges; the one with the least expected traffic leaving its node or
//!    its group wins. A group that spans nodes pays cross-node sends for its own
//!    experts: where no candidate avoids that, the plan note
//!    `groups_split_across_nodes` counts such groups and `plan` warns. The plan's
//!    `family_gpus` lists them; requests of family f are served in `G_f`.
//! 5. exact-capacity partition (see `coact` for the item model): the task preference
//!    enters as the home affinity `bias(i,g)` with weight `eta` (default 1): an expert
//!    that family f's tokens pick often is drawn into `G_f`, in proportion to the sends
//!    it saves there. Redundant slots hold copies of the hottest experts, as in `coact`.
//!
//! 6. token-level refinement (ours): with a token-path sample in the statistics,
//!    [`crate::refine`] swaps single-copy experts between GPUs where that lowers the
//!    sampled tokens' expected remote nodes plus remote GPUs, each family's tokens
//!    living on its group's GPUs, without raising the heaviest GPU's calibration load.
//!
//! 7. shift robustness (ours, off by default): with `robust=R` > 0 the partition also
//!    balances each family's traffic on its own (`sum_f route_i(f) u_f(e_i)` per copy,
//!    the spread terms of [`crate::partition::ScenarioLoads`] weighing `R * balance`
//!    together), the refinement holds every family's load to its limits as well, and
//!    redundant slots go to the experts hottest for any single family (`max_f u_f(e)`),
//!    not for the calibration mix. A plan balanced for every family alone stays
//!    balanced for any blend of them: the calibration mix says nothing about
//!    tomorrow's. The price is locality: a family's experts can no longer crowd into
//!    its own group. The shift table of `moeplace-lab experiment tacg`
//!    (docs/TACG.md) measures both sides: Jain under each shift with and without
//!    `robust`, and the remote-node cut it costs.
//!
//! Parameters (`--param`): `moeplace placers tacg` and docs/PARAMETERS.md list them
//! with their defaults; `alpha` 0 means no task-modulated graph, `eta` 0 no task
//! preference, `stay` > 0 needs `plan --previous` (see `coact`).
//!
//! How the defaults were chosen: `moeplace-lab experiment tacg --tune` replays a grid of
//! `load_spread` x `alpha` x `eta` for `tacg+gesr` on the ESFT calibration requests only
//! (never the held-out ones), at its chosen `pay`; among the settings with Jain >= 0.99
//! at alpha = 0.25 (the paper's value) the one with the largest remote-node cut was
//! load_spread 8, eta 1 (`tacg` shares them). On those calibration requests alpha = 0
//! scored a little more remote-node cut (docs/TACG.md).

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::coact::{
    hottest_copies, needs_pairs, previous_lists, refine_options, refine_skipped, solve_layer, to_placement, Knobs,
    LayerModel, LOAD_SPREAD, PARTITION_PARAMS, PASSES, REFINE_PARAMS, STAY,
};
use super::{check_fits, Kind, Level, Param, PlaceError, Placer, PlacerInput, PlacerOutput, Preset, Value};
use crate::refine::{refine_layer, RefineOptions, RefineOutcome, SampledLayer, TokenHomes};
use crate::stats::{pair_count, pair_index, Statistics};

pub struct Tacg;

/// Plan note: family groups that span more nodes than their size needs, because the
/// traffic shares did not allow whole nodes (0 when every group follows nodes).
pub const SPLIT_GROUPS_NOTE: &str = "groups_split_across_nodes";

pub(crate) const ALPHA: Param = Param {
    name: "alpha",
    kind: Kind::Number,
    default: Value::Number(0.25),
    about: "mixing weight of the task-modulated graph, in [0, 1] (0: the pooled co-activation graph)",
    level: Level::Stable,
};
pub(crate) const TEMPERATURE: Param = Param {
    name: "temperature",
    kind: Kind::Number,
    default: Value::Number(0.5),
    about: "softmax temperature of the family preferences (positive)",
    level: Level::Experimental,
};
pub(crate) const ETA: Param = Param {
    name: "eta",
    kind: Kind::NonNegative,
    default: Value::Number(1.0),
    about: "weight of the pull of a family's experts into its GPU group (0: no task preference)",
    level: Level::Stable,
};
pub(crate) const ROBUST: Param = Param {
    name: "robust",
    kind: Kind::NonNegative,
    default: Value::Number(0.0),
    about: "weight of each family's own load balance, for traffic whose family mix may shift",
    level: Level::Stable,
};

/// The parameters of `tacg` (shared with `tacg+gesr`).
pub(crate) fn tacg_params() -> Vec<Param> {
    [&[ALPHA, TEMPERATURE, ETA, ROBUST][..], &PARTITION_PARAMS[..], &[STAY], &REFINE_PARAMS[..]].concat()
}

/// `shift-robust`, shared with `tacg+gesr`: each family's own load is balanced too,
/// for traffic whose family mix may move away from the calibration mix.
pub(crate) const SHIFT_ROBUST: Preset = Preset {
    name: "shift-robust",
    about: "stays balanced when the family mix moves away from the calibration mix, for a smaller cut",
    placer: &[("robust", "0.75")],
    serving: &[],
};

impl Placer for Tacg {
    fn serving(&self) -> crate::serving::Serving {
        // Its plans give families their GPUs: requests are served there.
        crate::serving::Serving::new("nearest", crate::serving::Homes::Family)
    }

    fn name(&self) -> &'static str {
        "tacg"
    }

    fn about(&self) -> &'static str {
        "task-aware co-activation grouping: family preferences, task-modulated graph, family GPU groups"
    }

    fn tuning(&self) -> crate::tune::TuneGrid {
        use crate::tune::TuneGrid;
        // Around the defaults: the task-modulated graph and the per-family balance.
        TuneGrid { placer: vec![("alpha", &["0", "0.25"]), ("robust", &["0", "0.25", "0.5"])], serving: vec![] }
    }

    fn params(&self) -> Vec<Param> {
        tacg_params()
    }

    fn presets(&self) -> &'static [Preset] {
        &[
            Preset {
                name: "min-remote-nodes",
                about:
                    "the pooled co-activation graph under the family pull: fewer remote nodes, a little less balance",
                placer: &[("alpha", "0")],
                serving: &[],
            },
            SHIFT_ROBUST,
        ]
    }

    fn place(&self, input: &PlacerInput<'_>) -> Result<PlacerOutput, PlaceError> {
        input.params.allow_only(self)?;
        check_fits(input.shape, input.cluster)?;
        let fm = FamilyModel::build(input, self.name())?;
        let solved: Vec<(Vec<Vec<usize>>, RefineOutcome)> = fm
            .layers
            .par_iter()
            .enumerate()
            .map(|(layer, m)| {
                let items = hottest_copies(m, input.cluster.slots(), input.cluster.gpus, fm.knobs.robust > 0.0);
                let mut lists = solve_layer(m, &items, input.cluster, &fm.groups, fm.kept(layer), &fm.knobs)?;
                let refined = fm.refine(input, layer, m, &mut lists);
                Ok((lists, refined))
            })
            .collect::<Result<_, PlaceError>>()?;
        let (lists, refined): (Vec<_>, Vec<_>) = solved.into_iter().unzip();
        let (placement, swaps) = super::hold_balance(to_placement(input, &lists)?, input.loads)?;
        let mut out = fm.output(placement);
        out.notes.insert(super::BALANCE_FALLBACK_NOTE.into(), swaps as f64);
        fm.refine_notes(&mut out, refined);
        super::served::hold_served_balance(input, out, &self.serving())
    }
}

/// Everything `tacg` derives from the statistics (shared with `tacg+gesr`).
pub(crate) struct FamilyModel {
    pub families: Vec<String>,
    /// Per layer, with the task modulation filled in.
    pub layers: Vec<LayerModel>,
    /// `pref[layer][f][e]` = p_f(e).
    pub pref: Vec<Vec<Vec<f64>>>,
    /// GPUs of each family.
    pub groups: Vec<Vec<usize>>,
    /// Groups that span more nodes than their size needs (the shares did not allow
    /// whole nodes; [`node_groups`]).
    pub split_groups: usize,
    pub knobs: Knobs,
    /// Step 6, when on.
    pub refine: Option<RefineOptions>,
    /// Where sampled tokens live: each family on its group.
    homes: TokenHomes,
    /// Asked for but no token sample to run on.
    refine_skipped: bool,
    /// The previous plan's experts per layer and GPU (with `stay` > 0 only).
    previous: Option<Vec<Vec<Vec<usize>>>>,
}

impl FamilyModel {
    pub fn build(input: &PlacerInput<'_>, placer: &str) -> Result<FamilyModel, PlaceError> {
        let stats = needs_pairs(input, placer)?;
        let params = input.params;
        let alpha = params.number(&ALPHA)?;
        let temperature = params.number(&TEMPERATURE)?;
        if !(0.0..=1.0).contains(&alpha) {
            return Err(PlaceError::BadParam(format!("alpha={alpha} must lie in [0, 1]")));
        }
        if temperature <= 0.0 {
            return Err(PlaceError::BadParam(format!("temperature={temperature} must be positive")));
        }
        let knobs = Knobs {
            balance: params.number(&LOAD_SPREAD)?,
            passes: params.count(&PASSES)?,
            eta: params.number(&ETA)?,
            robust: params.number(&ROBUST)?,
            stay: super::coact::stay(input)?,
        };
        let families = stats.families();
        if families.len() < 2 {
            return Err(PlaceError::Unsupported(format!(
                "placer {placer} needs calibration tokens of at least two task families (found {}); \
                 use coact for traces without family labels",
                families.len()
            )));
        }
        let (layers, pref, pi) = family_layers(stats, &families, alpha, temperature);
        let NodeGroups { groups, split } = node_groups(&pi, input.cluster);
        let refine = refine_options(params, stats)?;
        let homes = TokenHomes::by_family(input.cluster, &family_gpus(&families, &groups));
        let refine_skipped = refine_skipped(params, stats)?;
        let previous = if knobs.stay > 0.0 { previous_lists(input)? } else { None };
        let split_groups = split;
        Ok(FamilyModel { families, layers, pref, groups, split_groups, knobs, refine, homes, refine_skipped, previous })
    }

    /// One layer of the token sample with family homes, and the layer's expert loads.
    fn sampled<'a>(
        &'a self,
        input: &PlacerInput<'a>,
        layer: usize,
        m: &LayerModel,
    ) -> Option<(SampledLayer<'a>, Vec<f64>)> {
        let stats = input.stats?;
        let load: Vec<f64> = (0..m.experts).map(|x| m.load(x)).collect();
        let tokens = SampledLayer { sample: stats.token_sample(), layer, top_k: input.shape.top_k, homes: &self.homes };
        Some((tokens, load))
    }

    /// Step 6 on one layer's GPU lists (nothing when off).
    pub fn refine(
        &self,
        input: &PlacerInput<'_>,
        layer: usize,
        m: &LayerModel,
        lists: &mut [Vec<usize>],
    ) -> RefineOutcome {
        let (Some(options), Some((tokens, load))) = (&self.refine, self.sampled(input, layer, m)) else {
            return RefineOutcome::default();
        };
        // With `robust`, each family's own load is held to the refinement's limits too.
        let mut loads: Vec<&[f64]> = vec![&load];
        if self.knobs.robust > 0.0 {
            loads.extend(m.u.iter().map(Vec::as_slice));
        }
        // Experts the partition kept where the previous plan had them stay there.
        let mut fixed = vec![false; m.experts];
        for (gpu, held) in self.kept(layer).into_iter().flatten().enumerate() {
            for &x in held.iter().filter(|x| lists[gpu].contains(x)) {
                fixed[x] = true;
            }
        }
        refine_layer(lists, input.cluster, &tokens, &loads, &fixed, options)
    }

    /// The previous plan's experts per GPU in `layer`, when plans keep experts in place.
    pub fn kept(&self, layer: usize) -> Option<&[Vec<usize>]> {
        self.previous.as_ref().map(|p| p[layer].as_slice())
    }

    /// Up to `budget` locality copies ([`crate::refine::locality_copies`]) in the free
    /// slots of one layer's GPU lists, each family's tokens living on its group.
    pub fn locality_copies(
        &self,
        input: &PlacerInput<'_>,
        layer: usize,
        m: &LayerModel,
        lists: &mut [Vec<usize>],
        budget: usize,
    ) -> usize {
        let Some((tokens, load)) = self.sampled(input, layer, m) else { return 0 };
        crate::refine::locality_copies(lists, input.cluster, &tokens, &load, budget)
    }

    /// The refinement's figures in the placer's notes (when it ran).
    pub fn refine_notes(&self, out: &mut PlacerOutput, refined: Vec<RefineOutcome>) {
        if self.refine_skipped {
            out.notes.insert(super::REFINE_SKIPPED_NOTE.into(), 1.0);
        }
        if self.refine.is_some() {
            let layers = refined.len().max(1) as f64;
            crate::refine::notes(&mut out.notes, refined.into_iter(), layers);
        }
    }

    /// The placer output: the placement and the family groups.
    pub fn output(&self, placement: crate::placement::Placement) -> PlacerOutput {
        let family_gpus = family_gpus(&self.families, &self.groups);
        let mut notes = BTreeMap::new();
        for (f, g) in self.families.iter().zip(&self.groups) {
            notes.insert(format!("gpus_{f}"), g.len() as f64);
        }
        // Said in the plan: these groups pay cross-node sends for their own experts.
        notes.insert(SPLIT_GROUPS_NOTE.into(), self.split_groups as f64);
        PlacerOutput { placement, family_gpus: Some(family_gpus), notes }
    }
}

/// The family groups by family name, as plans carry them.
fn family_gpus(families: &[String], groups: &[Vec<usize>]) -> BTreeMap<String, Vec<usize>> {
    families.iter().cloned().zip(groups.iter().cloned()).collect()
}

/// Per-layer family models, preferences and token shares (steps 1-3).
fn family_layers(
    stats: &Statistics,
    families: &[String],
    alpha: f64,
    temperature: f64,
) -> (Vec<LayerModel>, Vec<Vec<Vec<f64>>>, Vec<f64>) {
    let shape = stats.shape();
    let (e, pc) = (shape.experts, pair_count(shape.experts));
    let groups: Vec<_> = families.iter().map(|f| stats.pooled(|k| k.family.as_deref() == Some(f.as_str()))).collect();
    let total: u64 = groups.iter().map(|g| g.tokens).sum();
    let pi: Vec<f64> = groups.iter().map(|g| g.tokens as f64 / total.max(1) as f64).collect();
    let nf = families.len();
    let mut layers = Vec::with_capacity(shape.layers);
    let mut prefs = Vec::with_capacity(shape.layers);
    for l in 0..shape.layers {
        let u: Vec<Vec<f64>> = groups
            .iter()
            .map(|g| {
                let t = g.tokens.max(1) as f64;
                g.load[l * e..(l + 1) * e].iter().map(|&x| x as f64 / t).collect()
            })
            .collect();
        let c: Vec<Vec<f64>> = groups
            .iter()
            .map(|g| {
                let t = g.tokens.max(1) as f64;
                g.coact[l * pc..(l + 1) * pc].iter().map(|&x| x as f64 / t).collect()
            })
            .collect();
        let d: Vec<Vec<f64>> = c
            .iter()
            .map(|cf| {
                let mut d = vec![0.0; e];
                for a in 0..e {
                    for b in a + 1..e {
                        let x = cf[pair_index(a, b, e)];
                        d[a] += x;
                        d[b] += x;
                    }
                }
                d
            })
            .collect();
        let zu = zscores(&u, e);
        let zd = zscores(&d, e);
        let mut pref = vec![vec![0.0; e]; nf];
        for x in 0..e {
            let s: Vec<f64> = (0..nf).map(|f| (zu[f][x] + zd[f][x]) / 2.0 / temperature).collect();
            let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
            for f in 0..nf {
                pref[f][x] = (s[f] - mx).exp() / z;
            }
        }
        let mut m = vec![0.0; pc];
        for a in 0..e {
            for b in a + 1..e {
                let k: f64 = (0..nf).map(|f| pref[f][a] * pref[f][b]).sum();
                m[pair_index(a, b, e)] = (1.0 - alpha) + alpha * nf as f64 * k;
            }
        }
        layers.push(LayerModel { experts: e, pi: pi.clone(), u, c, m });
        prefs.push(pref);
    }
    (layers, prefs, pi)
}

/// z-scores across families of `v[f][e]` (see the module documentation).
fn zscores(v: &[Vec<f64>], e: usize) -> Vec<Vec<f64>> {
    let nf = v.len() as f64;
    let mut z = vec![vec![0.0; e]; v.len()];
    for x in 0..e {
        let mean = v.iter().map(|r| r[x]).sum::<f64>() / nf;
        let sd = (v.iter().map(|r| (r[x] - mean).powi(2)).sum::<f64>() / nf).sqrt();
        let den = sd + 0.05 * mean + 1e-12;
        for (f, r) in v.iter().enumerate() {
            z[f][x] = (r[x] - mean) / den;
        }
    }
    z
}

/// GPU groups by share (largest remainder, at least one GPU each when there are
/// enough), contiguous ranges in family order. Blind to nodes: see [`node_groups`].
pub(crate) fn apportion(pi: &[f64], gpus: usize) -> Vec<Vec<usize>> {
    let sizes = largest_remainder(pi, gpus, &vec![1; pi.len()]);
    let mut next: usize = 0;
    let mut out = Vec::with_capacity(pi.len());
    for s in sizes {
        if s == 0 {
            // More families than GPUs: the family shares the last GPU handed out.
            out.push(vec![next.saturating_sub(1).min(gpus - 1)]);
        } else {
            out.push((next..next + s).collect());
            next += s;
        }
    }
    out
}

/// `units` apportioned to shares `pi` by largest remainder, share f getting at least
/// `min[f]` when there are enough units (ties to the earlier share).
fn largest_remainder(pi: &[f64], units: usize, min: &[usize]) -> Vec<usize> {
    let nf = pi.len();
    let total: f64 = pi.iter().sum::<f64>().max(1e-300);
    let quota: Vec<f64> = pi.iter().map(|p| p / total * units as f64).collect();
    let mut size: Vec<usize> = quota.iter().map(|q| q.floor() as usize).collect();
    if units >= min.iter().sum::<usize>() {
        size.iter_mut().zip(min).for_each(|(s, &m)| *s = (*s).max(m));
    }
    // Hand out (or take back) units by remainder until the sizes sum to `units`.
    while size.iter().sum::<usize>() < units {
        let f = (0..nf)
            .max_by(|&a, &b| (quota[a] - size[a] as f64).total_cmp(&(quota[b] - size[b] as f64)).then(b.cmp(&a)))
            .expect("at least one share");
        size[f] += 1;
    }
    while size.iter().sum::<usize>() > units {
        let f = (0..nf)
            .filter(|&f| size[f] > min[f])
            .min_by(|&a, &b| (quota[a] - size[a] as f64).total_cmp(&(quota[b] - size[b] as f64)).then(a.cmp(&b)))
            .expect("sizes above the minimum exist when they sum past the units");
        size[f] -= 1;
    }
    size
}

/// Family GPU groups that follow node boundaries where the shares allow.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodeGroups {
    /// GPUs of each family, ascending.
    pub groups: Vec<Vec<usize>>,
    /// Groups that touch more nodes than their size needs (0 when aligned).
    pub split: usize,
}

/// Family GPU groups on the cluster's nodes (step 4). A group that spans nodes pays
/// cross-node sends for its own experts; a group smaller than its family's share of
/// the traffic pushes part of the family's load out of it. Three candidates are
/// scored by the expected share of traffic that leaves the node or the group
/// ([`grouping_cost`]) and the cheapest wins (ties: the earlier):
/// 1. whole nodes by largest remainder of the node shares, at least one each;
/// 2. whole nodes for each family's whole-node part, the remainders apportioned over
///    the nodes left and packed largest first into single nodes where they fit, so
///    only a group that needs part of a node shares one;
/// 3. the node-blind contiguous apportionment ([`apportion`]).
pub(crate) fn node_groups(pi: &[f64], cluster: &crate::cluster::Cluster) -> NodeGroups {
    let (gpus, nodes, per) = (cluster.gpus, cluster.nodes, cluster.gpus_per_node());
    let blind = apportion(pi, gpus);
    let mut candidates = Vec::new();
    if nodes > 1 && per > 1 {
        if pi.len() <= nodes {
            let counts = largest_remainder(pi, nodes, &vec![1; pi.len()]);
            let mut next = 0;
            let whole: Vec<Vec<usize>> = counts
                .iter()
                .map(|&c| {
                    let g = (next * per..(next + c) * per).collect();
                    next += c;
                    g
                })
                .collect();
            candidates.push(whole);
        }
        if let Some(packed) = packed_groups(pi, nodes, per) {
            candidates.push(packed);
        }
    }
    // Node alignment may round a group down, never below half its share of the GPUs:
    // a family squeezed further would serve most of its load outside its group, and
    // the groups would no longer follow the shares (`--family-share`).
    let total: f64 = pi.iter().sum::<f64>().max(1e-300);
    candidates.retain(|g| g.iter().zip(pi).all(|(g, p)| g.len() as f64 >= 0.5 * p / total * gpus as f64));
    candidates.push(blind);
    let cost = |g: &Vec<Vec<usize>>| grouping_cost(pi, g, cluster);
    let best = candidates
        .into_iter()
        .enumerate()
        .min_by(|(i, a), (j, b)| cost(a).total_cmp(&cost(b)).then(i.cmp(j)))
        .map(|(_, g)| g)
        .expect("the node-blind candidate is always there");
    let split = split_groups(&best, cluster);
    NodeGroups { groups: best, split }
}

/// Groups (GPU lists, ascending) that touch more nodes than their size needs.
pub(crate) fn split_groups(groups: &[Vec<usize>], cluster: &crate::cluster::Cluster) -> usize {
    let per = cluster.gpus_per_node();
    groups
        .iter()
        .filter(|g| {
            let mut touched: Vec<usize> = g.iter().map(|&x| cluster.node_of(x)).collect();
            touched.dedup();
            touched.len() > g.len().div_ceil(per)
        })
        .count()
}

/// Candidate 2 of [`node_groups`]; `None` when the whole-node parts leave nothing to
/// share or every family needs whole nodes only (candidate 1 covers that).
fn packed_groups(pi: &[f64], nodes: usize, per: usize) -> Option<Vec<Vec<usize>>> {
    let total: f64 = pi.iter().sum::<f64>().max(1e-300);
    let gpus = nodes * per;
    let whole: Vec<usize> = pi.iter().map(|p| (p / total * gpus as f64 / per as f64).floor() as usize).collect();
    let used: usize = whole.iter().sum();
    if used >= nodes {
        return None;
    }
    let left = nodes - used;
    let rest: Vec<f64> =
        pi.iter().zip(&whole).map(|(p, &w)| (p / total * gpus as f64 - (w * per) as f64).max(0.0)).collect();
    // A family without a whole node needs at least one GPU of the nodes left.
    let min: Vec<usize> = whole.iter().map(|&w| usize::from(w == 0)).collect();
    let extra = largest_remainder(&rest, left * per, &min);
    if extra.iter().zip(&whole).any(|(&e, &w)| e + w == 0) {
        return None;
    }
    let mut groups: Vec<Vec<usize>> = Vec::with_capacity(pi.len());
    let mut next = 0;
    for &w in &whole {
        groups.push((next * per..(next + w) * per).collect());
        next += w;
    }
    // Remainders largest first, each into the leftover node with the most free GPUs
    // when it fits there whole, else spread over the fullest-free nodes in order.
    let mut free: Vec<(usize, usize)> = (used..nodes).map(|n| (n, per)).collect();
    let mut order: Vec<usize> = (0..pi.len()).filter(|&f| extra[f] > 0).collect();
    order.sort_by_key(|&f| (std::cmp::Reverse(extra[f]), f));
    for f in order {
        let mut need = extra[f];
        while need > 0 {
            let fit = free.iter().enumerate().filter(|(_, (_, r))| *r >= need).min_by_key(|(i, (_, r))| (*r, *i));
            let i = match fit {
                Some((i, _)) => i,
                None => {
                    free.iter()
                        .enumerate()
                        .filter(|(_, (_, r))| *r > 0)
                        .max_by_key(|(i, (_, r))| (*r, std::cmp::Reverse(*i)))?
                        .0
                }
            };
            let (node, room) = free[i];
            let take = need.min(room);
            let start = node * per + (per - room);
            groups[f].extend(start..start + take);
            free[i].1 -= take;
            need -= take;
        }
    }
    Some(groups)
}

/// Expected share of the calibration traffic that leaves its node or its group under
/// `groups`: per family, `pi_f` times the chance that a send between two GPUs of its
/// group crosses nodes (`1 - sum_n (s_fn / S_f)^2`, `s_fn` of its `S_f` GPUs on node
/// n) plus the part of its load a group smaller than its share `q_f = pi_f G` cannot
/// hold (`max(0, 1 - S_f / q_f)`).
pub(crate) fn grouping_cost(pi: &[f64], groups: &[Vec<usize>], cluster: &crate::cluster::Cluster) -> f64 {
    let total: f64 = pi.iter().sum::<f64>().max(1e-300);
    let mut cost = 0.0;
    for (p, g) in pi.iter().zip(groups) {
        let share = p / total;
        let size = g.len().max(1) as f64;
        let mut on = vec![0usize; cluster.nodes];
        g.iter().for_each(|&x| on[cluster.node_of(x)] += 1);
        let cross = 1.0 - on.iter().map(|&s| (s as f64 / size).powi(2)).sum::<f64>();
        let quota = share * cluster.gpus as f64;
        let short = if quota > 0.0 { (1.0 - size / quota).max(0.0) } else { 0.0 };
        cost += share * (cross + short);
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_traffic_shares() {
        assert_eq!(
            apportion(&[0.25; 4], 16),
            (0..4usize).map(|f| (4 * f..4 * f + 4).collect::<Vec<usize>>()).collect::<Vec<_>>()
        );
        let g = apportion(&[0.5, 0.3, 0.2], 10);
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![5, 3, 2]);
        assert_eq!(g[2], vec![8, 9]);
        // A tiny family still gets a GPU.
        let g = apportion(&[0.97, 0.01, 0.02], 8);
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![6, 1, 1]);
        assert_eq!(g.concat(), (0..8).collect::<Vec<_>>());
    }

    fn nodes_touched(g: &[usize], per: usize) -> usize {
        let mut n: Vec<usize> = g.iter().map(|x| x / per).collect();
        n.dedup();
        n.len()
    }

    #[test]
    fn groups_follow_nodes_when_the_shares_allow() {
        use crate::cluster::Cluster;
        let cluster = Cluster::new(4, 32, 4).unwrap();
        // Shares that the node-blind apportionment turns into 9, 11 and 12 GPUs, each
        // group straddling two nodes.
        let pi = [9.0 / 32.0, 11.0 / 32.0, 12.0 / 32.0];
        let blind = apportion(&pi, 32);
        assert_eq!(blind.iter().map(Vec::len).collect::<Vec<_>>(), vec![9, 11, 12]);
        assert!(blind.iter().all(|g| nodes_touched(g, 8) == 2));
        let NodeGroups { groups, split } = node_groups(&pi, &cluster);
        assert_eq!(split, 0, "{groups:?}");
        assert_eq!(groups.concat().len(), 32);
        let mut all = groups.concat();
        all.sort_unstable();
        assert_eq!(all, (0..32).collect::<Vec<_>>());
        for g in &groups {
            assert_eq!(g.len() % 8, 0, "{groups:?}");
            assert_eq!(nodes_touched(g, 8), g.len() / 8, "{groups:?}");
        }
        assert!(grouping_cost(&pi, &groups, &cluster) < grouping_cost(&pi, &blind, &cluster));
        // Equal shares on as many nodes: one node each.
        let g = node_groups(&[0.25; 4], &Cluster::new(4, 16, 4).unwrap());
        assert_eq!(g.groups, apportion(&[0.25; 4], 16));
        assert_eq!(g.split, 0);
    }

    #[test]
    fn groups_smaller_than_a_node_share_one_and_the_rest_stay_whole() {
        use crate::cluster::Cluster;
        // 7, 7, 1 and 1 GPUs' worth on two nodes of 8: the node-blind ranges put the
        // second family across both nodes; here each big family keeps one node and
        // each small one takes the GPU left on a node.
        let two = Cluster::new(2, 16, 4).unwrap();
        let pi = [7.0, 7.0, 1.0, 1.0];
        assert!(nodes_touched(&apportion(&pi, 16)[1], 8) == 2);
        let NodeGroups { groups, split } = node_groups(&pi, &two);
        assert_eq!(split, 0, "{groups:?}");
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![7, 7, 1, 1]);
        assert!(groups.iter().all(|g| nodes_touched(g, 8) == 1), "{groups:?}");
        let mut all = groups.concat();
        all.sort_unstable();
        assert_eq!(all, (0..16).collect::<Vec<_>>());
        let cluster = Cluster::new(4, 32, 4).unwrap();
        // Five families on four nodes cannot all have a node: the chosen split is the
        // cheapest of the candidates, and any group wider than it needs is reported.
        let pi = [0.2; 5];
        let ng = node_groups(&pi, &cluster);
        let blind = apportion(&pi, 32);
        assert!(grouping_cost(&pi, &ng.groups, &cluster) <= grouping_cost(&pi, &blind, &cluster));
        let wide = ng.groups.iter().filter(|g| nodes_touched(g, 8) > g.len().div_ceil(8)).count();
        assert_eq!(ng.split, wide);
    }

    /// Requests a0..a3 (family a, request a_i of i + 1 tokens picking expert i) and
    /// b0..b3 (family b, 2 tokens each picking expert 3 - i); one layer, top-1.
    fn two_families(request_vectors: bool) -> Statistics {
        use crate::stats::ProfileOptions;
        use crate::trace::{ModelShape, TokenBatch, TokenRef};
        let shape = ModelShape::new(1, 4, 1).unwrap();
        let mut batch = TokenBatch::new(shape);
        for i in 0..4u16 {
            for (family, len, expert) in [("a", i + 1, i), ("b", 2, 3 - i)] {
                let request = format!("{family}{i}");
                for position in 0..len {
                    let experts = [expert];
                    let (family, phase, gate_weights) = (Some(family), None, None);
                    let position = u32::from(position);
                    let token =
                        TokenRef { request: &request, family, phase, position, experts: &experts, gate_weights };
                    batch.push(token).unwrap();
                }
            }
        }
        let options = ProfileOptions { request_vectors, ..Default::default() };
        Statistics::from_batches(shape, options, [&batch]).unwrap()
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        use crate::cluster::Cluster;
        use crate::placers::{Params, PlacerInput};
        let cluster = Cluster::new(1, 2, 1).unwrap().with_slots(4).unwrap();
        let run = |stats: &Statistics, params: &[&str]| {
            let params = Params::parse(params.iter().copied()).unwrap();
            let loads = stats.loads(|_| true);
            let input = PlacerInput {
                shape: stats.shape(),
                cluster: &cluster,
                loads: &loads,
                stats: Some(stats),
                previous: None,
                params: &params,
                seed: 0,
            };
            Tacg.place(&input).map(|_| ()).map_err(|e| e.to_string())
        };
        let stats = two_families(true);
        assert_eq!(run(&stats, &["alpha=1", "robust=0.5"]), Ok(()));
        for (bad, says) in [
            ("alpha=1.5", "must lie in [0, 1]"),
            ("temperature=0", "must be positive"),
            ("eta=-1", "must not be negative"),
            ("resample=1", "has no parameter \"resample\""),
        ] {
            let err = run(&stats, &[bad]).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn zscores_order_families() {
        let z = zscores(&[vec![1.0, 2.0], vec![3.0, 2.0]], 2);
        assert!(z[0][0] < 0.0 && z[1][0] > 0.0);
        assert_eq!(z[0][1], 0.0);
    }
}
