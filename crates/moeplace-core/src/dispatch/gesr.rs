//! `gesr`: the serving-time rule of generic-expert shared replication (docs/METHODS.md,
//! "TACG and GESR"), for plans of `tacg+gesr` (and any plan with replicas).
//!
//! A pick of an expert with one copy has no choice. For an expert with several copies,
//! the candidates are the copies whose recent load is within the tolerance `theta`
//! (default 0.15) of the reference load: `load <= (1 + theta) * max(min, mean) + 1`,
//! where `min` is the least loaded copy's load and `mean` the mean load over all GPUs
//! (the `+ 1` keeps a single pick of difference from counting as imbalance when loads
//! are tiny). The paper measures the tolerance from the least loaded copy only; we
//! also accept any copy no more than `theta` above the cluster's mean load, because a
//! copy that is not overloaded need not be avoided: on the ESFT traces the paper's
//! rule sent many picks out of their family's node to a copy that was merely less
//! loaded, for little balance gain (docs/TACG.md measures both, `mean_reference`).
//! Among them, in this order:
//! 1. the token's home GPU;
//! 2. a GPU the token already sends to in this layer (it crosses there anyway);
//! 3. a copy on the home node (our addition to the paper's rule: on a multi-node
//!    cluster, a copy inside the node avoids the inter-node send the paper's "least
//!    loaded" may choose; it is still within the load tolerance);
//! 4. a copy on a node the token already sends to (ours too: the token crosses to
//!    that node anyway, so a hierarchical all-to-all adds no inter-node send; its gain
//!    is in the ablation table of `moeplace-lab experiment tacg`; `join_nodes`);
//! 5. the least loaded candidate (ties: the lower slot).
//!
//! Where a step has several candidates, the least loaded of them (ties: the lower
//! slot). The paper leaves this open; taking the first copy in slot order instead
//! piles a step's picks onto one GPU until the tolerance stops them, which costs
//! Jain, the more so at wide tolerances (docs/TACG.md).
//!
//! With `free_first` (ours, off by default; `eval --dispatcher-param free_first=true`) the steps become
//! tiers by what the pick costs: free (home, or a GPU the token already sends to: no
//! new send) and local (the home node, or a node the token already crosses to: a new
//! send inside a node, no new inter-node send), each represented by its least loaded
//! candidate. The free one is taken while its load is at most the reference
//! (`max(min, mean)` plus one pick, no tolerance), else the local one under the same
//! condition, else the free one, else the local one (within the tolerance), else the
//! least loaded. A busy home copy then sheds picks first to copies the token reaches
//! anyway, and a copy the token already sends to takes a pick from a busier home GPU,
//! both at no inter-node cost: balance improves at the same remote-node cut, and the
//! wider tolerance or more local plan it allows buys the cut. It pays with remote GPUs
//! (more sends inside a node). `moeplace-lab experiment tacg` measures it on held-out
//! ESFT, at wide tolerances, with locality copies and under family-mix shifts
//! (docs/TACG.md, "Balance on unseen requests" and the shift tables).
//!
//! Picks with one copy are fixed first, so a later pick can still join a GPU an
//! earlier pick must use. (A copy at home is not forced: it too must be within the
//! tolerance.)
//!
//! Recent load: [`Gesr::choose`] takes any load source (at serving time, for example,
//! an exponentially decayed average of picks served per GPU). In the replay simulator
//! the load signal every dispatcher receives is the running count of picks per GPU in
//! the current replay chunk (`dispatch` module documentation).

use super::{fix_forced, sends_to_node, DispatchContext, Dispatcher, LayerBatch, PENDING};
use crate::params::{Kind, Level, Param, Params, Value};
use crate::placers::PlaceError;

/// The `gesr` dispatcher; `theta` is the load tolerance.
#[derive(Clone, Debug, PartialEq)]
pub struct Gesr {
    pub theta: f64,
    /// Whether copies up to `theta` above the mean GPU load are candidates too
    /// (default true; false is the paper's rule).
    pub mean_reference: bool,
    /// Whether step 4 (a copy on a node the token already sends to) is taken
    /// (default true; false for the ablation).
    pub join_nodes: bool,
    /// Whether the steps become cost tiers in which a busy home or home-node copy
    /// comes after the copies the token reaches anyway (default false; module
    /// documentation).
    pub free_first: bool,
}

/// The default load tolerance (the paper's ~0.15).
pub const DEFAULT_THETA: f64 = 0.15;
const DEFAULT_FREE_FIRST: bool = false;

