//! Property test of the `grace` dispatcher on random placements, picks and loads: it
//! picks the home GPU when it holds the expert, never leaves the home node when the
//! home node holds a copy, and always picks a GPU that holds the expert.

use moeplace_core::dispatch::{by_name, DispatchContext, ReplicaTable};
use moeplace_core::placement::Placement;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn grace_stays_as_close_as_the_copies_allow(
        nodes in 1usize..=4,
        gpn in 1usize..=4,
        experts in 2usize..=12,
        extra in 0usize..=10,
        seed in any::<u64>(),
        loads in prop::collection::vec(0u64..50, 16),
        home in 0usize..16,
        key in any::<u64>(),
    ) {
        let gpus = nodes * gpn;
        let slots = (experts.max(gpus) + extra).min(gpus * experts);
        // A random valid row: every expert once, then extra copies where they fit.
        let mut state = seed | 1;
        let mut next = |n: usize| { state ^= state << 13; state ^= state >> 7; state ^= state << 17; (state % n as u64) as usize };
        let caps: Vec<usize> = (0..gpus).map(|g| (g + 1) * slots / gpus - g * slots / gpus).collect();
        let mut lists: Vec<Vec<usize>> = vec![Vec::new(); gpus];
        let order: Vec<usize> = (0..experts).chain((0..slots - experts).map(|_| next(experts))).collect();
        for e in order {
            let open: Vec<usize> = (0..gpus).filter(|&g| lists[g].len() < caps[g] && !lists[g].contains(&e)).collect();
            if open.is_empty() { continue; }
            lists[open[next(open.len())]].push(e);
        }
        // Fill any slot left (a skipped extra copy) with an expert the GPU lacks.
        for g in 0..gpus {
            while lists[g].len() < caps[g] {
                let e = (0..experts).find(|e| !lists[g].contains(e)).unwrap();
                lists[g].push(e);
            }
        }
        let p = Placement::from_gpu_lists(experts, &[lists]).unwrap();
        let table = ReplicaTable::new(&p);
        let node_of: Vec<u32> = (0..gpus).map(|g| (g / gpn) as u32).collect();
        let home = home % gpus;
        let ctx = DispatchContext {
            replicas: &table, node_of: &node_of, layer: 0, home, home_node: home / gpn,
            token_key: key, loads: &loads[..gpus],
        };
        let picks: Vec<u16> = (0..experts.min(4)).map(|i| ((i * 5 + key as usize) % experts) as u16).collect();
        let picks: Vec<u16> = { let mut v = picks; v.sort(); v.dedup(); v };
        let mut out = vec![0u32; picks.len()];
        by_name("grace", 0).unwrap().dispatch(&ctx, &picks, &mut out);
        for (&e, &g) in picks.iter().zip(&out) {
            let holders = table.gpus(0, e as usize);
            prop_assert!(holders.contains(&g), "expert {} sent to GPU {} which lacks it", e, g);
            if holders.contains(&(home as u32)) {
                prop_assert_eq!(g as usize, home);
            }
            if holders.iter().any(|&h| h as usize / gpn == home / gpn) {
                prop_assert_eq!(g as usize / gpn, home / gpn, "expert {} left the home node", e);
            }
        }
    }
}
