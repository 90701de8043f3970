//! Property tests of the replay simulator: replaying twice gives identical metrics
//! (whatever the thread count), and relabelling GPUs consistently (nodes permuted,
//! GPUs permuted within nodes, the placement and family homes moved with them)
//! leaves every metric unchanged.

#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

use moeplace_core::cluster::Cluster;
use moeplace_core::dispatch;
use moeplace_core::placement::Placement;
use moeplace_core::simulate::{simulate, HomePolicy, SimResult};
use moeplace_core::trace::{ModelShape, TokenBatch, TokenRef, Trace};
use proptest::prelude::*;

/// A small deterministic generator for test inputs.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.next(i + 1);
            v.swap(i, j);
        }
    }
}

fn trace(shape: ModelShape, requests: usize, seed: u64) -> Trace {
    let mut rng = Lcg(seed);
    let mut b = TokenBatch::new(shape);
    let fams = ["code", "math", "law"];
    let names: Vec<String> = (0..requests).map(|r| format!("req{r}")).collect();
    for t in 0..requests * 6 {
        let r = rng.next(requests);
        let mut ids = Vec::new();
        for _ in 0..shape.layers {
            let mut all: Vec<u16> = (0..shape.experts as u16).collect();
            rng.shuffle(&mut all);
            ids.extend_from_slice(&all[..shape.top_k]);
        }
        b.push(TokenRef {
            request: &names[r],
            family: Some(fams[r % 3]),
            phase: None,
            position: t as u32,
            experts: &ids,
            gate_weights: None,
        })
        .unwrap();
    }
    Trace { shape, batches: vec![b] }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn same_metrics(a: &SimResult, b: &SimResult) -> bool {
    a.counts == b.counts
        && a.bytes == b.bytes
        && close(a.jain, b.jain)
        && close(a.balancedness, b.balancedness)
        && close(a.maxvio, b.maxvio)
        && close(a.home_max_over_mean, b.home_max_over_mean)
        && close(a.all_to_all_us, b.all_to_all_us)
        && close(a.compute_us, b.compute_us)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn replay_is_deterministic(nodes in 1usize..4, per in 1usize..4, extra in 0usize..3, seed in 0u64..1000) {
        let gpus = nodes * per;
        let experts = gpus * 2;
        let spg = 2 + extra.min(experts - 2);
        let shape = ModelShape::new(3, experts, 2.min(experts)).unwrap();
        let t = trace(shape, 7, seed);
        let mut rng = Lcg(seed);
        // Primaries in a random order, then each GPU's spare slots take experts it lacks.
        let mut order: Vec<usize> = (0..experts).collect();
        rng.shuffle(&mut order);
        let mut lists: Vec<Vec<usize>> = order.chunks(2).map(|c| c.to_vec()).collect();
        for (g, l) in lists.iter_mut().enumerate() {
            let mut x = (g * 5 + 1) % experts;
            while l.len() < spg {
                if !l.contains(&x) { l.push(x); }
                x = (x + 1) % experts;
            }
        }
        let p = Placement::from_gpu_lists(experts, &vec![lists; 3]).unwrap();
        let c = Cluster::new(nodes, gpus, spg).unwrap();
        for d in dispatch::registry(seed) {
            let a = simulate(&t, &p, &c, d.as_ref(), &HomePolicy::RoundRobin).unwrap();
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let b = one.install(|| simulate(&t, &p, &c, d.as_ref(), &HomePolicy::RoundRobin).unwrap());
            prop_assert_eq!(&a, &b);
        }
    }

    #[test]
    fn metrics_survive_consistent_gpu_relabelling(nodes in 1usize..4, per in 1usize..5, spg in 1usize..4, seed in 0u64..1000) {
        let gpus = nodes * per;
        let experts = gpus * spg;
        let shape = ModelShape::new(2, experts, 2.min(experts)).unwrap();
        let t = trace(shape, 9, seed);
        let mut rng = Lcg(seed ^ 77);
        let mut row: Vec<usize> = (0..experts).collect();
        rng.shuffle(&mut row);
        let lists: Vec<Vec<usize>> = row.chunks(spg).map(|c| c.to_vec()).collect();
        // pi: node permutation sigma, and a permutation of GPUs inside each node.
        let mut sigma: Vec<usize> = (0..nodes).collect();
        rng.shuffle(&mut sigma);
        let mut pi = vec![0; gpus];
        for n in 0..nodes {
            let mut inner: Vec<usize> = (0..per).collect();
            rng.shuffle(&mut inner);
            for i in 0..per {
                pi[n * per + i] = sigma[n] * per + inner[i];
            }
        }
        let mut moved = vec![Vec::new(); gpus];
        for g in 0..gpus {
            moved[pi[g]] = lists[g].clone();
        }
        let fam: BTreeMap<String, Vec<usize>> = ["code", "math", "law"]
            .iter()
            .enumerate()
            .map(|(i, f)| (f.to_string(), (0..gpus).filter(|g| (g + i) % 2 == 0 || gpus == 1).collect()))
            .collect();
        let fam_moved: BTreeMap<String, Vec<usize>> =
            fam.iter().map(|(f, l)| (f.clone(), l.iter().map(|&g| pi[g]).collect())).collect();
        let c = Cluster::new(nodes, gpus, spg).unwrap();
        let p = Placement::from_gpu_lists(experts, &vec![lists; 2]).unwrap();
        let q = Placement::from_gpu_lists(experts, &vec![moved; 2]).unwrap();
        for d in dispatch::registry(seed) {
            let a = simulate(&t, &p, &c, d.as_ref(), &HomePolicy::Family(fam.clone())).unwrap();
            let b = simulate(&t, &q, &c, d.as_ref(), &HomePolicy::Family(fam_moved.clone())).unwrap();
            prop_assert!(same_metrics(&a, &b), "{}: {:?} vs {:?}", d.name(), a.counts, b.counts);
            for g in 0..gpus {
                prop_assert_eq!(a.home_tokens[g], b.home_tokens[pi[g]]);
                prop_assert_eq!(a.layers[0].load[g], b.layers[0].load[pi[g]]);
            }
        }
    }
}