impl Default for Gesr {
    /// The declared defaults.
    fn default() -> Self {
        Gesr { theta: DEFAULT_THETA, mean_reference: true, join_nodes: true, free_first: DEFAULT_FREE_FIRST }
    }
}

/// The parameters `gesr` takes in a plan's serving (the other fields are for the
/// lab's ablations).
const THETA: Param = Param {
    name: "theta",
    kind: Kind::NonNegative,
    default: Value::Number(DEFAULT_THETA),
    about: "load tolerance: copies up to this fraction above the reference load (the least loaded copy \
            or the mean GPU load) are candidates",
    level: Level::Stable,
};
const FREE_FIRST: Param = Param {
    name: "free_first",
    kind: Kind::Flag,
    default: Value::Flag(DEFAULT_FREE_FIRST),
    about: "choose by cost tiers, least loaded first: a copy reached at no new send, then one at no new \
            inter-node send, each while not above the reference load, then the busier ones",
    level: Level::Stable,
};
const PARAMS: &[Param] = &[THETA, FREE_FIRST];

impl Gesr {
    /// `gesr` configured from a serving's parameters (declared defaults for absent ones).
    pub fn from_params(params: &Params) -> Result<Gesr, PlaceError> {
        let theta = params.number(&THETA)?;
        let free_first = params.flag(&FREE_FIRST)?;
        Ok(Gesr { theta, free_first, ..Gesr::default() })
    }

    /// The copy (a GPU among `replicas`, in slot order) a pick goes to; `chosen` are the
    /// GPUs this token already sends to in this layer, `node_of` the node of each GPU,
    /// `load(g)` the recent load of GPU g, `mean` the mean load over all GPUs (ignored
    /// unless `mean_reference`).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn choose(
        &self,
        replicas: &[u32],
        home: u32,
        home_node: u32,
        node_of: &[u32],
        chosen: &[u32],
        mean: f64,
        load: impl Fn(u32) -> f64,
    ) -> u32 {
        let visited = |g: u32| chosen.contains(&g);
        let crosses = |node: u32| sends_to_node(chosen, node_of, node);
        self.choose_by(replicas, home, home_node, node_of, visited, crosses, mean, load)
    }

    /// [`Gesr::choose`] with the token's GPUs and nodes as tests: `visited(g)`, the
    /// token already sends to GPU g; `crosses(n)`, it already sends to node n.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn choose_by(
        &self,
        replicas: &[u32],
        home: u32,
        home_node: u32,
        node_of: &[u32],
        visited: impl Fn(u32) -> bool,
        crosses: impl Fn(u32) -> bool,
        mean: f64,
        load: impl Fn(u32) -> f64,
    ) -> u32 {
        let mut min = f64::INFINITY;
        let mut least = replicas[0];
        for &g in replicas {
            let l = load(g);
            if l < min {
                min = l;
                least = g;
            }
        }
        let reference = if self.mean_reference { min.max(mean) } else { min };
        let limit = (1.0 + self.theta) * reference + 1.0;
        // The least loaded candidate of each step (ties: the lower slot), with its load.
        let (mut at_home, mut at_visited, mut near, mut joined) = (None, None, None, None);
        let keep = |step: &mut Option<(u32, f64)>, g: u32, l: f64| {
            if step.is_none_or(|(_, best)| l < best) {
                *step = Some((g, l));
            }
        };
        for &g in replicas {
            let l = load(g);
            if l > limit {
                continue;
            }
            if g == home {
                if !self.free_first {
                    return g;
                }
                at_home = Some((g, l));
                continue;
            }
            if visited(g) {
                keep(&mut at_visited, g, l);
            }
            let node = node_of[g as usize];
            if node == home_node {
                keep(&mut near, g, l);
            }
            if self.join_nodes && crosses(node) {
                keep(&mut joined, g, l);
            }
        }
        if self.free_first {
            // Tiers by cost: no new send (home, a GPU already sent to), then no new
            // inter-node send (home node, a node already crossed to); a cheaper tier
            // while its least loaded copy is at most the reference.
            let lesser = |a: Option<(u32, f64)>, b: Option<(u32, f64)>| match (a, b) {
                (Some(x), Some(y)) => Some(if y.1 < x.1 { y } else { x }),
                (x, y) => x.or(y),
            };
            let (free, local) = (lesser(at_home, at_visited), lesser(near, joined));
            let cool = |c: &(u32, f64)| c.1 <= reference + 1.0;
            return free.filter(cool).or(local.filter(cool)).or(free).or(local).map_or(least, |c| c.0);
        }
        at_visited.or(near).or(joined).map_or(least, |c| c.0)
    }
}

impl Dispatcher for Gesr {
    fn params(&self) -> Vec<Param> {
        PARAMS.to_vec()
    }

