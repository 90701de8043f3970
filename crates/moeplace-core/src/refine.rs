//! Token-level refinement of a placement: swaps of single-copy experts between GPUs
//! that lower the metrics of docs/DESIGN.md measured on sampled tokens
//! ([`crate::stats::TokenSample`]) instead of on pair counts.
//!
//! Pair counts are a proxy: a token's remote GPUs and remote nodes depend on all k
//! picks at once (a token whose six picks sit on one node costs no cross-node send;
//! five of six costs one). Graph partitioners ([`crate::partition`]) optimise the
//! proxy; this pass then optimises the real count on tokens.
//!
//! **Objective** (per layer, mean over sampled tokens): for token t with home-GPU
//! distribution p_t (its family's GPUs, or every GPU for round-robin homes),
//! `gpu_weight * sum_g [t picks on g] (1 - p_t(g)) + node_weight * sum_n [t picks on n] (1 - p_t(n))`
//! = the expected remote GPUs and remote nodes of t when its home is drawn from p_t.
//! Only single-copy experts count: a pick of a replicated expert is assumed free (its
//! dispatcher finds a copy at home or on a GPU the token visits anyway); replicas are
//! not moved.
//!
//! **Moves**: swaps of two single-copy experts on different GPUs, so every GPU keeps
//! its slot count and no GPU gets a second copy of an expert. A swap is taken only if
//! it lowers the objective, keeps both GPUs' load (calibration picks, replicas
//! sharing their expert's load evenly) at or below the limit
//! `max(max load before, mean load * (1 + slack))` and keeps the sum of squared GPU
//! loads at or below its value before refinement, so neither the heaviest GPU nor
//! Jain's index of the calibration loads gets worse. Callers may give the loads of
//! other traffic mixes too (for example each task family's alone); every one of them
//! is held to the same two limits. Each pass scores every single move in O(picks x GPUs), ranks swap
//! pairs by the sum of their two move gains, and applies swaps in that order after an
//! exact re-evaluation (at most one swap per expert per pass); passes repeat until
//! none applies or one gains less than `min_gain` (0.1%) of the starting objective.
//!
//! Invariants: the multiset of experts per layer, every GPU's slot count and the
//! rule "no two copies of an expert on one GPU" are unchanged; the objective on the
//! sample never rises. Deterministic (ties by expert id).

use std::collections::BTreeMap;

use crate::cluster::Cluster;
use crate::stats::TokenSample;

/// Knobs of the refinement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefineOptions {
    /// Weight of a remote node (a hierarchical all-to-all's cross-node send).
    pub node_weight: f64,
    /// Weight of a remote GPU (a flat all-to-all's send).
    pub gpu_weight: f64,
    /// Load slack over the mean allowed when the start is better balanced.
    pub slack: f64,
    /// Passes at most.
    pub passes: usize,
    /// Stop after a pass that lowered the objective by less than this share of its
    /// starting value (late passes make few swaps for little; each costs a full scan).
    pub min_gain: f64,
}

impl Default for RefineOptions {
    fn default() -> Self {
        RefineOptions { node_weight: 1.0, gpu_weight: 1.0, slack: 0.0, passes: 8, min_gain: 1e-3 }
    }
}

/// Where sampled tokens live: per class, the probability of each GPU being home.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenHomes {
    /// `[class][gpu]`, each row sums to 1.
    p: Vec<Vec<f64>>,
    /// Families with their own class; other tokens use class 0 (every GPU alike).
    class_of: BTreeMap<String, usize>,
}

impl TokenHomes {
    /// Homes dealt over every GPU (round-robin).
    pub fn uniform(cluster: &Cluster) -> Self {
        TokenHomes { p: vec![vec![1.0 / cluster.gpus as f64; cluster.gpus]], class_of: BTreeMap::new() }
    }

    /// Each listed family's tokens live on its GPUs, evenly; other tokens anywhere.
    pub fn by_family(cluster: &Cluster, family_gpus: &BTreeMap<String, Vec<usize>>) -> Self {
        let mut homes = TokenHomes::uniform(cluster);
        for (family, gpus) in family_gpus {
            let gpus: Vec<usize> = gpus.iter().copied().filter(|&g| g < cluster.gpus).collect();
            if gpus.is_empty() {
                continue;
            }
            let mut row = vec![0.0; cluster.gpus];
            for &g in &gpus {
                row[g] += 1.0 / gpus.len() as f64;
            }
            homes.class_of.insert(family.clone(), homes.p.len());
            homes.p.push(row);
        }
        homes
    }

