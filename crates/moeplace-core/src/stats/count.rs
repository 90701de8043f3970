//! The counting kernel behind [`Statistics::add_batch`] and [`StatisticsBuilder`].
//!
//! Profiling spends nearly all its time here: per token and layer, k load counts,
//! k(k-1)/2 co-activation counts and k*k transition counts (100 for top-8). What
//! makes it fast:
//! - layers run in parallel (each layer's counters belong to one task, so no locks
//!   and no per-thread copies), in chunks of tokens whose ids stay in cache;
//! - the builder counts in `u32`, so one layer's counters of one group (co-activation
//!   plus transitions: 385 KB for 256 experts) stay in a core's L2 cache; they are
//!   added into the `u64` statistics when a group nears 2^32 tokens and at the end.
//!   A counter grows by at most one per token (a token's top-k ids are distinct, which
//!   `TokenBatch` guarantees), so a group with fewer than 2^32 pending tokens cannot
//!   overflow;
//! - the loop is specialised for common k so the compiler unrolls it.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::{pair_count, written_zeros, GroupKey, GroupStats, ProfileOptions, Statistics};
use crate::trace::{ModelShape, Phase, ShapeError, TokenBatch};

/// Tokens per chunk: a chunk's ids (tokens x layers x k u16) stay in the shared cache
/// while every layer task reads them.
const CHUNK_TOKENS: usize = 4096;

/// A counter type the kernel can add into.
pub(super) trait Counter: Copy + Send + Sync + std::ops::AddAssign + 'static {
    const ONE: Self;
}
impl Counter for u32 {
    const ONE: u32 = 1;
}
impl Counter for u64 {
    const ONE: u64 = 1;
}

/// One group's counters over all layers, as the kernel sees them.
pub(super) struct Counts<C> {
    pub tokens: u64,
    pub load: Vec<C>,
    pub coact: Vec<C>,
    pub transitions: Vec<C>,
}

impl Counts<u32> {
    fn zeros(shape: ModelShape) -> Self {
        let (l, e) = (shape.layers, shape.experts);
        Counts {
            tokens: 0,
            load: written_zeros(l * e),
            coact: written_zeros(l * pair_count(e)),
            transitions: written_zeros(l * e * e),
        }
    }

    /// Adds these counts into `g` and zeroes them.
    fn drain_into(&mut self, g: &mut GroupStats) {
        g.tokens += self.tokens;
        self.tokens = 0;
        for (dst, src) in [
            (&mut g.load, &mut self.load),
            (&mut g.coact, &mut self.coact),
            (&mut g.transitions, &mut self.transitions),
        ] {
            dst.par_iter_mut().zip(src.par_iter_mut()).with_min_len(1 << 14).for_each(|(d, s)| {
                *d += *s as u64;
                *s = 0;
            });
        }
    }
}

/// `row_base[a] + b` is `pair_index(a, b)` for a < b (wrapping: `row_base[0]` is -1).
pub(super) fn pair_row_base(experts: usize) -> Vec<usize> {
    (0..experts).map(|a| (a * (2 * experts - a - 1) / 2).wrapping_sub(a + 1)).collect()
}

/// One layer's counter blocks of one group, and the group's tokens in this chunk.
struct LayerJob<'a, C> {
    tokens: &'a [u32],
    load: &'a mut [C],
    coact: &'a mut [C],
    /// Empty for the last layer.
    transitions: &'a mut [C],
}

/// Counts `tokens` (indices into `ids`) of one layer. Inlined into callers with a
/// constant `k` so the pick loops unroll.
#[inline(always)]
fn count_layer<C: Counter>(
    ids: &[u16],
    shape: ModelShape,
    k: usize,
    layer: usize,
    row_base: &[usize],
    job: LayerJob<C>,
) {
    let e = shape.experts;
    let per_token = shape.layers * k;
    let has_next = !job.transitions.is_empty();
    for &t in job.tokens {
        let base = t as usize * per_token + layer * k;
        let picks = &ids[base..base + k];
        for i in 0..k {
            let a = picks[i] as usize;
            job.load[a] += C::ONE;
            for &b in &picks[i + 1..] {
                let b = b as usize;
                let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                job.coact[row_base[lo].wrapping_add(hi)] += C::ONE;
            }
        }
        if has_next {
            let next = &ids[base + k..base + 2 * k];
            for &a in picks {
                let row = &mut job.transitions[a as usize * e..(a as usize + 1) * e];
                for &b in next {
                    row[b as usize] += C::ONE;
                }
            }
        }
    }
}

