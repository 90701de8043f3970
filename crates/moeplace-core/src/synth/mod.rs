//! Synthetic multi-task routing workloads that look like real ones, at any model
//! scale (docs/SYNTH.md).
//!
//! A [`SynthConfig`] describes a model shape, a number of requests (or tokens),
//! prefill and decode length distributions, a family mix and the knobs of the
//! generative model below; [`generate`] turns it and a seed into a stream of
//! [`TokenBatch`]es. Memory is bounded by the batch size; requests are generated in
//! parallel (rayon), each from its own seed derived from the stream seed, so the
//! output does not depend on the number of threads: same config and seed, same tokens.
//!
//! The generative model, per MoE layer and family (each property has a knob in
//! [`Knobs`]; the properties are those docs/METHODS.md reports
//! for TACG and activation-pattern micro-batching):
//! - skewed popularity: a Zipf law over a random ranking of the layer's experts
//!   (`skew`);
//! - family-specific experts: each family prefers its own random set of experts
//!   (`family_experts`, `family_boost`) and its popularity is jittered around the
//!   layer's (`family_noise`), so popularity shifts across families;
//! - generic experts: a few experts boosted in every family (`generic_experts`,
//!   `generic_boost`);
//! - co-activation clusters: each family partitions the layer's experts into
//!   clusters; after a token's first pick, each further pick is, with probability
//!   `cluster_affinity`, a member of the cluster of an expert already picked
//!   (`cluster_size`). Clusters differ by family;
//! - consecutive layers: each expert has a few family-specific successors at the
//!   next layer; with probability `layer_affinity` a pick is a successor of one of
//!   the token's picks at the previous layer (`layer_successors`);
//! - per-request variation: a request's popularity is the family's times a
//!   log-normal factor per (layer, expert) (`request_variation`), shared by the
//!   request's prefill and decode, which is why prefill predicts decode; decode adds
//!   its own log-normal factor (`decode_drift`), which sets how well.
//!
//! Picks of one token and layer are distinct (top-k without replacement): draws come
//! from an alias table (O(1)) and a repeated expert is drawn again.
//!
//! Structure and traffic have separate seeds: [`SynthConfig::structure_seed`] fixes
//! the "model" (rankings, preferred experts, clusters, successors; each family's part
//! keyed by its name, so dropping a family does not change the others), the seed of
//! [`generate`] fixes the requests. A calibration and a test stream of one model are
//! one config with two seeds; a distribution shift is the same config with another
//! family mix ([`SynthConfig::with_families`], [`SynthConfig::without_family`]).
//!
//! [`fit()`] sets everything from the statistics of a real trace: exact per-family
//! tables for the same shape, plus scale-free knobs so that
//! [`SynthConfig::retarget`] can carry the structure to another model scale.

mod fit;
mod model;
pub mod rng;

use std::fmt;
use std::sync::Arc;

pub use fit::{compare, fit, LayerComparison};
pub use model::{generate, SynthStream};

use crate::trace::{ModelShape, ShapeError, TokenBatch};

/// What is wrong with a synthetic workload's parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error("unknown preset {name:?}; known presets: {}", known.join(", "))]
    UnknownPreset { name: String, known: Vec<String> },
    #[error("the family mix is empty; give at least one family, e.g. code=1,math=1")]
    NoFamilies,
    #[error("family {name:?} has weight {weight}; weights must be finite and non-negative")]
    BadFamilyWeight { name: String, weight: f64 },
    #[error("family weights sum to {sum}; they must sum to a positive number")]
    WeightsNotPositive { sum: f64 },
    #[error("family {0:?} appears twice in the mix")]
    DuplicateFamily(String),
    #[error("family {name:?} is not in the fitted workload (it knows: {})", known.join(", "))]
    UnknownFamily { name: String, known: Vec<String> },
    #[error("bad family mix {0:?}: expected name=weight,name=weight,...")]
    BadMix(String),
    #[error("knob {name} = {value}: {why}")]
    BadKnob { name: &'static str, value: f64, why: &'static str },
    #[error("bad length distribution {0:?}: expected N, MIN..MAX or lognormal:MEDIAN:SIGMA")]
    BadLength(String),
    #[error("length distribution {dist:?}: {why}")]
    LengthOutOfRange { dist: String, why: String },
    #[error("{0}")]
    BadWorkload(String),
    #[error("cannot fit to these statistics: {0}")]
    BadStatistics(String),
}