    /// `[class][node]`: the probability of each node being home.
    fn node_p(&self, node_of: &[usize], nodes: usize) -> Vec<Vec<f64>> {
        self.p
            .iter()
            .map(|row| {
                let mut pn = vec![0.0; nodes];
                for (gpu, p) in row.iter().enumerate() {
                    pn[node_of[gpu]] += p;
                }
                pn
            })
            .collect()
    }

    fn class(&self, family: Option<&str>) -> usize {
        family.and_then(|f| self.class_of.get(f)).copied().unwrap_or(0)
    }
}

/// One layer of a token-path sample and where its tokens live.
#[derive(Clone, Copy)]
pub struct SampledLayer<'a> {
    pub sample: &'a TokenSample,
    pub layer: usize,
    pub top_k: usize,
    pub homes: &'a TokenHomes,
}

/// Objective per sampled token before and after one layer's refinement, and swaps made.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RefineOutcome {
    pub before: f64,
    pub after: f64,
    pub swaps: usize,
}

/// Fills free slots (GPUs whose list is shorter than their slot count) with copies
/// that make sampled tokens node-local, one at a time: the copy of expert x on node
/// n gains the home probability p_t(n) of every sampled token whose picks all have a
/// copy on n except x. The best (x, n) goes to the least-loaded GPU of n with a free
/// slot and without x; stops when no copy gains, no slot is free or `budget` copies
/// are placed. Returns the
/// copies placed. Gains are kept up to date incrementally (only tokens picking the
/// copied expert change).
pub fn locality_copies(
    lists: &mut [Vec<usize>],
    cluster: &Cluster,
    tokens: &SampledLayer<'_>,
    load: &[f64],
    budget: usize,
) -> usize {
    let SampledLayer { sample, layer, top_k, homes } = *tokens;
    let (e, g, n) = (load.len(), cluster.gpus, cluster.nodes);
    let node_of: Vec<usize> = (0..g).map(|gpu| cluster.node_of(gpu)).collect();
    let mut on_node = vec![false; e * n];
    let mut copies = vec![0usize; e];
    for (gpu, list) in lists.iter().enumerate() {
        for &x in list {
            on_node[x * n + node_of[gpu]] = true;
            copies[x] += 1;
        }
    }
    let p_node = homes.node_p(&node_of, n);
    let tokens = sample.tokens();
    let picks = |t: usize| &tokens[t].picks[layer * top_k..(layer + 1) * top_k];
    let class: Vec<usize> = tokens.iter().map(|t| homes.class(t.family.as_deref())).collect();
    let mut tokens_of = vec![Vec::new(); e];
    // missing[t * n + m]: picks of t without a copy on node m.
    let mut missing = vec![0u8; tokens.len() * n];
    let mut gain = vec![0.0; e * n];
    for t in 0..tokens.len() {
        for &x in picks(t) {
            let x = x as usize;
            if x >= e {
                continue;
            }
            tokens_of[x].push(t as u32);
            for m in 0..n {
                if !on_node[x * n + m] {
                    missing[t * n + m] += 1;
                }
            }
        }
        for m in 0..n {
            if missing[t * n + m] == 1 {
                let x =
                    picks(t).iter().map(|&x| x as usize).find(|&x| x < e && !on_node[x * n + m]).expect("one missing");
                gain[x * n + m] += p_node[class[t]][m];
            }
        }
    }
    let free = |lists: &[Vec<usize>], gpu: usize| cluster.gpu_slot_count(gpu).saturating_sub(lists[gpu].len());
    let gpu_load = |lists: &[Vec<usize>], copies: &[usize]| -> Vec<f64> {
        lists.iter().map(|l| l.iter().map(|&x| load[x] / copies[x] as f64).sum()).collect()
    };
    let mut placed = 0;
    loop {
        let room: Vec<bool> = (0..n).map(|m| (0..g).any(|gpu| node_of[gpu] == m && free(lists, gpu) > 0)).collect();
        let best = (0..e * n)
            .filter(|&i| room[i % n] && !on_node[i] && gain[i] > 1e-12)
            .max_by(|&a, &b| gain[a].total_cmp(&gain[b]).then(b.cmp(&a)));
        let Some(i) = best.filter(|_| placed < budget) else { return placed };
        let (x, m) = (i / n, i % n);
        let loads = gpu_load(lists, &copies);
        let gpu = (0..g)
            .filter(|&gpu| node_of[gpu] == m && free(lists, gpu) > 0 && !lists[gpu].contains(&x))
            .min_by(|&a, &b| loads[a].total_cmp(&loads[b]).then(a.cmp(&b)))
            .expect("a node without x has no GPU with x");
        lists[gpu].push(x);
        copies[x] += 1;
        on_node[i] = true;
        placed += 1;
        for &t in &tokens_of[x] {
            let t = t as usize;
            let c = &mut missing[t * n + m];
            *c -= 1;
            if *c == 0 {
                gain[i] -= p_node[class[t]][m];
            } else if *c == 1 {
                let y =
                    picks(t).iter().map(|&y| y as usize).find(|&y| y < e && !on_node[y * n + m]).expect("one missing");
                gain[y * n + m] += p_node[class[t]][m];
            }
        }
    }
}

