//! ELDR request signatures from prefill activations (docs/METHODS.md, "ELDR decode routing").
//!
//! A signature is computed from a request's prefill tokens per (layer, expert):
//! 1. raw counts, restricted to the layers of a mask;
//! 2. IDF weighting `w = ln((|C| + 1) / (df + 1))` over the calibration set C;
//! 3. sparsified: the `per_layer` largest weighted entries of each masked layer;
//! 4. L2-normalised.
//!
//! Choices where the paper is vague:
//! - Document frequency: a long prompt touches nearly every expert, so counting a
//!   request in `df` whenever the count is above zero would give almost every
//!   (layer, expert) weight 0. Here a calibration request counts towards
//!   `df(l, e)` when expert e gets more than its uniform share (`tokens x k / E`) of
//!   the request's prefill picks at layer l. Generic experts (over-represented in
//!   every request) still get weight 0.
//! - Layer mask: greedy, as in the paper: starting empty, add the layer that most
//!   raises the Spearman correlation between signature distance and decode-activation
//!   distance (both cosine distances; decode vectors over all layers) over all pairs
//!   of a seeded sample of calibration requests, while it improves, up to
//!   `max_layers` layers. The search uses the IDF-weighted counts before
//!   sparsification.
//! - Sparsification (step 3) is ours: it bounds the entries a router multiplies, so
//!   a routing decision costs `entries x workers` multiply-adds whatever the model
//!   size (the DeepSeek-V3 target of under 2 microseconds for 64 workers).
//!
//! Prefix-cache friendly: steps 2-4 apply to the masked raw counts, which are a sum
//! over the request's KV blocks. [`SignatureModel::block_rows`] gives one sparse
//! int8 row per block of `block_tokens` tokens (a count per masked (layer, expert),
//! at most `block_tokens <= 127`); a cached prefix keeps its rows, and
//! [`SignatureModel::from_blocks`] sums rows and finishes the signature.

use crate::synth::rng::Rng;
use crate::trace::ModelShape;

use super::{l2_normalise, spearman};

/// Options of [`SignatureModel::fit`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignatureOptions {
    /// Most layers in the mask.
    pub max_layers: usize,
    /// Entries kept per masked layer (0: all).
    pub per_layer: usize,
    /// Calibration requests sampled for the mask search (all pairs of them).
    pub sample: usize,
}

impl Default for SignatureOptions {
    fn default() -> Self {
        SignatureOptions { max_layers: 8, per_layer: 16, sample: 200 }
    }
}

/// Why a signature model cannot be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignatureError {
    #[error("need at least 3 calibration requests with both prefill and decode tokens, got {0}")]
    TooFew(usize),
    #[error("prefill and decode count lists differ in length ({0} vs {1})")]
    Mismatch(usize, usize),
    #[error("a KV block holds at most 127 tokens (int8 counts), got {0}")]
    BlockTooLarge(usize),
}

/// A sparse, L2-normalised signature: entries of the masked space
/// (`mask position * experts + expert`), in increasing index order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Signature {
    pub idx: Vec<u32>,
    pub val: Vec<f32>,
}

impl Signature {
    /// The dense form (`dims` numbers).
    pub fn dense(&self, dims: usize) -> Vec<f32> {
        let mut d = vec![0f32; dims];
        for (&i, &v) in self.idx.iter().zip(&self.val) {
            d[i as usize] = v;
        }
        d
    }
}

/// One KV block's part of a signature: int8 counts per masked (layer, expert).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KvBlockRow {
    pub entries: Vec<(u32, i8)>,
}

/// A fitted signature model: IDF weights and the layer mask.
#[derive(Clone, Debug, PartialEq)]
pub struct SignatureModel {
    pub shape: ModelShape,
    /// `[layers * experts]` IDF weights.
    pub idf: Vec<f32>,
    /// Masked layers, in the order the greedy search added them.
    pub mask: Vec<usize>,
    /// Spearman correlation after each addition.
    pub mask_spearman: Vec<f64>,
    pub per_layer: usize,
}

