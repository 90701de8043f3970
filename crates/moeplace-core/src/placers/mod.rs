//! Placers: statistics + cluster -> placement (and, for some, where requests are
//! served). One placer per file behind the small [`Placer`] trait; [`registry`]
//! lists them. To add a placer: write `placers/<name>.rs` implementing [`Placer`],
//! then add one line to [`registry`].

use std::collections::BTreeMap;

use crate::cluster::Cluster;
use crate::placement::{Placement, PlacementError};
use crate::stats::{ExpertLoads, Parts, Statistics};
use crate::trace::ModelShape;

mod balance;
pub mod cluster_homes;
pub use coact::REFINE_SKIPPED_NOTE;
mod coact;
mod eplb;
pub use eplb::{rebalance_experts, EplbArrays};
mod grace;
mod linear;
mod round_robin;
mod served;
pub use served::{REVERTED_LAYERS_NOTE, SERVED_SWAPS_NOTE};
mod tacg;
pub use tacg::SPLIT_GROUPS_NOTE;
mod tacg_gesr;

pub use crate::params::{Kind, Level, Param, Params, Preset, Value};

impl Params {
    /// Refuses keys the placer does not declare, so typos do not pass silently.
    pub fn allow_only(&self, placer: &dyn Placer) -> Result<(), PlaceError> {
        let hint = format!("; `moeplace placers {}` explains them", placer.name());
        self.check_declared(&placer.params(), &format!("placer {}", placer.name()), &hint)
    }

    /// The parameters among these that `placer` takes.
    pub fn for_placer(&self, placer: &dyn Placer) -> Params {
        self.only(&placer.params())
    }
}

/// What a placer gets.
pub struct PlacerInput<'a> {
    pub shape: ModelShape,
    pub cluster: &'a Cluster,
    /// Expert loads (always present; from statistics or an engine dump).
    pub loads: &'a ExpertLoads,
    /// Full statistics when planned from traces (co-activation, families, requests).
    pub stats: Option<&'a Statistics>,
    /// The plan currently deployed, for migration-aware placers.
    pub previous: Option<&'a Placement>,
    pub params: &'a Params,
    pub seed: u64,
}

/// What a placer returns.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacerOutput {
    pub placement: Placement,
    /// Where each family's requests should be served, if the placer decides it.
    pub family_gpus: Option<BTreeMap<String, Vec<usize>>>,
    /// Figures worth reporting (lower bounds, chosen knobs), by name.
    pub notes: BTreeMap<String, f64>,
}

impl PlacerOutput {
    pub fn placement(placement: Placement) -> Self {
        PlacerOutput { placement, family_gpus: None, notes: BTreeMap::new() }
    }
}

/// Why a placer could not produce a plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlaceError {
    #[error("{0}")]
    BadParam(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("placer produced an invalid placement: {0}")]
    Invalid(#[from] PlacementError),
}

/// An algorithm that turns statistics and a cluster into a placement.
pub trait Placer: Send + Sync {
    /// The name used on the command line and in plan provenance.
    fn name(&self) -> &'static str;
    /// One line for `--help` and `moeplace placers`.
    fn about(&self) -> &'static str;
    /// The parameters it takes (none by default).
    fn params(&self) -> Vec<Param> {
        Vec::new()
    }
    /// Whether it reads only expert loads (not top-k, co-activation or token paths),
    /// so that count files without top-k are enough.
    fn loads_only(&self) -> bool {
        false
    }
    /// The parts of statistics files it reads ([`Parts`]), so that reading skips the
    /// rest (by default everything but transitions, which no placer reads).
    fn needs(&self) -> Parts {
        if self.loads_only() {
            Parts::LOADS
        } else {
            Parts { transitions: false, ..Parts::ALL }
        }
    }
    fn place(&self, input: &PlacerInput<'_>) -> Result<PlacerOutput, PlaceError>;
    /// How its plans are served (written into every plan): by default the `nearest`
    /// dispatcher with requests round-robin.
    fn serving(&self) -> crate::serving::Serving {
        crate::serving::Serving::default()
    }
    /// The settings `plan` tries by cross-validation when it tunes ([`crate::tune`]):
    /// a few values of its main parameters and of its dispatcher's; empty (nothing
    /// to tune) by default.
    fn tuning(&self) -> crate::tune::TuneGrid {
        crate::tune::TuneGrid::default()
    }
    /// Its named operating points (`plan --preset NAME`): settings of the placer and
    /// of its serving for one purpose; none by default.
    fn presets(&self) -> &'static [Preset] {
        &[]
    }
}