/// Adds the mean objective per sampled token-layer before and after refinement and
/// the mean swaps per layer to a placer's notes (`refine_before`, `refine_after`,
/// `refine_swaps`).
pub fn notes(out: &mut BTreeMap<String, f64>, layers: impl Iterator<Item = RefineOutcome>, count: f64) {
    let (mut b, mut a, mut s) = (0.0, 0.0, 0.0);
    for o in layers {
        b += o.before;
        a += o.after;
        s += o.swaps as f64;
    }
    out.insert("refine_before".into(), b / count);
    out.insert("refine_after".into(), a / count);
    out.insert("refine_swaps".into(), s / count);
}

/// Refines one layer's GPU lists (`lists[g]`: the experts in GPU g's slots) in place.
/// `loads[0][e]` is expert e's calibration load, further entries its load under other
/// traffic mixes (each held to the same limits); `layer` selects the sample's picks.
/// Experts with `fixed[e]` true stay where they are (they still count in the
/// objective); an empty `fixed` fixes none.
pub fn refine_layer(
    lists: &mut [Vec<usize>],
    cluster: &Cluster,
    tokens: &SampledLayer<'_>,
    loads: &[&[f64]],
    fixed: &[bool],
    options: &RefineOptions,
) -> RefineOutcome {
    let mut s = State::new(lists, cluster, tokens, loads, options);
    s.fixed = (0..s.experts).map(|x| fixed.get(x).copied().unwrap_or(false)).collect();
    let before = s.objective();
    let mut swaps = 0;
    for _ in 0..options.passes {
        let (made, change) = s.pass();
        swaps += made;
        // `change` is a total over sampled tokens, `before` a mean per token.
        let tokens = s.class.len().max(1) as f64;
        if made == 0 || -change < options.min_gain * before * tokens {
            break;
        }
    }
    let after = s.objective();
    debug_assert!(after <= before + 1e-9);
    // Write back: every GPU keeps its slot count; movable experts take the places of
    // the ones that left.
    for (g, list) in lists.iter_mut().enumerate() {
        let mut incoming = (0..s.experts).filter(|&x| s.movable[x] && s.gpu_of[x] == g);
        let mut rebuilt: Vec<usize> = Vec::with_capacity(list.len());
        let keep: Vec<usize> = list.iter().copied().filter(|&x| !s.movable[x]).collect();
        rebuilt.extend(keep);
        rebuilt.extend(&mut incoming);
        debug_assert_eq!(rebuilt.len(), list.len());
        *list = rebuilt;
    }
    RefineOutcome { before, after, swaps }
}

/// Per sampled token, its distinct GPUs and nodes ([`State::paths`]).
struct Paths {
    gpu: Vec<u32>,
    gpu_picks: Vec<u8>,
    gpus: Vec<u8>,
    node: Vec<u32>,
    node_picks: Vec<u8>,
    nodes: Vec<u8>,
}

/// Marks a pick that is not movable in [`State`]'s pick table.
const NO_PICK: u16 = u16::MAX;

