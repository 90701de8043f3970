//! Property tests of the grouping placers (`grace` in its variants, `coact`, `tacg`,
//! `tacg+gesr`) on random shapes, clusters and traces: every plan passes the
//! placement validator (every expert present, each GPU's exact slot count, no two
//! copies of an expert on one GPU), the family groups of the family-aware placers
//! cover only real GPUs, and planning twice gives the same plan. Also: every
//! placer's documented parameter defaults (`moeplace placers`) are the values it
//! uses when the parameter is left out.

use moeplace_core::cluster::Cluster;
use moeplace_core::placement::Placement;
use moeplace_core::placers::{by_name, Params, PlacerInput, PlacerOutput};
use moeplace_core::stats::{ProfileOptions, Statistics};
use moeplace_core::trace::{ModelShape, TokenBatch, TokenRef};
use proptest::prelude::*;

/// A small deterministic generator for test inputs.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Statistics (with a token-path sample) of a random trace with two or three
/// families whose picks lean to different experts.
fn statistics(shape: ModelShape, tokens: usize, seed: u64) -> Statistics {
    let mut rng = Lcg(seed);
    let mut batch = TokenBatch::new(shape);
    let families = ["code", "math", "law"];
    let names: Vec<String> = (0..12).map(|r| format!("req{r}")).collect();
    for t in 0..tokens {
        let r = rng.next(names.len());
        let family = r % (2 + (seed % 2) as usize);
        let mut ids = Vec::with_capacity(shape.layers * shape.top_k);
        for _ in 0..shape.layers {
            let mut picked: Vec<u16> = Vec::with_capacity(shape.top_k);
            while picked.len() < shape.top_k {
                // Half of the picks from the family's end of the expert range.
                let x = if rng.next(2) == 0 {
                    (family * shape.experts / 3 + rng.next(shape.experts.div_ceil(2))) % shape.experts
                } else {
                    rng.next(shape.experts)
                } as u16;
                if !picked.contains(&x) {
                    picked.push(x);
                }
            }
            ids.extend_from_slice(&picked);
        }
        batch
            .push(TokenRef {
                request: &names[r],
                family: Some(families[family]),
                phase: None,
                position: t as u32,
                experts: &ids,
                gate_weights: None,
            })
            .unwrap();
    }
    let options = ProfileOptions { request_vectors: true, ..Default::default() };
    Statistics::from_batches(shape, options, [&batch]).unwrap()
}

fn place(placer: &str, stats: &Statistics, cluster: &Cluster, params: &[&str]) -> PlacerOutput {
    let params = Params::parse(params.iter().copied()).unwrap();
    let loads = stats.loads(|_| true);
    let input = PlacerInput {
        shape: stats.shape(),
        cluster,
        loads: &loads,
        stats: Some(stats),
        previous: None,
        params: &params,
        seed: 0,
    };
    by_name(placer).unwrap().place(&input).unwrap_or_else(|e| panic!("{placer} {params:?}: {e}"))
}

/// Passing a documented default explicitly gives the plan of leaving it out.
#[test]
fn documented_defaults_are_the_defaults() {
    let shape = ModelShape::new(2, 12, 3).unwrap();
    let stats = statistics(shape, 200, 4);
    let cluster = Cluster::new(2, 4, 1).unwrap().with_slots(16).unwrap();
    let mut checked = 0;
    for placer in moeplace_core::placers::registry() {
        let plain = place(placer.name(), &stats, &cluster, &[]);
        for doc in placer.params() {
            // A default in parentheses is a rule, not a value (e.g. grace's knee).
            if matches!(doc.default, moeplace_core::params::Value::Chosen(_)) {
                continue;
            }
            let item = format!("{}={}", doc.name, doc.default_text());
            let explicit = place(placer.name(), &stats, &cluster, &[item.as_str()]);
            assert_eq!(explicit.placement, plain.placement, "{} {item}", placer.name());
            assert_eq!(explicit.family_gpus, plain.family_gpus, "{} {item}", placer.name());
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} documented defaults checked");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn grouping_plans_are_valid_and_deterministic(
        nodes in 1usize..=3,
        per_node in 1usize..=4,
        experts_per_gpu in 1usize..=3,
        extra_experts in 0usize..=3,
        top_k in 1usize..=4,
        layers in 1usize..=2,
        spare in 0usize..=6,
        seed in 0u64..1_000,
    ) {
        let gpus = nodes * per_node;
        let experts = gpus * experts_per_gpu + extra_experts;
        let top_k = top_k.min(experts);
        // Between E and G x E slots, any count (GPUs may own unequal slot counts).
        let slots = (experts + spare * gpus / 2).min(gpus * experts);
        let shape = ModelShape::new(layers, experts, top_k).unwrap();
        let cluster = Cluster::new(nodes, gpus, 1).unwrap().with_slots(slots).unwrap();
        let stats = statistics(shape, 60 + (seed % 60) as usize, seed);
        let variants: [(&str, &[&str]); 11] = [
            ("grace", &[]),
            ("grace", &["refine=false"]),
            ("grace", &["r=0.5", "locality=1"]),
            ("coact", &[]),
            ("tacg", &[]),
            ("tacg+gesr", &[]),
            ("tacg+gesr", &["locality=0.5"]),
            ("tacg", &["robust=0.5"]),
            ("tacg+gesr", &["robust=0.75", "locality=0.5"]),
            ("tacg+gesr", &["alpha=0", "locality=0.25", "pay=1"]),
            ("tacg", &["alpha=0", "eta=2", "robust=0.5"]),
        ];
        for (placer, params) in variants {
            let out = place(placer, &stats, &cluster, params);
            let p = &out.placement;
            let rows: Vec<Vec<i64>> = p.phy2log().iter().map(|r| r.iter().map(|&x| x as i64).collect()).collect();
            prop_assert!(
                Placement::with_slots(experts, gpus, slots, rows).is_ok(),
                "{} {:?}: the plan fails the validator", placer, params
            );
            if let Some(groups) = &out.family_gpus {
                prop_assert!(groups.values().flatten().all(|&g| g < gpus), "{}: family GPU out of range", placer);
            }
            let again = place(placer, &stats, &cluster, params);
            prop_assert_eq!(&again.placement, p, "{} {:?}: not deterministic", placer, params);
        }
    }
}
