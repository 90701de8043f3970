//! The fallback toward balance judged as a plan is served (not a placer): the
//! calibration token sample replayed through the plan's own serving (its dispatcher
//! and home policy, [`crate::dispatch::BatchDispatch`]) gives the picks each copy
//! really serves. [`super::hold_balance`] splits an expert's load evenly over its
//! copies; under family homes and locality-aware dispatch the copy near a family's
//! home takes most of that family's picks, so a plan even on paper can be uneven as
//! served, most of all at top-1 where one hot expert is a whole token's load.
//!
//! [`hold_served_balance`], per layer whose served Jain is below
//! [`super::BALANCE_FLOOR`]:
//! 1. swaps pairs of experts between the GPU serving most and another, each carrying
//!    the load it was served, each time the swap that lowers the sum of squared
//!    served GPU loads most, until the layer reaches the floor or no swap helps;
//!    replays the sample again and repeats, up to a few rounds (a moved copy of a
//!    replicated expert is served differently where it lands);
//! 2. reverts a layer still more than [`REVERT_MARGIN`] below
//!    `balance`'s plan (served as `balance` serves it, on the same sample) to
//!    `balance`'s placement of that layer.
//!
//! Plan notes: [`SERVED_SWAPS_NOTE`] and [`REVERTED_LAYERS_NOTE`].

use std::collections::BTreeMap;

use super::{jain, swap_to_floor, Params, PlaceError, Placer, PlacerInput, PlacerOutput, BALANCE_FLOOR};
use crate::cluster::Cluster;
use crate::dispatch::BatchDispatch;
use crate::placement::Placement;
use crate::serving::Serving;
use crate::simulate::{HomePolicy, CHUNK_TOKENS};
use crate::stats::SampledToken;

/// Plan note: expert swaps made on served loads.
pub const SERVED_SWAPS_NOTE: &str = "served_balance_swaps";
/// Plan note: layers replaced by `balance`'s placement.
pub const REVERTED_LAYERS_NOTE: &str = "balance_reverted_layers";
/// How far below `balance`'s served Jain a layer may stay after the swaps before it
/// takes `balance`'s placement: a plan trades some balance for locality by design,
/// and the sample's Jain is noisy at this level, so only a clear shortfall reverts.
pub const REVERT_MARGIN: f64 = 0.01;
/// Rounds of swaps and replays before a layer is judged.
const SWAP_ROUNDS: usize = 4;

/// Picks served per slot, `[layer][slot]`, when the sampled tokens are served as
/// `serving` says (each sampled token its own request, homes dealt in sample order).
pub(crate) fn served_loads(
    placement: &Placement,
    cluster: &Cluster,
    serving: &Serving,
    family_gpus: Option<&BTreeMap<String, Vec<usize>>>,
    sample: &[SampledToken],
    top_k: usize,
    seed: u64,
) -> Result<Vec<Vec<f64>>, PlaceError> {
    let gpus = placement.gpus();
    let homes = homes(&serving.home_policy(family_gpus), sample, gpus);
    let batch = BatchDispatch::new(placement, cluster.nodes, serving.dispatcher(seed)?)
        .map_err(|e| PlaceError::Unsupported(e.to_string()))?;
    let mut out = vec![vec![0.0; placement.slots()]; placement.layers()];
    let mut ids: Vec<u16> = Vec::new();
    let mut slots: Vec<i64> = Vec::new();
    for (layer, load) in out.iter_mut().enumerate() {
        // Chunks as the replay cuts them: load-aware dispatchers count from zero in each.
        for (chunk, chunk_homes) in sample.chunks(CHUNK_TOKENS).zip(homes.chunks(CHUNK_TOKENS)) {
            ids.clear();
            for t in chunk {
                ids.extend_from_slice(&t.picks[layer * top_k..(layer + 1) * top_k]);
            }
            slots.clear();
            slots.resize(ids.len(), 0);
            batch
                .dispatch(layer, &ids, top_k, chunk_homes, &mut slots)
                .map_err(|e| PlaceError::Unsupported(e.to_string()))?;
            for &s in &slots {
                load[s as usize] += 1.0;
            }
        }
    }
    Ok(out)
}

