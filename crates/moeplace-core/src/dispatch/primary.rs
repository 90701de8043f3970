//! `primary`: every pick goes to the expert's first copy (lowest slot), as an engine
//! without replica selection does. Load-blind and home-blind.

use super::{DispatchContext, Dispatcher};

pub struct Primary;

impl Dispatcher for Primary {
    fn name(&self) -> &'static str {
        "primary"
    }

    fn about(&self) -> &'static str {
        "always the expert's first copy (lowest slot)"
    }

    #[inline]
    fn dispatch(&self, ctx: &DispatchContext<'_>, picks: &[u16], out: &mut [u32]) {
        for (o, &e) in out.iter_mut().zip(picks) {
            *o = ctx.replicas.gpus(ctx.layer, e as usize)[0];
        }
    }

    fn always_primary(&self) -> bool {
        true
    }
}