/// Largest request length (tokens per phase) the generator produces.
pub const MAX_PHASE_TOKENS: u32 = 1 << 20;

/// A distribution of request lengths (tokens of one phase).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LengthDist {
    /// Always this many tokens (0 allowed: no tokens of this phase).
    Fixed(u32),
    /// Uniform between the bounds, inclusive.
    Uniform { min: u32, max: u32 },
    /// exp(N(ln median, sigma^2)), rounded, at least 1 and at most [`MAX_PHASE_TOKENS`].
    LogNormal { median: f64, sigma: f64 },
}

impl LengthDist {
    /// Parses `N`, `MIN..MAX` or `lognormal:MEDIAN:SIGMA`.
    pub fn parse(s: &str) -> Result<LengthDist, SynthError> {
        let bad = || SynthError::BadLength(s.to_string());
        // Read wide, so that a length past the limit is named as such, not as bad syntax.
        let count = |t: &str| -> Result<u32, SynthError> {
            let n: u64 = t.trim().parse().map_err(|_| bad())?;
            u32::try_from(n).ok().filter(|&n| n <= MAX_PHASE_TOKENS).ok_or_else(|| SynthError::LengthOutOfRange {
                dist: s.to_string(),
                why: format!("{n} tokens is above the limit of {MAX_PHASE_TOKENS} tokens per phase"),
            })
        };
        let s_trim = s.trim();
        let d = if let Some(rest) = s_trim.strip_prefix("lognormal:") {
            let (m, sg) = rest.split_once(':').ok_or_else(bad)?;
            LengthDist::LogNormal {
                median: m.trim().parse().map_err(|_| bad())?,
                sigma: sg.trim().parse().map_err(|_| bad())?,
            }
        } else if let Some((a, b)) = s_trim.split_once("..") {
            LengthDist::Uniform { min: count(a)?, max: count(b)? }
        } else {
            LengthDist::Fixed(count(s_trim)?)
        };
        d.validate()?;
        Ok(d)
    }

    /// Checks the bounds, naming the one broken.
    pub fn validate(&self) -> Result<(), SynthError> {
        let limit = MAX_PHASE_TOKENS;
        let why = match *self {
            LengthDist::Fixed(n) if n > limit => format!("{n} tokens is above the limit of {limit} tokens per phase"),
            LengthDist::Uniform { max, .. } if max > limit => {
                format!("{max} tokens is above the limit of {limit} tokens per phase")
            }
            LengthDist::Uniform { min, max } if min > max => format!("the minimum {min} is above the maximum {max}"),
            LengthDist::LogNormal { median, .. } if !(median.is_finite() && (1.0..=limit as f64).contains(&median)) => {
                format!("the median must be between 1 and {limit} tokens per phase")
            }
            LengthDist::LogNormal { sigma, .. } if !(sigma.is_finite() && (0.0..=4.0).contains(&sigma)) => {
                "sigma must be between 0 and 4".to_string()
            }
            _ => return Ok(()),
        };
        Err(SynthError::LengthOutOfRange { dist: self.to_string(), why })
    }

    /// The mean length (for sizing; the log-normal's mean before rounding/clamping).
    pub fn mean(&self) -> f64 {
        match *self {
            LengthDist::Fixed(n) => n as f64,
            LengthDist::Uniform { min, max } => (min as f64 + max as f64) / 2.0,
            LengthDist::LogNormal { median, sigma } => median * (sigma * sigma / 2.0).exp(),
        }
    }

    pub(crate) fn sample(&self, rng: &mut rng::Rng) -> u32 {
        match *self {
            LengthDist::Fixed(n) => n,
            LengthDist::Uniform { min, max } => min + rng.below((max - min) as usize + 1) as u32,
            LengthDist::LogNormal { median, sigma } => {
                let x = (median.ln() + sigma * rng.normal()).exp().round();
                x.clamp(1.0, MAX_PHASE_TOKENS as f64) as u32
            }
        }
    }
}

impl fmt::Display for LengthDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LengthDist::Fixed(n) => write!(f, "{n}"),
            LengthDist::Uniform { min, max } => write!(f, "{min}..{max}"),
            LengthDist::LogNormal { median, sigma } => write!(f, "lognormal:{median}:{sigma}"),
        }
    }
}

/// One family of the mix and its share of requests (weights are normalised).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FamilyMix {
    pub name: String,
    pub weight: f64,
}

