//! `nearest`: keep traffic local. For each pick, in this order:
//! 1. a copy on the token's home GPU (and an expert with one copy has no choice);
//! 2. a copy on a GPU the token already sends to in this layer (the token crosses to
//!    that GPU anyway, so the pick adds no send);
//! 3. among copies on the home node, the least loaded;
//! 4. among copies on a node the token already sends to, the least loaded (the token
//!    crosses to that node anyway, so a hierarchical all-to-all adds no inter-node
//!    send);
//! 5. the least loaded copy anywhere.
//!
//! "Least loaded" is the replay's load signal: the running count of picks each GPU
//! has served at this layer in the current replay chunk (see the module `dispatch`).
//! Ties go to the lower slot. Steps 1 run for all picks before steps 2-5, so a later
//! pick forced onto a GPU can attract an earlier pick's copy.
//!
//! A layer of a batch is served by `dispatch_layer` with the same steps, written out
//! for speed (one layer's table, one scan over a pick's copies, the GPUs and nodes a
//! token already sends to kept as stamps instead of scans of its picks); the replay's
//! reference test checks it against `dispatch`.

use super::{fix_forced, sends_to_node, DispatchContext, Dispatcher, LayerBatch, PENDING};

pub struct Nearest;

impl Dispatcher for Nearest {
    fn name(&self) -> &'static str {
        "nearest"
    }

    fn about(&self) -> &'static str {
        "home GPU, else a GPU the token already sends to, else the home node, else a node it already sends to, else least loaded"
    }

    fn dispatch(&self, ctx: &DispatchContext<'_>, picks: &[u16], out: &mut [u32]) {
        if !fix_forced(ctx, picks, out, true) {
            return;
        }
        for i in 0..out.len() {
            if out[i] != PENDING {
                continue;
            }
            let reps = ctx.replicas.gpus(ctx.layer, picks[i] as usize);
            if let Some(&g) = reps.iter().find(|g| out.contains(g)) {
                out[i] = g;
                continue;
            }
            let least = |ok: &dyn Fn(u32) -> bool| {
                reps.iter().copied().filter(|&g| ok(g)).min_by_key(|&g| ctx.loads[g as usize])
            };
            let node_of = |g: u32| ctx.node_of[g as usize];
            let joined = |g: u32| sends_to_node(out, ctx.node_of, node_of(g));
            out[i] = least(&|g| node_of(g) as usize == ctx.home_node)
                .or_else(|| least(&joined))
                .or_else(|| least(&|_| true))
                .expect("every expert has a copy");
        }
    }

    fn dispatch_layer(&self, batch: &LayerBatch<'_>, loads: &mut [u64], out: &mut [u32]) {
        let (k, node_of) = (batch.k, batch.node_of);
        let table = batch.replicas.layer(batch.layer);
        // The GPUs and nodes a token already sends to, as the token's stamp (its
        // index + 1) on per-GPU and per-node arrays: one load instead of a scan of
        // the token's picks per copy.
        let mut used = vec![0u32; node_of.len()];
        let mut crossed = vec![0u32; node_of.len()];
        for (t, ((picks, o), &home)) in
            batch.picks.chunks_exact(k).zip(out.chunks_exact_mut(k)).zip(batch.homes).enumerate()
        {
            let stamp = t as u32 + 1;
            let home_node = node_of[home as usize];
            // Step 1 for every pick first.
            let mut pending = false;
            for (x, &e) in o.iter_mut().zip(picks) {
                let reps = table.copies(e as usize);
                *x = if reps.len() == 1 {
                    reps[0]
                } else if reps.contains(&home) {
                    home
                } else {
                    pending = true;
                    PENDING
                };
            }
            if pending {
                for &g in o.iter().filter(|&&g| g != PENDING) {
                    used[g as usize] = stamp;
                    crossed[node_of[g as usize] as usize] = stamp;
                }
                for i in 0..k {
                    if o[i] != PENDING {
                        continue;
                    }
                    let reps = table.copies(picks[i] as usize);
                    let g = match reps.iter().find(|&&g| used[g as usize] == stamp) {
                        Some(&g) => g,
                        None => {
                            // The least loaded copy on the home node, else on a node
                            // the token already crosses to, else anywhere (first in
                            // slot order among equals).
                            let (mut near, mut joined, mut any) =
                                ((u64::MAX, PENDING), (u64::MAX, PENDING), (u64::MAX, PENDING));
                            for &g in reps {
                                let (l, node) = (loads[g as usize], node_of[g as usize]);
                                if node == home_node && (near.1 == PENDING || l < near.0) {
                                    near = (l, g);
                                }
                                if crossed[node as usize] == stamp && (joined.1 == PENDING || l < joined.0) {
                                    joined = (l, g);
                                }
                                if any.1 == PENDING || l < any.0 {
                                    any = (l, g);
                                }
                            }
                            [near.1, joined.1, any.1].into_iter().find(|&g| g != PENDING).unwrap_or(any.1)
                        }
                    };
                    o[i] = g;
                    used[g as usize] = stamp;
                    crossed[node_of[g as usize] as usize] = stamp;
                }
            }
            for &g in o.iter() {
                loads[g as usize] += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::ReplicaTable;
    use crate::placement::Placement;

    /// 3 nodes of 2 GPUs: {0,1}, {2,3}, {4,5}; expert 0 on GPUs 2 and 4, expert 1 on
    /// GPU 5. A token homed on GPU 0 picking both crosses to node 2 for expert 1, so
    /// expert 0's copy there wins over the less loaded one on node 1.
    #[test]
    fn joins_a_node_the_token_already_sends_to() {
        let p = Placement::new(5, 6, 1, vec![vec![3, 2, 0, 4, 0, 1]]).unwrap();
        let table = ReplicaTable::new(&p);
        let node_of = [0, 0, 1, 1, 2, 2];
        let run = |picks: &[u16]| {
            let ctx = DispatchContext {
                replicas: &table,
                node_of: &node_of,
                layer: 0,
                home: 0,
                home_node: 0,
                token_key: 1,
                loads: &[0, 0, 0, 0, 5, 0],
            };
            let mut out = vec![0; picks.len()];
            Nearest.dispatch(&ctx, picks, &mut out);
            out
        };
        assert_eq!(run(&[1, 0]), vec![5, 4]);
        // Alone, expert 0 goes to the least loaded copy.
        assert_eq!(run(&[0]), vec![2]);
    }
}
