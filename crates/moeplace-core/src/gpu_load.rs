//! Expected GPU loads of a placement and the balance figures serving engines log.
//!
//! The load model is the one DeepSeek's EPLB balances: an expert's load is split
//! evenly over its copies, and a GPU's load is the sum of its copies' shares. From
//! the per-layer GPU loads:
//! - vLLM balancedness: sum over layers of the mean GPU load / sum over layers of the
//!   maximum GPU load;
//! - SGLang balancedness: the mean over layers of (mean / max);
//! - max/mean: the mean over layers of (max / mean);
//! - the lower bound ([`layer_lower_bound`]) of the maximum GPU load any placement with
//!   the same GPUs and slots can reach, reported as the mean over layers of
//!   (bound / mean), i.e. the best max/mean possible.
//!
//! Layers with zero load count as perfectly balanced (1.0) in the ratios.

use crate::placement::Placement;
use crate::stats::ExpertLoads;

/// GPU loads `[layers][gpus]` of `placement` under `loads` (summed over steps),
/// each expert's load split evenly over its copies.
pub fn expected_gpu_loads(placement: &Placement, loads: &ExpertLoads) -> Vec<Vec<f64>> {
    (0..placement.layers())
        .map(|l| {
            let w = loads.layer_total(l);
            let cnt: Vec<usize> = (0..placement.experts()).map(|e| placement.replicas(l, e).len()).collect();
            (0..placement.gpus())
                .map(|g| placement.gpu_experts(l, g).iter().map(|&e| w[e as usize] / cnt[e as usize] as f64).sum())
                .collect()
        })
        .collect()
}

/// A lower bound on the maximum GPU load of any placement of one layer's loads `w`
/// on `gpus` GPUs with `slots` slots in all, copies split evenly and never two
/// copies of one expert on one GPU. It is the largest of: the mean GPU load; each
/// expert's load over its largest possible copy count (a copy's GPU carries at least
/// that); and the smallest T for which giving every expert ceil(load / T) copies fits
/// in the slots (a target below it leaves some copy heavier than T).
pub fn layer_lower_bound(w: &[f64], gpus: usize, slots: usize) -> f64 {
    let e = w.len();
    if e == 0 || slots < e {
        return f64::INFINITY;
    }
    let total: f64 = w.iter().sum();
    let rmax = gpus.min(slots - e + 1) as f64;
    let heaviest = w.iter().fold(0.0f64, |a, &b| a.max(b));
    let mut lb = (total / gpus as f64).max(heaviest / rmax);
    let fits = |t: f64| {
        let mut need = 0usize;
        for &x in w {
            need += ((x / t).ceil() as usize).max(1);
            if need > slots {
                return false;
            }
        }
        true
    };
    if heaviest > 0.0 && !fits(lb) {
        // Bisection between an infeasible and a feasible target (heaviest always fits).
        let (mut lo, mut hi) = (lb, heaviest);
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if fits(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        lb = lo;
    }
    lb
}

/// Per-step max/mean: the mean over layers and steps of (largest GPU load in that step
/// / mean GPU load in that step), each step's expert loads split evenly over copies.
/// With one step it equals [`LoadFigures::max_over_mean`]. This is the straggler
/// a serving engine sees step by step, which the summed loads can hide.
pub fn per_step_max_over_mean(placement: &Placement, loads: &ExpertLoads) -> f64 {
    let e = loads.experts;
    let (mut sum, mut n) = (0.0, 0usize);
    for l in 0..placement.layers() {
        let cnt: Vec<usize> = (0..e).map(|x| placement.replicas(l, x).len()).collect();
        for step in &loads.steps {
            let w = &step[l * e..(l + 1) * e];
            let per_gpu: Vec<f64> = (0..placement.gpus())
                .map(|g| placement.gpu_experts(l, g).iter().map(|&x| w[x as usize] / cnt[x as usize] as f64).sum())
                .collect();
            let mean = per_gpu.iter().sum::<f64>() / per_gpu.len() as f64;
            let max = per_gpu.iter().fold(0.0f64, |a, &b| a.max(b));
            sum += if max > 0.0 { max / mean } else { 1.0 };
            n += 1;
        }
    }
    sum / n.max(1) as f64
}

/// The best max/mean any placement of `loads` on `gpus` GPUs with `slots` slots can
/// reach: the mean over layers of ([`layer_lower_bound`] / mean GPU load); a layer
/// without load counts as 1.
pub fn bound_max_over_mean(loads: &ExpertLoads, gpus: usize, slots: usize) -> f64 {
    let layers = loads.layers.max(1) as f64;
    (0..loads.layers)
        .map(|l| {
            let w = loads.layer_total(l);
            let mean = w.iter().sum::<f64>() / gpus as f64;
            if mean > 0.0 {
                layer_lower_bound(&w, gpus, slots) / mean
            } else {
                1.0
            }
        })
        .sum::<f64>()
        / layers
}

/// Balance figures of one placement (module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadFigures {
    pub balancedness_vllm: f64,
    pub balancedness_sglang: f64,
    pub max_over_mean: f64,
    /// Mean over layers of (lower bound / mean GPU load): the best max/mean possible.
    pub bound_max_over_mean: f64,
    /// Largest GPU load of any layer.
    pub max_load: f64,
}

