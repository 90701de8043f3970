//! Plans that tune themselves, out of sample: a placer's parameters and its serving
//! parameters chosen by cross-validation over the calibration requests.
//!
//! Each placer declares a small grid next to its parameters ([`Placer::tuning`]):
//! values of a few of its own parameters (their product) and variants of its
//! dispatcher's parameters. [`cross_validate`] splits the calibration requests into K
//! folds by request (never by token; seeded; every family in every fold), and for
//! each placer setting and fold plans on the other K-1 folds and replays the held-out
//! fold (families interleaved, as the protocol replays) with each serving variant,
//! against the protocol's baseline on the same fold. The chosen setting has the best
//! mean cut of the objective among the settings whose Jain index reaches the floor
//! on every fold; when none does, the one with the highest least Jain (and the
//! outcome says so). The caller then plans on all calibration requests with it.
//!
//! Settings are scored in parallel (rayon over placer settings x folds); the result
//! does not depend on the number of threads.
//!
//! [`Placer::tuning`]: crate::placers::Placer::tuning

use std::collections::{BTreeMap, HashSet};

use rayon::prelude::*;

use crate::cluster::Cluster;
use crate::placement::Placement;
use crate::placers::{Params, PlaceError, Placer, PlacerInput};
use crate::protocol::{self, ProtocolError};
use crate::serving::Serving;
use crate::simulate::{cut_percent, simulate, SimError, SimResult};
use crate::stats::{ProfileOptions, Statistics};
use crate::synth::rng::{derive, hash_name, Rng};
use crate::trace::{ShapeError, Trace};

/// A placer's tuning grid.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TuneGrid {
    /// Axes of its own parameters: (name, values); the placer settings are their
    /// product, in order (the last axis varies fastest).
    pub placer: Vec<(&'static str, &'static [&'static str])>,
    /// Variants of its dispatcher's parameters (the dispatcher and home policy stay
    /// the placer's own serving); empty: the serving as declared.
    pub serving: Vec<&'static [(&'static str, &'static str)]>,
}

impl TuneGrid {
    /// Whether there is nothing to tune.
    pub fn is_empty(&self) -> bool {
        self.placer.iter().all(|(_, v)| v.len() <= 1) && self.serving.len() <= 1
    }

    /// One line: `alpha {0, 0.25} x robust {0, 0.5}; serving theta=0.15 | theta=1 free_first=true`.
    pub fn describe(&self) -> String {
        let axes: Vec<String> = self.placer.iter().map(|(n, v)| format!("{n} {{{}}}", v.join(", "))).collect();
        let mut s = axes.join(" x ");
        if !self.serving.is_empty() {
            let variants: Vec<String> = self
                .serving
                .iter()
                .map(|v| v.iter().map(|(k, x)| format!("{k}={x}")).collect::<Vec<_>>().join(" "))
                .collect();
            if !s.is_empty() {
                s.push_str("; ");
            }
            s.push_str(&format!("serving {}", variants.join(" | ")));
        }
        s
    }
}

/// What tuning maximises the cut of (against the protocol's baseline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    RemoteNodes,
    RemoteGpus,
    Bytes,
    AllToAllTime,
}

impl Objective {
    /// Names on the command line.
    pub const NAMES: &'static [&'static str] = &["remote-nodes", "remote-gpus", "bytes", "all-to-all-time"];

    pub fn parse(s: &str) -> Option<Objective> {
        match s {
            "remote-nodes" => Some(Objective::RemoteNodes),
            "remote-gpus" => Some(Objective::RemoteGpus),
            "bytes" => Some(Objective::Bytes),
            "all-to-all-time" => Some(Objective::AllToAllTime),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Objective::RemoteNodes => "remote-nodes",
            Objective::RemoteGpus => "remote-gpus",
            Objective::Bytes => "bytes",
            Objective::AllToAllTime => "all-to-all-time",
        }
    }

    /// The name in plan notes (`tune_cut_<key>_mean`).
    pub fn key(self) -> &'static str {
        match self {
            Objective::RemoteNodes => "remote_nodes",
            Objective::RemoteGpus => "remote_gpus",
            Objective::Bytes => "bytes",
            Objective::AllToAllTime => "all_to_all_time",
        }
    }

    /// Words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Objective::RemoteNodes => "remote nodes per token-layer",
            Objective::RemoteGpus => "remote GPUs per token-layer",
            Objective::Bytes => "bytes moved by dispatch and combine",
            Objective::AllToAllTime => "estimated all-to-all time",
        }
    }

    /// Its value in a replay (lower is better).
    pub fn value(self, r: &SimResult) -> f64 {
        match self {
            Objective::RemoteNodes => r.remote_nodes,
            Objective::RemoteGpus => r.remote_gpus,
            Objective::Bytes => r.bytes as f64,
            Objective::AllToAllTime => r.all_to_all_us,
        }
    }
}