impl SignatureModel {
    /// Fits IDF weights and the layer mask on calibration requests' prefill and
    /// decode counts (dense `[layers * experts]` each). Requests without prefill or
    /// decode tokens are skipped.
    pub fn fit(
        shape: ModelShape,
        prefill: &[Vec<u32>],
        decode: &[Vec<u32>],
        opts: SignatureOptions,
        seed: u64,
    ) -> Result<SignatureModel, SignatureError> {
        if prefill.len() != decode.len() {
            return Err(SignatureError::Mismatch(prefill.len(), decode.len()));
        }
        let (l, e, k) = (shape.layers, shape.experts, shape.top_k);
        let usable: Vec<usize> = (0..prefill.len())
            .filter(|&i| prefill[i].iter().any(|&c| c > 0) && decode[i].iter().any(|&c| c > 0))
            .collect();
        if usable.len() < 3 {
            return Err(SignatureError::TooFew(usable.len()));
        }
        // IDF over all usable calibration requests.
        let mut df = vec![0u32; l * e];
        for &i in &usable {
            let tokens = prefill[i][..e].iter().sum::<u32>() as u64 / k as u64;
            for (d, &c) in df.iter_mut().zip(&prefill[i]) {
                if c as u64 * e as u64 > tokens * k as u64 {
                    *d += 1;
                }
            }
        }
        let nc = usable.len() as f64;
        let idf: Vec<f32> = df.iter().map(|&d| ((nc + 1.0) / (d as f64 + 1.0)).ln() as f32).collect();

        // Mask search on a seeded sample.
        let mut rng = Rng::new(seed ^ 0x5167_u64);
        let perm = rng.permutation(usable.len());
        let sample: Vec<usize> = perm.iter().take(opts.sample.max(3)).map(|&p| usable[p]).collect();
        let s = sample.len();
        let pairs: Vec<(usize, usize)> = (0..s).flat_map(|a| (a + 1..s).map(move |b| (a, b))).collect();
        let dec: Vec<Vec<f32>> = sample
            .iter()
            .map(|&i| {
                let mut v: Vec<f32> = decode[i].iter().map(|&c| c as f32).collect();
                l2_normalise(&mut v);
                v
            })
            .collect();
        let dd: Vec<f64> = pairs.iter().map(|&(a, b)| 1.0 - super::cosine(&dec[a], &dec[b])).collect();
        let weighted: Vec<Vec<f32>> =
            sample.iter().map(|&i| prefill[i].iter().zip(&idf).map(|(&c, &w)| c as f32 * w).collect()).collect();
        // Per layer: pair dot products and per-request squared norms.
        let mut dots = vec![0f64; l * pairs.len()];
        let mut sq = vec![0f64; l * s];
        for layer in 0..l {
            let part = |a: usize| &weighted[a][layer * e..(layer + 1) * e];
            for a in 0..s {
                sq[layer * s + a] = part(a).iter().map(|&x| (x as f64) * (x as f64)).sum();
            }
            for (p, &(a, b)) in pairs.iter().enumerate() {
                dots[layer * pairs.len() + p] = part(a).iter().zip(part(b)).map(|(&x, &y)| x as f64 * y as f64).sum();
            }
        }
        let mut acc_dot = vec![0f64; pairs.len()];
        let mut acc_sq = vec![0f64; s];
        let mut mask = Vec::new();
        let mut mask_spearman = Vec::new();
        let mut current = f64::NEG_INFINITY;
        while mask.len() < opts.max_layers.clamp(1, l) {
            let mut best: Option<(f64, usize)> = None;
            for layer in (0..l).filter(|x| !mask.contains(x)) {
                let sd: Vec<f64> = pairs
                    .iter()
                    .enumerate()
                    .map(|(p, &(a, b))| {
                        let dot = acc_dot[p] + dots[layer * pairs.len() + p];
                        let na = acc_sq[a] + sq[layer * s + a];
                        let nb = acc_sq[b] + sq[layer * s + b];
                        if na > 0.0 && nb > 0.0 {
                            1.0 - dot / (na * nb).sqrt()
                        } else {
                            1.0
                        }
                    })
                    .collect();
                let r = spearman(&sd, &dd).unwrap_or(f64::NEG_INFINITY);
                if best.is_none_or(|(b, _)| r > b) {
                    best = Some((r, layer));
                }
            }
            let Some((r, layer)) = best else { break };
            if !mask.is_empty() && r <= current + 1e-4 {
                break;
            }
            current = r;
            mask.push(layer);
            mask_spearman.push(r);
            for p in 0..pairs.len() {
                acc_dot[p] += dots[layer * pairs.len() + p];
            }
            for a in 0..s {
                acc_sq[a] += sq[layer * s + a];
            }
        }
        Ok(SignatureModel { shape, idf, mask, mask_spearman, per_layer: opts.per_layer })
    }

    /// Dimensions of the masked space.
    pub fn dims(&self) -> usize {
        self.mask.len() * self.shape.experts
    }

    /// Raw counts restricted to the mask (`dims()` numbers) from dense counts.
    pub fn masked_counts(&self, counts: &[u32]) -> Vec<i32> {
        let e = self.shape.experts;
        self.mask.iter().flat_map(|&l| counts[l * e..(l + 1) * e].iter().map(|&c| c as i32)).collect()
    }

    /// The signature of dense prefill counts.
    pub fn signature(&self, counts: &[u32]) -> Signature {
        self.from_masked_counts(&self.masked_counts(counts))
    }

