//! `eplb`: DeepSeek's expert-parallel load balancer (docs/METHODS.md, "DeepSeek EPLB"), written
//! from its published description, with the same inputs, outputs and tie-breaks.
//!
//! [`rebalance_experts`] is the algorithm itself: loads `[layers][experts]`, the number
//! of physical slots (replicas), expert groups, nodes and GPUs in, DeepSeek's three
//! arrays out (`phy2log`, `log2phy` padded with -1, `logcnt`). Per layer:
//! - **hierarchical policy** (when the number of groups divides by the number of
//!   nodes): (1) pack expert groups (contiguous ids) onto nodes, heaviest group first
//!   into the lightest node that still has room for a group; (2) inside each node,
//!   replicate: each extra slot goes to the expert with the highest load per copy;
//!   (3) pack the node's copies (each carrying load / copies) onto its GPUs the same
//!   way as step 1, heaviest first into the lightest GPU with a free slot;
//! - **global policy** (otherwise): the same with one group and one node.
//!
//! Tie-breaks (they decide the output, so they are part of the contract): sorts are
//! stable and descending (the lower index first on equal load); "lightest" and
//! "highest load per copy" pick the lowest index on ties. Arithmetic is in 32-bit
//! floats, as the reference implementation converts its input to `float` first, so
//! ties that single precision creates are broken the same way. `log2phy[l][e][r]` is
//! the slot of expert e's r-th replica in creation order (r = 0 is the primary).
//!
//! **Unequal slot counts** (an extension; DeepSeek's code refuses slots that do not
//! divide by the GPUs): GPU g owns slots [g*S/G, (g+1)*S/G) as everywhere in moeplace,
//! each node the slots of its GPUs, and every packing step fills each pack up to its
//! own capacity (heaviest first into the lightest pack with room, as before). With
//! equal counts this is exactly EPLB.
//!
//! **Duplicates.** EPLB may put two copies of one expert on one GPU (its packing
//! never looks at expert ids), which moeplace plans refuse (docs/DESIGN.md). The function
//! [`rebalance_experts`] reproduces EPLB exactly, duplicates included. The `eplb`
//! placer then repairs each duplicate by one swap: the extra copy trades places with
//! a copy of another expert on another GPU (preferring the same node, so the node
//! level of the hierarchical policy is kept when possible) such that neither GPU ends
//! up with a duplicate, choosing the swap that leaves the lower maximum of the two GPU
//! loads (then the lowest GPU and slot). Replica counts never change. If an expert got
//! more copies than there are GPUs (no placement can hold that), the surplus copies are
//! first handed, one at a time, to the expert with the highest load per copy that can
//! still take one. The placer reports in its notes `duplicate_repairs` (swaps) and
//! `count_repairs` (reassigned copies); both are 0 whenever EPLB's own plan is valid,
//! and then the placement equals EPLB's `phy2log` exactly.
//!
//! Parameters (`--param`):
//! - `groups=K` (default 1): expert groups, EPLB's `num_groups`. The hierarchical
//!   policy runs when K is a multiple of the number of nodes; then the experts must
//!   divide into K equal groups.

use rayon::prelude::*;

use super::{check_fits, Kind, Level, Param, Params, PlaceError, Placer, PlacerInput, PlacerOutput, Value};

/// `groups`, shared with `balance`.
pub(crate) const GROUPS: Param = Param {
    name: "groups",
    kind: Kind::Count,
    default: Value::Count(1),
    about: "expert groups of consecutive ids (EPLB's num_groups); a multiple of the node count selects \
            the hierarchical policy (groups packed onto nodes)",
    level: Level::Stable,
};
use crate::placement::Placement;

/// The `groups` parameter, shared with `balance`; checked here so that the message
/// names the parameter rather than EPLB's inner sizes.
pub(crate) fn groups_param(params: &Params) -> Result<usize, PlaceError> {
    let groups = params.count(&GROUPS)?;
    if groups == 0 {
        return Err(PlaceError::BadParam("parameter groups=0 must be at least 1".into()));
    }
    Ok(groups)
}

/// DeepSeek EPLB's outputs. `phy2log[l][slot]` is the expert in each slot;
/// `log2phy[l][e]` lists expert e's slots by replica rank, padded with -1 to the largest
/// copy count of any layer; `logcnt[l][e]` is expert e's copy count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EplbArrays {
    pub phy2log: Vec<Vec<usize>>,
    pub log2phy: Vec<Vec<Vec<i64>>>,
    pub logcnt: Vec<Vec<usize>>,
}