/// How to tune.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TuneOptions {
    pub objective: Objective,
    /// The Jain index (load, mean over layers) a setting must reach on every fold.
    pub min_jain: f64,
    /// Folds asked for; fewer when a family has fewer requests.
    pub folds: usize,
    /// Seeds the folds (and the placers and dispatchers that draw numbers).
    pub seed: u64,
    /// How the folds' statistics are profiled (as for the final plan).
    pub profile: ProfileOptions,
}

/// Default folds.
pub const DEFAULT_FOLDS: usize = 4;
/// Default Jain floor.
pub const DEFAULT_MIN_JAIN: f64 = 0.99;

/// Why tuning cannot run.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error("{0}")]
    Folds(String),
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("statistics of a fold: {0}")]
    Shape(#[from] ShapeError),
    #[error("setting {setting}: {error}")]
    Place { setting: String, error: PlaceError },
    #[error("replaying setting {setting}: {error}")]
    Replay { setting: String, error: SimError },
}

/// What the user fixed: placer parameters (`--param`, a preset's) and serving
/// parameters (a preset's); tuning varies only the rest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fixed {
    pub placer: Params,
    pub serving: Params,
}

/// One candidate: the placer's parameters and the serving.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub params: Params,
    pub serving: Serving,
}

impl Setting {
    /// One line: `alpha=0 locality=0.25; gesr theta=1, homes family`.
    pub fn label(&self) -> String {
        let p: Vec<String> = self.params.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let p = if p.is_empty() { "defaults".to_string() } else { p.join(" ") };
        format!("{p}; served {}", self.serving.label())
    }
}

/// A setting's figures on every fold.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub setting: Setting,
    /// The objective's cut against the baseline, in percent, per fold.
    pub cut: Vec<f64>,
    /// Jain index per fold.
    pub jain: Vec<f64>,
}

/// Mean, least and largest of figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(x: &[f64]) -> Spread {
        let mean = x.iter().sum::<f64>() / x.len().max(1) as f64;
        let min = x.iter().copied().fold(f64::INFINITY, f64::min);
        let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Spread { mean, min, max }
    }
}

impl Scored {
    pub fn cut(&self) -> Spread {
        Spread::of(&self.cut)
    }

    pub fn jain(&self) -> Spread {
        Spread::of(&self.jain)
    }

    /// Whether Jain reaches `floor` on every fold.
    pub fn holds(&self, floor: f64) -> bool {
        self.jain.iter().all(|&j| j >= floor)
    }
}

/// What cross-validation found.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuned {
    pub options: TuneOptions,
    /// Folds used.
    pub folds: usize,
    /// Every setting, in grid order.
    pub scores: Vec<Scored>,
    /// Index of the chosen one in `scores`.
    pub chosen: usize,
    /// Whether some setting kept Jain at the floor on every fold (else the chosen one
    /// is the most balanced).
    pub held: bool,
}

impl Tuned {
    pub fn chosen(&self) -> &Scored {
        &self.scores[self.chosen]
    }

