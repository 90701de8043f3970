//! A decode simulator for prefill/decode-disaggregated serving.
//!
//! Requests arrive as a Poisson process (`rate` per second, seeded; in the order
//! given), prefill elsewhere (the prefill pool is not modelled as a bottleneck: a
//! request is ready `prefill tokens x prefill_us_per_token` after arrival), and are
//! then routed by a [`Router`] to one of `workers` decode workers, which run
//! continuous batching: a worker repeatedly runs one decode step over its batch, each
//! request in the batch emits one token per step, requests routed to it join at the
//! next step boundary (up to `max_batch` requests; 0 = unlimited), and a request
//! leaves after its last decode token. The router sees each worker's load as the
//! number of requests it holds (in the batch or waiting to join).
//!
//! Time per step (memory-bandwidth bound decode):
//! `fixed_us + distinct experts x expert_bytes / bandwidth + batch x per_token_us`,
//! where distinct experts counts, per MoE layer, the distinct experts the batch's
//! current tokens pick, summed over layers (each loaded once per step). Defaults
//! ([`DecodeModel::deepseek_v2_lite_h100`]): H100 HBM3 3.35 TB/s; an expert of
//! DeepSeek-V2-Lite in bf16 (3 matrices of 2048 x 1408, 2 bytes: 17.3 MB); 800 us per
//! step for the weights every step reads (attention, shared experts, about 1.3 B
//! parameters in bf16 at 3.35 TB/s); 10 us per token for its KV cache; prefill 50 us
//! per token.
//!
//! Reported: time per output token of each request (decode time from its first step
//! to the end of its last, over its decode tokens), median and p99 by nearest rank;
//! distinct active experts per layer per step (mean over all steps of all workers);
//! mean batch; decode tokens per worker and their max/mean and Jain index.
//! Deterministic for a seed: ties between workers go to the lower id.

use std::collections::VecDeque;

use crate::synth::rng::Rng;
use crate::trace::ModelShape;

use super::percentile;
use super::router::Router;
use super::signature::Signature;

/// The step-time model (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct DecodeModel {
    pub bandwidth_bytes_per_s: f64,
    pub expert_bytes: f64,
    pub fixed_us: f64,
    pub per_token_us: f64,
    pub prefill_us_per_token: f64,
}

impl DecodeModel {
    /// Bytes of one SwiGLU expert (3 matrices of hidden x intermediate).
    pub fn expert_bytes(hidden: usize, intermediate: usize, bytes_per_param: f64) -> f64 {
        3.0 * hidden as f64 * intermediate as f64 * bytes_per_param
    }

    /// DeepSeek-V2-Lite experts on an H100 (the defaults of the module documentation).
    pub fn deepseek_v2_lite_h100() -> DecodeModel {
        DecodeModel {
            bandwidth_bytes_per_s: 3.35e12,
            expert_bytes: Self::expert_bytes(2048, 1408, 2.0),
            fixed_us: 800.0,
            per_token_us: 10.0,
            prefill_us_per_token: 50.0,
        }
    }

    /// DeepSeek-V3 on a decode worker of 8 H100s (choices: the worker's aggregate
    /// HBM bandwidth, 8 x 3.35 TB/s; an expert in FP8, 3 matrices of 7168 x 2048 at
    /// 1 byte: 44 MB; 670 us per step for the about 18 B parameters every step reads
    /// besides routed experts (attention, shared experts, embeddings) in FP8; 10 us per
    /// token for its KV cache; prefill 50 us per token).
    pub fn deepseek_v3_h100_node() -> DecodeModel {
        DecodeModel {
            bandwidth_bytes_per_s: 8.0 * 3.35e12,
            expert_bytes: Self::expert_bytes(7168, 2048, 1.0),
            fixed_us: 670.0,
            per_token_us: 10.0,
            prefill_us_per_token: 50.0,
        }
    }

    /// Microseconds of one step loading `distinct` experts for `batch` tokens.
    pub fn step_us(&self, distinct: u64, batch: usize) -> f64 {
        self.fixed_us
            + distinct as f64 * self.expert_bytes / self.bandwidth_bytes_per_s * 1e6
            + batch as f64 * self.per_token_us
    }
}

/// The serving set-up of a decode simulation.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct DecodeConfig {
    pub workers: usize,
    /// Arrivals per second.
    pub rate: f64,
    /// Most requests in a worker's batch (0: unlimited).
    pub max_batch: usize,
    pub seed: u64,
    pub model: DecodeModel,
}

/// One request to simulate.
#[derive(Clone, Copy, Debug)]
pub struct DecodeRequest<'a> {
    pub prefill_tokens: usize,
    /// Decode tokens' picks, `token * layers * k + layer * k + slot`.
    pub decode: &'a [u16],
    pub signature: &'a Signature,
}