    fn name(&self) -> &'static str {
        "gesr"
    }

    fn about(&self) -> &'static str {
        "copies within 15% of the least loaded (or of the mean): home GPU, else a GPU already sent to, else home node, else a node already sent to, else least loaded (the least loaded copy of each step)"
    }

    fn dispatch(&self, ctx: &DispatchContext<'_>, picks: &[u16], out: &mut [u32]) {
        self.dispatch_with_total(ctx, picks, out, || ctx.loads.iter().sum());
    }

    /// As `dispatch`, with the batch's running total of picks served instead of a
    /// sum over all GPUs per token, one layer's table, and the GPUs and nodes a token
    /// already sends to kept as the token's stamp (its index + 1) on per-GPU and
    /// per-node arrays instead of scans of its picks.
    fn dispatch_layer(&self, batch: &LayerBatch<'_>, loads: &mut [u64], out: &mut [u32]) {
        let (k, node_of) = (batch.k, batch.node_of);
        let table = batch.replicas.layer(batch.layer);
        let mut total: u64 = loads.iter().sum();
        let mut used = vec![0u32; node_of.len()];
        let mut crossed = vec![0u32; node_of.len()];
        for (t, ((picks, o), &home)) in
            batch.picks.chunks_exact(k).zip(out.chunks_exact_mut(k)).zip(batch.homes).enumerate()
        {
            let stamp = t as u32 + 1;
            // Picks with one copy first (`fix_forced` without the home rule).
            let mut pending = false;
            for (x, &e) in o.iter_mut().zip(picks) {
                let reps = table.copies(e as usize);
                *x = if reps.len() == 1 {
                    reps[0]
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
                let home_node = node_of[home as usize];
                let mean = if self.mean_reference { total as f64 / loads.len().max(1) as f64 } else { 0.0 };
                for i in 0..k {
                    if o[i] != PENDING {
                        continue;
                    }
                    let g = self.choose_by(
                        table.copies(picks[i] as usize),
                        home,
                        home_node,
                        node_of,
                        |g| used[g as usize] == stamp,
                        |n| crossed[n as usize] == stamp,
                        mean,
                        |g| loads[g as usize] as f64,
                    );
                    o[i] = g;
                    used[g as usize] = stamp;
                    crossed[node_of[g as usize] as usize] = stamp;
                }
            }
            for &g in o.iter() {
                loads[g as usize] += 1;
            }
            total += k as u64;
        }
    }
}