    /// Plan notes: folds, settings, the floor, whether it held, and the chosen
    /// setting's held-out figures (mean, least, largest over folds).
    pub fn notes(&self) -> BTreeMap<String, f64> {
        let c = self.chosen();
        let mut n = BTreeMap::new();
        n.insert("tune_folds".to_string(), self.folds as f64);
        n.insert("tune_settings".to_string(), self.scores.len() as f64);
        n.insert("tune_min_jain".to_string(), self.options.min_jain);
        n.insert("tune_jain_held".to_string(), if self.held { 1.0 } else { 0.0 });
        n.insert("tune_seed".to_string(), self.options.seed as f64);
        let key = self.options.objective.key();
        for (name, s) in [(format!("tune_cut_{key}"), c.cut()), ("tune_jain".to_string(), c.jain())] {
            n.insert(format!("{name}_mean"), s.mean);
            n.insert(format!("{name}_min"), s.min);
            n.insert(format!("{name}_max"), s.max);
        }
        n
    }
}

/// The placer settings (the grid's product with the user's parameters on top, which
/// fix what they name) and serving variants (the user's serving parameters on top),
/// each without repeats, in grid order.
pub fn candidates(placer: &dyn Placer, fixed: &Fixed) -> (Vec<Params>, Vec<Serving>) {
    let user = &fixed.placer;
    let grid = placer.tuning();
    let mut placers: Vec<Params> = vec![Params::default()];
    for (name, values) in &grid.placer {
        placers = placers
            .iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.0.insert(name.to_string(), v.to_string());
                    q
                })
            })
            .collect();
    }
    for p in placers.iter_mut() {
        p.0.extend(user.0.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    dedup(&mut placers);
    let base = placer.serving();
    let mut servings: Vec<Serving> = if grid.serving.is_empty() {
        vec![base]
    } else {
        grid.serving.iter().map(|variant| variant.iter().fold(base.clone(), |s, (k, v)| s.with_param(k, v))).collect()
    };
    for s in servings.iter_mut() {
        s.params = fixed.serving.over(&s.params);
    }
    dedup(&mut servings);
    (placers, servings)
}

fn dedup<T: PartialEq>(items: &mut Vec<T>) {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for x in items.drain(..) {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    *items = out;
}

/// The requests of `trace` in `k` folds: in each family a seeded shuffle of its
/// requests dealt round-robin, so every family has requests in every fold. `k` is
/// lowered to the smallest family's request count; fewer than two folds is an error.
/// Returns the folds as sets of request names.
pub fn folds(trace: &Trace, k: usize, seed: u64) -> Result<Vec<HashSet<String>>, TuneError> {
    let mut by_family: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for r in protocol::requests(trace) {
        by_family.entry(r.family).or_default().push(r.name);
    }
    let (smallest, fewest) = by_family
        .iter()
        .map(|(f, r)| (f.clone(), r.len()))
        .min_by_key(|&(_, n)| n)
        .ok_or_else(|| TuneError::Folds("the calibration trace holds no requests".into()))?;
    let k = k.min(fewest);
    if k < 2 {
        let who = match smallest {
            Some(f) => format!("family {f:?} has"),
            None => "the trace has".to_string(),
        };
        return Err(TuneError::Folds(format!(
            "cross-validation needs at least two requests of every family, and {who} {fewest}; give more \
             calibration requests or plan without tuning"
        )));
    }
    let mut out = vec![HashSet::new(); k];
    for (family, mut names) in by_family {
        let mut rng = Rng::new(derive(seed, &[hash_name(family.as_deref().unwrap_or(""))]));
        for i in (1..names.len()).rev() {
            names.swap(i, rng.below(i + 1));
        }
        for (i, n) in names.into_iter().enumerate() {
            out[i % k].insert(n);
        }
    }
    Ok(out)
}

/// One fold: statistics of the other folds, the held-out requests (families
/// interleaved) and the baseline's replay of them.
struct Fold {
    stats: Statistics,
    held: Trace,
    baseline: SimResult,
}

/// Cross-validates `placer`'s candidates (see the module documentation) on the
/// calibration `trace` for `cluster`. `fixed` are the parameters given (fixed in every
/// setting), `previous` the deployed plan for placers that keep copies in place. `progress` is
/// called once per (placer setting, fold) done; [`jobs`] says how many there are.
pub fn cross_validate(
    placer: &dyn Placer,
    trace: &Trace,
    cluster: &Cluster,
    fixed: &Fixed,
    options: TuneOptions,
    previous: Option<&Placement>,
    progress: &(dyn Fn() + Sync),
) -> Result<Tuned, TuneError> {
    if !(options.min_jain > 0.0 && options.min_jain <= 1.0) {
        return Err(TuneError::Options(format!(
            "the Jain floor {} must lie in (0, 1] (the Jain index of n loads lies in [1/n, 1])",
            options.min_jain
        )));
    }
    let (placers, servings) = candidates(placer, fixed);
    let parts = folds(trace, options.folds, options.seed)?;
    let k = parts.len();
    let data: Vec<Fold> = parts
        .par_iter()
        .map(|part| -> Result<Fold, TuneError> {
            let train = trace.filter(|t| !part.contains(t.request));
            let held = protocol::interleave_families(&trace.filter(|t| part.contains(t.request)));
            let stats = Statistics::from_batches(trace.shape, options.profile, &train.batches)?;
            let (_, _, baseline) = protocol::baseline(&held, cluster)?;
            Ok(Fold { stats, held, baseline })
        })
        .collect::<Result<_, _>>()?;
    let jobs: Vec<(usize, usize)> = (0..placers.len()).flat_map(|p| (0..k).map(move |f| (p, f))).collect();
    // Per job: (cut, jain) for every serving.
    let results: Vec<Vec<(f64, f64)>> = jobs
        .par_iter()
        .map(|&(p, f)| -> Result<Vec<(f64, f64)>, TuneError> {
            let fold = &data[f];
            let setting = |s: &Serving| Setting { params: placers[p].clone(), serving: s.clone() }.label();
            let loads = fold.stats.loads(|_| true);
            let input = PlacerInput {
                shape: trace.shape,
                cluster,
                loads: &loads,
                stats: Some(&fold.stats),
                previous,
                params: &placers[p],
                seed: options.seed,
            };
            let out =
                placer.place(&input).map_err(|error| TuneError::Place { setting: setting(&servings[0]), error })?;
            let mut row = Vec::with_capacity(servings.len());
            for s in &servings {
                let d = s.dispatcher(options.seed).map_err(|error| TuneError::Place { setting: setting(s), error })?;
                let homes = s.home_policy(out.family_gpus.as_ref());
                let r = simulate(&fold.held, &out.placement, cluster, d.as_ref(), &homes)
                    .map_err(|error| TuneError::Replay { setting: setting(s), error })?;
                let base = options.objective.value(&fold.baseline);
                row.push((cut_percent(options.objective.value(&r), base).unwrap_or(0.0), r.jain));
            }
            progress();
            Ok(row)
        })
        .collect::<Result<_, _>>()?;
    let mut scores = Vec::with_capacity(placers.len() * servings.len());
    for (p, params) in placers.iter().enumerate() {
        for (s, serving) in servings.iter().enumerate() {
            let per_fold: Vec<(f64, f64)> = (0..k).map(|f| results[p * k + f][s]).collect();
            scores.push(Scored {
                setting: Setting { params: params.clone(), serving: serving.clone() },
                cut: per_fold.iter().map(|x| x.0).collect(),
                jain: per_fold.iter().map(|x| x.1).collect(),
            });
        }
    }
    let (chosen, held) = choose(&scores, options.min_jain);
    Ok(Tuned { options, folds: k, scores, chosen, held })
}

/// (placer settings x folds) jobs [`cross_validate`] runs for `placer` with `fixed`'s
/// parameters and `folds` folds (at most; fewer when a family has fewer requests).
pub fn jobs(placer: &dyn Placer, fixed: &Fixed, folds: usize) -> usize {
    candidates(placer, fixed).0.len() * folds
}

/// The chosen index and whether it holds the floor: the best mean cut among the
/// settings whose Jain reaches `floor` on every fold (ties: the first); when none
/// does, the highest least Jain (ties: the better mean cut, then the first).
pub fn choose(scores: &[Scored], floor: f64) -> (usize, bool) {
    let mut best: Option<usize> = None;
    for (i, s) in scores.iter().enumerate() {
        if s.holds(floor) && best.is_none_or(|b| s.cut().mean > scores[b].cut().mean) {
            best = Some(i);
        }
    }
    if let Some(b) = best {
        return (b, true);
    }
    let mut best = 0;
    for (i, s) in scores.iter().enumerate().skip(1) {
        let (j, bj) = (s.jain().min, scores[best].jain().min);
        if j > bj || (j == bj && s.cut().mean > scores[best].cut().mean) {
            best = i;
        }
    }
    (best, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch;
    use crate::placers::registry;
    use crate::synth::{generate_all, SynthConfig};

    fn demo_trace() -> Trace {
        let config = SynthConfig::small_demo();
        Trace { shape: config.shape, batches: generate_all(&config, 5).unwrap() }
    }

    #[test]
    fn every_grid_names_declared_parameters_with_valid_values() {
        for p in registry() {
            let grid = p.tuning();
            for (name, values) in &grid.placer {
                assert!(p.params().iter().any(|d| d.name == *name), "{}: {name} is not a parameter", p.name());
                assert!(!values.is_empty(), "{}: {name} has no values", p.name());
            }
            let (_, servings) = candidates(p.as_ref(), &Fixed::default());
            for s in servings {
                s.check().unwrap_or_else(|e| panic!("{}: {e}", p.name()));
                assert!(dispatch::names().contains(&s.dispatcher.as_str()));
            }
            let n = jobs(p.as_ref(), &Fixed::default(), 1) * candidates(p.as_ref(), &Fixed::default()).1.len();
            assert!(n <= 24, "{}: {n} settings is more than a small grid", p.name());
        }
    }

    #[test]
    fn user_parameters_fix_what_they_name() {
        let p = crate::placers::by_name("tacg+gesr").unwrap();
        let (all, servings) = candidates(p.as_ref(), &Fixed::default());
        assert!(all.len() > 1 && servings.len() > 1);
        let user = Params::parse(["alpha=0.5"]).unwrap();
        let (fixed, _) = candidates(p.as_ref(), &Fixed { placer: user.clone(), ..Fixed::default() });
        assert!(fixed.len() < all.len());
        assert!(fixed.iter().all(|q| q.0["alpha"] == "0.5"));
        // Serving parameters a preset fixes collapse the serving variants.
        let serving = Params::parse(["theta=1.5", "free_first=true"]).unwrap();
        let (_, one) = candidates(p.as_ref(), &Fixed { serving, ..Fixed::default() });
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].params.0["theta"], "1.5");
    }

    #[test]
    fn folds_are_by_request_seeded_and_hold_every_family() {
        let t = demo_trace();
        let f = folds(&t, 3, 1).unwrap();
        assert_eq!(f.len(), 3);
        let reqs = protocol::requests(&t);
        assert_eq!(f.iter().map(HashSet::len).sum::<usize>(), reqs.len());
        let families: HashSet<_> = reqs.iter().map(|r| r.family.clone()).collect();
        for part in &f {
            let here: HashSet<_> = reqs.iter().filter(|r| part.contains(&r.name)).map(|r| r.family.clone()).collect();
            assert_eq!(here, families);
        }
        assert_eq!(folds(&t, 3, 1).unwrap(), f);
        assert_ne!(folds(&t, 3, 2).unwrap(), f);
    }

    #[test]
    fn too_few_requests_is_a_clear_error() {
        let t = demo_trace();
        let first = protocol::requests(&t)[0].name.clone();
        let one = t.filter(|x| x.request == first);
        let e = folds(&one, 4, 0).unwrap_err().to_string();
        assert!(e.contains("at least two requests"), "{e}");
    }

    fn scored(cut: &[f64], jain: &[f64]) -> Scored {
        Scored {
            setting: Setting { params: Params::default(), serving: Serving::default() },
            cut: cut.to_vec(),
            jain: jain.to_vec(),
        }
    }

    #[test]
    fn the_choice_needs_the_floor_on_every_fold() {
        let s = [
            scored(&[50.0, 50.0], &[0.995, 0.98]),
            scored(&[30.0, 30.0], &[0.995, 0.992]),
            scored(&[20.0, 40.0], &[0.999, 0.999]),
        ];
        assert_eq!(choose(&s, 0.99), (1, true));
        // Above anything reached: the most balanced.
        assert_eq!(choose(&s, 0.9999), (2, false));
    }
}
