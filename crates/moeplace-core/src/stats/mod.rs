//! Mergeable routing statistics (docs/DESIGN.md, "Statistics").
//!
//! Everything here is a sum of per-token counts, so statistics of shards added with
//! [`Statistics::merge`] equal the statistics of the whole trace, exactly. That is
//! what lets a cluster engine profile shards and a laptop add them up.
//!
//! Per group (family, phase) and MoE layer:
//! - `tokens`: tokens seen (every token passes every layer, so one count per group),
//! - `load[l][e]`: picks of expert e,
//! - `coact[l][pair]`: tokens whose top-k holds both experts of an unordered pair,
//! - `transitions[l][a][b]`: picks of a at layer l and b at layer l+1 by one token
//!   (all k x k pairs), for l < layers - 1.
//!
//! Per request and phase: the activation vector, tokens per (layer, expert).
//!
//! Plus a bounded sample of whole token paths ([`TokenSample`]), mergeable the same
//! exact way (a bottom-k sample by token hash).

mod count;
pub mod memory;
mod mix;
mod sample;

use std::collections::BTreeMap;

pub use count::StatisticsBuilder;
pub use mix::{parse_family_shares, MixError};
pub use sample::{token_hash, SampledToken, TokenSample, DEFAULT_TOKEN_SAMPLE};

use crate::model::LayerMap;
use crate::trace::{ModelShape, Phase, ShapeError, TokenBatch};

/// Which tokens a block of counts covers. `None` means the trace did not say.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct GroupKey {
    pub family: Option<String>,
    pub phase: Option<Phase>,
}

/// Index of the unordered pair (a, b), a != b, in a layer's upper-triangle array.
#[inline]
pub fn pair_index(a: usize, b: usize, experts: usize) -> usize {
    let (a, b) = if a < b { (a, b) } else { (b, a) };
    a * (2 * experts - a - 1) / 2 + (b - a - 1)
}

/// Number of unordered expert pairs in one layer.
pub fn pair_count(experts: usize) -> usize {
    experts * (experts - 1) / 2
}

/// Counts of one (family, phase) group over all layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStats {
    pub tokens: u64,
    /// `[layers * experts]`.
    pub load: Vec<u64>,
    /// `[layers * pair_count(experts)]`; empty when the statistics carry loads only.
    pub coact: Vec<u64>,
    /// `[layers * experts * experts]`, the last layer's block all zero; empty when
    /// the statistics carry loads only, or were read without them ([`Parts`]).
    pub transitions: Vec<u64>,
}

impl GroupStats {
    fn zeros(shape: ModelShape, pairs: bool, transitions: bool) -> Self {
        let (l, e) = (shape.layers, shape.experts);
        GroupStats {
            tokens: 0,
            load: written_zeros(l * e),
            coact: if pairs { written_zeros(l * pair_count(e)) } else { Vec::new() },
            transitions: if pairs && transitions { written_zeros(l * e * e) } else { Vec::new() },
        }
    }

    fn add(&mut self, other: &GroupStats) {
        self.tokens += other.tokens;
        add_into(&mut self.load, &other.load);
        add_into(&mut self.coact, &other.coact);
        add_into(&mut self.transitions, &other.transitions);
    }
}

/// Zeroed counters, written rather than allocated zeroed: a fresh zeroed allocation
/// maps a shared copy-on-write page, so the first `+=` on each page costs a fault
/// plus a TLB flush on every core; writing up front costs one plain fault per page.
///
/// Large tables (a DeepSeek-V3 group's counters are tens of MB) also ask the kernel
/// for transparent huge pages: 512 times fewer faults. Without this, faulting in the
/// tables cost as much as counting 100k tokens (`cargo bench -p moeplace-core
/// --bench statistics`, 25k vs 100k tokens).
pub(crate) fn written_zeros<T: Copy + Default>(n: usize) -> Vec<T> {
    let mut v = huge_vec(n);
    v.resize(n, T::default());
    v
}

/// An empty vector with room for `n`, its large part marked for huge pages (see
/// [`written_zeros`]); fill it by writing.
pub(crate) fn huge_vec<T>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    advise_huge_pages(v.as_mut_ptr() as *mut u8, n * std::mem::size_of::<T>());
    v
}

