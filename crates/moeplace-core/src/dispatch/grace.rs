//! `grace`: GRACE-MoE's topology-aware routing (docs/METHODS.md, "GRACE-MoE"). For each pick:
//! 1. the copy on the token's home GPU, if there is one;
//! 2. else a copy on the home node, by weighted round-robin over those copies;
//! 3. else a copy on a remote node the token already sends to in this layer, the same
//!    way (our addition: the token crosses to that node anyway, so a hierarchical
//!    all-to-all adds no inter-node send; with two nodes it never applies);
//! 4. else a copy on a remote node, the same way over all remote copies.
//!
//! Picks with one copy (or a copy at home) are fixed first, so step 3 sees them.
//!
//! Weights are 1 / (1 + predicted load), the predicted load of a GPU being the replay's
//! load signal (picks it has served at this layer in the current replay chunk, see
//! the module `dispatch`). The paper does not say how its weighted round-robin keeps
//! state across tokens; ours keeps none: a hash of (token key, layer, pick position)
//! draws copy i with probability w_i / sum(w), which are the long-run shares of a
//! weighted round-robin, deterministic per token and independent of thread count.

use super::random::mix;
use super::{fix_forced, sends_to_node, DispatchContext, Dispatcher, PENDING};

pub struct Grace;

impl Grace {
    /// Weighted draw, with weights 1 / (1 + load), among the copies in `reps` that
    /// `on_side` accepts.
    fn draw(ctx: &DispatchContext<'_>, reps: &[u32], on_side: impl Fn(u32) -> bool, hash: u64) -> Option<u32> {
        let weight = |g: u32| 1.0 / (1.0 + ctx.loads[g as usize] as f64);
        let total: f64 = reps.iter().copied().filter(|&g| on_side(g)).map(weight).sum();
        if total == 0.0 {
            return None;
        }
        // A uniform draw in [0, total) from the top 53 bits of the hash.
        let mut u = (hash >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut last = None;
        for g in reps.iter().copied().filter(|&g| on_side(g)) {
            let w = weight(g);
            if u < w {
                return Some(g);
            }
            u -= w;
            last = Some(g);
        }
        last
    }
}

impl Dispatcher for Grace {
    fn name(&self) -> &'static str {
        "grace"
    }

    fn about(&self) -> &'static str {
        "home GPU, else the home node, else a node already sent to, else a remote node; weighted round-robin by 1/(1 + load) (GRACE-MoE)"
    }

    fn dispatch(&self, ctx: &DispatchContext<'_>, picks: &[u16], out: &mut [u32]) {
        if !fix_forced(ctx, picks, out, true) {
            return;
        }
        let base = mix(ctx.token_key ^ ((ctx.layer as u64) << 48));
        let node = |g: u32| ctx.node_of[g as usize] as usize;
        for i in 0..out.len() {
            if out[i] != PENDING {
                continue;
            }
            let reps = ctx.replicas.gpus(ctx.layer, picks[i] as usize);
            let hash = mix(base ^ i as u64);
            let joined = |g: u32| sends_to_node(out, ctx.node_of, ctx.node_of[g as usize]);
            out[i] = Self::draw(ctx, reps, |g| node(g) == ctx.home_node, hash)
                .or_else(|| Self::draw(ctx, reps, joined, hash))
                .or_else(|| Self::draw(ctx, reps, |g| node(g) != ctx.home_node, hash))
                .expect("every expert has a copy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::ReplicaTable;
    use crate::placement::Placement;

    #[test]
    fn home_then_home_node_then_weighted() {
        // 4 GPUs in 2 nodes, 2 slots each: expert 0 on GPUs 0, 1, 2; expert 1 on 2, 3.
        let p = Placement::new(4, 4, 2, vec![vec![0, 2, 0, 3, 0, 1, 1, 3]]).unwrap();
        let table = ReplicaTable::new(&p);
        let node_of = [0, 0, 1, 1];
        let ctx = |home: usize, key: u64, loads: &'static [u64]| DispatchContext {
            replicas: &table,
            node_of: &node_of,
            layer: 0,
            home,
            home_node: home / 2,
            token_key: key,
            loads,
        };
        let mut out = [0u32; 2];
        // Home GPU 0 holds expert 0; expert 1 is only on node 1: split by weight.
        Grace.dispatch(&ctx(0, 7, &[0, 0, 0, 0]), &[0, 1], &mut out);
        assert_eq!(out[0], 0);
        assert!(out[1] == 2 || out[1] == 3);
        // Home GPU 3 lacks expert 0 but its node holds it on GPU 2: never node 0.
        for key in 0..200 {
            Grace.dispatch(&ctx(3, key, &[0, 0, 0, 0]), &[0, 1], &mut out);
            assert_eq!(out, [2, 3]);
        }
        // Weighted: GPU 2 has served 99 picks, GPU 3 none; from home 0, expert 1 goes
        // to GPU 3 about 100 times out of 101.
        let mut to3 = 0;
        for key in 0..1000 {
            Grace.dispatch(&ctx(1, key, &[0, 0, 99, 0]), &[1, 0], &mut out);
            to3 += u32::from(out[0] == 3);
            assert_eq!(out[1], 1);
        }
        assert!(to3 > 960, "{to3}");
    }

    /// 3 nodes of 2 GPUs; expert 0 on GPUs 2 (node 1) and 4 (node 2), expert 1 only on
    /// GPU 5 (node 2). From home 0, a token picking both crosses to node 2 anyway, so
    /// expert 0 always goes there too; alone, it is drawn between both copies.
    #[test]
    fn joins_a_node_the_token_already_sends_to() {
        let p = Placement::new(5, 6, 1, vec![vec![3, 2, 0, 4, 0, 1]]).unwrap();
        let table = ReplicaTable::new(&p);
        let node_of = [0, 0, 1, 1, 2, 2];
        let ctx = |key: u64| DispatchContext {
            replicas: &table,
            node_of: &node_of,
            layer: 0,
            home: 0,
            home_node: 0,
            token_key: key,
            loads: &[0; 6],
        };
        let mut seen = std::collections::BTreeSet::new();
        for key in 0..100 {
            let mut out = [0u32; 2];
            Grace.dispatch(&ctx(key), &[0, 1], &mut out);
            assert_eq!(out, [4, 5]);
            let mut one = [0u32; 1];
            Grace.dispatch(&ctx(key), &[0], &mut one);
            seen.insert(one[0]);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![2, 4]);
    }
}