/// Home GPU of each sampled token under `policy`.
fn homes(policy: &HomePolicy, sample: &[SampledToken], gpus: usize) -> Vec<u32> {
    let mut next_all = 0usize;
    let mut next: BTreeMap<&str, usize> = BTreeMap::new();
    let mut all = || {
        next_all += 1;
        ((next_all - 1) % gpus) as u32
    };
    sample
        .iter()
        .map(|t| match (policy, t.family.as_deref()) {
            (HomePolicy::Family(f), Some(name)) => match f.get(name).filter(|g| !g.is_empty()) {
                Some(g) => {
                    let i = next.entry(name).or_insert(0);
                    *i += 1;
                    g[(*i - 1) % g.len()] as u32
                }
                None => all(),
            },
            _ => all(),
        })
        .collect()
}

/// Served Jain per layer.
fn layer_jain(placement: &Placement, served: &[Vec<f64>]) -> Vec<f64> {
    served
        .iter()
        .map(|slots| {
            let load: Vec<f64> =
                (0..placement.gpus()).map(|g| placement.gpu_slots(g).map(|s| slots[s]).sum()).collect();
            jain(&load)
        })
        .collect()
}

/// The fallback (module documentation) applied to `out`, a plan meant to be served
/// as `serving` says. Plans without a token sample are returned as they are.
pub(crate) fn hold_served_balance(
    input: &PlacerInput<'_>,
    mut out: PlacerOutput,
    serving: &Serving,
) -> Result<PlacerOutput, PlaceError> {
    let sample = match input.stats {
        Some(s) if !s.token_sample().is_empty() => s.token_sample().tokens(),
        _ => return Ok(out),
    };
    let (cluster, k, seed) = (input.cluster, input.shape.top_k, input.seed);
    let served = served_loads(&out.placement, cluster, serving, out.family_gpus.as_ref(), sample, k, seed)?;
    let before = layer_jain(&out.placement, &served);
    if before.iter().all(|&j| j >= BALANCE_FLOOR) {
        out.notes.insert(SERVED_SWAPS_NOTE.into(), 0.0);
        out.notes.insert(REVERTED_LAYERS_NOTE.into(), 0.0);
        return Ok(out);
    }
    let p = &out.placement;
    let lists: Lists = (0..p.layers())
        .map(|l| (0..p.gpus()).map(|g| p.gpu_experts(l, g).iter().map(|&x| x as usize).collect()).collect())
        .collect();
    let experts = p.experts();
    let replay = |lists: &[Vec<Vec<usize>>]| -> Result<Replayed, PlaceError> {
        let placement = Placement::from_gpu_lists(experts, lists)?;
        let served = served_loads(&placement, cluster, serving, out.family_gpus.as_ref(), sample, k, seed)?;
        let jain = layer_jain(&placement, &served);
        Ok((placement, served, jain))
    };
    let (mut lists, after, mut swaps) = swap_rounds(lists, (out.placement.clone(), served, before), &replay)?;
    let mut reverted = 0;
    if after.iter().any(|&j| j < BALANCE_FLOOR) {
        let params = Params::default();
        let balance_input = PlacerInput { params: &params, ..*input };
        let balance = super::balance::Balance;
        let plan = balance.place(&balance_input)?.placement;
        let b_served = served_loads(&plan, cluster, &balance.serving(), None, sample, k, seed)?;
        let b_jain = layer_jain(&plan, &b_served);
        for (layer, gl) in lists.iter_mut().enumerate() {
            if after[layer] < b_jain[layer] - REVERT_MARGIN {
                *gl = (0..plan.gpus())
                    .map(|g| plan.gpu_experts(layer, g).iter().map(|&x| x as usize).collect())
                    .collect();
                reverted += 1;
            }
        }
        if reverted > 0 {
            // `balance`'s layout served under this plan's homes and dispatcher may
            // still be uneven: the same swaps even it as served.
            let state = replay(&lists)?;
            let (evened, _, made) = swap_rounds(lists, state, &replay)?;
            lists = evened;
            swaps += made;
        }
    }
    out.placement = Placement::from_gpu_lists(experts, &lists)?;
    out.notes.insert(SERVED_SWAPS_NOTE.into(), swaps as f64);
    out.notes.insert(REVERTED_LAYERS_NOTE.into(), reverted as f64);
    Ok(out)
}

