//! `random`: each pick goes to a copy chosen uniformly at random, seeded and
//! deterministic per token: the choice is a hash of (seed, token key, layer, pick
//! position), so it does not depend on replay order or thread count.

use super::{DispatchContext, Dispatcher};

pub struct Random {
    seed: u64,
}

impl Random {
    pub fn new(seed: u64) -> Random {
        Random { seed }
    }
}

/// SplitMix64's finaliser: a cheap, well-mixed 64-bit hash.
#[inline]
pub(super) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Dispatcher for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn about(&self) -> &'static str {
        "a copy chosen uniformly at random (seeded, deterministic per token)"
    }

    fn dispatch(&self, ctx: &DispatchContext<'_>, picks: &[u16], out: &mut [u32]) {
        let base = mix(self.seed ^ mix(ctx.token_key ^ ((ctx.layer as u64) << 48)));
        for (i, (o, &e)) in out.iter_mut().zip(picks).enumerate() {
            let reps = ctx.replicas.gpus(ctx.layer, e as usize);
            *o = if reps.len() == 1 { reps[0] } else { reps[(mix(base ^ i as u64) % reps.len() as u64) as usize] };
        }
    }
}