    /// Steps 2-4 (IDF, sparsify, normalise) on masked raw counts.
    pub fn from_masked_counts(&self, masked: &[i32]) -> Signature {
        let e = self.shape.experts;
        let mut idx = Vec::new();
        let mut val = Vec::new();
        let mut layer_vals: Vec<(f32, u32)> = Vec::with_capacity(e);
        for (pos, &l) in self.mask.iter().enumerate() {
            layer_vals.clear();
            for x in 0..e {
                let v = masked[pos * e + x] as f32 * self.idf[l * e + x];
                if v > 0.0 {
                    layer_vals.push((v, (pos * e + x) as u32));
                }
            }
            if self.per_layer > 0 && layer_vals.len() > self.per_layer {
                layer_vals.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                layer_vals.truncate(self.per_layer);
                layer_vals.sort_by_key(|x| x.1);
            }
            for &(v, i) in &layer_vals {
                idx.push(i);
                val.push(v);
            }
        }
        l2_normalise(&mut val);
        Signature { idx, val }
    }

    /// Per-KV-block int8 rows of a request's prefill picks (`tokens * layers * k`),
    /// `block_tokens` tokens per block (the last block may be shorter).
    pub fn block_rows(&self, picks: &[u16], block_tokens: usize) -> Result<Vec<KvBlockRow>, SignatureError> {
        if block_tokens == 0 || block_tokens > 127 {
            return Err(SignatureError::BlockTooLarge(block_tokens));
        }
        let (e, k) = (self.shape.experts, self.shape.top_k);
        let ppt = self.shape.picks_per_token();
        let mut rows = Vec::new();
        let mut tmp = vec![0i8; self.dims()];
        for block in picks.chunks(ppt * block_tokens) {
            tmp.iter_mut().for_each(|x| *x = 0);
            for tok in block.chunks(ppt) {
                for (pos, &l) in self.mask.iter().enumerate() {
                    for &x in &tok[l * k..(l + 1) * k] {
                        tmp[pos * e + x as usize] += 1;
                    }
                }
            }
            let entries = tmp.iter().enumerate().filter(|(_, &c)| c != 0).map(|(i, &c)| (i as u32, c)).collect();
            rows.push(KvBlockRow { entries });
        }
        Ok(rows)
    }

    /// The signature of a request from its KV blocks' rows (cached or fresh).
    pub fn from_blocks(&self, rows: &[KvBlockRow]) -> Signature {
        let mut sum = vec![0i32; self.dims()];
        for r in rows {
            for &(i, c) in &r.entries {
                sum[i as usize] += c as i32;
            }
        }
        self.from_masked_counts(&sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::records::counts;

    /// Requests of two kinds: kind A uses experts 0-3 at layer 1 in prefill and
    /// decode; kind B experts 4-7. Layer 0 is noise (uniform over 8 experts).
    /// Shape, per-request expert picks, prefill counts and decode counts.
    type Workload = (ModelShape, Vec<Vec<u16>>, Vec<Vec<u32>>, Vec<Vec<u32>>);

    fn workload() -> Workload {
        let shape = ModelShape::new(2, 8, 1).unwrap();
        let mut rng = Rng::new(3);
        let (mut picks, mut pre, mut dec) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..40 {
            let base = if r % 2 == 0 { 0 } else { 4 };
            let mut gen = |n: usize| -> Vec<u16> {
                (0..n).flat_map(|_| [rng.below(8) as u16, (base + rng.below(4)) as u16]).collect()
            };
            let p = gen(20);
            let d = gen(30);
            pre.push(counts(shape, &p));
            dec.push(counts(shape, &d));
            picks.push(p);
        }
        (shape, picks, pre, dec)
    }

    #[test]
    fn mask_picks_the_predictive_layer_and_blocks_sum() {
        let (shape, picks, pre, dec) = workload();
        let opts = SignatureOptions { max_layers: 2, per_layer: 0, sample: 40 };
        let m = SignatureModel::fit(shape, &pre, &dec, opts, 1).unwrap();
        assert_eq!(m.mask[0], 1, "{:?}", m.mask_spearman);
        assert_eq!(m, SignatureModel::fit(shape, &pre, &dec, opts, 1).unwrap());
        for (p, c) in picks.iter().zip(&pre) {
            let whole = m.signature(c);
            let rows = m.block_rows(p, 16).unwrap();
            assert_eq!(rows.len(), 2);
            assert_eq!(m.from_blocks(&rows), whole);
            let norm: f32 = whole.val.iter().map(|v| v * v).sum();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        // Same-kind requests are closer than cross-kind ones.
        let d = |a: usize| m.signature(&pre[a]).dense(m.dims());
        assert!(super::super::cosine(&d(0), &d(2)) > super::super::cosine(&d(0), &d(1)));
        assert!(m.block_rows(&picks[0], 128).is_err());
    }

    #[test]
    fn sparsify_keeps_the_largest_entries() {
        let (shape, _, pre, dec) = workload();
        let opts = SignatureOptions { max_layers: 1, per_layer: 2, sample: 40 };
        let m = SignatureModel::fit(shape, &pre, &dec, opts, 1).unwrap();
        let s = m.signature(&pre[0]);
        assert!(s.idx.len() <= 2);
        assert!(s.idx.windows(2).all(|w| w[0] < w[1]));
        assert!(SignatureModel::fit(shape, &pre[..2], &dec[..2], opts, 1).is_err());
    }
}