fn count_layer_dispatch<C: Counter>(
    ids: &[u16],
    shape: ModelShape,
    layer: usize,
    row_base: &[usize],
    job: LayerJob<C>,
) {
    match shape.top_k {
        1 => count_layer(ids, shape, 1, layer, row_base, job),
        2 => count_layer(ids, shape, 2, layer, row_base, job),
        4 => count_layer(ids, shape, 4, layer, row_base, job),
        6 => count_layer(ids, shape, 6, layer, row_base, job),
        8 => count_layer(ids, shape, 8, layer, row_base, job),
        k => count_layer(ids, shape, k, layer, row_base, job),
    }
}

/// Counts a batch into per-group counters. `slot_of_token[t]` is the index in
/// `groups` of token t's group. Deterministic: each counter is owned by one task
/// and integer sums do not depend on order.
fn count_batch<C: Counter>(
    batch: &TokenBatch,
    slot_of_token: &[usize],
    groups: &mut [&mut Counts<C>],
    row_base: &[usize],
) {
    let shape = batch.shape();
    let (l, e) = (shape.layers, shape.experts);
    let pc = pair_count(e);
    let ids = batch.expert_ids();
    for &s in slot_of_token {
        groups[s].tokens += 1;
    }
    let mut chunk_tokens: Vec<Vec<u32>> = vec![Vec::new(); groups.len()];
    for start in (0..batch.len()).step_by(CHUNK_TOKENS) {
        let end = (start + CHUNK_TOKENS).min(batch.len());
        chunk_tokens.iter_mut().for_each(Vec::clear);
        for t in start..end {
            chunk_tokens[slot_of_token[t]].push(t as u32);
        }
        // Jobs by layer: every group with tokens in this chunk, its blocks of that layer.
        let mut jobs: Vec<Vec<LayerJob<C>>> = (0..l).map(|_| Vec::with_capacity(groups.len())).collect();
        for (g, tokens) in groups.iter_mut().zip(&chunk_tokens) {
            if tokens.is_empty() {
                continue;
            }
            let Counts { load, coact, transitions, .. } = &mut **g;
            let mut coact = coact.as_mut_slice();
            let mut transitions = transitions.as_mut_slice();
            for (layer, load) in load.chunks_mut(e).enumerate() {
                let (c, rest) = std::mem::take(&mut coact).split_at_mut(pc);
                coact = rest;
                let (tr, rest) = std::mem::take(&mut transitions).split_at_mut(e * e);
                transitions = rest;
                let tr = if layer + 1 < l { tr } else { &mut [][..] };
                jobs[layer].push(LayerJob { tokens, load, coact: c, transitions: tr });
            }
        }
        jobs.into_par_iter().enumerate().for_each(|(layer, jobs)| {
            for job in jobs {
                count_layer_dispatch(ids, shape, layer, row_base, job);
            }
        });
    }
}

/// The group index of every token of `batch` among `keys` (sorted, distinct), and
/// those keys.
fn token_groups(batch: &TokenBatch) -> (Vec<GroupKey>, Vec<usize>) {
    /// (family index, phase) as stored in the batch.
    type RawKey = (Option<u32>, Option<Phase>);
    let mut distinct: Vec<RawKey> = Vec::new();
    let mut raw = Vec::with_capacity(batch.len());
    let mut last: Option<(RawKey, usize)> = None;
    for (&f, &p) in batch.family_indices().iter().zip(batch.phases()) {
        let key = (f, p);
        let i = match last {
            Some((k, i)) if k == key => i,
            _ => match distinct.iter().position(|&d| d == key) {
                Some(i) => i,
                None => {
                    distinct.push(key);
                    distinct.len() - 1
                }
            },
        };
        last = Some((key, i));
        raw.push(i);
    }
    let keys: Vec<GroupKey> = distinct
        .iter()
        .map(|&(f, p)| GroupKey { family: f.map(|f| batch.family_names()[f as usize].clone()), phase: p })
        .collect();
    // Slots follow the sorted key order (the order of the maps the counters live in).
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    let mut slot = vec![0; keys.len()];
    for (s, &i) in order.iter().enumerate() {
        slot[i] = s;
    }
    let sorted: Vec<GroupKey> = order.iter().map(|&i| keys[i].clone()).collect();
    (sorted, raw.into_iter().map(|i| slot[i]).collect())
}

