//! A bounded, mergeable sample of whole token paths: the experts one token picks at
//! every layer, with its family and phase.
//!
//! Pair counts say which experts fire together two at a time; the metrics of
//! docs/DESIGN.md (distinct remote GPUs and nodes per token-layer) depend on all k picks
//! of a token at once. Placers that score a placement on real tokens
//! ([`crate::refine`]) read this sample.
//!
//! The sample keeps the `capacity` tokens with the smallest hash of (request id,
//! phase, position) - a bottom-k sample. Bottom-k of a union is bottom-k of the
//! shards' bottom-k samples, so merging shards gives exactly the sample of profiling
//! everything at once, and below capacity every token is kept. Merging samples of
//! different capacities keeps the smaller capacity (still a valid bottom-k sample).

use crate::trace::{Phase, TokenBatch};

/// Tokens kept by default: enough for the refinement to see every expert of a
/// DeepSeek-V3 layer hundreds of times, small next to the pair counts (16384 tokens
/// x 58 layers x 8 picks = 7.6 M ids).
pub const DEFAULT_TOKEN_SAMPLE: usize = 16384;

/// One sampled token.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SampledToken {
    /// The sampling key (see the module documentation); first so that the derived
    /// order sorts by it.
    pub hash: u64,
    pub family: Option<String>,
    pub phase: Option<Phase>,
    /// `[layers * top_k]` expert ids, layer-major, each layer's k ids in increasing
    /// order: a token's picks at a layer are a set (the placers that read the sample
    /// ask which experts a token uses, not in which order the router ranked them),
    /// and the canonical order lets the statistics file store them as gaps.
    pub picks: Vec<u16>,
}

/// The bottom-k sample of a trace's tokens.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TokenSample {
    capacity: usize,
    /// Sorted, at most `capacity` long (longer only while a builder adds batches).
    tokens: Vec<SampledToken>,
}

impl TokenSample {
    /// An empty sample keeping at most `capacity` tokens (0: keep none).
    pub fn new(capacity: usize) -> Self {
        TokenSample { capacity, tokens: Vec::new() }
    }

    /// Rebuilds a sample (the statistics file reader); sorts and trims the tokens.
    pub fn from_tokens(capacity: usize, mut tokens: Vec<SampledToken>) -> Self {
        tokens.sort();
        tokens.truncate(capacity);
        TokenSample { capacity, tokens }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn tokens(&self) -> &[SampledToken] {
        &self.tokens
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Offers every token of `batch`.
    pub fn add_batch(&mut self, batch: &TokenBatch) {
        if self.capacity == 0 {
            return;
        }
        let per_token = batch.shape().picks_per_token();
        let ids = batch.expert_ids();
        // Tokens at or above the current k-th smallest hash cannot enter.
        let mut bar = if self.tokens.len() >= self.capacity { self.tokens[self.capacity - 1].hash } else { u64::MAX };
        for t in 0..batch.len() {
            let name = &batch.request_names()[batch.request_indices()[t] as usize];
            let phase = batch.phases()[t];
            let hash = token_hash(name, phase, batch.positions()[t]);
            if hash > bar || (hash == bar && self.tokens.len() >= self.capacity) {
                continue;
            }
            let mut picks = ids[t * per_token..(t + 1) * per_token].to_vec();
            sort_layers(&mut picks, batch.shape().top_k);
            self.tokens.push(SampledToken {
                hash,
                family: batch.family_indices()[t].map(|f| batch.family_names()[f as usize].clone()),
                phase,
                picks,
            });
            if self.tokens.len() >= 2 * self.capacity {
                self.trim();
                bar = self.tokens[self.capacity - 1].hash;
            }
        }
        self.trim();
    }

    /// Adds `other`: the sample of both traces together.
    pub fn merge(&mut self, other: &TokenSample) {
        self.capacity = self.capacity.min(other.capacity);
        self.tokens.extend(other.tokens.iter().cloned());
        self.trim();
    }

    /// Puts every sampled token's picks in the canonical order (each layer's `top_k`
    /// ids increasing), for samples rebuilt from files written before it was kept.
    pub(crate) fn sort_picks(&mut self, top_k: usize) {
        self.tokens.iter_mut().for_each(|t| sort_layers(&mut t.picks, top_k));
        self.tokens.sort();
    }

    fn trim(&mut self) {
        self.tokens.sort();
        self.tokens.truncate(self.capacity);
    }
}

/// Sorts each run of `top_k` ids (one layer's picks) of a token path.
fn sort_layers(picks: &mut [u16], top_k: usize) {
    if top_k > 1 {
        picks.chunks_mut(top_k).for_each(|c| c.sort_unstable());
    }
}

/// The sampling key of a token: FNV-1a over the request id, then the phase and
/// position mixed in with a SplitMix64 finaliser (stable across platforms and runs).
pub fn token_hash(request: &str, phase: Option<Phase>, position: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in request.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let p = match phase {
        None => 0u64,
        Some(Phase::Prefill) => 1,
        Some(Phase::Decode) => 2,
    };
    let mut z = h ^ (p << 32 | position as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{ModelShape, TokenRef};

    fn batch(range: std::ops::Range<u32>) -> TokenBatch {
        let shape = ModelShape { layers: 2, experts: 8, top_k: 2 };
        let mut b = TokenBatch::new(shape);
        for i in range {
            let e = [(i % 8) as u16, ((i + 1) % 8) as u16, ((i + 3) % 8) as u16, ((i + 5) % 8) as u16];
            let req = format!("r{}", i / 10);
            let fam = if i % 20 < 10 { "law" } else { "math" };
            b.push(TokenRef {
                request: &req,
                family: Some(fam),
                phase: None,
                position: i % 10,
                experts: &e,
                gate_weights: None,
            })
            .unwrap();
        }
        b
    }

    #[test]
    fn merging_shards_equals_sampling_everything() {
        let mut whole = TokenSample::new(17);
        whole.add_batch(&batch(0..100));
        let (mut a, mut b) = (TokenSample::new(17), TokenSample::new(17));
        a.add_batch(&batch(0..37));
        b.add_batch(&batch(37..100));
        a.merge(&b);
        assert_eq!(a, whole);
        assert_eq!(whole.tokens().len(), 17);
        // Below capacity every token is kept.
        let mut all = TokenSample::new(1000);
        all.add_batch(&batch(0..100));
        assert_eq!(all.tokens().len(), 100);
        // The smaller capacity wins a merge.
        let mut small = TokenSample::new(17);
        small.add_batch(&batch(100..120));
        all.merge(&small);
        let mut whole = TokenSample::new(17);
        whole.add_batch(&batch(0..120));
        assert_eq!(all, whole);
    }

    #[test]
    fn keeps_the_tokens_paths() {
        let mut s = TokenSample::new(1000);
        s.add_batch(&batch(0..20));
        let t = s.tokens().iter().find(|t| t.hash == token_hash("r1", None, 3)).expect("token 13 kept");
        assert_eq!(t.picks, vec![5, 6, 0, 2]);
        assert_eq!(t.family.as_deref(), Some("math"));
    }
}
