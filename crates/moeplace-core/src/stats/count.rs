//! The counting kernel behind [`Statistics::add_batch`] and [`StatisticsBuilder`].
//!
//! Profiling spends nearly all its time here: per token and layer, k load counts,
//! k(k-1)/2 co-activation counts and k*k transition counts (100 for top-8), each a
//! random increment in a table. What makes it fast (`cargo bench -p moeplace-core
//! --bench statistics`):
//! - tokens are counted in group order and layer by layer, from a layer-major copy of
//!   their ids, so one (group, layer) job runs over many tokens while its tables stay
//!   in the core's L2 cache; layers run in parallel (each layer's tables belong to
//!   one task: no locks, no per-thread copies);
//! - pending counters are `u16`, so a job's tables (co-activation as a full
//!   experts x experts table of ordered pairs, plus transitions: 256 KB for 256
//!   experts) fit in L2. A counter grows by at most one per token (a token's top-k
//!   ids are distinct, which `TokenBatch` guarantees), so a group drains into the
//!   `u64` statistics before its pending tokens could pass `u16::MAX`;
//! - the loops are specialised for common k, and indexing is unchecked after one
//!   check per job that every id is below the number of experts.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::{huge_vec, memory, pair_count, written_zeros, GroupKey, GroupStats, ProfileOptions, Statistics};
use crate::trace::{ModelShape, Phase, ShapeError, TokenBatch};

/// Tokens per pass of [`count_batch`]: their ids are copied layer by layer into a
/// scratch buffer (16384 x layers x k u16: 15 MB for DeepSeek-V3) so that counting
/// reads them contiguously.
const CHUNK_TOKENS: usize = 16384;

/// Pending tokens of a group above which its `u16` counters must drain.
const DRAIN_AT: u64 = u16::MAX as u64;

/// One group's pending `u16` counters over all layers, and its `u64` totals.
struct GroupCounter {
    /// Tokens counted in `load`/`ordered_pairs`/`transitions` and not yet drained.
    pending_tokens: u64,
    /// `[layers * experts]`.
    load: Vec<u16>,
    /// `[layers * experts * experts]`: (a, b) counts tokens where a was picked
    /// before b; an unordered pair's count is (a, b) + (b, a).
    ordered_pairs: Vec<u16>,
    /// `[layers * experts * experts]`, as in [`GroupStats::transitions`].
    transitions: Vec<u16>,
    total: GroupStats,
}

impl GroupCounter {
    fn new(shape: ModelShape) -> Self {
        let (l, e) = (shape.layers, shape.experts);
        GroupCounter {
            pending_tokens: 0,
            load: written_zeros(l * e),
            ordered_pairs: written_zeros(l * e * e),
            transitions: written_zeros(l * e * e),
            // The u64 totals are made by the first drain, from the pending counts: most
            // runs drain once, at the end, and zeroed totals would be written twice.
            total: GroupStats { tokens: 0, load: Vec::new(), coact: Vec::new(), transitions: Vec::new() },
        }
    }

    /// Adds the pending counts into the totals; zeroes them when `reuse` (else they
    /// are about to be dropped).
    fn drain(&mut self, experts: usize, reuse: bool) {
        let e = experts;
        let pc = pair_count(e);
        let g = &mut self.total;
        g.tokens += std::mem::take(&mut self.pending_tokens);
        if g.load.is_empty() {
            g.load = widened(&self.load);
            g.transitions = widened(&self.transitions);
            g.coact = folded_pairs(&self.ordered_pairs, e);
            if reuse {
                for t in [&mut self.load, &mut self.ordered_pairs, &mut self.transitions] {
                    t.par_chunks_mut(1 << 16).for_each(|c| c.fill(0));
                }
            }
            return;
        }
        g.load.par_iter_mut().zip(self.load.par_iter_mut()).with_min_len(1 << 14).for_each(|(d, s)| {
            *d += std::mem::take(s) as u64;
        });
        g.transitions.par_iter_mut().zip(self.transitions.par_iter_mut()).with_min_len(1 << 14).for_each(|(d, s)| {
            *d += std::mem::take(s) as u64;
        });
        g.coact.par_chunks_mut(pc.max(1)).zip(self.ordered_pairs.par_chunks_mut(e * e)).for_each(|(dst, m)| {
            let mut i = 0;
            for a in 0..e {
                for b in a + 1..e {
                    dst[i] += m[a * e + b] as u64 + m[b * e + a] as u64;
                    i += 1;
                }
            }
            m.fill(0);
        });
    }
}

