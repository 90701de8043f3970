//! The compiled generative model and the streaming generator (see the parent module).

use std::sync::Arc;

use rayon::prelude::*;

use super::rng::{derive, hash_name, Alias, Rng};
use super::{Knobs, LayerTable, Links, SynthConfig, SynthError};
use crate::trace::{BatchColumns, ModelShape, Phase, TokenBatch};

/// Streams of the structure seed.
const STREAM_LAYER: u64 = 1;
const STREAM_FAMILY: u64 = 2;
/// Streams of a request.
const STREAM_PLAN: u64 = 0;
const STREAM_TOKENS: u64 = 1;

/// Tries before a pick gives up drawing and takes the next free expert.
const MAX_TRIES: u32 = 48;

/// Per-family tables of every layer, ready to sample from.
pub(crate) struct Model {
    pub shape: ModelShape,
    /// One per family of the mix, in mix order.
    pub families: Vec<(String, Vec<LayerTable>)>,
    /// Cumulative mix weights, normalised.
    pub mix_cum: Vec<f64>,
    pub cluster_affinity: Vec<f64>,
    pub layer_affinity: Vec<f64>,
    pub request_variation: f64,
    pub decode_drift: f64,
}

impl Model {
    pub fn compile(config: &SynthConfig) -> Result<Model, SynthError> {
        config.validate()?;
        let shape = config.shape;
        let total: f64 = config.families.iter().map(|f| f.weight).sum();
        let mut acc = 0.0;
        let mix_cum = config
            .families
            .iter()
            .map(|f| {
                acc += f.weight / total;
                acc
            })
            .collect();
        let (families, cluster_affinity, layer_affinity) = match config.active_profile() {
            Some(p) => {
                let fams = config
                    .families
                    .iter()
                    .map(|f| {
                        let fitted = p.families.iter().find(|g| g.name == f.name).expect("validated");
                        (f.name.clone(), fitted.layers.clone())
                    })
                    .collect();
                (fams, p.cluster_affinity.clone(), p.layer_affinity.clone())
            }
            None => {
                let fams = config
                    .families
                    .iter()
                    .map(|f| (f.name.clone(), knob_tables(shape, &config.knobs, config.structure_seed, &f.name)))
                    .collect();
                (
                    fams,
                    vec![config.knobs.cluster_affinity; shape.layers],
                    vec![config.knobs.layer_affinity; shape.layers],
                )
            }
        };
        Ok(Model {
            shape,
            families,
            mix_cum,
            cluster_affinity,
            layer_affinity,
            request_variation: config.knobs.request_variation,
            decode_drift: config.knobs.decode_drift,
        })
    }
}

/// Count of a fraction of `n`, at least `min` and at most `n`.
fn count_of(frac: f64, n: usize, min: usize) -> usize {
    ((frac * n as f64).round() as usize).max(min).min(n)
}

/// The layer structure shared by all families: popularity ranking and generic experts.
fn layer_base(shape: ModelShape, knobs: &Knobs, seed: u64, layer: usize) -> Vec<f64> {
    let e = shape.experts;
    let mut rng = Rng::new(derive(seed, &[STREAM_LAYER, layer as u64]));
    let rank = rng.permutation(e);
    let mut w: Vec<f64> = (0..e).map(|x| ((rank[x] + 1) as f64).powf(-knobs.skew)).collect();
    let generic = count_of(knobs.generic_experts, e, 0);
    for &g in rng.permutation(e).iter().take(generic) {
        w[g] *= knobs.generic_boost;
    }
    w
}

/// One family's tables built from the knobs.
fn knob_tables(shape: ModelShape, knobs: &Knobs, seed: u64, family: &str) -> Vec<LayerTable> {
    let (l, e) = (shape.layers, shape.experts);
    let fam = hash_name(family);
    let weights: Vec<Vec<f64>> = (0..l)
        .map(|layer| {
            let mut w = layer_base(shape, knobs, seed, layer);
            let mut rng = Rng::new(derive(seed, &[STREAM_FAMILY, fam, layer as u64, 0]));
            let preferred = if knobs.family_experts > 0.0 { count_of(knobs.family_experts, e, 1) } else { 0 };
            for &p in rng.permutation(e).iter().take(preferred) {
                w[p] *= knobs.family_boost;
            }
            let s = knobs.family_noise;
            for x in w.iter_mut() {
                *x *= (s * rng.normal() - s * s / 2.0).exp();
            }
            w
        })
        .collect();
    (0..l)
        .map(|layer| {
            let mut rng = Rng::new(derive(seed, &[STREAM_FAMILY, fam, layer as u64, 1]));
            // Clusters: a random partition into groups of cluster_size.
            let c = knobs.cluster_size.min(e);
            let perm = rng.permutation(e);
            let mut partners = vec![Vec::new(); e];
            for group in perm.chunks(c) {
                for &a in group {
                    partners[a] = group.iter().filter(|&&b| b != a).map(|&b| (b as u16, 1.0)).collect();
                }
            }
            // Successors: drawn from the family's popularity at the next layer.
            let mut successors = vec![Vec::new(); e];
            if layer + 1 < l {
                let next = Alias::new(&weights[layer + 1]);
                let n = knobs.layer_successors.min(e);
                for list in successors.iter_mut() {
                    let mut tries = 0;
                    while list.len() < n && tries < 64 * n {
                        let s = next.sample(rng.next_u64());
                        if !list.iter().any(|x: &(u16, f64)| x.0 == s) {
                            list.push((s, 1.0));
                        }
                        tries += 1;
                    }
                }
            }
            LayerTable {
                weights: weights[layer].clone(),
                partners: Links::new(&partners),
                successors: Links::new(&successors),
            }
        })
        .collect()
}