/// Mutable references to the values of `map` under `keys` (sorted, all present), in
/// order.
fn values_for<'m, V>(map: &'m mut BTreeMap<GroupKey, V>, keys: &[GroupKey]) -> Vec<&'m mut V> {
    let mut out = Vec::with_capacity(keys.len());
    let mut want = keys.iter().peekable();
    for (k, v) in map.iter_mut() {
        if want.peek() == Some(&k) {
            out.push(v);
            want.next();
        }
    }
    debug_assert_eq!(out.len(), keys.len());
    out
}

impl Statistics {
    /// The statistics of `batches` (all of `shape`).
    pub fn from_batches<'a>(
        shape: ModelShape,
        options: ProfileOptions,
        batches: impl IntoIterator<Item = &'a TokenBatch>,
    ) -> Result<Statistics, ShapeError> {
        let mut b = StatisticsBuilder::new(shape, options);
        for batch in batches {
            b.add_batch(batch)?;
        }
        Ok(b.finish())
    }

    /// Adds the counts of one batch, straight into the `u64` statistics. For many
    /// batches, [`StatisticsBuilder`] is faster. The result does not depend on the
    /// number of threads.
    pub fn add_batch(&mut self, batch: &TokenBatch) -> Result<(), ShapeError> {
        let mut b = StatisticsBuilder::new(self.shape, ProfileOptions { request_vectors: self.request_vectors });
        b.add_batch(batch)?;
        let part = b.finish();
        self.merge(&part).map_err(|e| ShapeError::BadShape(e.to_string()))
    }
}

/// Accumulates statistics batch by batch (the fast path of profiling); `finish`
/// returns them. Equal to [`Statistics::add_batch`] on every batch, exactly.
pub struct StatisticsBuilder {
    stats: Statistics,
    pending: BTreeMap<GroupKey, Counts<u32>>,
    row_base: Vec<usize>,
    /// Pending tokens per group above which its counters drain into `stats`
    /// (`u32::MAX`; smaller in tests).
    drain_at: u64,
}

impl StatisticsBuilder {
    pub fn new(shape: ModelShape, options: ProfileOptions) -> Self {
        StatisticsBuilder {
            stats: Statistics::new(shape, options),
            pending: BTreeMap::new(),
            row_base: pair_row_base(shape.experts),
            drain_at: u32::MAX as u64,
        }
    }

    pub fn shape(&self) -> ModelShape {
        self.stats.shape
    }

    /// Tokens added so far.
    pub fn tokens(&self) -> u64 {
        self.stats.tokens() + self.pending.values().map(|c| c.tokens).sum::<u64>()
    }