/// `src` as `u64`, written once (no zeroing first), on huge pages when large.
fn widened(src: &[u16]) -> Vec<u64> {
    let mut v = huge_vec(src.len());
    v.par_extend(src.par_iter().with_min_len(1 << 14).map(|&x| u64::from(x)));
    v
}

/// The upper-triangle pair counts (layer after layer, [`crate::stats::pair_index`]
/// order) of full `experts x experts` tables of ordered-pair counts.
fn folded_pairs(ordered: &[u16], experts: usize) -> Vec<u64> {
    let e = experts;
    let pc = pair_count(e);
    let layers = ordered.len() / (e * e);
    if pc == 0 {
        return Vec::new();
    }
    let mut v = huge_vec(layers * pc);
    v.spare_capacity_mut()[..layers * pc].par_chunks_mut(pc).zip(ordered.par_chunks(e * e)).for_each(|(dst, m)| {
        let mut i = 0;
        for a in 0..e {
            for b in a + 1..e {
                dst[i].write(u64::from(m[a * e + b]) + u64::from(m[b * e + a]));
                i += 1;
            }
        }
    });
    // SAFETY: the loop above wrote all `pc` elements of each of the `layers` chunks.
    unsafe { v.set_len(layers * pc) };
    v
}

/// One layer's tables of one group, and where the group's tokens sit in the
/// layer-major scratch buffer.
struct LayerJob<'a> {
    tokens: std::ops::Range<usize>,
    load: &'a mut [u16],
    ordered_pairs: &'a mut [u16],
    /// Empty for the last layer.
    transitions: &'a mut [u16],
}

/// Counts one layer of a run of tokens: `picks` holds their top-k ids at this layer,
/// `next` at the next layer (empty for the last). Inlined into callers with a
/// constant `k` so the pick loops unroll.
#[inline(always)]
fn count_layer(picks: &[u16], next: &[u16], k: usize, experts: usize, job: LayerJob) {
    let LayerJob { load, ordered_pairs, transitions, .. } = job;
    let e = experts;
    // The one check the unchecked indexing below relies on.
    assert!(
        load.len() == e
            && ordered_pairs.len() == e * e
            && (transitions.len() == e * e || (transitions.is_empty() && next.is_empty()))
            && next.len() <= picks.len()
            && picks.iter().chain(next).fold(0u16, |m, &x| m.max(x)) < e as u16,
        "counting kernel called with inconsistent tables or ids"
    );
    for (t, p) in picks.chunks_exact(k).enumerate() {
        for i in 0..k {
            let a = p[i] as usize;
            // SAFETY: a < e (checked above) and load.len() == e.
            unsafe { *load.get_unchecked_mut(a) += 1 };
            let row = a * e;
            for &b in &p[i + 1..k] {
                // SAFETY: a, b < e and ordered_pairs.len() == e * e.
                unsafe { *ordered_pairs.get_unchecked_mut(row + b as usize) += 1 };
            }
        }
        if !next.is_empty() {
            let n = &next[t * k..t * k + k];
            for &a in p {
                let row = a as usize * e;
                for &b in n {
                    // SAFETY: a, b < e and transitions.len() == e * e.
                    unsafe { *transitions.get_unchecked_mut(row + b as usize) += 1 };
                }
            }
        }
    }
}

#[inline(never)]
fn count_layer_dispatch(picks: &[u16], next: &[u16], k: usize, experts: usize, job: LayerJob) {
    match k {
        1 => count_layer(picks, next, 1, experts, job),
        2 => count_layer(picks, next, 2, experts, job),
        4 => count_layer(picks, next, 4, experts, job),
        6 => count_layer(picks, next, 6, experts, job),
        8 => count_layer(picks, next, 8, experts, job),
        k => count_layer(picks, next, k, experts, job),
    }
}