/// The preset `name` of `placer`, or an error listing its presets.
pub fn preset(placer: &dyn Placer, name: &str) -> Result<Preset, PlaceError> {
    placer.presets().iter().copied().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = placer.presets().iter().map(|p| p.name).collect();
        PlaceError::BadParam(format!(
            "placer {} has no preset {name:?} ({})",
            placer.name(),
            if names.is_empty() { "it has none".to_string() } else { format!("it has: {}", names.join(", ")) }
        ))
    })
}

/// Every placer, in the order tables list them.
pub fn registry() -> Vec<Box<dyn Placer>> {
    vec![
        Box::new(linear::Linear),
        Box::new(round_robin::RoundRobin),
        Box::new(eplb::Eplb),
        Box::new(balance::Balance),
        Box::new(coact::Coact),
        Box::new(tacg::Tacg),
        Box::new(tacg_gesr::TacgGesr),
        Box::new(cluster_homes::ClusterHomesPlacer),
        Box::new(grace::Grace),
    ]
}

/// The placer called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Placer>> {
    registry().into_iter().find(|p| p.name() == name)
}

/// Checks the cluster can hold the model: at least one slot per expert, and (a
/// placement rule) no more slots per GPU than experts, since two copies of one
/// expert may not share a GPU.
pub fn check_fits(shape: ModelShape, cluster: &Cluster) -> Result<(), PlaceError> {
    if cluster.slots() < shape.experts {
        return Err(PlaceError::Unsupported(format!(
            "{} GPUs with {} = {} slots cannot hold {} experts",
            cluster.gpus,
            cluster.slots_label(),
            cluster.slots(),
            shape.experts
        )));
    }
    if cluster.max_slots_per_gpu() > shape.experts {
        return Err(PlaceError::Unsupported(format!(
            "{} slots on a GPU is more than the {} experts: some GPU would hold two copies of one expert",
            cluster.max_slots_per_gpu(),
            shape.experts
        )));
    }
    Ok(())
}

/// Fills each layer's redundant slots with extra copies of the hottest experts,
/// round-robin over GPUs that do not already hold them. Shared by the baselines:
/// `base[layer][gpu]` are the primaries of each GPU (at most its slot count).
pub(crate) fn fill_redundant_hottest(
    shape: ModelShape,
    cluster: &Cluster,
    loads: &ExpertLoads,
    mut base: Vec<Vec<Vec<usize>>>,
) -> Result<Placement, PlaceError> {
    let cap: Vec<usize> = (0..cluster.gpus).map(|g| cluster.gpu_slot_count(g)).collect();
    for (layer, gpus) in base.iter_mut().enumerate() {
        if let Some(g) = (0..cluster.gpus).find(|&g| gpus[g].len() > cap[g]) {
            return Err(PlaceError::Unsupported(format!(
                "layer {layer}: GPU {g} would need {} slots for its experts but owns {}",
                gpus[g].len(),
                cap[g]
            )));
        }
        let load = loads.layer_total(layer);
        // Hottest first; lower id first on ties (deterministic).
        let mut order: Vec<usize> = (0..shape.experts).collect();
        order.sort_by(|&a, &b| load[b].total_cmp(&load[a]).then(a.cmp(&b)));
        let mut copies = vec![1usize; shape.experts];
        let free: usize = gpus.iter().enumerate().map(|(g, l)| cap[g] - l.len()).sum();
        // GPUs with room, least filled first (ties: lower id).
        let mut open: std::collections::BTreeSet<(usize, usize)> =
            (0..cluster.gpus).filter(|&g| gpus[g].len() < cap[g]).map(|g| (gpus[g].len(), g)).collect();
        // Each redundant slot goes to the expert with the highest load per copy that
        // still fits on some GPU with room (ties: hotter, then lower id), placed on the
        // least-filled such GPU (ties: lower id).
        let mut full_for = vec![false; shape.experts];
        for _ in 0..free {
            full_for.iter_mut().for_each(|f| *f = false);
            let (e, g) = loop {
                let mut best: Option<usize> = None;
                for &e in order.iter().filter(|&&e| !full_for[e]) {
                    if best.is_none_or(|b| load[e] / copies[e] as f64 > load[b] / copies[b] as f64) {
                        best = Some(e);
                    }
                }
                let e = best.expect("a GPU with room lacks some expert since slots per GPU <= experts");
                match open.iter().find(|&&(_, g)| !gpus[g].contains(&e)) {
                    Some(&(_, g)) => break (e, g),
                    None => full_for[e] = true,
                }
            };
            open.remove(&(gpus[g].len(), g));
            copies[e] += 1;
            gpus[g].push(e);
            if gpus[g].len() < cap[g] {
                open.insert((gpus[g].len(), g));
            }
        }
    }
    Ok(Placement::from_gpu_lists(shape.experts, &base)?)
}