    pub fn add_batch(&mut self, batch: &TokenBatch) -> Result<(), ShapeError> {
        let shape = self.stats.shape;
        if batch.shape() != shape {
            return Err(ShapeError::ShapeMismatch { expected: shape, found: batch.shape() });
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Request vectors first: they can fail (a request in two families), and a
        // failed batch must leave the counts untouched.
        if self.stats.request_vectors {
            self.stats.add_request_vectors(batch)?;
        }
        let (keys, slot_of_token) = token_groups(batch);
        let mut per_slot = vec![0u64; keys.len()];
        slot_of_token.iter().for_each(|&s| per_slot[s] += 1);
        for (key, n) in keys.iter().zip(&per_slot) {
            let c = self.pending.entry(key.clone()).or_insert_with(|| Counts::zeros(shape));
            if c.tokens + n > self.drain_at {
                let g = self.stats.groups.entry(key.clone()).or_insert_with(|| GroupStats::zeros(shape, true));
                c.drain_into(g);
            }
        }
        let mut groups = values_for(&mut self.pending, &keys);
        count_batch(batch, &slot_of_token, &mut groups, &self.row_base);
        Ok(())
    }

    /// The statistics of every batch added.
    pub fn finish(mut self) -> Statistics {
        let shape = self.stats.shape;
        for (key, mut c) in std::mem::take(&mut self.pending) {
            let g = self.stats.groups.entry(key).or_insert_with(|| GroupStats::zeros(shape, true));
            c.drain_into(g);
        }
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::pair_index;
    use crate::trace::TokenRef;

    /// A batch of `n` tokens with pseudo-random distinct picks, three families and
    /// both phases, requests of 7 tokens.
    fn batch(shape: ModelShape, n: usize, seed: u64) -> TokenBatch {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut b = TokenBatch::new(shape);
        let fams = ["a", "b", "c"];
        let mut ids = vec![0u16; shape.picks_per_token()];
        for t in 0..n {
            for layer in 0..shape.layers {
                let row = &mut ids[layer * shape.top_k..(layer + 1) * shape.top_k];
                let mut m = 0;
                while m < shape.top_k {
                    let x = (next() % shape.experts as u64) as u16;
                    if !row[..m].contains(&x) {
                        row[m] = x;
                        m += 1;
                    }
                }
            }
            let r = t / 7;
            b.push(TokenRef {
                request: &format!("r{r}"),
                family: (r % 4 != 3).then_some(fams[r % 3]),
                phase: Some(if t % 7 < 3 { Phase::Prefill } else { Phase::Decode }),
                position: (t % 7) as u32,
                experts: &ids,
                gate_weights: None,
            })
            .unwrap();
        }
        b
    }

    /// Counts by the definitions, one token at a time, with no shared code.
    fn naive(b: &TokenBatch) -> BTreeMap<GroupKey, GroupStats> {
        let s = b.shape();
        let (l, e, k) = (s.layers, s.experts, s.top_k);
        let mut out: BTreeMap<GroupKey, GroupStats> = BTreeMap::new();
        for tok in b.tokens() {
            let key = GroupKey { family: tok.family.map(str::to_string), phase: tok.phase };
            let g = out.entry(key).or_insert_with(|| GroupStats::zeros(s, true));
            g.tokens += 1;
            for layer in 0..l {
                let p = &tok.experts[layer * k..(layer + 1) * k];
                for (i, &a) in p.iter().enumerate() {
                    g.load[layer * e + a as usize] += 1;
                    for &c in &p[i + 1..] {
                        g.coact[layer * pair_count(e) + pair_index(a as usize, c as usize, e)] += 1;
                    }
                    if layer + 1 < l {
                        for &c in &tok.experts[(layer + 1) * k..(layer + 2) * k] {
                            g.transitions[(layer * e + a as usize) * e + c as usize] += 1;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn row_base_gives_pair_index() {
        for e in [2, 3, 7, 64] {
            let rb = pair_row_base(e);
            for (a, base) in rb.iter().enumerate() {
                for b in a + 1..e {
                    assert_eq!(base.wrapping_add(b), pair_index(a, b, e));
                }
            }
        }
    }

    #[test]
    fn builder_matches_the_definitions_for_every_k() {
        for (layers, experts, k) in [(3, 9, 1), (2, 5, 2), (4, 16, 3), (3, 12, 4), (2, 20, 6), (3, 17, 8), (2, 1, 1)] {
            let shape = ModelShape::new(layers, experts, k).unwrap();
            // More than one chunk, and two batches.
            let (b1, b2) = (batch(shape, CHUNK_TOKENS + 130, 7), batch(shape, 301, 8));
            let mut builder = StatisticsBuilder::new(shape, ProfileOptions { request_vectors: false });
            builder.add_batch(&b1).unwrap();
            builder.add_batch(&b2).unwrap();
            assert_eq!(builder.tokens(), (CHUNK_TOKENS + 431) as u64);
            let got = builder.finish();
            let mut want = naive(&b1);
            for (key, g) in naive(&b2) {
                want.entry(key).or_insert_with(|| GroupStats::zeros(shape, true)).add(&g);
            }
            assert_eq!(got.groups(), &want, "shape {shape}");
        }
    }

    #[test]
    fn draining_early_changes_nothing() {
        let shape = ModelShape::new(3, 10, 3).unwrap();
        let batches: Vec<TokenBatch> = (0..4).map(|i| batch(shape, 200 + i * 13, i as u64)).collect();
        let mut plain = StatisticsBuilder::new(shape, ProfileOptions::default());
        let mut draining = StatisticsBuilder::new(shape, ProfileOptions::default());
        draining.drain_at = 50;
        for b in &batches {
            plain.add_batch(b).unwrap();
            draining.add_batch(b).unwrap();
        }
        let (p, d) = (plain.finish(), draining.finish());
        assert_eq!(p, d);
        let mut one_by_one = Statistics::new(shape, ProfileOptions::default());
        for b in &batches {
            one_by_one.add_batch(b).unwrap();
        }
        assert_eq!(one_by_one, p);
    }
}