struct State {
    experts: usize,
    gpus: usize,
    nodes: usize,
    node_of: Vec<usize>,
    movable: Vec<bool>,
    /// Movable experts that may not be swapped (they still count in the objective).
    fixed: Vec<bool>,
    gpu_of: Vec<usize>,
    /// Sampled tokens picking each movable expert.
    tokens_of: Vec<Vec<u32>>,
    /// `[token * top_k + i]`: the token's movable picks, `NO_PICK` elsewhere.
    picks: Vec<u16>,
    top_k: usize,
    class: Vec<usize>,
    /// `[class][gpu]`: cost of touching that GPU (gpu_weight * (1 - p)).
    q_gpu: Vec<Vec<f64>>,
    /// `[class][node]`.
    q_node: Vec<Vec<f64>>,
    /// `[token * gpus + g]`: movable picks of the token on GPU g.
    cnt_gpu: Vec<u8>,
    cnt_node: Vec<u8>,
    /// Per traffic mix: expert load per copy, GPU loads and the limit.
    weight: Vec<Vec<f64>>,
    gpu_load: Vec<Vec<f64>>,
    limit: Vec<f64>,
    /// Per traffic mix: sum of squared GPU loads allowed (the starting value).
    square_budget: Vec<f64>,
}

impl State {
    fn new(
        lists: &[Vec<usize>],
        cluster: &Cluster,
        tokens: &SampledLayer<'_>,
        loads: &[&[f64]],
        options: &RefineOptions,
    ) -> State {
        let SampledLayer { sample, layer, top_k, homes } = *tokens;
        let (experts, gpus, nodes) = (loads[0].len(), cluster.gpus, cluster.nodes);
        let node_of: Vec<usize> = (0..gpus).map(|g| cluster.node_of(g)).collect();
        let mut copies = vec![0usize; experts];
        let mut gpu_of = vec![0usize; experts];
        for (g, list) in lists.iter().enumerate() {
            for &x in list {
                copies[x] += 1;
                gpu_of[x] = g;
            }
        }
        let movable: Vec<bool> = copies.iter().map(|&c| c == 1).collect();
        let weight: Vec<Vec<f64>> = loads
            .iter()
            .map(|load| (0..experts).map(|x| if copies[x] > 0 { load[x] / copies[x] as f64 } else { 0.0 }).collect())
            .collect();
        let gpu_load: Vec<Vec<f64>> =
            weight.iter().map(|w| lists.iter().map(|l| l.iter().map(|&x| w[x]).sum()).collect()).collect();
        let limit = gpu_load
            .iter()
            .map(|l: &Vec<f64>| {
                let mean = l.iter().sum::<f64>() / gpus as f64;
                l.iter().fold(0.0f64, |a, &b| a.max(b)).max(mean * (1.0 + options.slack))
            })
            .collect();
        let square_budget =
            gpu_load.iter().map(|l| l.iter().map(|x| x * x).sum::<f64>() * (1.0 + options.slack)).collect();
        let q_gpu: Vec<Vec<f64>> =
            homes.p.iter().map(|row| row.iter().map(|p| options.gpu_weight * (1.0 - p)).collect()).collect();
        let q_node: Vec<Vec<f64>> = homes
            .node_p(&node_of, nodes)
            .iter()
            .map(|row| row.iter().map(|p| options.node_weight * (1.0 - p)).collect())
            .collect();
        let tokens = sample.tokens();
        let mut tokens_of = vec![Vec::new(); experts];
        let mut class = Vec::with_capacity(tokens.len());
        let mut cnt_gpu = vec![0u8; tokens.len() * gpus];
        let mut cnt_node = vec![0u8; tokens.len() * nodes];
        let mut picks = vec![NO_PICK; tokens.len() * top_k];
        for (t, tok) in tokens.iter().enumerate() {
            class.push(homes.class(tok.family.as_deref()));
            for (i, &x) in tok.picks[layer * top_k..(layer + 1) * top_k].iter().enumerate() {
                let x = x as usize;
                if x < experts && movable[x] {
                    picks[t * top_k + i] = x as u16;
                    tokens_of[x].push(t as u32);
                    cnt_gpu[t * gpus + gpu_of[x]] += 1;
                    cnt_node[t * nodes + node_of[gpu_of[x]]] += 1;
                }
            }
        }
        State {
            experts,
            gpus,
            nodes,
            node_of,
            fixed: vec![false; movable.len()],
            movable,
            gpu_of,
            tokens_of,
            picks,
            top_k,
            class,
            q_gpu,
            q_node,
            cnt_gpu,
            cnt_node,
            weight,
            gpu_load,
            limit,
            square_budget,
        }
    }

    /// Mean cost per sampled token.
    fn objective(&self) -> f64 {
        let n = self.class.len();
        if n == 0 {
            return 0.0;
        }
        let mut total = 0.0;
        for t in 0..n {
            let c = self.class[t];
            for g in 0..self.gpus {
                if self.cnt_gpu[t * self.gpus + g] > 0 {
                    total += self.q_gpu[c][g];
                }
            }
            for m in 0..self.nodes {
                if self.cnt_node[t * self.nodes + m] > 0 {
                    total += self.q_node[c][m];
                }
            }
        }
        total / n as f64
    }