/// Plan note: experts swapped between GPUs by the balance fallback ([`hold_balance`]).
pub const BALANCE_FALLBACK_NOTE: &str = "balance_fallback_swaps";

/// The expected per-layer Jain index (calibration loads, each expert's load split
/// evenly over its copies) below which [`hold_balance`] steps in. `balance` reaches
/// it on every shape we generate, so a plan below it has traded balance for locality.
pub const BALANCE_FLOOR: f64 = 0.99;

/// Fallback toward balance: in each layer whose expected Jain index is below
/// [`BALANCE_FLOOR`], swaps pairs of experts between the heaviest GPU and another,
/// each time the swap that lowers the sum of squared GPU loads most, until the layer
/// reaches the floor or no swap helps. Slot counts and copy counts stay as they are,
/// so a plan above the floor is returned unchanged. Returns the swaps made. Expected
/// loads do not see how a plan is served; `served.rs` judges it as served.
pub(crate) fn hold_balance(placement: Placement, loads: &ExpertLoads) -> Result<(Placement, usize), PlaceError> {
    let (gpus, experts) = (placement.gpus(), placement.experts());
    let mut lists: Vec<Vec<Vec<usize>>> = (0..placement.layers())
        .map(|l| (0..gpus).map(|g| placement.gpu_experts(l, g).iter().map(|&x| x as usize).collect()).collect())
        .collect();
    let mut swaps = 0;
    for (layer, gl) in lists.iter_mut().enumerate() {
        let total = loads.layer_total(layer);
        let mut copies = vec![0usize; experts];
        gl.iter().flatten().for_each(|&x| copies[x] += 1);
        let per: Vec<f64> = (0..experts).map(|x| total[x] / copies[x].max(1) as f64).collect();
        let w: Vec<Vec<f64>> = gl.iter().map(|l| l.iter().map(|&x| per[x]).collect()).collect();
        swaps += swap_to_floor(gl, w);
    }
    if swaps == 0 {
        return Ok((placement, 0));
    }
    Ok((Placement::from_gpu_lists(experts, &lists)?, swaps))
}

/// Swaps of one layer's experts (`gl[gpu]`, with `w[gpu][i]` the load carried by
/// `gl[gpu][i]`: expected or served) toward an even load, each time the swap that
/// lowers the sum of squared GPU loads most; returns the swaps made.
pub(crate) fn swap_to_floor(gl: &mut [Vec<usize>], mut w: Vec<Vec<f64>>) -> usize {
    let gpus = gl.len();
    let mut load: Vec<f64> = w.iter().map(|l| l.iter().sum()).collect();
    let slots: usize = gl.iter().map(Vec::len).sum();
    let mut swaps = 0;
    for _ in 0..slots {
        if jain(&load) >= BALANCE_FLOOR {
            break;
        }
        let h = (0..gpus).max_by(|&a, &b| load[a].total_cmp(&load[b]).then(b.cmp(&a))).expect("GPUs");
        let mut best: Option<(f64, usize, usize, usize)> = None;
        for (i, &a) in gl[h].iter().enumerate() {
            for g in (0..gpus).filter(|&g| g != h && !gl[g].contains(&a)) {
                for (j, &b) in gl[g].iter().enumerate() {
                    if gl[h].contains(&b) {
                        continue;
                    }
                    let d = w[g][j] - w[h][i];
                    let gain = load[h].powi(2) + load[g].powi(2) - (load[h] + d).powi(2) - (load[g] - d).powi(2);
                    if gain > 1e-12 * load[h].powi(2) && best.is_none_or(|(bg, ..)| gain > bg) {
                        best = Some((gain, g, i, j));
                    }
                }
            }
        }
        let Some((_, g, i, j)) = best else { break };
        let d = w[g][j] - w[h][i];
        let (a, b) = (gl[h][i], gl[g][j]);
        gl[h][i] = b;
        gl[g][j] = a;
        let (wa, wb) = (w[h][i], w[g][j]);
        w[h][i] = wb;
        w[g][j] = wa;
        load[h] += d;
        load[g] -= d;
        swaps += 1;
    }
    swaps
}

