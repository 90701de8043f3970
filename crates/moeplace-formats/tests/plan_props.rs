//! Property tests of plans: every plan any registered placer writes passes the
//! validator (written to a plan file and read back) for random shapes (E, G, N, R,
//! slot counts per GPU equal or not),
//! writing is byte-identical for the same inputs, and a plan exported to each engine
//! format and read back gives the same placement.

use std::collections::BTreeMap;

use moeplace_core::cluster::Cluster;
use moeplace_core::placement::Placement;
use moeplace_core::placers::{registry, Params, PlacerInput};
use moeplace_core::stats::{ProfileOptions, Statistics};
use moeplace_core::trace::{ModelShape, TokenBatch, TokenRef};
use moeplace_formats::export::{self, ExportFormat};
use moeplace_formats::plan_file::{self, Plan, Provenance};
use proptest::prelude::*;

/// Statistics of a small random trace with three families (skewed expert choice).
fn statistics(shape: ModelShape, seed: u64) -> Statistics {
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut next = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let u = (state >> 33) as f64 / (1u64 << 31) as f64;
        ((u * u * n as f64) as usize).min(n - 1)
    };
    let mut b = TokenBatch::new(shape);
    let fams = ["a", "b", "c"];
    for t in 0..60 {
        let mut ids = Vec::new();
        for _ in 0..shape.layers {
            let x = next(shape.experts);
            let mut y = next(shape.experts);
            if y == x {
                y = (x + 1) % shape.experts;
            }
            ids.extend([x as u16, y as u16]);
        }
        let req = format!("r{}", t / 6);
        b.push(TokenRef {
            request: &req,
            family: Some(fams[t / 6 % 3]),
            phase: None,
            position: t as u32,
            experts: &ids,
            gate_weights: None,
        })
        .unwrap();
    }
    let mut s = Statistics::new(shape, ProfileOptions::default());
    s.add_batch(&b).unwrap();
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_placer_writes_valid_plans_that_export_and_read_back(
        experts in 2usize..40,
        nodes in 1usize..4,
        per in 1usize..5,
        redundant_per_gpu in 0usize..3,
        layers in 1usize..4,
        seed in 0u64..1000,
        uneven in any::<bool>(),
    ) {
        let gpus = nodes * per;
        let slots = if uneven {
            experts.max(gpus) + redundant_per_gpu * nodes
        } else {
            gpus * (experts.div_ceil(gpus) + redundant_per_gpu)
        };
        prop_assume!(slots.div_ceil(gpus) <= experts);
        let cluster = Cluster::new(nodes, gpus, 1).unwrap().with_slots(slots).unwrap();
        let shape = ModelShape::new(layers, experts, 2).unwrap();
        let stats = statistics(shape, seed);
        let loads = stats.loads(|_| true);
        let params = Params::default();
        let dir = tempfile::tempdir().unwrap();
        for placer in registry() {
            let input = PlacerInput { shape, cluster: &cluster, loads: &loads, stats: Some(&stats), previous: None, params: &params, seed };
            let out = match placer.place(&input) {
                Ok(o) => o,
                // A placer may decline inputs it needs more for (e.g. full statistics).
                Err(moeplace_core::placers::PlaceError::Unsupported(_)) => continue,
                Err(e) => return Err(TestCaseError::fail(format!("{}: {e}", placer.name()))),
            };
            let plan = Plan {
                num_nodes: nodes,
                layers: moeplace_core::model::LayerMap::assumed(out.placement.layers()),
                placement: out.placement,
                family_gpus: out.family_gpus,
                provenance: Provenance { placer: placer.name().into(), parameters: BTreeMap::new(), seed, input_digest: plan_file::digest(b"x") },
                notes: out.notes,
                serving: Some(placer.serving()),
                tuning: None,
            };
            let path = dir.path().join(format!("{}.json", placer.name()));
            plan_file::write(&path, &plan).unwrap();
            let first = std::fs::read(&path).unwrap();
            let back = plan_file::read(&path).unwrap();
            prop_assert_eq!(&back, &plan);
            plan_file::write(&path, &back).unwrap();
            prop_assert_eq!(std::fs::read(&path).unwrap(), first);
            for f in ExportFormat::ALL {
                let ep = dir.path().join(format!("{}.{}", placer.name(), f.name()));
                if !slots.is_multiple_of(gpus) {
                    // Engines (and EPLB) need equal slot counts per GPU: refused, nothing written.
                    prop_assert!(export::write(&ep, &plan.placement, &plan.layers, f).is_err());
                    prop_assert!(!ep.exists());
                    continue;
                }
                export::write(&ep, &plan.placement, &plan.layers, f).unwrap();
                let rows = export::read(&ep, f, &plan.layers).unwrap();
                let p = Placement::with_slots(experts, gpus, slots, rows).unwrap();
                prop_assert_eq!(&p, &plan.placement, "{} via {}", placer.name(), f.name());
            }
        }
    }
}