/// Experts per GPU per layer, `[layer][gpu]`.
type Lists = Vec<Vec<Vec<usize>>>;
/// A plan replayed: its placement, served slot loads and served Jain per layer.
type Replayed = (Placement, Vec<Vec<f64>>, Vec<f64>);
/// Replays GPU lists.
type Replay<'a> = dyn Fn(&[Vec<Vec<usize>>]) -> Result<Replayed, PlaceError> + 'a;

/// Up to [`SWAP_ROUNDS`] rounds of swaps on the served loads of the layers below the
/// floor, each round replayed; each layer keeps its most even served version.
/// Returns the lists, their served Jain per layer and the swaps kept.
fn swap_rounds(
    mut lists: Lists,
    (mut placement, mut served, start): Replayed,
    replay: &Replay<'_>,
) -> Result<(Lists, Vec<f64>, usize), PlaceError> {
    let gpus = placement.gpus();
    let mut best = lists.clone();
    let mut best_jain = start.clone();
    let mut jain_now = start;
    let mut made_total = vec![0usize; lists.len()];
    let mut best_made = vec![0usize; lists.len()];
    for _ in 0..SWAP_ROUNDS {
        let mut made = 0;
        for (layer, gl) in lists.iter_mut().enumerate() {
            if jain_now[layer] < BALANCE_FLOOR {
                let w: Vec<Vec<f64>> =
                    (0..gpus).map(|g| placement.gpu_slots(g).map(|s| served[layer][s]).collect()).collect();
                let n = swap_to_floor(gl, w);
                made_total[layer] += n;
                made += n;
            }
        }
        if made == 0 {
            break;
        }
        (placement, served, jain_now) = replay(&lists)?;
        for layer in 0..lists.len() {
            if jain_now[layer] > best_jain[layer] {
                best[layer] = lists[layer].clone();
                best_jain[layer] = jain_now[layer];
                best_made[layer] = made_total[layer];
            }
        }
        if jain_now.iter().all(|&j| j >= BALANCE_FLOOR) {
            break;
        }
    }
    Ok((best, best_jain, best_made.iter().sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_even_the_served_loads() {
        // GPU 0 serves 10 + 9, GPU 1 serves 1 + 2: one swap evens them.
        let mut gl = vec![vec![0, 1], vec![2, 3]];
        let swaps = swap_to_floor(&mut gl, vec![vec![10.0, 9.0], vec![1.0, 2.0]]);
        assert_eq!(swaps, 1);
        assert!(gl[0].contains(&0) != gl[0].contains(&1), "{gl:?}");
        let mut even = vec![vec![0, 2], vec![1, 3]];
        assert_eq!(swap_to_floor(&mut even, vec![vec![10.0, 1.0], vec![9.0, 2.0]]), 0);
    }

    #[test]
    fn family_homes_stay_in_the_family_gpus() {
        let t = |f: &str| SampledToken { hash: 0, family: Some(f.into()), phase: None, picks: vec![0] };
        let sample = vec![t("a"), t("b"), t("a"), t("c"), t("a")];
        let f: BTreeMap<String, Vec<usize>> = [("a".to_string(), vec![2, 3]), ("b".to_string(), vec![1])].into();
        assert_eq!(homes(&HomePolicy::Family(f), &sample, 4), vec![2, 1, 3, 0, 2]);
        assert_eq!(homes(&HomePolicy::RoundRobin, &sample, 4), vec![0, 1, 2, 3, 0]);
    }
}