/// Parses `name=weight,name=weight,...` (a bare `name` has weight 1).
pub fn parse_families(s: &str) -> Result<Vec<FamilyMix>, SynthError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once('=') {
            Some((n, w)) => (n.trim(), w.trim().parse::<f64>().map_err(|_| SynthError::BadMix(s.to_string()))?),
            None => (part, 1.0),
        };
        if name.is_empty() {
            return Err(SynthError::BadMix(s.to_string()));
        }
        out.push(FamilyMix { name: name.to_string(), weight });
    }
    if out.is_empty() {
        return Err(SynthError::NoFamilies);
    }
    Ok(out)
}

/// The scale-free knobs of the generative model (see the module documentation).
/// Fractions are of the layer's expert count, so a knob set means the same thing at
/// 8 or 256 experts.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Knobs {
    /// Zipf exponent of expert popularity within a layer (0 = uniform).
    pub skew: f64,
    /// Fraction of a layer's experts each family prefers (at least one expert).
    pub family_experts: f64,
    /// Popularity multiplier of a family's preferred experts (>= 1).
    pub family_boost: f64,
    /// Log-normal sigma of a family's popularity jitter around the layer's.
    pub family_noise: f64,
    /// Fraction of a layer's experts that are generic (boosted in every family).
    pub generic_experts: f64,
    /// Popularity multiplier of generic experts (>= 1).
    pub generic_boost: f64,
    /// Experts per co-activation cluster (1 = no clusters).
    pub cluster_size: usize,
    /// Probability that a pick after the first joins the cluster of an earlier pick.
    pub cluster_affinity: f64,
    /// Successors per expert at the next layer.
    pub layer_successors: usize,
    /// Probability that a pick follows a successor of the previous layer's picks.
    pub layer_affinity: f64,
    /// Log-normal sigma of a request's popularity around its family's.
    pub request_variation: f64,
    /// Log-normal sigma of a request's decode popularity around its prefill's.
    pub decode_drift: f64,
}

impl Default for Knobs {
    /// Levels chosen so that presets show each property at about the size the papers
    /// report (docs/SYNTH.md has the measured figures and the command).
    fn default() -> Self {
        Knobs {
            skew: 0.6,
            family_experts: 0.1,
            family_boost: 4.0,
            family_noise: 0.5,
            generic_experts: 0.04,
            generic_boost: 3.0,
            cluster_size: 4,
            cluster_affinity: 0.3,
            layer_successors: 2,
            layer_affinity: 0.15,
            request_variation: 0.6,
            decode_drift: 0.5,
        }
    }
}

impl Knobs {
    pub fn validate(&self) -> Result<(), SynthError> {
        let check = |name: &'static str, value: f64, ok: bool, why: &'static str| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(SynthError::BadKnob { name, value, why })
            }
        };
        check("skew", self.skew, (0.0..=8.0).contains(&self.skew), "must be between 0 and 8")?;
        check(
            "family_experts",
            self.family_experts,
            (0.0..=1.0).contains(&self.family_experts),
            "must be a fraction between 0 and 1",
        )?;
        check("family_boost", self.family_boost, (1.0..=1e6).contains(&self.family_boost), "must be at least 1")?;
        check("family_noise", self.family_noise, (0.0..=5.0).contains(&self.family_noise), "must be between 0 and 5")?;
        check(
            "generic_experts",
            self.generic_experts,
            (0.0..=1.0).contains(&self.generic_experts),
            "must be a fraction between 0 and 1",
        )?;
        check("generic_boost", self.generic_boost, (1.0..=1e6).contains(&self.generic_boost), "must be at least 1")?;
        check(
            "cluster_size",
            self.cluster_size as f64,
            (1..=LINK_SLOTS + 1).contains(&self.cluster_size),
            "must be between 1 and 17 (at most 16 partners per expert)",
        )?;
        check(
            "layer_successors",
            self.layer_successors as f64,
            (1..=LINK_SLOTS).contains(&self.layer_successors),
            "must be between 1 and 16",
        )?;
        check(
            "cluster_affinity",
            self.cluster_affinity,
            (0.0..1.0).contains(&self.cluster_affinity),
            "must be a probability below 1",
        )?;
        check(
            "layer_affinity",
            self.layer_affinity,
            (0.0..1.0).contains(&self.layer_affinity) && self.cluster_affinity + self.layer_affinity < 1.0,
            "must be a probability, and cluster_affinity + layer_affinity must stay below 1",
        )?;
        check(
            "request_variation",
            self.request_variation,
            (0.0..=5.0).contains(&self.request_variation),
            "must be between 0 and 5",
        )?;
        check("decode_drift", self.decode_drift, (0.0..=5.0).contains(&self.decode_drift), "must be between 0 and 5")?;
        Ok(())
    }
}

