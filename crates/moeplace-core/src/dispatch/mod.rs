//! Dispatchers (docs/DESIGN.md, "Vocabulary"): the serving-time choice of a replica for each
//! top-k pick of a token. One dispatcher per file behind the small [`Dispatcher`]
//! trait; [`by_name`] finds them. To add one (for example a placer's own routing
//! rule): write `dispatch/<name>.rs` implementing [`Dispatcher`] and add one line to
//! [`registry`].
//!
//! A dispatcher sees, per token and MoE layer, a [`DispatchContext`]: the replicas
//! of every expert (GPUs in slot order, the first is the primary), the token's home
//! GPU and node, a stable key of the token (for seeded choices), and the load signal
//! of the replay: the running count of picks each GPU has served at this layer so far
//! in the current replay chunk (a fixed group of consecutive requests of about
//! [`crate::simulate::CHUNK_TOKENS`] tokens, like one serving step's batch). Chunks do
//! not depend on the thread count, so every dispatcher's choices are deterministic.
//!
//! [`BatchDispatch`] (`batch.rs`) serves one layer of a batch of tokens at a time,
//! answering with physical slots: the serving-time entry point for engines.

use crate::params::{Param, Params};
use crate::placement::Placement;
use crate::placers::PlaceError;

mod batch;
mod gesr;
mod grace;
mod nearest;
mod primary;
mod random;

pub use batch::{BatchDispatch, BatchError};
pub use gesr::Gesr;
pub use grace::Grace;

/// The `gesr` dispatcher's default load tolerance.
pub const fn gesr_default_theta() -> f64 {
    gesr::DEFAULT_THETA
}

pub use nearest::Nearest;
pub use primary::Primary;
pub use random::Random;

/// Replica GPUs of every (layer, expert), flat, in slot order: what dispatchers look
/// up for every pick (one indirection instead of three).
#[derive(Clone, Debug)]
pub struct ReplicaTable {
    experts: usize,
    offsets: Vec<u32>,
    gpus: Vec<u32>,
}

impl ReplicaTable {
    pub fn new(placement: &Placement) -> ReplicaTable {
        let (layers, experts) = (placement.layers(), placement.experts());
        let mut offsets = Vec::with_capacity(layers * experts + 1);
        let mut gpus = Vec::with_capacity(layers * placement.slots());
        offsets.push(0);
        for l in 0..layers {
            for e in 0..experts {
                gpus.extend(placement.replicas(l, e).iter().map(|&s| placement.gpu_of_slot(s as usize) as u32));
                offsets.push(gpus.len() as u32);
            }
        }
        ReplicaTable { experts, offsets, gpus }
    }

    /// Whether every expert of every layer has exactly one copy.
    pub fn single_copies(&self) -> bool {
        self.offsets.windows(2).all(|w| w[1] - w[0] == 1)
    }

    /// The GPU of every (layer, expert)'s first copy, `[layer * experts + expert]`.
    pub fn primaries(&self) -> Vec<u32> {
        self.offsets[..self.offsets.len() - 1].iter().map(|&o| self.gpus[o as usize]).collect()
    }

    /// GPUs holding `expert` in `layer`, in slot order (the first holds the primary).
    #[inline]
    pub fn gpus(&self, layer: usize, expert: usize) -> &[u32] {
        let i = layer * self.experts + expert;
        &self.gpus[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// One layer's table: `gpus(layer, e)` is `layer.copies(e)`, without the
    /// layer's offset arithmetic per pick.
    #[inline]
    pub fn layer(&self, layer: usize) -> LayerReplicas<'_> {
        LayerReplicas { offsets: &self.offsets[layer * self.experts..(layer + 1) * self.experts + 1], gpus: &self.gpus }
    }
}

/// The replica GPUs of one layer's experts (see [`ReplicaTable::layer`]).
#[derive(Clone, Copy)]
pub struct LayerReplicas<'a> {
    offsets: &'a [u32],
    gpus: &'a [u32],
}

impl<'a> LayerReplicas<'a> {
    /// GPUs holding `expert`, in slot order.
    #[inline]
    pub fn copies(&self, expert: usize) -> &'a [u32] {
        &self.gpus[self.offsets[expert] as usize..self.offsets[expert + 1] as usize]
    }
}

