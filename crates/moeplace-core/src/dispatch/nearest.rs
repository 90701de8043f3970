//! `nearest`: keep traffic local. For each pick, in this order:
//! 1. a copy on the token's home GPU (and an expert with one copy has no choice);
//! 2. a copy on a GPU the token already sends to in this layer (the token crosses to
//!    that GPU anyway, so the pick adds no send);
//! 3. among copies on the home node, the least loaded;
//! 4. the least loaded copy anywhere.
//!
//! "Least loaded" is the replay's load signal: the running count of picks each GPU
//! has served at this layer in the current replay chunk (see the module `dispatch`).
//! Ties go to the lower slot. Steps 1 run for all picks before steps 2-4, so a later
//! pick forced onto a GPU can attract an earlier pick's copy.

use super::{DispatchContext, Dispatcher};

pub struct Nearest;

const PENDING: u32 = u32::MAX;

impl Dispatcher for Nearest {
    fn name(&self) -> &'static str {
        "nearest"
    }

    fn about(&self) -> &'static str {
        "home GPU, else a GPU the token already sends to, else the home node, else least loaded"
    }

    fn dispatch(&self, ctx: &DispatchContext<'_>, picks: &[u16], out: &mut [u32]) {
        let home = ctx.home as u32;
        let mut pending = false;
        for (o, &e) in out.iter_mut().zip(picks) {
            let reps = ctx.replicas.gpus(ctx.layer, e as usize);
            *o = if reps.len() == 1 {
                reps[0]
            } else if reps.contains(&home) {
                home
            } else {
                pending = true;
                PENDING
            };
        }
        if !pending {
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
            out[i] = least(&|g| ctx.node_of[g as usize] as usize == ctx.home_node)
                .or_else(|| least(&|_| true))
                .expect("every expert has a copy");
        }
    }
}