/// Copies the ids of `tokens` at one layer into `dst`, token after token (`ids`
/// starts at that layer's ids of token 0).
#[inline(always)]
fn gather_layer(dst: &mut [u16], tokens: &[u32], ids: &[u16], per_token: usize, k: usize) {
    for (d, &t) in dst.chunks_exact_mut(k).zip(tokens) {
        let at = t as usize * per_token;
        d.copy_from_slice(&ids[at..at + k]);
    }
}

#[inline(never)]
fn gather_layer_dispatch(dst: &mut [u16], tokens: &[u32], ids: &[u16], per_token: usize, k: usize) {
    match k {
        2 => gather_layer(dst, tokens, ids, per_token, 2),
        4 => gather_layer(dst, tokens, ids, per_token, 4),
        6 => gather_layer(dst, tokens, ids, per_token, 6),
        8 => gather_layer(dst, tokens, ids, per_token, 8),
        k => gather_layer(dst, tokens, ids, per_token, k),
    }
}

/// Counts a batch into per-group counters. `slot_of_token[t]` is the index in
/// `groups` of token t's group; a group drains when its pending tokens would pass
/// `drain_at`; `scratch` is reused between calls.
///
/// Tokens are taken in group order, so each (layer, group) job runs over a long run
/// of tokens while that group's tables of that layer stay in the core's L2 cache
/// (interleaving groups token by token thrashes it). Deterministic: each counter is
/// owned by one task and integer sums do not depend on order.
fn count_batch(
    batch: &TokenBatch,
    slot_of_token: &[usize],
    groups: &mut [&mut GroupCounter],
    drain_at: u64,
    scratch: &mut Vec<u16>,
) {
    let shape = batch.shape();
    let (l, e, k) = (shape.layers, shape.experts, shape.top_k);
    let per_token = l * k;
    let ids = batch.expert_ids();
    // Tokens in group order (a stable counting sort); group g is order[first[g]..first[g + 1]].
    let mut first = vec![0usize; groups.len() + 1];
    for &s in slot_of_token {
        first[s + 1] += 1;
    }
    for g in 0..groups.len() {
        first[g + 1] += first[g];
    }
    let mut order = vec![0u32; batch.len()];
    let mut fill = first.clone();
    for (t, &s) in slot_of_token.iter().enumerate() {
        order[fill[s]] = t as u32;
        fill[s] += 1;
    }
    let chunk_len = CHUNK_TOKENS.min(drain_at as usize).max(1);
    for chunk_start in (0..order.len()).step_by(chunk_len) {
        let chunk = &order[chunk_start..(chunk_start + chunk_len).min(order.len())];
        let n = chunk.len();
        let run = |g: usize| {
            let lo = first[g].clamp(chunk_start, chunk_start + n) - chunk_start;
            let hi = first[g + 1].clamp(chunk_start, chunk_start + n) - chunk_start;
            lo..hi
        };
        for (g, counter) in groups.iter_mut().enumerate() {
            let r = run(g).len() as u64;
            if r > 0 && counter.pending_tokens + r > drain_at {
                counter.drain(e, true);
            }
            counter.pending_tokens += r;
        }
        // Layer-major copy: scratch[layer][i][k] = ids of token chunk[i] at layer.
        scratch.resize(l * n * k, 0);
        scratch
            .par_chunks_mut(n * k)
            .enumerate()
            .for_each(|(layer, dst)| gather_layer_dispatch(dst, chunk, &ids[layer * k..], per_token, k));
        // Jobs by layer: every group with tokens in this chunk, its tables of that layer.
        let mut jobs: Vec<Vec<LayerJob>> = (0..l).map(|_| Vec::with_capacity(groups.len())).collect();
        for (g, counter) in groups.iter_mut().enumerate() {
            let tokens = run(g);
            if tokens.is_empty() {
                continue;
            }
            let GroupCounter { load, ordered_pairs, transitions, .. } = &mut **counter;
            let tables = load.chunks_mut(e).zip(ordered_pairs.chunks_mut(e * e)).zip(transitions.chunks_mut(e * e));
            for (layer, ((load, ordered_pairs), tr)) in tables.enumerate() {
                let transitions = if layer + 1 < l { tr } else { &mut [][..] };
                jobs[layer].push(LayerJob { tokens: tokens.clone(), load, ordered_pairs, transitions });
            }
        }
        let scratch = &scratch[..];
        jobs.into_par_iter().enumerate().for_each(|(layer, jobs)| {
            for job in jobs {
                let r = job.tokens.start * k..job.tokens.end * k;
                let picks = &scratch[layer * n * k..][r.clone()];
                let next = if layer + 1 < l { &scratch[(layer + 1) * n * k..][r] } else { &[][..] };
                count_layer_dispatch(picks, next, k, e, job);
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
        let options = ProfileOptions { request_vectors: self.request_vectors, token_sample: self.sample.capacity() };
        let mut b = StatisticsBuilder::new(self.shape, options);
        b.add_batch(batch)?;
        let part = b.finish();
        self.merge(&part).map_err(|e| ShapeError::BadShape(e.to_string()))
    }
}

/// Accumulates statistics batch by batch (the fast path of profiling); `finish`
/// returns them. Equal to [`Statistics::add_batch`] on every batch, exactly.
pub struct StatisticsBuilder {
    stats: Statistics,
    counters: BTreeMap<GroupKey, GroupCounter>,
    /// Layer-major copy of the ids being counted (see [`count_batch`]).
    scratch: Vec<u16>,
    /// Pending tokens per group above which it drains ([`DRAIN_AT`]; smaller in tests).
    drain_at: u64,
}

impl StatisticsBuilder {
    pub fn new(shape: ModelShape, options: ProfileOptions) -> Self {
        StatisticsBuilder {
            stats: Statistics::new(shape, options),
            counters: BTreeMap::new(),
            scratch: Vec::new(),
            drain_at: DRAIN_AT,
        }
    }

    pub fn shape(&self) -> ModelShape {
        self.stats.shape
    }

    /// Tokens added so far.
    pub fn tokens(&self) -> u64 {
        self.counters.values().map(|c| c.total.tokens + c.pending_tokens).sum()
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
        let (keys, slot_of_token) = token_groups(batch);
        let per_group = memory::counting_group_bytes(shape);
        let groups = self.counters.len() + keys.iter().filter(|k| !self.counters.contains_key(*k)).count();
        memory::check(shape, groups, per_group, self.stats.vectors)?;
        if self.stats.request_vectors {
            self.stats.add_request_vectors(batch, groups, per_group)?;
        }
        self.stats.sample.add_batch(batch);
        for key in &keys {
            self.counters.entry(key.clone()).or_insert_with(|| GroupCounter::new(shape));
        }
        let mut groups = values_for(&mut self.counters, &keys);
        count_batch(batch, &slot_of_token, &mut groups, self.drain_at, &mut self.scratch);
        Ok(())
    }

    /// The statistics of every batch added.
    pub fn finish(mut self) -> Statistics {
        let e = self.stats.shape.experts;
        for (key, mut c) in std::mem::take(&mut self.counters) {
            c.drain(e, false);
            self.stats.groups.insert(key, c.total);
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
            let g = out.entry(key).or_insert_with(|| GroupStats::zeros(s, true, true));
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
    fn builder_matches_the_definitions_for_every_k() {
        for (layers, experts, k) in [(3, 9, 1), (2, 5, 2), (4, 16, 3), (3, 12, 4), (2, 20, 6), (3, 17, 8), (2, 1, 1)] {
            let shape = ModelShape::new(layers, experts, k).unwrap();
            // More than one chunk, and two batches.
            let (b1, b2) = (batch(shape, CHUNK_TOKENS + 130, 7), batch(shape, 301, 8));
            let mut builder =
                StatisticsBuilder::new(shape, ProfileOptions { request_vectors: false, ..Default::default() });
            builder.add_batch(&b1).unwrap();
            builder.add_batch(&b2).unwrap();
            assert_eq!(builder.tokens(), (CHUNK_TOKENS + 431) as u64);
            let got = builder.finish();
            let mut want = naive(&b1);
            for (key, g) in naive(&b2) {
                want.entry(key).or_insert_with(|| GroupStats::zeros(shape, true, true)).add(&g);
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