/// Sizes of one EPLB problem, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dims {
    experts: usize,
    replicas: usize,
    groups: usize,
    nodes: usize,
    gpus: usize,
}

impl Dims {
    fn check(self) -> Result<Dims, PlaceError> {
        let Dims { experts, replicas, groups, nodes, gpus } = self;
        let bad = |m: String| Err(PlaceError::Unsupported(m));
        if experts == 0 || replicas == 0 || groups == 0 || nodes == 0 || gpus == 0 {
            return bad("EPLB needs at least one expert, replica, group, node and GPU".into());
        }
        if replicas < experts {
            return bad(format!("{replicas} slots cannot hold {experts} experts"));
        }
        if replicas < gpus {
            return bad(format!("{replicas} slots leave some of the {gpus} GPUs without a slot"));
        }
        if gpus % nodes != 0 {
            return bad(format!("{gpus} GPUs do not divide evenly into {nodes} nodes"));
        }
        if experts % groups != 0 {
            return bad(format!("{experts} experts do not divide into {groups} equal groups"));
        }
        Ok(self)
    }

    fn hierarchical(self) -> bool {
        self.groups.is_multiple_of(self.nodes)
    }
}

/// DeepSeek EPLB on `loads[layer][expert]` (see the module documentation). Errors
/// name the size that does not fit (slots not divisible by GPUs, and so on).
pub fn rebalance_experts(
    loads: &[Vec<f64>],
    num_replicas: usize,
    num_groups: usize,
    num_nodes: usize,
    num_gpus: usize,
) -> Result<EplbArrays, PlaceError> {
    let experts = loads.first().map(Vec::len).unwrap_or(0);
    if loads.is_empty() || loads.iter().any(|l| l.len() != experts) {
        return Err(PlaceError::Unsupported("EPLB needs at least one layer, every layer with the same experts".into()));
    }
    if let Some(x) = loads.iter().flatten().find(|x| !x.is_finite() || **x < 0.0) {
        return Err(PlaceError::Unsupported(format!("load {x} is not a finite non-negative number")));
    }
    let dims =
        Dims { experts, replicas: num_replicas, groups: num_groups, nodes: num_nodes, gpus: num_gpus }.check()?;
    // The global policy is the hierarchical one with a single group on a single node.
    let dims = if dims.hierarchical() { dims } else { Dims { groups: 1, nodes: 1, ..dims } };
    let per_layer: Vec<(Vec<usize>, Vec<usize>, Vec<usize>)> =
        loads.par_iter().map(|w| hierarchical_layer(w, dims)).collect();
    let width = per_layer.iter().flat_map(|(_, _, c)| c.iter().copied()).max().unwrap_or(1);
    let mut out = EplbArrays { phy2log: Vec::new(), log2phy: Vec::new(), logcnt: Vec::new() };
    for (phy2log, rank, logcnt) in per_layer {
        let mut l2p = vec![vec![-1i64; width]; experts];
        for (slot, (&e, &r)) in phy2log.iter().zip(&rank).enumerate() {
            l2p[e][r] = slot as i64;
        }
        out.phy2log.push(phy2log);
        out.log2phy.push(l2p);
        out.logcnt.push(logcnt);
    }
    Ok(out)
}

/// Stable descending order of `w` (lower index first on ties).
fn desc_order(w: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..w.len()).collect();
    idx.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
    idx
}

/// Packs `w.len()` items into packs of item counts `cap` (summing to `w.len()`):
/// heaviest item first into the lightest pack with room (lowest pack on ties).
/// Returns (pack, rank in pack) per item.
fn balanced_packing(w: &[f32], cap: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let n = w.len();
    let packs = cap.len();
    if cap.iter().all(|&c| c == 1) {
        return ((0..n).collect(), vec![0; n]);
    }
    let mut pack_of = vec![0; n];
    let mut rank = vec![0; n];
    let mut weight = vec![0f32; packs];
    let mut items = vec![0usize; packs];
    for i in desc_order(w) {
        let mut best = usize::MAX;
        for p in 0..packs {
            if items[p] < cap[p] && (best == usize::MAX || weight[p] < weight[best]) {
                best = p;
            }
        }
        pack_of[i] = best;
        rank[i] = items[best];
        weight[best] += w[i];
        items[best] += 1;
    }
    (pack_of, rank)
}