/// Marks the 2 MB-aligned part of `[ptr, ptr + len)` for transparent huge pages; a
/// hint only (ignored where the kernel does not support it).
#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: the range lies inside an allocation this process owns; MADV_HUGEPAGE
        // changes how pages are backed, never their contents or validity.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _len: usize) {}

/// Every token picks k distinct experts per layer, so counted statistics sum to fixed
/// multiples of their tokens at every layer: loads to k, pairs to k(k-1)/2,
/// transitions to k^2, a request's counts to k. Loads-only statistics (engine counts)
/// have no exact token count: engines may drop or pad tokens at some layers, so their
/// loads must sum to at most tokens x k at every layer. Catches hand-edited or
/// mixed-up files whose counts no trace could give.
fn check_sums(
    shape: ModelShape,
    pairs: bool,
    transitions: bool,
    groups: &BTreeMap<GroupKey, GroupStats>,
    requests: &BTreeMap<String, RequestActivation>,
) -> Result<(), ShapeError> {
    let (l, e, k) = (shape.layers, shape.experts, shape.top_k as u128);
    let sum = |v: &[u64]| v.iter().map(|&x| u128::from(x)).sum::<u128>();
    if !pairs {
        for g in groups.values() {
            for layer in 0..l {
                let found = sum(&g.load[layer * e..(layer + 1) * e]);
                if found > u128::from(g.tokens) * k {
                    return Err(ShapeError::BadShape(format!(
                        "loads-only statistics, layer {layer}: loads sum to {found}, more than {} tokens of top-{k} \
                         give ({})",
                        g.tokens,
                        u128::from(g.tokens) * k
                    )));
                }
            }
        }
        return Ok(());
    }
    let pc = pair_count(e);
    let none = || "(none)".to_string();
    for (key, g) in groups {
        let t = u128::from(g.tokens);
        let family = key.family.as_ref().map_or_else(none, |f| format!("{f:?}"));
        let phase = key.phase.map_or_else(none, |p| p.to_string());
        for layer in 0..l {
            let tables = [
                ("expert loads", sum(&g.load[layer * e..(layer + 1) * e]), t * k),
                ("co-activation counts", sum(&g.coact[layer * pc..(layer + 1) * pc]), t * k * (k - 1) / 2),
            ];
            let transitions = (transitions && layer + 1 < l)
                .then(|| ("transition counts", sum(&g.transitions[layer * e * e..(layer + 1) * e * e]), t * k * k));
            for (what, found, expected) in tables.into_iter().chain(transitions) {
                if found != expected {
                    return Err(ShapeError::BadShape(format!(
                        "group of family {family}, phase {phase}, layer {layer}: {what} sum to {found}, but {} \
                         tokens of top-{k} give {expected}",
                        g.tokens
                    )));
                }
            }
        }
    }
    for (id, r) in requests {
        for (phase, v) in &r.by_phase {
            let t = u128::from(r.tokens.get(phase).copied().unwrap_or(0));
            for layer in 0..l {
                let found: u128 = v[layer * e..(layer + 1) * e].iter().map(|&x| u128::from(x)).sum();
                if found != t * k {
                    return Err(ShapeError::BadShape(format!(
                        "request {id:?}, phase {}, layer {layer}: counts sum to {found}, but {t} tokens of top-{k} \
                         give {}",
                        phase.map_or_else(none, |p| p.to_string()),
                        t * k
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Tokens a statistics file may hold: each counter (an expert's load, a pair, a
/// transition) counts at most one per token and layer, so no counter wraps while the
/// total of tokens fits in 64 bits (a request's 32-bit counts, while its tokens fit
/// in 32). Checked on reading and before merging.
const MAX_TOKENS: u64 = u64::MAX;

/// Requests' tokens belong to the groups of their family and phase: per (family,
/// phase) they sum to at most that group's tokens (tokens without a request id count
/// in the group only). Totals stay within [`MAX_TOKENS`] and a request's tokens
/// within its 32-bit counters. Catches statistics files mixed up by hand.
fn check_totals(
    groups: &BTreeMap<GroupKey, GroupStats>,
    requests: &BTreeMap<String, RequestActivation>,
) -> Result<(), ShapeError> {
    let total: u128 = groups.values().map(|g| u128::from(g.tokens)).sum();
    if total > u128::from(MAX_TOKENS) {
        return Err(ShapeError::BadShape(format!("{total} tokens in all: more than the 64-bit counters hold")));
    }
    let mut by_group: BTreeMap<GroupKey, u128> = BTreeMap::new();
    for (id, r) in requests {
        for (phase, &t) in &r.tokens {
            if t > u64::from(u32::MAX) {
                return Err(ShapeError::BadShape(format!(
                    "request {id:?}: {t} tokens, more than its 32-bit activation counts hold"
                )));
            }
            let key = GroupKey { family: r.family.clone(), phase: *phase };
            *by_group.entry(key).or_insert(0) += u128::from(t);
        }
    }
    for (key, t) in by_group {
        let in_group = groups.get(&key).map_or(0, |g| g.tokens);
        if t > u128::from(in_group) {
            return Err(ShapeError::BadShape(format!(
                "requests of family {}, phase {} hold {t} tokens, but that group has {in_group}",
                key.family.as_ref().map_or_else(|| "(none)".to_string(), |f| format!("{f:?}")),
                key.phase.map_or_else(|| "(none)".to_string(), |p| p.to_string()),
            )));
        }
    }
    Ok(())
}

fn add_into(a: &mut [u64], b: &[u64]) {
    debug_assert_eq!(a.len(), b.len());
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

/// A request's activation vectors: tokens per (layer, expert), one per phase seen.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RequestActivation {
    pub family: Option<String>,
    /// Dense `[layers * experts]` counts by phase (`None`: tokens without a phase).
    pub by_phase: BTreeMap<Option<Phase>, Vec<u32>>,
    /// Tokens by phase.
    pub tokens: BTreeMap<Option<Phase>, u64>,
}

/// Why two statistics cannot be added.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error("one input carries co-activation and transition counts and another only expert loads; profile both from traces to merge them")]
    PairsMismatch,
    #[error("one input carries per-request activation vectors and another does not; profile both the same way (with or without --no-request-vectors)")]
    RequestsMismatch,
    #[error("request {request:?} has family {a:?} in one input and {b:?} in another")]
    FamilyConflict { request: String, a: Option<String>, b: Option<String> },
    #[error("the inputs put their MoE layers at different decoder layers (different models?)")]
    LayersMismatch,
    #[error("together the inputs hold more tokens than the statistics' counters can count")]
    TooManyTokens,
    #[error("statistics read in part (for one placer) cannot be merged; read them whole")]
    Partial,
}

/// Which parts of statistics to read from a file. A placer needs only some
/// ([`crate::placers::Placer::needs`]): load balancers read expert loads alone, and no
/// placer reads transitions. Expert loads and group tokens are always read; statistics
/// read in part cannot be merged or written (they would lose what was skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// Co-activation pair counts.
    pub pairs: bool,
    /// Layer-to-layer transition counts (with `pairs`).
    pub transitions: bool,
    /// Per-request activation vectors.
    pub request_vectors: bool,
    /// The token-path sample.
    pub token_sample: bool,
}

impl Parts {
    /// Everything a file holds.
    pub const ALL: Parts = Parts { pairs: true, transitions: true, request_vectors: true, token_sample: true };
    /// Expert loads (and group tokens) only.
    pub const LOADS: Parts = Parts { pairs: false, transitions: false, request_vectors: false, token_sample: false };

    /// These parts and those of `other`.
    pub fn union(self, other: Parts) -> Parts {
        Parts {
            pairs: self.pairs || other.pairs,
            transitions: self.transitions || other.transitions,
            request_vectors: self.request_vectors || other.request_vectors,
            token_sample: self.token_sample || other.token_sample,
        }
    }
}

/// What to collect while profiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileOptions {
    /// Keep one activation vector per request and phase. Memory then grows with the
    /// number of requests (layers x experts counts each); turn off for huge traces.
    pub request_vectors: bool,
    /// Tokens of the path sample ([`TokenSample`]); 0 keeps none.
    pub token_sample: usize,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions { request_vectors: true, token_sample: DEFAULT_TOKEN_SAMPLE }
    }
}

/// Mergeable statistics of a trace. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statistics {
    shape: ModelShape,
    /// Whether co-activation and transition counts are present (false for counts
    /// read from engine dumps, which only record loads).
    pairs: bool,
    /// Whether transition counts are held (with `pairs`; false when read without).
    transitions: bool,
    /// Read in part ([`Parts`]): some counts the file held were skipped.
    partial: bool,
    /// Whether per-request vectors were collected.
    request_vectors: bool,
    groups: BTreeMap<GroupKey, GroupStats>,
    requests: BTreeMap<String, RequestActivation>,
    sample: TokenSample,
    /// The decoder-layer index of each MoE layer, when the input or a model told.
    layer_map: Option<LayerMap>,
    /// Request vectors held (one per request and phase), for the memory check.
    vectors: usize,
}

impl Statistics {
    /// Empty statistics for traces of `shape`.
    pub fn new(shape: ModelShape, options: ProfileOptions) -> Self {
        Statistics {
            shape,
            pairs: true,
            transitions: true,
            partial: false,
            request_vectors: options.request_vectors,
            groups: BTreeMap::new(),
            requests: BTreeMap::new(),
            sample: TokenSample::new(options.token_sample),
            layer_map: None,
            vectors: 0,
        }
    }

    /// Statistics that carry expert loads only (engine dumps): one group, no
    /// co-activation, transitions or request vectors. `load` is `[layers * experts]`;
    /// `tokens` is the number of tokens if known, else the largest layer's loads / k,
    /// rounded up: engines may drop or pad tokens at some layers, and no layer can
    /// hold more picks than tokens x k. Checked like a file's counts.
    pub fn from_loads(shape: ModelShape, load: Vec<u64>, tokens: Option<u64>) -> Result<Self, ShapeError> {
        if load.len() != shape.layers * shape.experts {
            return Err(ShapeError::BadShape(format!(
                "expected {} load counts ({} layers x {} experts), found {}",
                shape.layers * shape.experts,
                shape.layers,
                shape.experts,
                load.len()
            )));
        }
        let most_picks = load
            .chunks(shape.experts.max(1))
            .map(|l| l.iter().fold(0u64, |a, &x| a.saturating_add(x)))
            .max()
            .unwrap_or(0);
        let tokens = tokens.unwrap_or(most_picks.div_ceil(shape.top_k as u64));
        let mut groups = BTreeMap::new();
        groups.insert(
            GroupKey { family: None, phase: None },
            GroupStats { tokens, load, coact: Vec::new(), transitions: Vec::new() },
        );
        check_sums(shape, false, false, &groups, &BTreeMap::new())?;
        Ok(Statistics {
            shape,
            pairs: false,
            transitions: false,
            partial: false,
            request_vectors: false,
            groups,
            requests: BTreeMap::new(),
            sample: TokenSample::new(0),
            layer_map: None,
            vectors: 0,
        })
    }

    /// Rebuilds statistics from their parts (used by the statistics file reader).
    /// Checks every array length against the shape.
    pub fn from_parts(
        shape: ModelShape,
        pairs: bool,
        request_vectors: bool,
        groups: BTreeMap<GroupKey, GroupStats>,
        requests: BTreeMap<String, RequestActivation>,
    ) -> Result<Self, ShapeError> {
        Self::from_some_parts(shape, pairs, request_vectors, groups, requests, Parts::ALL)
    }

    /// [`Statistics::from_parts`] for a reader that decoded only `read` of what the
    /// file holds (`pairs` and `request_vectors` say what the file holds): skipped
    /// tables are empty, skipped requests absent, and the statistics are marked as
    /// read in part unless nothing the file holds was skipped.
    pub fn from_some_parts(
        shape: ModelShape,
        pairs: bool,
        request_vectors: bool,
        groups: BTreeMap<GroupKey, GroupStats>,
        requests: BTreeMap<String, RequestActivation>,
        read: Parts,
    ) -> Result<Self, ShapeError> {
        shape.validate()?;
        let partial = (pairs && !(read.pairs && read.transitions)) || (request_vectors && !read.request_vectors);
        let request_vectors = request_vectors && read.request_vectors;
        let pairs = pairs && read.pairs;
        let transitions = pairs && read.transitions;
        let vectors = requests.values().map(|r| r.by_phase.len()).sum();
        let (l, e) = (shape.layers, shape.experts);
        for (key, g) in &groups {
            let bad = g.load.len() != l * e
                || (pairs && g.coact.len() != l * pair_count(e))
                || (transitions && g.transitions.len() != l * e * e)
                || (!pairs && !g.coact.is_empty())
                || (!transitions && !g.transitions.is_empty());
            if bad {
                return Err(ShapeError::BadShape(format!("group {key:?}: count arrays do not match {shape}")));
            }
        }
        for (id, r) in &requests {
            if r.by_phase.values().any(|v| v.len() != l * e) {
                return Err(ShapeError::BadShape(format!("request {id:?}: activation vector does not match {shape}")));
            }
        }
        check_sums(shape, pairs, transitions, &groups, &requests)?;
        check_totals(&groups, &requests)?;
        Ok(Statistics {
            shape,
            pairs,
            transitions,
            partial,
            request_vectors,
            groups,
            requests,
            sample: TokenSample::new(0),
            layer_map: None,
            vectors,
        })
    }

    /// These statistics with `sample` as their token-path sample (the statistics file
    /// reader). Checks every path's length and expert ids against the shape, and puts
    /// each layer's picks in increasing order (files written before the sample kept them so).
    pub fn with_sample(mut self, mut sample: TokenSample) -> Result<Self, ShapeError> {
        sample.sort_picks(self.shape.top_k);
        for t in sample.tokens() {
            // Count, range and no expert twice in a layer's top-k, as for trace tokens.
            crate::trace::check_token(self.shape, &t.picks, None)
                .map_err(|e| ShapeError::BadShape(format!("sampled token {:#x}: {e}", t.hash)))?;
        }
        self.sample = sample;
        Ok(self)
    }

    /// These statistics with `map` as the decoder-layer index of their MoE layers
    /// (`None`: unknown). The map must have one entry per MoE layer of the shape.
    pub fn with_layer_map(mut self, map: Option<LayerMap>) -> Result<Self, ShapeError> {
        if let Some(m) = &map {
            if m.len() != self.shape.layers {
                return Err(ShapeError::BadShape(format!(
                    "the layer map has {} MoE layers but the statistics {}",
                    m.len(),
                    self.shape.layers
                )));
            }
        }
        self.layer_map = map;
        Ok(self)
    }

    /// The decoder-layer index of each MoE layer, when known.
    pub fn layer_map(&self) -> Option<&LayerMap> {
        self.layer_map.as_ref()
    }

    /// The sample of whole token paths (empty when profiled without one).
    pub fn token_sample(&self) -> &TokenSample {
        &self.sample
    }

    pub fn shape(&self) -> ModelShape {
        self.shape
    }

    pub fn has_pairs(&self) -> bool {
        self.pairs
    }

    /// Whether layer-to-layer transition counts are held (with pairs, unless read
    /// without them).
    pub fn has_transitions(&self) -> bool {
        self.transitions
    }

    /// Whether these statistics were read in part ([`Parts`]): they are for
    /// placing, and are neither merged nor written.
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// These statistics marked as read in part: a reader that skipped the token
    /// sample says so.
    pub fn into_partial(mut self) -> Self {
        self.partial = true;
        self
    }

    pub fn has_request_vectors(&self) -> bool {
        self.request_vectors
    }

    pub fn groups(&self) -> &BTreeMap<GroupKey, GroupStats> {
        &self.groups
    }

    pub fn requests(&self) -> &BTreeMap<String, RequestActivation> {
        &self.requests
    }

    /// Total tokens over all groups.
    pub fn tokens(&self) -> u64 {
        self.groups.values().map(|g| g.tokens).sum()
    }

    /// Families seen, sorted (tokens without a family are not listed).
    pub fn families(&self) -> Vec<String> {
        let mut f: Vec<String> = self.groups.keys().filter_map(|k| k.family.clone()).collect();
        f.dedup();
        f
    }

    /// Tokens per family (tokens without a family under `None`).
    pub fn family_tokens(&self) -> BTreeMap<Option<String>, u64> {
        let mut out = BTreeMap::new();
        for (k, g) in &self.groups {
            *out.entry(k.family.clone()).or_insert(0) += g.tokens;
        }
        out
    }

    /// Sum of the groups selected by `keep`, as one group.
    pub fn pooled(&self, mut keep: impl FnMut(&GroupKey) -> bool) -> GroupStats {
        let mut acc = GroupStats::zeros(self.shape, self.pairs, self.transitions);
        for (k, g) in &self.groups {
            if keep(k) {
                acc.add(g);
            }
        }
        acc
    }

    /// `groups` groups of `per_group` bytes are held besides the vectors (see
    /// [`memory`]).
    fn add_request_vectors(&mut self, batch: &TokenBatch, groups: usize, per_group: u64) -> Result<(), ShapeError> {
        let (l, e, k) = (self.shape.layers, self.shape.experts, self.shape.top_k);
        let shape = self.shape;
        let ids = batch.expert_ids();
        // The family is part of the key: a request whose family changes between two
        // consecutive tokens must be caught, not counted under its first family.
        let mut last = None;
        let mut current: Option<&mut Vec<u32>> = None;
        let mut current_tokens: Option<&mut u64> = None;
        // Tokens of one request usually come together: look the request up only when
        // it changes.
        for t in 0..batch.len() {
            let r = batch.request_indices()[t];
            let p = batch.phases()[t];
            let f = batch.family_indices()[t];
            if last != Some((r, p, f)) {
                let name = &batch.request_names()[r as usize];
                let family = f.map(|f| batch.family_names()[f as usize].clone());
                let entry = self
                    .requests
                    .entry(name.clone())
                    .or_insert_with(|| RequestActivation { family: family.clone(), ..Default::default() });
                if entry.family != family {
                    let show = |f: &Option<String>| f.as_ref().map_or("(none)".to_string(), |f| format!("{f:?}"));
                    return Err(ShapeError::BadShape(format!(
                        "request {name:?} has tokens of family {} and of family {}",
                        show(&entry.family),
                        show(&family)
                    )));
                }
                if !entry.by_phase.contains_key(&p) {
                    memory::check(shape, groups, per_group, self.vectors + 1)?;
                    self.vectors += 1;
                }
                current = Some(entry.by_phase.entry(p).or_insert_with(|| written_zeros(l * e)));
                current_tokens = Some(entry.tokens.entry(p).or_insert(0));
                last = Some((r, p, f));
            }
            let v = current.as_deref_mut().expect("set above");
            *current_tokens.as_deref_mut().expect("set above") += 1;
            let row = &ids[t * l * k..(t + 1) * l * k];
            for (layer, picks) in row.chunks_exact(k).enumerate() {
                let base = layer * e;
                for &x in picks {
                    v[base + x as usize] += 1;
                }
            }
        }
        Ok(())
    }

    /// Adds `other` into `self`: the statistics of both traces together.
    pub fn merge(&mut self, other: &Statistics) -> Result<(), MergeError> {
        if other.shape != self.shape {
            return Err(ShapeError::ShapeMismatch { expected: self.shape, found: other.shape }.into());
        }
        if let (Some(a), Some(b)) = (&self.layer_map, &other.layer_map) {
            if !a.same_layers(b) {
                return Err(MergeError::LayersMismatch);
            }
        }
        if self.partial || other.partial {
            return Err(MergeError::Partial);
        }
        if other.pairs != self.pairs {
            return Err(MergeError::PairsMismatch);
        }
        if other.request_vectors != self.request_vectors {
            return Err(MergeError::RequestsMismatch);
        }
        if u128::from(self.tokens()) + u128::from(other.tokens()) > u128::from(MAX_TOKENS) {
            return Err(MergeError::TooManyTokens);
        }
        for (id, r) in &other.requests {
            if let Some(mine) = self.requests.get(id) {
                for (phase, &t) in &r.tokens {
                    if mine.tokens.get(phase).copied().unwrap_or(0) + t > u64::from(u32::MAX) {
                        return Err(MergeError::TooManyTokens);
                    }
                }
                if mine.family != r.family {
                    return Err(MergeError::FamilyConflict {
                        request: id.clone(),
                        a: mine.family.clone(),
                        b: r.family.clone(),
                    });
                }
            }
        }
        let new_groups = other.groups.keys().filter(|k| !self.groups.contains_key(*k)).count();
        let new_vectors: usize = other
            .requests
            .iter()
            .map(|(id, r)| match self.requests.get(id) {
                Some(mine) => r.by_phase.keys().filter(|p| !mine.by_phase.contains_key(*p)).count(),
                None => r.by_phase.len(),
            })
            .sum();
        memory::check(
            self.shape,
            self.groups.len() + new_groups,
            memory::group_bytes(self.shape, self.pairs),
            self.vectors + new_vectors,
        )?;
        self.vectors += new_vectors;
        for (k, g) in &other.groups {
            match self.groups.get_mut(k) {
                Some(mine) => mine.add(g),
                None => {
                    self.groups.insert(k.clone(), g.clone());
                }
            }
        }
        self.sample.merge(&other.sample);
        if self.layer_map.is_none() {
            self.layer_map = other.layer_map.clone();
        }
        for (id, r) in &other.requests {
            let mine = self
                .requests
                .entry(id.clone())
                .or_insert_with(|| RequestActivation { family: r.family.clone(), ..Default::default() });
            for (p, v) in &r.by_phase {
                let dst = mine.by_phase.entry(*p).or_insert_with(|| vec![0; v.len()]);
                dst.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
            for (p, n) in &r.tokens {
                *mine.tokens.entry(*p).or_insert(0) += n;
            }
        }
        Ok(())
    }

    /// Expert loads `[layers][experts]` over the groups selected by `keep`, as floats
    /// (the input placers take).
    pub fn loads(&self, mut keep: impl FnMut(&GroupKey) -> bool) -> ExpertLoads {
        // Loads alone: pooling the pair tables too would cost far more than the loads.
        let mut load = vec![0u64; self.shape.layers * self.shape.experts];
        for (k, g) in &self.groups {
            if keep(k) {
                add_into(&mut load, &g.load);
            }
        }
        ExpertLoads::new(self.shape.layers, self.shape.experts, vec![load.iter().map(|&x| x as f64).collect()])
            .expect("pooled loads match the shape")
    }
}

/// Expert loads per layer, optionally over several steps: `steps[s][layer * experts + e]`.
/// The input of load balancers (EPLB takes one step; time-aware balancing several).
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertLoads {
    pub layers: usize,
    pub experts: usize,
    pub steps: Vec<Vec<f64>>,
}

impl ExpertLoads {
    pub fn new(layers: usize, experts: usize, steps: Vec<Vec<f64>>) -> Result<Self, ShapeError> {
        if layers == 0 || experts == 0 || steps.is_empty() {
            return Err(ShapeError::BadShape("expert loads need at least one step, layer and expert".into()));
        }
        for (s, v) in steps.iter().enumerate() {
            if v.len() != layers * experts {
                return Err(ShapeError::BadShape(format!(
                    "step {s}: expected {} loads ({layers} layers x {experts} experts), found {}",
                    layers * experts,
                    v.len()
                )));
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite() || **x < 0.0) {
                return Err(ShapeError::BadShape(format!("step {s}: load {x} is not a finite non-negative number")));
            }
        }
        Ok(ExpertLoads { layers, experts, steps })
    }

    /// Picks of every (layer, expert) in `trace`, as one step.
    pub fn from_trace(trace: &crate::trace::Trace) -> ExpertLoads {
        let (layers, experts, k) = (trace.shape.layers, trace.shape.experts, trace.shape.top_k);
        let mut acc = vec![0.0; layers * experts];
        for b in &trace.batches {
            for token in b.expert_ids().chunks_exact(layers * k) {
                for (l, picks) in token.chunks_exact(k).enumerate() {
                    for &e in picks {
                        acc[l * experts + e as usize] += 1.0;
                    }
                }
            }
        }
        ExpertLoads { layers, experts, steps: vec![acc] }
    }

    /// Loads summed over steps, `[layers * experts]`.
    pub fn total(&self) -> Vec<f64> {
        let mut acc = vec![0.0; self.layers * self.experts];
        for s in &self.steps {
            acc.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        }
        acc
    }

    /// One layer's total loads.
    pub fn layer_total(&self, layer: usize) -> Vec<f64> {
        let e = self.experts;
        let mut acc = vec![0.0; e];
        for s in &self.steps {
            acc.iter_mut().zip(&s[layer * e..(layer + 1) * e]).for_each(|(a, b)| *a += b);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TokenRef;

    #[test]
    fn loads_only_statistics_count_the_busiest_layer_and_are_checked() {
        // Layer sums 1033 and 1156 of top-2 (DeepSeek EPLB's worked example): 578
        // tokens, not 516 (which the second layer's loads would exceed).
        let shape = ModelShape::new(2, 2, 2).unwrap();
        let s = Statistics::from_loads(shape, vec![500, 533, 600, 556], None).unwrap();
        assert_eq!(s.tokens(), 578);
        // A file of loads-only statistics whose loads exceed its tokens x k is refused.
        let group = |tokens| GroupStats { tokens, load: vec![500, 533, 600, 556], coact: vec![], transitions: vec![] };
        let key = GroupKey { family: None, phase: None };
        let ok =
            Statistics::from_parts(shape, false, false, BTreeMap::from([(key.clone(), group(578))]), BTreeMap::new());
        assert!(ok.is_ok());
        let e = Statistics::from_parts(shape, false, false, BTreeMap::from([(key, group(516))]), BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 0") && e.contains("1033") && e.contains("1032"), "{e}");
    }

    #[test]
    fn pair_index_is_a_bijection() {
        let e = 7;
        let mut seen = vec![false; pair_count(e)];
        for a in 0..e {
            for b in a + 1..e {
                let i = pair_index(a, b, e);
                assert_eq!(i, pair_index(b, a, e));
                assert!(!seen[i]);
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|&x| x));
    }

    #[test]
    fn counts_one_token_by_hand() {
        let shape = ModelShape::new(2, 4, 2).unwrap();
        let mut b = TokenBatch::new(shape);
        b.push(TokenRef {
            request: "r",
            family: Some("law"),
            phase: Some(Phase::Prefill),
            position: 0,
            experts: &[3, 1, 0, 2],
            gate_weights: None,
        })
        .unwrap();
        let mut s = Statistics::new(shape, ProfileOptions::default());
        s.add_batch(&b).unwrap();
        let g = &s.groups()[&GroupKey { family: Some("law".into()), phase: Some(Phase::Prefill) }];
        assert_eq!(g.tokens, 1);
        assert_eq!(g.load, vec![0, 1, 0, 1, 1, 0, 1, 0]);
        assert_eq!(g.coact[pair_index(1, 3, 4)], 1);
        assert_eq!(g.coact[pair_count(4) + pair_index(0, 2, 4)], 1);
        assert_eq!(g.coact.iter().sum::<u64>(), 2);
        // layer 0 -> 1: {3,1} x {0,2}
        for (a, b) in [(3, 0), (3, 2), (1, 0), (1, 2)] {
            assert_eq!(g.transitions[a * 4 + b], 1);
        }
        assert_eq!(g.transitions.iter().sum::<u64>(), 4);
        let r = &s.requests()["r"];
        assert_eq!(r.by_phase[&Some(Phase::Prefill)], vec![0, 1, 0, 1, 1, 0, 1, 0]);
    }

    /// Statistics of one token of request "r" (family law, prefill), with the request
    /// claiming `request_tokens` tokens and its counts scaled to match.
    fn one_request(request_tokens: u64) -> Result<Statistics, ShapeError> {
        let shape = ModelShape::new(1, 2, 1).unwrap();
        let key = GroupKey { family: Some("law".into()), phase: Some(Phase::Prefill) };
        let groups =
            BTreeMap::from([(key, GroupStats { tokens: 1, load: vec![1, 0], coact: vec![], transitions: vec![] })]);
        let request = RequestActivation {
            family: Some("law".into()),
            by_phase: BTreeMap::from([(Some(Phase::Prefill), vec![request_tokens as u32, 0])]),
            tokens: BTreeMap::from([(Some(Phase::Prefill), request_tokens)]),
        };
        Statistics::from_parts(shape, false, true, groups, BTreeMap::from([("r".to_string(), request)]))
    }

    #[test]
    fn requests_hold_no_more_tokens_than_their_group() {
        assert!(one_request(1).is_ok());
        let err = one_request(2).unwrap_err().to_string();
        assert!(err.contains("requests of family \"law\", phase prefill hold 2 tokens, but that group has 1"), "{err}");
    }

    #[test]
    fn merging_refuses_counts_that_would_wrap() {
        let shape = ModelShape::new(1, 2, 1).unwrap();
        let huge = || {
            let g =
                GroupStats { tokens: u64::MAX - 1, load: vec![u64::MAX - 1, 0], coact: vec![], transitions: vec![] };
            let key = GroupKey { family: None, phase: None };
            Statistics::from_parts(shape, false, false, BTreeMap::from([(key, g)]), BTreeMap::new()).unwrap()
        };
        let mut a = huge();
        assert_eq!(a.merge(&huge()), Err(MergeError::TooManyTokens));
        assert_eq!(a, huge(), "a refused merge leaves the statistics unchanged");
    }
}