    /// Change of the total cost if expert x moved from its GPU to `to`.
    fn move_delta(&self, x: usize, to: usize) -> f64 {
        let from = self.gpu_of[x];
        let (nf, nt) = (self.node_of[from], self.node_of[to]);
        let (g, n) = (self.gpus, self.nodes);
        let mut d = 0.0;
        for &t in &self.tokens_of[x] {
            let t = t as usize;
            let c = self.class[t];
            if self.cnt_gpu[t * g + from] == 1 {
                d -= self.q_gpu[c][from];
            }
            if self.cnt_gpu[t * g + to] == 0 {
                d += self.q_gpu[c][to];
            }
            if nf != nt {
                if self.cnt_node[t * n + nf] == 1 {
                    d -= self.q_node[c][nf];
                }
                if self.cnt_node[t * n + nt] == 0 {
                    d += self.q_node[c][nt];
                }
            }
        }
        d
    }

    /// Every sampled token's distinct GPUs and nodes among its movable picks, with
    /// the picks on each (stride `top_k`); [`State::move_deltas`] reads them once per
    /// pass instead of deduplicating every token once per pick.
    fn paths(&self) -> Paths {
        let (k, tokens) = (self.top_k, self.class.len());
        let mut p = Paths {
            gpu: vec![0; tokens * k],
            gpu_picks: vec![0; tokens * k],
            gpus: vec![0; tokens],
            node: vec![0; tokens * k],
            node_picks: vec![0; tokens * k],
            nodes: vec![0; tokens],
        };
        // Counts `v` in the token's distinct values `seen[..*len]` (picks in `picks`).
        fn tally(seen: &mut [u32], picks: &mut [u8], len: &mut usize, v: u32) {
            match seen[..*len].iter().position(|&s| s == v) {
                Some(i) => picks[i] += 1,
                None => {
                    seen[*len] = v;
                    picks[*len] = 1;
                    *len += 1;
                }
            }
        }
        for t in 0..tokens {
            let (mut ng, mut nn) = (0, 0);
            let r = t * k..(t + 1) * k;
            for &y in &self.picks[r.clone()] {
                if y == NO_PICK {
                    continue;
                }
                let gy = self.gpu_of[y as usize];
                tally(&mut p.gpu[r.clone()], &mut p.gpu_picks[r.clone()], &mut ng, gy as u32);
                tally(&mut p.node[r.clone()], &mut p.node_picks[r.clone()], &mut nn, self.node_of[gy] as u32);
            }
            p.gpus[t] = ng as u8;
            p.nodes[t] = nn as u8;
        }
        p
    }

    /// [`State::move_delta`] of x for every destination GPU at once (0 for its own):
    /// O(tokens of x * k) instead of O(tokens of x * GPUs). For a token t of x the
    /// destination term `q(to) * [t has no pick on to]` is `q(to)` minus the same sum
    /// over the few GPUs (nodes) t already touches, so per token only its own GPUs and
    /// nodes are visited; the sums of `q(to)` come from the class counts of x's tokens.
    /// `paths` must describe the current placement ([`State::paths`]).
    fn move_deltas(&self, x: usize, paths: &Paths) -> Vec<f64> {
        let from = self.gpu_of[x];
        let nf = self.node_of[from];
        let (g, n, k) = (self.gpus, self.nodes, self.top_k);
        let mut leave_gpu = 0.0;
        let mut leave_node = 0.0;
        let mut per_class = vec![0usize; self.q_gpu.len()];
        // Subtracted: q of GPUs / nodes the token already touches.
        let mut touched_gpu = vec![0.0; g];
        let mut touched_node = vec![0.0; n];
        for &t in &self.tokens_of[x] {
            let t = t as usize;
            let c = self.class[t];
            per_class[c] += 1;
            let (q_gpu, q_node) = (&self.q_gpu[c], &self.q_node[c]);
            for i in t * k..t * k + paths.gpus[t] as usize {
                let gy = paths.gpu[i] as usize;
                touched_gpu[gy] += q_gpu[gy];
                if gy == from && paths.gpu_picks[i] == 1 {
                    leave_gpu += q_gpu[from];
                }
            }
            for i in t * k..t * k + paths.nodes[t] as usize {
                let ny = paths.node[i] as usize;
                touched_node[ny] += q_node[ny];
                if ny == nf && paths.node_picks[i] == 1 {
                    leave_node += q_node[nf];
                }
            }
        }
        let mut node_add = vec![0.0; n];
        for (m, add) in node_add.iter_mut().enumerate() {
            let all: f64 = per_class.iter().enumerate().map(|(c, &cnt)| cnt as f64 * self.q_node[c][m]).sum();
            *add = all - touched_node[m];
        }
        (0..g)
            .map(|to| {
                if to == from {
                    return 0.0;
                }
                let all: f64 = per_class.iter().enumerate().map(|(c, &cnt)| cnt as f64 * self.q_gpu[c][to]).sum();
                let nt = self.node_of[to];
                let node = if nt == nf { 0.0 } else { node_add[nt] - leave_node };
                all - touched_gpu[to] - leave_gpu + node
            })
            .collect()
    }

