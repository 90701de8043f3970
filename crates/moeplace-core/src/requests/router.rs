//! Decode routers for prefill/decode-disaggregated serving, behind the small
//! [`Router`] trait: after prefill, each request goes to one decode worker.
//!
//! - [`Eldr`] (docs/METHODS.md, "ELDR decode routing"): one centroid per decode
//!   worker from K-means (size-balanced by default) over calibration signatures,
//!   each centroid L2-normalised; online, the cosine similarity `s_k` of the
//!   request's signature to each centroid, the band `{k : s_k >= max s - tau}`, and
//!   the band's least-loaded worker (ties: higher similarity, then lower worker id).
//!   `tau = 0` is pure matching; with non-negative signatures similarities lie in
//!   [0, 1], so `tau = 1` is join-shortest-queue (ties broken by similarity).
//! - [`RoundRobin`], [`JoinShortestQueue`] (least loaded, ties: lower id) and
//!   [`RandomRouter`] (seeded) as baselines.
//!
//! Load is the number of requests a worker holds (decoding or waiting to join its
//! batch), as the caller passes it.
//!
//! Speed: centroids are stored worker-minor (`dims x workers`), so each signature
//! entry adds one contiguous row of `workers` numbers; a decision costs
//! `entries x workers` multiply-adds plus a pass over the workers.

use crate::synth::rng::Rng;

use super::kmeans::{kmeans, KMeansError, KMeansOptions};
use super::l2_normalise;
use super::signature::Signature;

/// Chooses a decode worker for each request.
pub trait Router {
    fn name(&self) -> String;
    /// The worker for a request with signature `sig`; `loads[w]` is worker w's load.
    fn route(&mut self, sig: &Signature, loads: &[u32]) -> usize;
}

/// Workers in turn.
#[derive(Clone, Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Router for RoundRobin {
    fn name(&self) -> String {
        "round-robin".into()
    }
    fn route(&mut self, _: &Signature, loads: &[u32]) -> usize {
        let w = self.next % loads.len();
        self.next = (w + 1) % loads.len();
        w
    }
}

/// The least-loaded worker (ties: lower id).
#[derive(Clone, Debug, Default)]
pub struct JoinShortestQueue;

impl Router for JoinShortestQueue {
    fn name(&self) -> String {
        "jsq".into()
    }
    fn route(&mut self, _: &Signature, loads: &[u32]) -> usize {
        (0..loads.len()).min_by_key(|&w| (loads[w], w)).unwrap_or(0)
    }
}

/// A uniformly random worker (seeded).
#[derive(Clone, Debug)]
pub struct RandomRouter {
    rng: Rng,
}

impl RandomRouter {
    pub fn new(seed: u64) -> Self {
        RandomRouter { rng: Rng::new(seed) }
    }
}

impl Router for RandomRouter {
    fn name(&self) -> String {
        "random".into()
    }
    fn route(&mut self, _: &Signature, loads: &[u32]) -> usize {
        self.rng.below(loads.len())
    }
}

/// The ELDR router (see the module documentation).
#[derive(Clone, Debug)]
pub struct Eldr {
    workers: usize,
    dims: usize,
    /// `dims x workers` normalised centroids, transposed.
    ct: Vec<f32>,
    pub tau: f32,
    scores: Vec<f32>,
    label: String,
}

impl Eldr {
    /// Centroids from K-means over the calibration signatures (`balanced`: each
    /// worker's centroid gets at most `ceil(N / workers)` of them).
    pub fn fit(
        signatures: &[Signature],
        dims: usize,
        workers: usize,
        balanced: bool,
        tau: f32,
        seed: u64,
    ) -> Result<Eldr, KMeansError> {
        let points: Vec<f32> = signatures.iter().flat_map(|s| s.dense(dims)).collect();
        let km = kmeans(&points, dims, KMeansOptions::new(workers, balanced, seed))?;
        let mut e = Eldr::from_centroids(&km.centroids, dims, tau);
        e.label = format!("eldr(tau={tau}{})", if balanced { "" } else { ", plain k-means" });
        Ok(e)
    }