impl Gesr {
    /// `dispatch`, given the sum of `ctx.loads` (asked for only when a pick has a
    /// choice and the mean is the reference).
    #[inline]
    fn dispatch_with_total(
        &self,
        ctx: &DispatchContext<'_>,
        picks: &[u16],
        out: &mut [u32],
        total: impl FnOnce() -> u64,
    ) {
        if !fix_forced(ctx, picks, out, false) {
            return;
        }
        let home = ctx.home as u32;
        let mean = if self.mean_reference { total() as f64 / ctx.loads.len().max(1) as f64 } else { 0.0 };
        for i in 0..out.len() {
            if out[i] != PENDING {
                continue;
            }
            let reps = ctx.replicas.gpus(ctx.layer, picks[i] as usize);
            out[i] =
                self.choose(reps, home, ctx.home_node as u32, ctx.node_of, out, mean, |g| ctx.loads[g as usize] as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_defaults_are_the_default_dispatcher() {
        assert_eq!(Gesr::from_params(&Params::default()).unwrap(), Gesr::default());
    }

    #[test]
    fn prefers_home_then_visited_then_node_within_tolerance() {
        // 3 nodes: {0,1}, {2,3}, {4,5}. Home 0; the token already sends to GPU 5 (node
        // 2): a copy on GPU 4 adds no inter-node send, one on GPU 2 would.
        let g = Gesr { mean_reference: false, ..Gesr::default() };
        let nodes = [0, 0, 1, 1, 2, 2];
        let l = |_: u32| 10.0;
        assert_eq!(g.choose(&[2, 4], 0, 0, &nodes, &[5, PENDING], 0.0, l), 4);
        assert_eq!(g.choose(&[2, 4], 0, 0, &nodes, &[PENDING], 0.0, l), 2);
        let g = Gesr { mean_reference: false, ..Gesr::default() };
        // 4 GPUs, 2 nodes: {0,1}, {2,3}. Home 0.
        let nodes = [0, 0, 1, 1];
        let loads = [10.0, 10.0, 10.0, 10.0];
        let l = |x: u32| loads[x as usize];
        assert_eq!(g.choose(&[3, 0], 0, 0, &nodes, &[], 0.0, l), 0);
        assert_eq!(g.choose(&[2, 3], 0, 0, &nodes, &[3], 0.0, l), 3);
        assert_eq!(g.choose(&[2, 1], 0, 0, &nodes, &[], 0.0, l), 1);
        // Home is too loaded: the least loaded copy wins.
        let loads = [30.0, 10.0, 5.0, 10.0];
        let l = |x: u32| loads[x as usize];
        assert_eq!(g.choose(&[0, 2], 0, 0, &nodes, &[], 0.0, l), 2);
        // Within tolerance (5 vs 5.75+1): the home node's copy beats the least loaded.
        let loads = [30.0, 6.0, 5.0, 10.0];
        let l = |x: u32| loads[x as usize];
        assert_eq!(g.choose(&[2, 1], 0, 0, &nodes, &[], 0.0, l), 1);
        // Home 30 against copies at 5: too loaded for the paper's rule, but within
        // tolerance of a mean load of 28 with the mean reference.
        let loads = [30.0, 10.0, 5.0, 10.0];
        let l = |x: u32| loads[x as usize];
        assert_eq!(g.choose(&[0, 2], 0, 0, &nodes, &[], 28.0, l), 2);
        assert_eq!(Gesr::default().choose(&[0, 2], 0, 0, &nodes, &[], 28.0, l), 0);
        assert_eq!(Gesr::default().choose(&[0, 2], 0, 0, &nodes, &[], 20.0, l), 2);
    }

    #[test]
    fn free_first_takes_a_copy_reached_anyway_before_a_busy_home_copy() {
        // 2 nodes: {0,1}, {2,3}. Home 0; the token already sends to GPU 3 (node 1).
        // Mean load 10, so the reference is 10, "busy" above 11 and the tolerance
        // ends at 12.5.
        let nodes = [0, 0, 1, 1];
        let free = Gesr { free_first: true, ..Gesr::default() };
        let with = |loads: [f64; 4]| move |x: u32| loads[x as usize];
        // A busy home copy (12) stays within the tolerance, so the usual rule keeps
        // the pick at home; free first sends it to node 1, crossed anyway.
        let busy_home = with([12.0, 10.0, 10.0, 10.0]);
        assert_eq!(Gesr::default().choose(&[0, 2], 0, 0, &nodes, &[3], 10.0, busy_home), 0);
        assert_eq!(free.choose(&[0, 2], 0, 0, &nodes, &[3], 10.0, busy_home), 2);
        // The same for a busy copy on the home node.
        let busy_near = with([10.0, 12.0, 10.0, 10.0]);
        assert_eq!(Gesr::default().choose(&[1, 2], 0, 0, &nodes, &[3], 10.0, busy_near), 1);
        assert_eq!(free.choose(&[1, 2], 0, 0, &nodes, &[3], 10.0, busy_near), 2);
        // Not busy (at most the reference plus one pick): the home copy keeps its place.
        let warm_home = with([11.0, 10.0, 10.0, 10.0]);
        assert_eq!(free.choose(&[0, 2], 0, 0, &nodes, &[3], 10.0, warm_home), 0);
        // Nothing reached anyway: the busy home copy, within the tolerance.
        assert_eq!(free.choose(&[0, 2], 0, 0, &nodes, &[], 10.0, busy_home), 0);
        // A GPU the token already sends to costs no more than home: the less loaded.
        let light_visited = with([10.0, 8.0, 10.0, 10.0]);
        assert_eq!(Gesr::default().choose(&[0, 1], 0, 0, &nodes, &[1], 10.0, light_visited), 0);
        assert_eq!(free.choose(&[0, 1], 0, 0, &nodes, &[1], 10.0, light_visited), 1);
    }

    #[test]
    fn takes_the_least_loaded_copy_of_a_step() {
        // 2 nodes: {0,1,2}, {3,4,5}. Home 0 holds no copy; two copies on the home node
        // and two on node 1, which the token already sends to (GPU 5).
        let nodes = [0, 0, 0, 1, 1, 1];
        let loads = [10.0, 12.0, 9.0, 10.0, 10.0, 10.0];
        let l = |x: u32| loads[x as usize];
        for g in [Gesr::default(), Gesr { free_first: true, ..Gesr::default() }] {
            assert_eq!(g.choose(&[1, 2], 0, 0, &nodes, &[5], 10.0, l), 2);
            assert_eq!(g.choose(&[3, 4], 0, 0, &nodes, &[5], 10.0, |x| if x == 3 { 11.0 } else { 10.0 }), 4);
        }
    }
}