impl LoadFigures {
    /// The figures as `(name, value)` pairs, for plan notes and JSON output.
    pub fn named(&self) -> [(&'static str, f64); 4] {
        [
            ("balancedness_vllm", self.balancedness_vllm),
            ("balancedness_sglang", self.balancedness_sglang),
            ("max_over_mean", self.max_over_mean),
            ("bound_max_over_mean", self.bound_max_over_mean),
        ]
    }
}

/// The balance figures of `placement` under `loads`.
pub fn load_figures(placement: &Placement, loads: &ExpertLoads) -> LoadFigures {
    let per_gpu = expected_gpu_loads(placement, loads);
    let layers = per_gpu.len().max(1) as f64;
    let (mut sum_mean, mut sum_max, mut sglang, mut mom, mut max_load) = (0.0, 0.0, 0.0, 0.0, 0.0f64);
    for g in &per_gpu {
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        let max = g.iter().fold(0.0f64, |a, &b| a.max(b));
        sum_mean += mean;
        sum_max += max;
        max_load = max_load.max(max);
        if max > 0.0 {
            sglang += mean / max;
            mom += max / mean;
        } else {
            sglang += 1.0;
            mom += 1.0;
        }
    }
    LoadFigures {
        balancedness_vllm: if sum_max > 0.0 { sum_mean / sum_max } else { 1.0 },
        balancedness_sglang: sglang / layers,
        max_over_mean: mom / layers,
        bound_max_over_mean: bound_max_over_mean(loads, placement.gpus(), placement.slots()),
        max_load,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_by_hand() {
        // Layer 0: loads 4,2,1,1 on 2 GPUs x 2 slots: GPU0 {0,1}=6, GPU1 {2,3}=2.
        // Layer 1: loads 1,1,1,1: both GPUs 2.
        let p = Placement::new(4, 2, 2, vec![vec![0, 1, 2, 3], vec![0, 1, 2, 3]]).unwrap();
        let loads = ExpertLoads::new(2, 4, vec![vec![4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]).unwrap();
        assert_eq!(expected_gpu_loads(&p, &loads), vec![vec![6.0, 2.0], vec![2.0, 2.0]]);
        let f = load_figures(&p, &loads);
        assert!((f.balancedness_vllm - (4.0 + 2.0) / (6.0 + 2.0)).abs() < 1e-12);
        assert!((f.balancedness_sglang - (4.0 / 6.0 + 1.0) / 2.0).abs() < 1e-12);
        assert!((f.max_over_mean - (1.5 + 1.0) / 2.0).abs() < 1e-12);
        // Bound of layer 0: mean 4, heaviest 4 / min(2, 1) = 4, so 4 / 4 = 1.
        assert!((f.bound_max_over_mean - 1.0).abs() < 1e-12);
        assert!((per_step_max_over_mean(&p, &loads) - f.max_over_mean).abs() < 1e-12);
        // Two steps that peak on different GPUs: balanced in sum, 2.0 in each step.
        let steps = ExpertLoads::new(1, 4, vec![vec![1.0, 1.0, 0.0, 0.0], vec![0.0, 0.0, 1.0, 1.0]]).unwrap();
        let one = Placement::new(4, 2, 2, vec![vec![0, 1, 2, 3]]).unwrap();
        assert!((load_figures(&one, &steps).max_over_mean - 1.0).abs() < 1e-12);
        assert!((per_step_max_over_mean(&one, &steps) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn bound_counts_slots() {
        // 3 experts of 10 on 2 GPUs x 2 slots: one extra copy. Mean 15; heaviest
        // 10 / min(2, 2) = 5; ceil(10/T) copies each fit in 4 slots only if T >= 10.
        assert!((layer_lower_bound(&[10.0, 10.0, 10.0], 2, 4) - 15.0).abs() < 1e-9);
        // Loads 100 and 1 on 4 GPUs x 1 slot: expert 0 has at most 3 copies, so 100/3.
        assert!((layer_lower_bound(&[100.0, 1.0], 4, 4) - 100.0 / 3.0).abs() < 1e-6);
        // Loads 100, 50, 1 on 3 GPUs x 2 slots: T < 50 needs 3 + 2 + 1 = 6 slots (fits),
        // T < 100/3 needs 4 + 2 + 1 = 7 > 6, so the bound is max(mean 50.33, 100/3).
        assert!((layer_lower_bound(&[100.0, 50.0, 1.0], 3, 6) - 151.0 / 3.0).abs() < 1e-6);
        // Loads 90, 1, 1, 1 on 2 GPUs x 2 slots: no spare slot, so expert 0 has one copy.
        assert!((layer_lower_bound(&[90.0, 1.0, 1.0, 1.0], 2, 4) - 90.0).abs() < 1e-6);
    }
}