/// Results of one decode simulation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DecodeResult {
    pub router: String,
    pub requests: usize,
    pub steps: u64,
    /// Distinct active experts per MoE layer per decode step (mean over steps).
    pub active_experts_per_step: f64,
    pub mean_batch: f64,
    pub tpot_median_ms: f64,
    pub tpot_p99_ms: f64,
    pub tpot_mean_ms: f64,
    /// Decode tokens served by each worker.
    pub worker_tokens: Vec<u64>,
    pub load_max_over_mean: f64,
    pub load_jain: f64,
    /// Time until the last request finished.
    pub makespan_s: f64,
}

/// Why a decode simulation cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("need at least one decode worker")]
    NoWorkers,
    #[error("the arrival rate must be positive and finite, got {0}")]
    BadRate(f64),
    #[error("no request has decode tokens")]
    Empty,
    #[error("request {0}: decode picks are not a whole number of tokens")]
    BadRequest(usize),
}

struct Active {
    req: usize,
    pos: usize,
    start_us: f64,
}

/// Simulates decode of `requests` under `router`.
pub fn simulate_decode(
    shape: ModelShape,
    requests: &[DecodeRequest<'_>],
    router: &mut dyn Router,
    cfg: &DecodeConfig,
) -> Result<DecodeResult, DecodeError> {
    if cfg.workers == 0 {
        return Err(DecodeError::NoWorkers);
    }
    if !(cfg.rate > 0.0 && cfg.rate.is_finite()) {
        return Err(DecodeError::BadRate(cfg.rate));
    }
    let ppt = shape.picks_per_token();
    if let Some(i) = requests.iter().position(|r| r.decode.len() % ppt != 0) {
        return Err(DecodeError::BadRequest(i));
    }
    let (layers, k) = (shape.layers, shape.top_k);
    let words = shape.experts.div_ceil(64);
    // Arrivals, then ready times; requests without decode tokens are left out.
    let mut rng = Rng::new(cfg.seed);
    let mut t = 0.0f64;
    let mut ready: Vec<(f64, usize)> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        t += -(1.0 - rng.uniform()).ln() / cfg.rate * 1e6;
        if !r.decode.is_empty() {
            ready.push((t + r.prefill_tokens as f64 * cfg.model.prefill_us_per_token, i));
        }
    }
    if ready.is_empty() {
        return Err(DecodeError::Empty);
    }
    ready.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));

    let w = cfg.workers;
    let mut clock = vec![0f64; w];
    let mut batch: Vec<Vec<Active>> = (0..w).map(|_| Vec::new()).collect();
    let mut pending: Vec<VecDeque<usize>> = vec![VecDeque::new(); w];
    let mut loads = vec![0u32; w];
    let mut worker_tokens = vec![0u64; w];
    let mut tpot: Vec<f64> = Vec::with_capacity(ready.len());
    let mut masks = vec![0u64; layers * words];
    let (mut steps, mut distinct_sum, mut batch_sum) = (0u64, 0u64, 0u64);
    let mut next = 0usize;
    let mut makespan = 0f64;
    loop {
        let busy = (0..w).filter(|&x| loads[x] > 0).min_by(|&a, &b| clock[a].total_cmp(&clock[b]).then(a.cmp(&b)));
        let arrival = ready.get(next).copied();
        match (arrival, busy) {
            (None, None) => break,
            (Some((rt, i)), b) if b.is_none_or(|b| rt <= clock[b]) => {
                let x = router.route(requests[i].signature, &loads);
                assert!(x < w, "router chose worker {x} of {w}");
                if loads[x] == 0 {
                    clock[x] = clock[x].max(rt);
                }
                loads[x] += 1;
                pending[x].push_back(i);
                next += 1;
            }
            (_, Some(x)) => {
                let now = clock[x];
                while cfg.max_batch == 0 || batch[x].len() < cfg.max_batch {
                    let Some(i) = pending[x].pop_front() else { break };
                    batch[x].push(Active { req: i, pos: 0, start_us: now });
                }
                masks.iter_mut().for_each(|m| *m = 0);
                for a in &batch[x] {
                    let tok = &requests[a.req].decode[a.pos * ppt..(a.pos + 1) * ppt];
                    for l in 0..layers {
                        for &e in &tok[l * k..(l + 1) * k] {
                            masks[l * words + e as usize / 64] |= 1u64 << (e % 64);
                        }
                    }
                }
                let distinct: u64 = masks.iter().map(|m| m.count_ones() as u64).sum();
                let n = batch[x].len();
                let end = now + cfg.model.step_us(distinct, n);
                steps += 1;
                distinct_sum += distinct;
                batch_sum += n as u64;
                worker_tokens[x] += n as u64;
                clock[x] = end;
                let ppt_len = |i: usize| requests[i].decode.len() / ppt;
                batch[x].retain_mut(|a| {
                    a.pos += 1;
                    if a.pos == ppt_len(a.req) {
                        tpot.push((end - a.start_us) / a.pos as f64 / 1e3);
                        false
                    } else {
                        true
                    }
                });
                loads[x] = (batch[x].len() + pending[x].len()) as u32;
                makespan = makespan.max(end);
            }
            _ => unreachable!("an arrival without a busy worker is routed above"),
        }
    }
    let total: u64 = worker_tokens.iter().sum();
    let mean = total as f64 / w as f64;
    let max = worker_tokens.iter().copied().max().unwrap_or(0) as f64;
    let sq: f64 = worker_tokens.iter().map(|&x| (x as f64) * (x as f64)).sum();
    Ok(DecodeResult {
        router: router.name(),
        requests: tpot.len(),
        steps,
        active_experts_per_step: distinct_sum as f64 / steps as f64 / layers as f64,
        mean_batch: batch_sum as f64 / steps as f64,
        tpot_median_ms: percentile(&tpot, 50.0).unwrap_or(0.0),
        tpot_p99_ms: percentile(&tpot, 99.0).unwrap_or(0.0),
        tpot_mean_ms: tpot.iter().sum::<f64>() / tpot.len() as f64,
        load_max_over_mean: if mean > 0.0 { max / mean } else { 1.0 },
        load_jain: if sq > 0.0 { (total as f64) * (total as f64) / (w as f64 * sq) } else { 1.0 },
        worker_tokens,
        makespan_s: makespan / 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::router::{JoinShortestQueue, RoundRobin};

    fn model() -> DecodeModel {
        DecodeModel {
            bandwidth_bytes_per_s: 1e6,
            expert_bytes: 1000.0,
            fixed_us: 0.0,
            per_token_us: 0.0,
            prefill_us_per_token: 0.0,
        }
    }

    #[test]
    fn one_request_one_worker_by_hand() {
        // 1 layer, 4 experts, top-2; 3 decode tokens, each picking 2 experts: a step
        // loads 2 experts = 2000 bytes at 1e6 B/s = 2000 us.
        let shape = ModelShape::new(1, 4, 2).unwrap();
        let sig = Signature::default();
        let dec = [0u16, 1, 2, 3, 0, 2];
        let reqs = [DecodeRequest { prefill_tokens: 1, decode: &dec, signature: &sig }];
        let cfg = DecodeConfig { workers: 1, rate: 1.0, max_batch: 0, seed: 1, model: model() };
        let r = simulate_decode(shape, &reqs, &mut RoundRobin::default(), &cfg).unwrap();
        assert_eq!(r.steps, 3);
        assert!((r.active_experts_per_step - 2.0).abs() < 1e-12);
        assert!((r.tpot_median_ms - 2.0).abs() < 1e-9);
        assert_eq!(r.worker_tokens, vec![3]);
    }

    #[test]
    fn shared_experts_are_loaded_once_and_results_repeat() {
        let shape = ModelShape::new(1, 4, 1).unwrap();
        let sig = Signature::default();
        let same = [0u16; 50];
        let other = [1u16; 50];
        // Many requests at a high rate on one worker: batches mix; all same experts
        // load 1 expert per step, a mix of two loads 2.
        let a: Vec<DecodeRequest> =
            (0..20).map(|_| DecodeRequest { prefill_tokens: 0, decode: &same, signature: &sig }).collect();
        let mut b = a.clone();
        for r in b.iter_mut().skip(1).step_by(2) {
            r.decode = &other;
        }
        let cfg = DecodeConfig { workers: 1, rate: 1e4, max_batch: 0, seed: 2, model: model() };
        let ra = simulate_decode(shape, &a, &mut JoinShortestQueue, &cfg).unwrap();
        let rb = simulate_decode(shape, &b, &mut JoinShortestQueue, &cfg).unwrap();
        assert!((ra.active_experts_per_step - 1.0).abs() < 1e-12);
        assert!(rb.active_experts_per_step > 1.5);
        assert!(rb.tpot_median_ms > ra.tpot_median_ms);
        assert_eq!(ra.requests, 20);
        assert_eq!(rb, simulate_decode(shape, &b, &mut JoinShortestQueue, &cfg).unwrap());
        let bad = DecodeConfig { rate: 0.0, ..cfg };
        assert_eq!(simulate_decode(shape, &a, &mut JoinShortestQueue, &bad), Err(DecodeError::BadRate(0.0)));
    }
}