    /// From `workers x dims` centroids (normalised here).
    pub fn from_centroids(centroids: &[f32], dims: usize, tau: f32) -> Eldr {
        let workers = centroids.len() / dims.max(1);
        let mut ct = vec![0f32; dims * workers];
        for w in 0..workers {
            let mut c = centroids[w * dims..(w + 1) * dims].to_vec();
            l2_normalise(&mut c);
            for (d, &x) in c.iter().enumerate() {
                ct[d * workers + w] = x;
            }
        }
        Eldr { workers, dims, ct, tau, scores: vec![0.0; workers], label: format!("eldr(tau={tau})") }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Cosine similarity of `sig` to every worker's centroid.
    pub fn similarities(&mut self, sig: &Signature) -> &[f32] {
        let w = self.workers;
        self.scores.iter_mut().for_each(|s| *s = 0.0);
        for (&i, &v) in sig.idx.iter().zip(&sig.val) {
            let row = &self.ct[i as usize * w..(i as usize + 1) * w];
            self.scores.iter_mut().zip(row).for_each(|(s, &c)| *s += v * c);
        }
        &self.scores
    }
}

impl Router for Eldr {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn route(&mut self, sig: &Signature, loads: &[u32]) -> usize {
        let tau = self.tau;
        let s = self.similarities(sig);
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let floor = max - tau;
        let mut best = 0usize;
        let mut best_key = (u32::MAX, f32::NEG_INFINITY);
        for (w, (&sw, &lw)) in s.iter().zip(loads).enumerate() {
            if sw >= floor && (lw < best_key.0 || (lw == best_key.0 && sw > best_key.1)) {
                best = w;
                best_key = (lw, sw);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(idx: &[u32], val: &[f32]) -> Signature {
        let mut val = val.to_vec();
        l2_normalise(&mut val);
        Signature { idx: idx.to_vec(), val }
    }

    #[test]
    fn eldr_band_and_baselines() {
        // Worker 0 ~ dimension 0, worker 1 ~ dimension 1, worker 2 ~ both.
        let c = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let s = sig(&[0], &[1.0]);
        let mut pure = Eldr::from_centroids(&c, 2, 0.0);
        assert_eq!(pure.route(&s, &[9, 0, 0]), 0, "tau 0 ignores load");
        let mut band = Eldr::from_centroids(&c, 2, 0.4);
        // Similarities 1, 0, 0.707: the band {0, 2}; worker 2 is less loaded.
        assert_eq!(band.route(&s, &[9, 0, 1]), 2);
        assert_eq!(band.route(&s, &[1, 0, 1]), 0, "tie on load goes to the higher similarity");
        let mut jsq_like = Eldr::from_centroids(&c, 2, 2.0);
        assert_eq!(jsq_like.route(&s, &[9, 0, 1]), 1);
        let mut rr = RoundRobin::default();
        assert_eq!((0..4).map(|_| rr.route(&s, &[0, 0, 0])).collect::<Vec<_>>(), vec![0, 1, 2, 0]);
        assert_eq!(JoinShortestQueue.route(&s, &[3, 1, 1]), 1);
        let mut a = RandomRouter::new(5);
        let mut b = RandomRouter::new(5);
        let ra: Vec<usize> = (0..20).map(|_| a.route(&s, &[0; 4])).collect();
        assert_eq!(ra, (0..20).map(|_| b.route(&s, &[0; 4])).collect::<Vec<_>>());
        assert!(ra.iter().all(|&w| w < 4));
    }

    #[test]
    fn eldr_fit_separates_two_groups() {
        let sigs: Vec<Signature> =
            (0..20).map(|i| if i % 2 == 0 { sig(&[0, 2], &[1.0, 0.1]) } else { sig(&[1, 2], &[1.0, 0.1]) }).collect();
        let mut e = Eldr::fit(&sigs, 3, 2, true, 0.0, 1).unwrap();
        let a = e.route(&sigs[0], &[0, 0]);
        let b = e.route(&sigs[1], &[0, 0]);
        assert_ne!(a, b);
    }
}