/// A named model shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub layers: usize,
    pub experts: usize,
    pub top_k: usize,
    /// `decode_drift` of the preset: set so the prefill/decode correlation is about
    /// the paper's figure where one is reported (docs/METHODS.md, "Activation-pattern
    /// micro-batching": DeepSeek-V3 0.55, Qwen3-235B 0.68, Llama 4 Maverick 0.82), the
    /// middle one otherwise.
    pub decode_drift: f64,
}

/// The built-in model shapes (MoE layers, routed experts per layer, top-k).
/// Decode drifts of the presets, measured with `moeplace-lab bench synth` (prefill/decode
/// correlation about 0.55 for DeepSeek-V3, 0.82 for Llama 4 Maverick and 0.68
/// otherwise, as in the paper).
const DD_V3: f64 = 1.5;
const DD_Q: f64 = 1.2;
const DD_MID: f64 = 1.2;
const DD_MAVERICK: f64 = 0.55;

pub const PRESETS: &[Preset] = &[
    Preset { name: "deepseek-v2-lite", layers: 26, experts: 64, top_k: 6, decode_drift: DD_MID },
    Preset { name: "deepseek-v3", layers: 58, experts: 256, top_k: 8, decode_drift: DD_V3 },
    Preset { name: "qwen3-30b-a3b", layers: 48, experts: 128, top_k: 8, decode_drift: DD_Q },
    Preset { name: "qwen3-235b-a22b", layers: 94, experts: 128, top_k: 8, decode_drift: DD_Q },
    Preset { name: "mixtral-8x7b", layers: 32, experts: 8, top_k: 2, decode_drift: DD_MID },
    Preset { name: "olmoe-1b-7b", layers: 16, experts: 64, top_k: 8, decode_drift: DD_MID },
    // Llama 4 Maverick: 48 decoder layers, every second one MoE (24), each with 128
    // routed experts picked top-1 beside an always-on shared expert, which is dense
    // and not placed. The top-1 shape, where one hot expert is a whole token's load.
    Preset { name: "llama-4-maverick", layers: 24, experts: 128, top_k: 1, decode_drift: DD_MAVERICK },
];

/// The default family mix: the four request families of the activation-pattern paper
/// (docs/METHODS.md).
pub fn default_families() -> Vec<FamilyMix> {
    ["code", "math", "chat", "general"].iter().map(|n| FamilyMix { name: n.to_string(), weight: 1.0 }).collect()
}

/// Exact per-family tables fitted to one real trace (used while the shape matches).
#[derive(Clone, Debug, PartialEq)]
pub struct FittedProfile {
    pub shape: ModelShape,
    pub families: Vec<FittedFamily>,
    /// Per layer.
    pub cluster_affinity: Vec<f64>,
    /// Per layer.
    pub layer_affinity: Vec<f64>,
}

/// One family's fitted tables, per layer.
#[derive(Clone, Debug, PartialEq)]
pub struct FittedFamily {
    pub name: String,
    pub layers: Vec<LayerTable>,
}

/// A family's popularity and links at one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerTable {
    /// Relative popularity of each expert (before request variation).
    pub weights: Vec<f64>,
    /// Co-activation partners of each expert (same layer).
    pub partners: Links,
    /// Successors of each expert at the next layer (empty at the last layer).
    pub successors: Links,
}

/// Slots per expert in a [`Links`] table: list weights are quantised to 1/16.
pub const LINK_SLOTS: usize = 16;

/// Weighted lists of expert ids, one list per expert, stored for O(1) draws: each
/// expert has [`LINK_SLOTS`] slots filled with its targets in proportion to their
/// weights (largest remainder rounding, at least one slot per target while there
/// is room; lists longer than the slots keep their heaviest targets).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Links {
    slots: Vec<u16>,
    nonempty: Vec<bool>,
}