    fn apply_move(&mut self, x: usize, to: usize) {
        let from = self.gpu_of[x];
        let (nf, nt) = (self.node_of[from], self.node_of[to]);
        let (g, n) = (self.gpus, self.nodes);
        for &t in &self.tokens_of[x] {
            let t = t as usize;
            self.cnt_gpu[t * g + from] -= 1;
            self.cnt_gpu[t * g + to] += 1;
            self.cnt_node[t * n + nf] -= 1;
            self.cnt_node[t * n + nt] += 1;
        }
        self.gpu_of[x] = to;
        for (l, w) in self.gpu_load.iter_mut().zip(&self.weight) {
            l[from] -= w[x];
            l[to] += w[x];
        }
    }

    /// Exact change of a swap of a and b (on different GPUs).
    fn swap_delta(&mut self, a: usize, b: usize) -> f64 {
        let (i, j) = (self.gpu_of[a], self.gpu_of[b]);
        let d1 = self.move_delta(a, j);
        self.apply_move(a, j);
        let d2 = self.move_delta(b, i);
        self.apply_move(a, i);
        d1 + d2
    }

    /// Whether swapping a and b keeps the load limits of every traffic mix; `squares`
    /// are the current sums of squared GPU loads (passed in so that screening many
    /// pairs costs O(mixes) each).
    fn swap_fits(&self, a: usize, b: usize, squares: &[f64]) -> bool {
        let (i, j) = (self.gpu_of[a], self.gpu_of[b]);
        (0..self.weight.len()).all(|v| {
            let (wa, wb) = (self.weight[v][a], self.weight[v][b]);
            let (oi, oj) = (self.gpu_load[v][i], self.gpu_load[v][j]);
            let li = oi - wa + wb;
            let lj = oj - wb + wa;
            let sq = squares[v] - oi * oi - oj * oj + li * li + lj * lj;
            let limit = self.limit[v] + 1e-9;
            li <= limit && lj <= limit && sq <= self.square_budget[v] * (1.0 + 1e-12)
        })
    }

    fn squares(&self) -> Vec<f64> {
        self.gpu_load.iter().map(|l| l.iter().map(|x| x * x).sum()).collect()
    }