/// Replicates `w.len()` experts into `slots` copies: the first `w.len()` slots hold
/// each expert once, every further slot the expert of highest load per copy (lowest
/// id on ties). Returns (expert per slot, replica rank per slot, copies per expert).
pub(crate) fn replicate(w: &[f32], slots: usize) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let n = w.len();
    let mut phy: Vec<usize> = (0..n).collect();
    let mut rank = vec![0; n];
    let mut cnt = vec![1usize; n];
    for _ in n..slots {
        let mut best = 0;
        let mut best_v = w[0] / cnt[0] as f32;
        for e in 1..n {
            let v = w[e] / cnt[e] as f32;
            if v > best_v {
                best = e;
                best_v = v;
            }
        }
        phy.push(best);
        rank.push(cnt[best]);
        cnt[best] += 1;
    }
    (phy, rank, cnt)
}

fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// One layer of the hierarchical policy: (phy2log, replica rank per slot, logcnt).
fn hierarchical_layer(w64: &[f64], d: Dims) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let w: Vec<f32> = w64.iter().map(|&x| x as f32).collect();
    let e = d.experts;
    let group_size = e / d.groups;
    let groups_per_node = d.groups / d.nodes;
    let e_node = e / d.nodes;
    let gpus_node = d.gpus / d.nodes;
    // First slot of each GPU: GPU g owns [g*S/G, (g+1)*S/G).
    let start = |g: usize| crate::placement::slot_range(d.gpus, d.replicas, g).start;

    // Step 1: groups to nodes. Experts are renumbered ("middle" ids) so that node n
    // holds middle ids [n * e_node, (n + 1) * e_node).
    let group_load: Vec<f32> = w.chunks(group_size).map(|c| c.iter().sum()).collect();
    let (gpack, grank) = balanced_packing(&group_load, &vec![groups_per_node; d.nodes]);
    let log2mlog: Vec<usize> = (0..e)
        .map(|x| (gpack[x / group_size] * groups_per_node + grank[x / group_size]) * group_size + x % group_size)
        .collect();
    let mlog2log = inverse(&log2mlog);

    let mut phy2log = vec![0; d.replicas];
    let mut phy_rank = vec![0; d.replicas];
    let mut mlogcnt = vec![0; e];
    for node in 0..d.nodes {
        let gpus: Vec<usize> = (node * gpus_node..(node + 1) * gpus_node).collect();
        let node_start = start(gpus[0]);
        let p_node = start(node * gpus_node + gpus_node) - node_start;
        // Step 2: replicate inside the node.
        let tokens: Vec<f32> = (0..e_node).map(|i| w[mlog2log[node * e_node + i]]).collect();
        let (phy2mlog, rank, cnt) = replicate(&tokens, p_node);
        mlogcnt[node * e_node..(node + 1) * e_node].copy_from_slice(&cnt);
        // Step 3: pack the node's copies onto its GPUs.
        let per_copy: Vec<f32> = phy2mlog.iter().map(|&m| tokens[m] / cnt[m] as f32).collect();
        let cap: Vec<usize> = gpus.iter().map(|&g| start(g + 1) - start(g)).collect();
        let (pack, rank_in_pack) = balanced_packing(&per_copy, &cap);
        let phy2pphy: Vec<usize> =
            pack.iter().zip(&rank_in_pack).map(|(&p, &r)| start(gpus[p]) - node_start + r).collect();
        let pphy2phy = inverse(&phy2pphy);
        for (q, &p) in pphy2phy.iter().enumerate() {
            phy2log[node_start + q] = mlog2log[node * e_node + phy2mlog[p]];
            phy_rank[node_start + q] = rank[p];
        }
    }
    let logcnt = (0..e).map(|x| mlogcnt[log2mlog[x]]).collect();
    (phy2log, phy_rank, logcnt)
}