/// What a dispatcher knows when it serves one token at one MoE layer.
pub struct DispatchContext<'a> {
    pub replicas: &'a ReplicaTable,
    /// Node of every GPU.
    pub node_of: &'a [u32],
    pub layer: usize,
    pub home: usize,
    pub home_node: usize,
    /// A stable key of the token: request ordinal (in order of first appearance) in
    /// the high 32 bits, the token's ordinal within its request in the low 32 bits.
    pub token_key: u64,
    /// Running picks served per GPU at this layer in the current replay chunk.
    pub loads: &'a [u64],
}

/// One MoE layer of consecutive tokens, served in order: a replay chunk's tokens at
/// one layer, or one serving batch.
pub struct LayerBatch<'a> {
    pub replicas: &'a ReplicaTable,
    /// Node of every GPU.
    pub node_of: &'a [u32],
    pub layer: usize,
    /// Picks per token.
    pub k: usize,
    /// `tokens x k` expert ids, token by token.
    pub picks: &'a [u16],
    /// Home GPU of every token.
    pub homes: &'a [u32],
    /// Stable key of every token ([`DispatchContext::token_key`]).
    pub keys: &'a [u64],
}

/// Marks a pick not yet given a GPU in the dispatchers that decide in two passes.
pub(crate) const PENDING: u32 = u32::MAX;

/// First pass of the two-pass dispatchers: a pick with one copy takes it, and with
/// `home_first` (`nearest`, `grace`) so does a pick with a copy on the home GPU
/// (`gesr` weighs that copy's load first); the others are marked [`PENDING`].
/// Returns whether any is.
pub(crate) fn fix_forced(ctx: &DispatchContext<'_>, picks: &[u16], out: &mut [u32], home_first: bool) -> bool {
    let home = ctx.home as u32;
    let mut pending = false;
    for (o, &e) in out.iter_mut().zip(picks) {
        let reps = ctx.replicas.gpus(ctx.layer, e as usize);
        *o = if reps.len() == 1 {
            reps[0]
        } else if home_first && reps.contains(&home) {
            home
        } else {
            pending = true;
            PENDING
        };
    }
    pending
}

/// Whether a token whose decided picks are `out` already sends to node `node`.
pub(crate) fn sends_to_node(out: &[u32], node_of: &[u32], node: u32) -> bool {
    out.iter().any(|&c| c != PENDING && node_of[c as usize] == node)
}