    /// One pass (module documentation); returns the swaps made and the total change
    /// of the cost over sampled tokens.
    fn pass(&mut self) -> (usize, f64) {
        let (e, g) = (self.experts, self.gpus);
        // gain[x * g + to]: cost change of moving x to `to` alone.
        let mut gain = vec![0.0; e * g];
        let paths = self.paths();
        for x in (0..e).filter(|&x| self.movable[x] && !self.fixed[x]) {
            gain[x * g..(x + 1) * g].copy_from_slice(&self.move_deltas(x, &paths));
        }
        let movable: Vec<usize> = (0..e).filter(|&x| self.movable[x] && !self.fixed[x]).collect();
        let mut candidates: Vec<(f64, usize, usize)> = Vec::new();
        let mut squares = self.squares();
        for (ia, &a) in movable.iter().enumerate() {
            for &b in &movable[ia + 1..] {
                let (i, j) = (self.gpu_of[a], self.gpu_of[b]);
                if i == j {
                    continue;
                }
                let d = gain[a * g + j] + gain[b * g + i];
                if d < -1e-12 && self.swap_fits(a, b, &squares) {
                    candidates.push((d, a, b));
                }
            }
        }
        candidates.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        let mut touched = vec![false; e];
        let mut made = 0;
        let mut change = 0.0;
        for (_, a, b) in candidates {
            if touched[a] || touched[b] || !self.swap_fits(a, b, &squares) {
                continue;
            }
            let d = self.swap_delta(a, b);
            if d < -1e-9 {
                change += d;
                let (i, j) = (self.gpu_of[a], self.gpu_of[b]);
                self.apply_move(a, j);
                self.apply_move(b, i);
                squares = self.squares();
                touched[a] = true;
                touched[b] = true;
                made += 1;
            }
        }
        (made, change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SampledToken;

    fn sample(paths: &[[u16; 2]]) -> TokenSample {
        let tokens = paths
            .iter()
            .enumerate()
            .map(|(i, p)| SampledToken { hash: i as u64, family: None, phase: None, picks: p.to_vec() })
            .collect();
        TokenSample::from_tokens(1000, tokens)
    }

    #[test]
    fn brings_co_picked_experts_together() {
        // 2 nodes x 1 GPU, 2 slots each; tokens pick {0,1} and {2,3}; start split.
        let cluster = Cluster::new(2, 2, 2).unwrap();
        let s = sample(&[[0, 1], [2, 3], [0, 1], [2, 3]]);
        let mut lists = vec![vec![0, 2], vec![1, 3]];
        let out = refine_layer(
            &mut lists,
            &cluster,
            &SampledLayer { sample: &s, layer: 0, top_k: 2, homes: &TokenHomes::uniform(&cluster) },
            &[&[1.0; 4]],
            &[],
            &RefineOptions::default(),
        );
        assert!(out.after < out.before, "{out:?}");
        let mut sorted: Vec<Vec<usize>> = lists
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.sort();
                l
            })
            .collect();
        sorted.sort();
        assert_eq!(sorted, vec![vec![0, 1], vec![2, 3]]);
    }

    /// The swap that brings co-picked experts together is fine for the calibration
    /// loads but would put both of one family's experts on one GPU; given that
    /// family's loads as a second mix, the refinement leaves the plan alone.
    #[test]
    fn holds_every_mix_to_the_limits() {
        let cluster = Cluster::new(1, 2, 2).unwrap();
        let s = sample(&[[0, 1], [2, 3], [0, 1], [2, 3]]);
        let tokens = SampledLayer { sample: &s, layer: 0, top_k: 2, homes: &TokenHomes::uniform(&cluster) };
        let pooled = [1.0; 4];
        let family = [1.0, 1.0, 0.0, 0.0];
        let mut lists = vec![vec![0, 2], vec![1, 3]];
        let out = refine_layer(&mut lists, &cluster, &tokens, &[&pooled, &family], &[], &RefineOptions::default());
        assert_eq!(out.swaps, 0);
        assert_eq!(lists, vec![vec![0, 2], vec![1, 3]]);
        let out = refine_layer(&mut lists, &cluster, &tokens, &[&pooled], &[], &RefineOptions::default());
        assert!(out.swaps > 0, "{out:?}");
    }