/// Turns EPLB's `phy2log` of one layer into one moeplace accepts: caps copy counts at
/// the number of GPUs, then removes duplicates on a GPU by swaps (module
/// documentation). Returns the number of (count repairs, swaps), or an error when no
/// swap can remove a duplicate.
pub(crate) fn repair_layer(
    row: &mut [usize],
    w: &[f64],
    gpus: usize,
    gpus_per_node: usize,
) -> Result<(usize, usize), String> {
    let slots = row.len();
    let range = |g: usize| crate::placement::slot_range(gpus, slots, g);
    let e = w.len();
    let mut cnt = vec![0usize; e];
    for &x in row.iter() {
        cnt[x] += 1;
    }
    // Copies beyond one per GPU: hand them to the expert with the highest load per copy
    // that has fewer copies than GPUs.
    let mut count_repairs = 0;
    for slot in row.iter_mut() {
        let x = *slot;
        if cnt[x] > gpus {
            let mut best: Option<usize> = None;
            for y in 0..e {
                if cnt[y] < gpus && best.is_none_or(|b| w[y] / cnt[y] as f64 > w[b] / cnt[b] as f64) {
                    best = Some(y);
                }
            }
            let y = best.ok_or_else(|| "every expert already has a copy on every GPU".to_string())?;
            cnt[x] -= 1;
            cnt[y] += 1;
            *slot = y;
            count_repairs += 1;
        }
    }
    let per_copy = |x: usize| w[x] / cnt[x] as f64;
    let on = |row: &[usize], g: usize, x: usize| row[range(g)].contains(&x);
    let gpu_load = |row: &[usize], g: usize| row[range(g)].iter().map(|&x| per_copy(x)).sum::<f64>();
    let mut swaps = 0;
    for g in 0..gpus {
        loop {
            // The second copy of a duplicated expert on GPU g, if any.
            let first = range(g).start;
            let dup = range(g).find(|&a| row[first..a].contains(&row[a]));
            let Some(a) = dup else { break };
            let x = row[a];
            let node = g / gpus_per_node;
            let mut best: Option<(bool, f64, usize)> = None; // (other node, max load, slot)
            for h in (0..gpus).filter(|&h| h != g && !on(row, h, x)) {
                let (lg, lh) = (gpu_load(row, g), gpu_load(row, h));
                for b in range(h) {
                    let y = row[b];
                    if on(row, g, y) {
                        continue;
                    }
                    let d = per_copy(y) - per_copy(x);
                    let key = (h / gpus_per_node != node, (lg + d).max(lh - d), b);
                    let better = match best {
                        None => true,
                        Some(k) => (key.0, key.1) < (k.0, k.1),
                    };
                    if better {
                        best = Some(key);
                    }
                }
            }
            let Some((_, _, b)) = best else {
                // No single swap helps (nearly every GPU holds nearly every expert):
                // lay the same copy counts out afresh.
                let before = row.to_vec();
                repack_without_duplicates(row, &cnt, gpus).ok_or_else(|| {
                    format!("no placement of these copy counts avoids two copies of expert {x} on one GPU")
                })?;
                swaps += row.iter().zip(&before).filter(|(p, q)| p != q).count();
                return Ok((count_repairs, swaps));
            };
            row.swap(a, b);
            swaps += 1;
        }
    }
    Ok((count_repairs, swaps))
}

/// Lays out `cnt[x]` copies of every expert x with no GPU holding two: experts with
/// the most copies first, each onto the GPUs with the most free slots (lowest GPU on
/// ties), the greedy construction of a 0-1 matrix with given row and column sums,
/// which succeeds whenever such a matrix exists. `None` if none exists.
fn repack_without_duplicates(row: &mut [usize], cnt: &[usize], gpus: usize) -> Option<()> {
    let slots = row.len();
    let range = |g: usize| crate::placement::slot_range(gpus, slots, g);
    let mut free: Vec<usize> = (0..gpus).map(|g| range(g).len()).collect();
    let mut lists: Vec<Vec<usize>> = vec![Vec::new(); gpus];
    let mut order: Vec<usize> = (0..cnt.len()).collect();
    order.sort_by(|&a, &b| cnt[b].cmp(&cnt[a]).then(a.cmp(&b)));
    for x in order {
        let mut by_room: Vec<usize> = (0..gpus).filter(|&g| free[g] > 0).collect();
        by_room.sort_by(|&a, &b| free[b].cmp(&free[a]).then(a.cmp(&b)));
        if by_room.len() < cnt[x] {
            return None;
        }
        for &g in &by_room[..cnt[x]] {
            lists[g].push(x);
            free[g] -= 1;
        }
    }
    for (g, l) in lists.iter().enumerate() {
        row[range(g)].copy_from_slice(l);
    }
    Some(())
}

pub struct Eplb;

