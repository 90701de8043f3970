//! Property tests of the load balancers `eplb` and `balance` on random loads and
//! clusters: every plan passes the placement validator; loads scaled by a power of
//! two give the same plan (powers of two keep every float comparison, and so every
//! tie-break, exactly as it was); `balance` never has a higher maximum GPU load than
//! `eplb` with the same groups, in either policy.

use moeplace_core::cluster::Cluster;
use moeplace_core::gpu_load::{layer_lower_bound, load_figures};
use moeplace_core::placement::Placement;
use moeplace_core::placers::{by_name, Params, PlacerInput, PlacerOutput};
use moeplace_core::stats::ExpertLoads;
use moeplace_core::trace::ModelShape;
use proptest::prelude::*;

/// A random problem: loads `[layers][experts]`, nodes, GPUs, slots per layer (not
/// always a multiple of the GPUs), groups.
#[derive(Clone, Debug)]
struct Problem {
    loads: Vec<Vec<f64>>,
    nodes: usize,
    gpus: usize,
    slots: usize,
    groups: usize,
}

fn problem() -> impl Strategy<Value = Problem> {
    // groups x group size experts; nodes x GPUs per node GPUs; enough slots, never
    // more slots per GPU than experts.
    (1usize..=4, 1usize..=4, 1usize..=2, 1usize..=4, 1usize..=2, 0usize..=6)
        .prop_flat_map(|(groups, group_size, nodes, gpn, layers, spare)| {
            let experts = groups * group_size;
            let gpus = nodes * gpn;
            // Between max(E, G) and G x E slots (so no GPU needs two copies of one
            // expert); `spare` extra slots, any count, even or not.
            let slots = (experts.max(gpus) + spare * gpus / 2).min(gpus * experts);
            let w = prop::collection::vec(prop::collection::vec(0u32..200, experts), layers);
            (w, Just((nodes, gpus, slots, groups)))
        })
        .prop_map(|(w, (nodes, gpus, slots, groups))| Problem {
            loads: w.into_iter().map(|l| l.into_iter().map(f64::from).collect()).collect(),
            nodes,
            gpus,
            slots,
            groups,
        })
}

fn place(placer: &str, p: &Problem, scale: f64, params: &[String]) -> PlacerOutput {
    let (layers, experts) = (p.loads.len(), p.loads[0].len());
    let flat: Vec<f64> = p.loads.concat().into_iter().map(|x| x * scale).collect();
    let loads = ExpertLoads::new(layers, experts, vec![flat]).unwrap();
    let cluster = Cluster::new(p.nodes, p.gpus, 1).unwrap().with_slots(p.slots).unwrap();
    let params = Params::parse(params.iter().map(String::as_str)).unwrap();
    let input = PlacerInput {
        shape: ModelShape::new(layers, experts, 1).unwrap(),
        cluster: &cluster,
        loads: &loads,
        stats: None,
        previous: None,
        params: &params,
        seed: 0,
    };
    by_name(placer).unwrap().place(&input).unwrap()
}

fn max_load(out: &PlacerOutput, p: &Problem) -> f64 {
    let loads = ExpertLoads::new(p.loads.len(), p.loads[0].len(), vec![p.loads.concat()]).unwrap();
    load_figures(&out.placement, &loads).max_load
}

fn revalidate(out: &PlacerOutput) {
    let p = &out.placement;
    let rows: Vec<Vec<i64>> = p.phy2log().iter().map(|r| r.iter().map(|&x| x as i64).collect()).collect();
    Placement::with_slots(p.experts(), p.gpus(), p.slots(), rows).expect("the plan passes the validator");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn plans_are_valid_scale_free_and_balance_beats_eplb(p in problem(), scale_exp in -3i32..=10) {
        let scale = 2f64.powi(scale_exp);
        let groups = format!("groups={}", p.groups);
        let mut policies = vec![vec![], vec![groups.clone()]];
        if p.groups.is_multiple_of(p.nodes) {
            policies.push(vec![groups.clone(), "hierarchical=true".to_string()]);
        }
        for params in &policies {
            let hier = params.iter().any(|x| x.starts_with("hierarchical"));
            let eplb_params: Vec<String> = params.iter().filter(|x| x.starts_with("groups")).cloned().collect();
            let e = place("eplb", &p, 1.0, &eplb_params);
            let b = place("balance", &p, 1.0, params);
            revalidate(&e);
            revalidate(&b);
            prop_assert_eq!(&place("eplb", &p, scale, &eplb_params).placement, &e.placement);
            prop_assert_eq!(&place("balance", &p, scale, params).placement, &b.placement);
            let (me, mb) = (max_load(&e, &p), max_load(&b, &p));
            prop_assert!(mb <= me, "balance {} > eplb {} with {:?}", mb, me, params);
            // Never below the lower bound of any layer.
            for w in &p.loads {
                let lb = layer_lower_bound(w, p.gpus, p.slots);
                prop_assert!(mb >= lb * (1.0 - 1e-9), "max {} under the bound {}", mb, lb);
            }
            if hier {
                // Every expert's copies on one node.
                let gpn = p.gpus / p.nodes;
                for l in 0..p.loads.len() {
                    for x in 0..p.loads[0].len() {
                        let nodes: std::collections::BTreeSet<usize> =
                            b.placement.replicas(l, x).iter().map(|&s| b.placement.gpu_of_slot(s as usize) / gpn).collect();
                        prop_assert!(nodes.len() <= 1 || e_spreads(&e, l, x, gpn),
                            "layer {} expert {} on nodes {:?}", l, x, nodes);
                    }
                }
            }
        }
    }
}

/// Whether EPLB's own (repaired) plan already spreads expert x over several nodes
/// (a duplicate repair may have to cross nodes; `balance` then starts from that).
fn e_spreads(e: &PlacerOutput, l: usize, x: usize, gpn: usize) -> bool {
    let nodes: std::collections::BTreeSet<usize> =
        e.placement.replicas(l, x).iter().map(|&s| e.placement.gpu_of_slot(s as usize) / gpn).collect();
    nodes.len() > 1
}