impl Links {
    /// From per-expert `(target, weight)` lists (weights > 0; empty lists allowed).
    pub fn new(lists: &[Vec<(u16, f64)>]) -> Links {
        let mut l = Links { slots: Vec::with_capacity(lists.len() * LINK_SLOTS), nonempty: Vec::new() };
        for list in lists {
            let mut v: Vec<(u16, f64)> = list.iter().copied().filter(|x| x.1 > 0.0 && x.1.is_finite()).collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            v.truncate(LINK_SLOTS);
            let total: f64 = v.iter().map(|x| x.1).sum();
            if v.is_empty() || total <= 0.0 {
                l.slots.resize(l.slots.len() + LINK_SLOTS, 0);
                l.nonempty.push(false);
                continue;
            }
            // One slot each, the rest by largest remainder.
            let spare = (LINK_SLOTS - v.len()) as f64;
            let exact: Vec<f64> = v.iter().map(|x| 1.0 + spare * x.1 / total).collect();
            let mut count: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
            let mut left = LINK_SLOTS - count.iter().sum::<usize>();
            let mut order: Vec<usize> = (0..v.len()).collect();
            order.sort_by(|&a, &b| {
                (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b))
            });
            for &i in order.iter().cycle() {
                if left == 0 {
                    break;
                }
                count[i] += 1;
                left -= 1;
            }
            for (x, c) in v.iter().zip(&count) {
                l.slots.resize(l.slots.len() + *c, x.0);
            }
            l.nonempty.push(true);
        }
        l
    }

    /// The distinct targets of `e`'s list.
    pub fn targets(&self, e: usize) -> Vec<u16> {
        if !self.nonempty.get(e).copied().unwrap_or(false) {
            return Vec::new();
        }
        let mut v = self.slots[e * LINK_SLOTS..(e + 1) * LINK_SLOTS].to_vec();
        v.dedup();
        v
    }

    /// A draw from `e`'s list given 4 random bits in `r`.
    #[inline]
    pub(crate) fn pick(&self, e: usize, r: u32) -> Option<u16> {
        if *self.nonempty.get(e)? {
            Some(self.slots[e * LINK_SLOTS + (r as usize & (LINK_SLOTS - 1))])
        } else {
            None
        }
    }
}

/// Everything that defines a synthetic workload except the traffic seed.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    pub shape: ModelShape,
    /// Requests to generate (ignored when `tokens` is set).
    pub requests: usize,
    /// Generate exactly this many tokens (the last request is cut short).
    pub tokens: Option<u64>,
    pub prefill_len: LengthDist,
    pub decode_len: LengthDist,
    pub families: Vec<FamilyMix>,
    pub knobs: Knobs,
    /// Seed of the model's structure (rankings, preferred experts, clusters).
    pub structure_seed: u64,
    /// Tokens per output batch (approximately: requests are never split).
    pub batch_tokens: usize,
    /// Exact tables from [`fit()`]; used while `shape` equals the fitted shape.
    pub profile: Option<Arc<FittedProfile>>,
    /// Request ids are `<request_prefix><index>` (default `req-`): traces to be
    /// profiled or merged together need prefixes of their own, since statistics add
    /// up the counts of requests that share an id.
    pub request_prefix: String,
}

impl SynthConfig {
    /// A workload for a model shape with the default knobs, four families and
    /// 1000 requests (prefill ~ lognormal median 512, decode ~ lognormal median 256).
    pub fn for_shape(layers: usize, experts: usize, top_k: usize) -> Result<SynthConfig, SynthError> {
        let shape = ModelShape::new(layers, experts, top_k)?;
        Ok(SynthConfig {
            shape,
            requests: 1000,
            tokens: None,
            prefill_len: LengthDist::LogNormal { median: 512.0, sigma: 0.6 },
            decode_len: LengthDist::LogNormal { median: 256.0, sigma: 0.6 },
            families: default_families(),
            knobs: Knobs::default(),
            structure_seed: 0,
            batch_tokens: 16384,
            profile: None,
            request_prefix: "req-".to_string(),
        })
    }