/// What a request is: its family and lengths (drawn from the request's plan stream,
/// cheap, so the stream can count tokens before generating them).
#[derive(Clone, Copy, Debug)]
struct Plan {
    index: u64,
    family: usize,
    prefill: u32,
    decode: u32,
}

fn plan(model: &Model, config: &SynthConfig, seed: u64, index: u64) -> Plan {
    let mut rng = Rng::new(derive(seed, &[STREAM_PLAN, index]));
    let u = rng.uniform();
    let family = model.mix_cum.iter().position(|&c| u < c).unwrap_or(model.mix_cum.len() - 1);
    // A family of weight 0 has cumulative weight equal to the previous one, so it is
    // never chosen; the fallback above is the last family of positive weight.
    let family = last_positive(&model.mix_cum, family);
    let prefill = config.prefill_len.sample(&mut rng);
    let decode = config.decode_len.sample(&mut rng);
    Plan { index, family, prefill, decode }
}

fn last_positive(cum: &[f64], mut i: usize) -> usize {
    while i > 0 && cum[i] <= cum[i - 1] {
        i -= 1;
    }
    i
}

/// The expert ids of one request's tokens (prefill then decode), token-major.
///
/// Generated layer by layer over the request's tokens (so one layer's tables stay in
/// cache), then written token-major; a token's picks at the previous layer are kept
/// for the successor moves.
fn request_tokens(model: &Model, seed: u64, p: &Plan) -> Vec<u16> {
    let shape = model.shape;
    let (l, e, k) = (shape.layers, shape.experts, shape.top_k);
    let tables = &model.families[p.family].1;
    let mut rng = Rng::new(derive(seed, &[STREAM_TOKENS, p.index]));
    let sv = model.request_variation;
    let sd = model.decode_drift;
    let mut prefill_alias = Vec::with_capacity(l);
    let mut decode_alias = Vec::with_capacity(l);
    let mut w = vec![0.0; e];
    let mut z = Vec::with_capacity(2 * e);
    for t in tables {
        z.clear();
        while z.len() < 2 * e {
            let (a, b) = rng.normal_pair();
            z.push(a);
            z.push(b);
        }
        for ((x, &base), &zv) in w.iter_mut().zip(&t.weights).zip(&z[..e]) {
            *x = base * (sv * zv - sv * sv / 2.0).exp();
        }
        if p.prefill > 0 {
            prefill_alias.push(Alias::new(&with_floor(&w)));
        }
        if p.decode > 0 {
            let d: Vec<f64> = w.iter().zip(&z[e..]).map(|(&x, &zd)| x * (sd * zd - sd * sd / 2.0).exp()).collect();
            decode_alias.push(Alias::new(&with_floor(&d)));
        }
    }
    let n = (p.prefill + p.decode) as usize;
    let mut out = vec![0u16; n * l * k];
    let mut cur = vec![0u16; n * k];
    let mut prev = vec![0u16; n * k];
    let mut mark = vec![0u32; e];
    let mut stamp = 0u32;
    let scale = 4_294_967_296.0;
    for layer in 0..l {
        let ac = model.cluster_affinity[layer];
        let cluster_below = (ac * scale) as u64;
        let layer_below =
            if layer > 0 { ((ac + model.layer_affinity[layer]) * scale).min(scale - 1.0) as u64 } else { 0 };
        let partners = &tables[layer].partners;
        let successors = &tables[layer.saturating_sub(1)].successors;
        for t in 0..n {
            let alias = if t < p.prefill as usize { &prefill_alias[layer] } else { &decode_alias[layer] };
            stamp = stamp.wrapping_add(1);
            if stamp == 0 {
                mark.fill(0);
                stamp = 1;
            }
            let picks = &mut cur[t * k..(t + 1) * k];
            let before = &prev[t * k..(t + 1) * k];
            for s in 0..k {
                let mut tries = 0;
                let chosen = loop {
                    let r = rng.next_u64();
                    let u = r >> 32;
                    let low = r as u32;
                    let cand = if s > 0 && u < cluster_below {
                        let src = picks[((low & 0xFFFF) as usize * s) >> 16];
                        partners.pick(src as usize, low >> 16)
                    } else if u < layer_below {
                        let src = before[((low & 0xFFFF) as usize * k) >> 16];
                        successors.pick(src as usize, low >> 16)
                    } else {
                        None
                    };
                    let cand = match cand {
                        Some(c) => c,
                        None => alias.sample(rng.next_u64()),
                    };
                    if mark[cand as usize] != stamp {
                        break cand;
                    }
                    tries += 1;
                    if tries >= MAX_TRIES {
                        // Nearly everything drawable is taken: the next free expert.
                        let start = rng.below(e);
                        break (0..e)
                            .map(|i| ((start + i) % e) as u16)
                            .find(|&x| mark[x as usize] != stamp)
                            .expect("k <= experts leaves a free expert");
                    }
                };
                mark[chosen as usize] = stamp;
                picks[s] = chosen;
            }
        }
        for (t, picks) in cur.chunks_exact(k).enumerate() {
            let at = (t * l + layer) * k;
            out[at..at + k].copy_from_slice(picks);
        }
        std::mem::swap(&mut cur, &mut prev);
    }
    out
}