/// Jain's fairness index of per-GPU loads (1 when even).
fn jain(load: &[f64]) -> f64 {
    let (s, q) = load.iter().fold((0.0, 0.0), |(s, q), &x| (s + x, q + x * x));
    if q <= 0.0 {
        1.0
    } else {
        s * s / (load.len() as f64 * q)
    }
}

#[cfg(test)]
mod param_tests {
    use super::*;

    #[test]
    fn every_declaration_is_consistent_and_every_preset_valid() {
        let dispatchers = crate::dispatch::registry(0);
        for p in registry() {
            let params = p.params();
            for (i, d) in params.iter().enumerate() {
                assert!(d.is_consistent(), "{}: {d:?}", p.name());
                assert!(!d.about.is_empty(), "{}: {} has no text", p.name(), d.name);
                assert!(params[..i].iter().all(|e| e.name != d.name), "{}: {} declared twice", p.name(), d.name);
            }
            Params::default().check_values(&params).unwrap();
            let serving = p.serving();
            let dispatcher = dispatchers.iter().find(|d| d.name() == serving.dispatcher).expect("a dispatcher");
            for preset in p.presets() {
                let placer_params = preset.placer_params();
                placer_params.allow_only(p.as_ref()).unwrap();
                placer_params.check_values(&params).unwrap();
                let mut served = serving.clone();
                served.params = preset.serving_params().over(&served.params);
                served.check().unwrap_or_else(|e| panic!("{} {}: {e}", p.name(), preset.name));
                assert!(preset.serving_params().check_values(&dispatcher.params()).is_ok());
            }
            for (name, values) in &p.tuning().placer {
                let d = params.iter().find(|d| d.name == *name).expect("a tuned parameter is declared");
                for v in *values {
                    Params::parse([format!("{name}={v}").as_str()]).unwrap().check_values(&[*d]).unwrap();
                }
            }
        }
        for d in dispatchers {
            for p in d.params() {
                assert!(p.is_consistent(), "{}: {p:?}", d.name());
            }
        }
    }

    #[test]
    fn presets_are_found_by_name_and_unknown_ones_named() {
        let tacg = by_name("tacg+gesr").unwrap();
        assert_eq!(preset(tacg.as_ref(), "shift-robust").unwrap().placer, &[("robust", "0.75")]);
        let e = preset(tacg.as_ref(), "fastest").unwrap_err().to_string();
        assert!(e.contains("no preset \"fastest\" (it has: min-remote-nodes, shift-robust)"), "{e}");
        let e = preset(by_name("linear").unwrap().as_ref(), "x").unwrap_err().to_string();
        assert!(e.contains("it has none"), "{e}");
    }

    #[test]
    fn the_balance_fallback_evens_a_lopsided_layer_and_leaves_an_even_one() {
        use crate::stats::ExpertLoads;
        // Hot experts 0 and 1 on GPU 0, cold 2 and 3 on GPU 1.
        let lists = vec![vec![vec![0, 1], vec![2, 3]]];
        let p = Placement::from_gpu_lists(4, &lists).unwrap();
        let loads = ExpertLoads { layers: 1, experts: 4, steps: vec![vec![10.0, 9.0, 1.0, 2.0]] };
        let (q, swaps) = hold_balance(p, &loads).unwrap();
        assert_eq!(swaps, 1);
        let on0: Vec<u32> = q.gpu_experts(0, 0).to_vec();
        assert!(on0.contains(&0) != on0.contains(&1), "{on0:?}");
        let even = Placement::from_gpu_lists(4, &[vec![vec![0, 2], vec![1, 3]]]).unwrap();
        let (same, swaps) = hold_balance(even.clone(), &loads).unwrap();
        assert_eq!((same, swaps), (even, 0));
    }

    #[test]
    fn a_parameter_given_twice_is_refused() {
        let e = Params::parse(["alpha=0.5", "passes=2", "alpha = 0.9"]).unwrap_err().to_string();
        assert!(e.contains("alpha") && e.contains("twice"), "{e}");
    }
}