    /// A built-in model shape by name (case-insensitive; see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<SynthConfig, SynthError> {
        let p = PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name.trim())).ok_or_else(|| {
            SynthError::UnknownPreset {
                name: name.to_string(),
                known: PRESETS.iter().map(|p| p.name.to_string()).collect(),
            }
        })?;
        let mut c = Self::for_shape(p.layers, p.experts, p.top_k)?;
        c.knobs.decode_drift = p.decode_drift;
        Ok(c)
    }

    /// A few thousand tokens, 4 families, 8 layers of 32 experts, top-4: a built-in
    /// workload for examples and tests that runs in milliseconds.
    pub fn small_demo() -> SynthConfig {
        let mut c = Self::for_shape(8, 32, 4).expect("a valid shape");
        c.requests = 64;
        c.prefill_len = LengthDist::Uniform { min: 24, max: 72 };
        c.decode_len = LengthDist::Uniform { min: 8, max: 40 };
        c.batch_tokens = 1024;
        c
    }

    /// Checks every parameter; [`generate`] calls it.
    pub fn validate(&self) -> Result<(), SynthError> {
        self.shape.validate()?;
        self.knobs.validate()?;
        self.prefill_len.validate()?;
        self.decode_len.validate()?;
        let always_zero = |d: &LengthDist| matches!(d, LengthDist::Fixed(0) | LengthDist::Uniform { max: 0, .. });
        if always_zero(&self.prefill_len) && always_zero(&self.decode_len) {
            return Err(SynthError::BadWorkload("prefill and decode lengths are both always 0: no tokens".into()));
        }
        // An empty trace is refused by every reader: refuse it before writing one.
        match self.tokens {
            Some(0) => return Err(SynthError::BadWorkload("0 tokens asked for: the workload would be empty".into())),
            None if self.requests == 0 => {
                return Err(SynthError::BadWorkload("0 requests asked for: the workload would be empty".into()))
            }
            _ => {}
        }
        if self.families.is_empty() {
            return Err(SynthError::NoFamilies);
        }
        let mut sum = 0.0;
        for (i, f) in self.families.iter().enumerate() {
            if !f.weight.is_finite() || f.weight < 0.0 {
                return Err(SynthError::BadFamilyWeight { name: f.name.clone(), weight: f.weight });
            }
            if self.families[..i].iter().any(|g| g.name == f.name) {
                return Err(SynthError::DuplicateFamily(f.name.clone()));
            }
            sum += f.weight;
        }
        if sum.is_nan() || sum <= 0.0 || !sum.is_finite() {
            return Err(SynthError::WeightsNotPositive { sum });
        }
        if self.batch_tokens == 0 {
            return Err(SynthError::BadKnob { name: "batch_tokens", value: 0.0, why: "must be at least 1" });
        }
        if let Some(p) = self.active_profile() {
            for f in &self.families {
                if !p.families.iter().any(|g| g.name == f.name) {
                    return Err(SynthError::UnknownFamily {
                        name: f.name.clone(),
                        known: p.families.iter().map(|g| g.name.clone()).collect(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The fitted tables if they apply to this shape.
    pub fn active_profile(&self) -> Option<&FittedProfile> {
        self.profile.as_deref().filter(|p| p.shape == self.shape)
    }

    /// The same model with another family mix (distribution shift). Families may get
    /// weight 0 (absent); with fitted tables, names must be fitted families.
    pub fn with_families(&self, families: Vec<FamilyMix>) -> Result<SynthConfig, SynthError> {
        let c = SynthConfig { families, ..self.clone() };
        c.validate()?;
        Ok(c)
    }

    /// The same model and mix with one family absent.
    pub fn without_family(&self, name: &str) -> Result<SynthConfig, SynthError> {
        if !self.families.iter().any(|f| f.name == name) {
            return Err(SynthError::UnknownFamily {
                name: name.to_string(),
                known: self.families.iter().map(|f| f.name.clone()).collect(),
            });
        }
        let mix = self
            .families
            .iter()
            .map(|f| FamilyMix { name: f.name.clone(), weight: if f.name == name { 0.0 } else { f.weight } })
            .collect();
        self.with_families(mix)
    }

    /// The same knobs, families and lengths for another model shape (fitted exact
    /// tables do not carry over; the knobs fitted with them do).
    pub fn retarget(&self, shape: ModelShape) -> Result<SynthConfig, SynthError> {
        shape.validate()?;
        let c = SynthConfig { shape, profile: None, ..self.clone() };
        c.validate()?;
        Ok(c)
    }

    /// Expected tokens (from the mean lengths), for progress and sizing.
    pub fn expected_tokens(&self) -> u64 {
        match self.tokens {
            Some(t) => t,
            None => (self.requests as f64 * (self.prefill_len.mean() + self.decode_len.mean())).round() as u64,
        }
    }
}

/// Generates the whole workload into memory (handy for small configs and tests).
pub fn generate_all(config: &SynthConfig, seed: u64) -> Result<Vec<TokenBatch>, SynthError> {
    Ok(generate(config, seed)?.collect())
}

#[cfg(test)]
mod tests;