/// Weights with a tiny floor so every expert stays drawable (top-k = experts works).
fn with_floor(w: &[f64]) -> Vec<f64> {
    let max = w.iter().cloned().fold(0.0, f64::max);
    let min = if max > 0.0 { max * 1e-9 } else { 1.0 };
    w.iter().map(|&x| if x.is_finite() { x.max(min) } else { min }).collect()
}

/// The stream of batches of [`generate`].
pub struct SynthStream {
    model: Arc<Model>,
    config: SynthConfig,
    seed: u64,
    next_request: u64,
    emitted: u64,
    family_names: Vec<String>,
}

/// Generates the workload of `config` with traffic seed `seed`: batches of about
/// `config.batch_tokens` tokens, each holding whole requests, named
/// `<config.request_prefix><index>`.
/// Fails only on invalid parameters (checked before anything is generated).
pub fn generate(config: &SynthConfig, seed: u64) -> Result<SynthStream, SynthError> {
    let model = Model::compile(config)?;
    let family_names = model.families.iter().map(|f| f.0.clone()).collect();
    Ok(SynthStream { model: Arc::new(model), config: config.clone(), seed, next_request: 0, emitted: 0, family_names })
}

impl SynthStream {
    fn done(&self) -> bool {
        match self.config.tokens {
            Some(t) => self.emitted >= t,
            None => self.next_request >= self.config.requests as u64,
        }
    }
}

impl Iterator for SynthStream {
    type Item = TokenBatch;

    fn next(&mut self) -> Option<TokenBatch> {
        // Plan requests until the batch is full, skipping empty ones.
        let mut plans = Vec::new();
        let mut planned = 0u64;
        while !self.done() && planned < self.config.batch_tokens as u64 {
            let mut p = plan(&self.model, &self.config, self.seed, self.next_request);
            self.next_request += 1;
            if let Some(limit) = self.config.tokens {
                let left = limit - self.emitted;
                let n = (p.prefill + p.decode) as u64;
                if n > left {
                    let left = left as u32;
                    p.decode = p.decode.min(left.saturating_sub(p.prefill));
                    p.prefill = p.prefill.min(left);
                }
            }
            let n = (p.prefill + p.decode) as u64;
            if n == 0 {
                continue;
            }
            self.emitted += n;
            planned += n;
            plans.push(p);
        }
        if plans.is_empty() {
            return None;
        }
        let model = &self.model;
        let seed = self.seed;
        let ids: Vec<Vec<u16>> = plans.par_iter().map(|p| request_tokens(model, seed, p)).collect();
        let total = planned as usize;
        let mut c = BatchColumns {
            request_names: plans.iter().map(|p| format!("{}{}", self.config.request_prefix, p.index)).collect(),
            family_names: self.family_names.clone(),
            request: Vec::with_capacity(total),
            family: Vec::with_capacity(total),
            phase: Vec::with_capacity(total),
            position: Vec::with_capacity(total),
            experts: Vec::with_capacity(total * self.model.shape.picks_per_token()),
            gate_weights: None,
        };
        for (r, (p, ids)) in plans.iter().zip(ids).enumerate() {
            for t in 0..p.prefill + p.decode {
                c.request.push(r as u32);
                c.family.push(Some(p.family as u32));
                c.phase.push(Some(if t < p.prefill { Phase::Prefill } else { Phase::Decode }));
                c.position.push(t);
            }
            c.experts.extend_from_slice(&ids);
        }
        Some(TokenBatch::from_columns(self.model.shape, c).expect("the generator builds valid batches"))
    }
}