/// The serving-time choice of a replica for every pick.
pub trait Dispatcher: Send + Sync {
    /// The name used on the command line (`--dispatcher`).
    fn name(&self) -> &'static str;
    /// One line for `--help`.
    fn about(&self) -> &'static str;
    /// Writes into `out[i]` the GPU serving `picks[i]`; it must be one of the GPUs
    /// holding that expert in this layer. `out.len() == picks.len()`.
    fn dispatch(&self, ctx: &DispatchContext<'_>, picks: &[u16], out: &mut [u32]);
    /// Serves every token of `batch` in order, writing into `out[t * k + j]` the GPU
    /// serving pick j of token t and adding each token's picks to `loads` (the load
    /// signal, picks served per GPU at this layer) before the next token is served.
    /// `out.len() == batch.picks.len()`. The provided version calls
    /// [`Dispatcher::dispatch`] per token; a dispatcher may serve the batch faster
    /// but must choose exactly what that would.
    fn dispatch_layer(&self, batch: &LayerBatch<'_>, loads: &mut [u64], out: &mut [u32]) {
        let k = batch.k;
        for (t, (&home, &token_key)) in batch.homes.iter().zip(batch.keys).enumerate() {
            let o = &mut out[t * k..(t + 1) * k];
            let ctx = DispatchContext {
                replicas: batch.replicas,
                node_of: batch.node_of,
                layer: batch.layer,
                home: home as usize,
                home_node: batch.node_of[home as usize] as usize,
                token_key,
                loads,
            };
            self.dispatch(&ctx, &batch.picks[t * k..(t + 1) * k], o);
            for &g in o.iter() {
                loads[g as usize] += 1;
            }
        }
    }
    /// True if the dispatcher always takes the first copy whatever the context; the
    /// simulator then uses a direct lookup table (as it does for any dispatcher when
    /// no expert has a second copy).
    fn always_primary(&self) -> bool {
        false
    }
    /// The parameters it takes (`--dispatcher-param name=value`, a plan's serving),
    /// declared once: name, default, what it does.
    fn params(&self) -> Vec<Param> {
        Vec::new()
    }
}

/// Every dispatcher (`seed` drives the seeded ones), in the order help lists them.
pub fn registry(seed: u64) -> Vec<Box<dyn Dispatcher>> {
    vec![Box::new(Primary), Box::new(Random::new(seed)), Box::new(Nearest), Box::new(Grace), Box::new(Gesr::default())]
}

/// The dispatcher called `name`.
pub fn by_name(name: &str, seed: u64) -> Option<Box<dyn Dispatcher>> {
    registry(seed).into_iter().find(|d| d.name() == name)
}

/// The dispatcher called `name` configured with `params` (only those it declares;
/// absent ones take their declared default).
pub fn build(name: &str, params: &Params, seed: u64) -> Result<Box<dyn Dispatcher>, PlaceError> {
    let d = by_name(name, seed)
        .ok_or_else(|| PlaceError::BadParam(format!("unknown dispatcher {name:?} (known: {})", names().join(", "))))?;
    params.check_declared(&d.params(), &format!("dispatcher {name}"), "")?;
    match name {
        "gesr" => Ok(Box::new(Gesr::from_params(params)?)),
        _ => Ok(d),
    }
}

/// Names of every dispatcher.
pub fn names() -> Vec<&'static str> {
    registry(0).iter().map(|d| d.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 experts, 3 GPUs in 3 nodes (1 GPU each) x 2 slots: expert 0 on GPUs 0 and 2,
    /// expert 1 on GPUs 0 and 1, expert 2 on GPU 1, expert 3 on GPU 2.
    fn setup() -> (ReplicaTable, Vec<u32>) {
        let p = Placement::new(4, 3, 2, vec![vec![0, 1, 1, 2, 3, 0]]).unwrap();
        (ReplicaTable::new(&p), vec![0, 1, 2])
    }

    fn run(d: &dyn Dispatcher, home: usize, picks: &[u16], loads: &[u64]) -> Vec<u32> {
        let (t, nodes) = setup();
        let ctx = DispatchContext {
            replicas: &t,
            node_of: &nodes,
            layer: 0,
            home,
            home_node: nodes[home] as usize,
            token_key: 7,
            loads,
        };
        let mut out = vec![0; picks.len()];
        d.dispatch(&ctx, picks, &mut out);
        out
    }

    #[test]
    fn replica_table_lists_gpus_in_slot_order() {
        let (t, _) = setup();
        assert_eq!(t.gpus(0, 0), &[0, 2]);
        assert_eq!(t.gpus(0, 1), &[0, 1]);
        assert_eq!(t.gpus(0, 3), &[2]);
    }

    #[test]
    fn primary_takes_the_first_copy() {
        assert_eq!(run(&Primary, 2, &[0, 1, 3], &[0, 0, 0]), vec![0, 0, 2]);
    }

    #[test]
    fn nearest_prefers_home_then_gpus_already_used() {
        // Home 2: expert 0 has a copy there; expert 1 has copies on 0 and 1, and
        // the token already goes to GPU 1 for expert 2.
        assert_eq!(run(&Nearest, 2, &[0, 1, 2], &[0, 0, 0]), vec![2, 1, 1]);
        // Without a used GPU, the least loaded copy wins.
        assert_eq!(run(&Nearest, 2, &[1, 3], &[5, 1, 0]), vec![1, 2]);
        assert_eq!(run(&Nearest, 2, &[1, 3], &[1, 5, 0]), vec![0, 2]);
    }

    #[test]
    fn random_is_seeded_and_stays_on_replicas() {
        let a = run(&Random::new(1), 0, &[0, 1, 2, 3], &[0; 3]);
        assert_eq!(a, run(&Random::new(1), 0, &[0, 1, 2, 3], &[0; 3]));
        assert!([0, 2].contains(&a[0]) && [0, 1].contains(&a[1]) && a[2] == 1 && a[3] == 2);
        // Over many seeds both copies get used.
        let firsts: std::collections::BTreeSet<u32> =
            (0..64).map(|s| run(&Random::new(s), 0, &[0], &[0; 3])[0]).collect();
        assert_eq!(firsts.into_iter().collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn names_are_unique() {
        let n = names();
        let mut m = n.clone();
        m.dedup();
        assert_eq!(n, m);
        assert!(by_name("nearest", 0).is_some() && by_name("closest", 0).is_none());
    }
}