impl Placer for Eplb {
    fn name(&self) -> &'static str {
        "eplb"
    }

    fn loads_only(&self) -> bool {
        true
    }

    fn about(&self) -> &'static str {
        "DeepSeek EPLB (hierarchical when groups divide by nodes, else global); duplicates on a GPU repaired by swaps"
    }

    fn params(&self) -> Vec<Param> {
        vec![GROUPS]
    }

    fn place(&self, input: &PlacerInput<'_>) -> Result<PlacerOutput, PlaceError> {
        input.params.allow_only(self)?;
        check_fits(input.shape, input.cluster)?;
        let groups = groups_param(input.params)?;
        let c = input.cluster;
        let loads: Vec<Vec<f64>> = (0..input.loads.layers).map(|l| input.loads.layer_total(l)).collect();
        let arrays = rebalance_experts(&loads, c.slots(), groups, c.nodes, c.gpus)?;
        type Repaired = Result<(Vec<usize>, (usize, usize)), String>;
        let repaired: Vec<Repaired> = arrays
            .phy2log
            .into_par_iter()
            .zip(&loads)
            .map(|(mut row, w)| {
                let r = repair_layer(&mut row, w, c.gpus, c.gpus_per_node())?;
                Ok((row, r))
            })
            .collect();
        let mut rows = Vec::with_capacity(repaired.len());
        let (mut count_repairs, mut swaps) = (0, 0);
        for (layer, r) in repaired.into_iter().enumerate() {
            let (row, (cr, sw)) = r.map_err(|m| PlaceError::Unsupported(format!("layer {layer}: {m}")))?;
            count_repairs += cr;
            swaps += sw;
            rows.push(row.into_iter().map(|x| x as i64).collect());
        }
        let placement = Placement::with_slots(input.shape.experts, c.gpus, c.slots, rows)?;
        let mut out = PlacerOutput::placement(placement);
        out.notes.insert("duplicate_repairs".into(), swaps as f64);
        out.notes.insert("count_repairs".into(), count_repairs as f64);
        out.notes.insert("hierarchical".into(), if groups.is_multiple_of(c.nodes) { 1.0 } else { 0.0 });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readme() -> Option<serde_json::Value> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");
        let path = format!("{dir}/eplb-readme-example.json");
        match std::fs::read_to_string(&path) {
            Ok(s) => Some(serde_json::from_str(&s).expect("the example parses")),
            Err(_) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIP: {path} is absent (shared test data not present; set CI to make this fail)");
                None
            }
            Err(e) => panic!("CI is set and the shared test data {path} is missing: {e}"),
        }
    }

    fn mat<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Vec<Vec<T>> {
        serde_json::from_value(v.clone()).unwrap()
    }

    #[test]
    #[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
    fn reproduces_the_readme_example_exactly() {
        let Some(ex) = readme() else { return };
        let w: Vec<Vec<f64>> = mat(&ex["weight"]);
        let n = |k: &str| ex[k].as_u64().unwrap() as usize;
        let out = rebalance_experts(&w, n("num_replicas"), n("num_groups"), n("num_nodes"), n("num_gpus")).unwrap();
        assert_eq!(out.phy2log, mat::<usize>(&ex["phy2log"]));
        assert_eq!(out.logcnt, mat::<usize>(&ex["logcnt"]));
        // log2phy is consistent with phy2log and padded to the largest count.
        for (l, layer) in out.log2phy.iter().enumerate() {
            for (e, slots) in layer.iter().enumerate() {
                let real: Vec<i64> = slots.iter().copied().filter(|&s| s >= 0).collect();
                assert_eq!(real.len(), out.logcnt[l][e]);
                assert!(real.iter().all(|&s| out.phy2log[l][s as usize] == e));
                assert_eq!(slots.len(), 2);
            }
        }
        // The placer gives the same plan (no duplicate to repair here).
        let layers = w.len();
        let experts = w[0].len();
        let loads = crate::stats::ExpertLoads::new(layers, experts, vec![w.concat()]).unwrap();
        let cluster = crate::cluster::Cluster::new(2, 8, 2).unwrap();
        let params = super::super::Params::parse(["groups=4"]).unwrap();
        let input = PlacerInput {
            shape: crate::trace::ModelShape::new(layers, experts, 2).unwrap(),
            cluster: &cluster,
            loads: &loads,
            stats: None,
            previous: None,
            params: &params,
            seed: 0,
        };
        let plan = Eplb.place(&input).unwrap();
        let rows: Vec<Vec<usize>> =
            plan.placement.phy2log().iter().map(|r| r.iter().map(|&x| x as usize).collect()).collect();
        assert_eq!(rows, out.phy2log);
        assert_eq!(plan.notes["duplicate_repairs"], 0.0);
    }

    #[test]
    fn global_policy_when_groups_do_not_divide_by_nodes() {
        // 4 experts, 6 slots on 3 GPUs, one node group rule broken (groups=1, nodes=3).
        let w = vec![vec![10.0, 1.0, 6.0, 3.0]];
        let out = rebalance_experts(&w, 6, 1, 3, 3).unwrap();
        // Replication: 10 -> 5 (2 copies), then 6 -> 3 (2 copies): counts [2,1,2,1].
        assert_eq!(out.logcnt, vec![vec![2, 1, 2, 1]]);
        // Copies 5,5,1,3,3,3 (slots 0..6 = e0,e1,e2,e3,e0,e2); packed heaviest first:
        // e0(5)->gpu0, e0(5)->gpu1, e2(3)->gpu2, e3(3)->gpu2, e2(3)->gpu0, e1(1)->gpu1.
        assert_eq!(out.phy2log, vec![vec![0, 2, 0, 1, 2, 3]]);
        assert_eq!(out.log2phy[0][0], vec![0, 2]);
        assert_eq!(out.log2phy[0][1], vec![3, -1]);
    }

    #[test]
    fn unequal_slot_counts_fill_each_gpu_to_its_own_capacity() {
        // 5 slots on 2 GPUs: GPU 0 owns slots 0..2, GPU 1 owns 2..5. Expert 0 (the
        // heaviest) gets the one extra copy; copies 6, 6, 4, 3, 1 go heaviest first to
        // the lightest GPU with room: 6 -> 0, 6 -> 1, 4 -> 0 (full), 3 -> 1, 1 -> 1.
        let w = vec![vec![12.0, 4.0, 3.0, 1.0]];
        let out = rebalance_experts(&w, 5, 1, 1, 2).unwrap();
        assert_eq!(out.logcnt[0], vec![2, 1, 1, 1]);
        assert_eq!(out.phy2log[0], vec![0, 1, 0, 2, 3]);
        // With equal counts the extension changes nothing: 6 slots on 2 GPUs.
        let even = rebalance_experts(&w, 6, 1, 1, 2).unwrap();
        assert_eq!(even.phy2log[0].len(), 6);
    }

    #[test]
    fn full_replication_is_repaired_when_no_swap_helps() {
        // 4 experts on 6 GPUs x 4 slots: every GPU must hold every expert. With zero
        // loads EPLB gives expert 0 every extra copy; the repair caps it at 6 and lays
        // the copies out again.
        let mut row = rebalance_experts(&[vec![0.0; 4]], 24, 1, 1, 6).unwrap().phy2log[0].clone();
        repair_layer(&mut row, &[0.0; 4], 6, 3).unwrap();
        let p = Placement::new(4, 6, 4, vec![row.iter().map(|&x| x as i64).collect()]).unwrap();
        assert_eq!(p.logcnt()[0], vec![6, 6, 6, 6]);
    }

    #[test]
    fn bad_sizes_are_named() {
        let w = vec![vec![1.0; 4]];
        let e = rebalance_experts(&[vec![1.0]], 1, 1, 1, 2).unwrap_err();
        assert!(e.to_string().contains("1 slots leave some of the 2 GPUs without a slot"), "{e}");
        let e = rebalance_experts(&w, 4, 3, 1, 2).unwrap_err();
        assert!(e.to_string().contains("4 experts do not divide into 3 equal groups"), "{e}");
        let e = rebalance_experts(&w, 2, 1, 1, 2).unwrap_err();
        assert!(e.to_string().contains("cannot hold"), "{e}");
    }

    #[test]
    fn duplicates_are_repaired_by_a_swap() {
        // One GPU per two slots; expert 0 is so hot EPLB gives it 3 copies and packs
        // two of them together (copies 4,4,4 then 1,1,1 over 3 GPUs... 2 slots each).
        let w = vec![vec![12.0, 1.0, 1.0, 1.0]];
        let raw = rebalance_experts(&w, 6, 1, 1, 3).unwrap();
        let mut row = raw.phy2log[0].clone();
        let (cr, sw) = repair_layer(&mut row, &w[0], 3, 3).unwrap();
        assert_eq!(cr, 0);
        let p = Placement::new(4, 3, 2, vec![row.iter().map(|&x| x as i64).collect()]).unwrap();
        assert_eq!(p.logcnt()[0], raw.logcnt[0]);
        let had_dup = (0..3).any(|g| raw.phy2log[0][2 * g] == raw.phy2log[0][2 * g + 1]);
        assert_eq!(sw > 0, had_dup);
    }
}