    #[test]
    fn respects_the_load_limit_and_pins_replicas() {
        // Expert 0 is replicated on both GPUs (pinned); the swap that would co-locate
        // 1 and 2 puts two heavy experts together, above the limit.
        let cluster = Cluster::new(1, 2, 3).unwrap();
        let s = sample(&[[1, 2], [1, 2], [3, 4]]);
        let mut lists = vec![vec![0, 1, 3], vec![0, 2, 4]];
        let load = [1.0, 10.0, 10.0, 1.0, 1.0];
        let out = refine_layer(
            &mut lists,
            &cluster,
            &SampledLayer { sample: &s, layer: 0, top_k: 2, homes: &TokenHomes::uniform(&cluster) },
            &[&load],
            &[],
            &RefineOptions::default(),
        );
        assert_eq!(out.swaps, 0);
        assert_eq!(lists, vec![vec![0, 1, 3], vec![0, 2, 4]]);
        // With room to spare the swap happens, and replicas stay.
        let out = refine_layer(
            &mut lists,
            &cluster,
            &SampledLayer { sample: &s, layer: 0, top_k: 2, homes: &TokenHomes::uniform(&cluster) },
            &[&load],
            &[],
            &RefineOptions { slack: 1.0, ..Default::default() },
        );
        assert!(out.swaps > 0 && out.after < out.before);
        assert!(lists.iter().all(|l| l.contains(&0) && l.len() == 3));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::stats::SampledToken;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Refinement keeps every GPU's slot count and multiset of experts per layer,
        /// never puts two copies on a GPU, never raises the objective, the heaviest
        /// GPU's load or the sum of squared loads.
        #[test]
        fn refinement_keeps_the_invariants(
            nodes in 1usize..4,
            per in 1usize..4,
            extra in 0usize..3,
            seed in 0u64..10_000,
            by_family in any::<bool>(),
        ) {
            let gpus = nodes * per;
            let experts = gpus * 2 + extra;
            let cluster = Cluster::new(nodes, gpus, 1).unwrap().with_slots(experts + extra).unwrap();
            prop_assume!((0..gpus).all(|g| cluster.gpu_slot_count(g) <= experts));
            let mut state = seed | 1;
            let mut next = |n: usize| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % n as u64) as usize
            };
            // Experts dealt to GPUs by slot range, then the extra slots take copies.
            let mut lists: Vec<Vec<usize>> = vec![Vec::new(); gpus];
            let mut x = 0;
            for (g, list) in lists.iter_mut().enumerate() {
                for _ in crate::placement::slot_range(gpus, experts + extra, g) {
                    if x < experts {
                        list.push(x);
                        x += 1;
                    }
                }
            }
            for (g, list) in lists.iter_mut().enumerate() {
                while list.len() < cluster.gpu_slot_count(g) {
                    let y = (0..experts).find(|y| !list.contains(y)).unwrap();
                    list.push(y);
                }
            }
            let load: Vec<f64> = (0..experts).map(|_| 1.0 + next(10) as f64).collect();
            let tokens = (0..80)
                .map(|i| {
                    let a = next(experts);
                    let b = (a + 1 + next(experts - 1)) % experts;
                    SampledToken { hash: i, family: Some(["p", "q"][i as usize % 2].into()), phase: None, picks: vec![a as u16, b as u16] }
                })
                .collect();
            let sample = TokenSample::from_tokens(1000, tokens);
            let homes = if by_family {
                let fams: BTreeMap<String, Vec<usize>> = [("p".to_string(), vec![0]), ("q".to_string(), vec![gpus - 1])].into();
                TokenHomes::by_family(&cluster, &fams)
            } else {
                TokenHomes::uniform(&cluster)
            };
            let loads_of = |lists: &[Vec<usize>]| -> Vec<f64> {
                let mut copies = vec![0usize; experts];
                lists.iter().flatten().for_each(|&x| copies[x] += 1);
                lists.iter().map(|l| l.iter().map(|&x| load[x] / copies[x] as f64).sum()).collect()
            };
            let before_loads = loads_of(&lists);
            let mut before_sorted: Vec<usize> = lists.iter().flatten().copied().collect();
            before_sorted.sort();
            let sizes: Vec<usize> = lists.iter().map(Vec::len).collect();
            let tokens = SampledLayer { sample: &sample, layer: 0, top_k: 2, homes: &homes };
            // The all-destinations shortcut agrees with the one-move count.
            let state = State::new(&lists, &cluster, &tokens, &[&load], &RefineOptions::default());
            let paths = state.paths();
            for x in (0..experts).filter(|&x| state.movable[x]) {
                let all = state.move_deltas(x, &paths);
                for (to, d) in all.iter().enumerate() {
                    let want = if to == state.gpu_of[x] { 0.0 } else { state.move_delta(x, to) };
                    prop_assert!((d - want).abs() < 1e-9, "x {} to {}: {} vs {}", x, to, d, want);
                }
            }
            let out = refine_layer(&mut lists, &cluster, &tokens, &[&load], &[], &RefineOptions::default());
            prop_assert!(out.after <= out.before + 1e-9);
            prop_assert_eq!(lists.iter().map(Vec::len).collect::<Vec<_>>(), sizes);
            let mut after_sorted: Vec<usize> = lists.iter().flatten().copied().collect();
            after_sorted.sort();
            prop_assert_eq!(after_sorted, before_sorted);
            for l in &lists {
                let mut d = l.clone();
                d.sort();
                d.dedup();
                prop_assert_eq!(d.len(), l.len());
            }
            let after_loads = loads_of(&lists);
            let max = |v: &[f64]| v.iter().fold(0.0f64, |a, &b| a.max(b));
            let sq = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
            prop_assert!(max(&after_loads) <= max(&before_loads) + 1e-9);
            prop_assert!(sq(&after_loads) <= sq(&before_loads) * (1.0 + 1e-9));
        }
    }
}
