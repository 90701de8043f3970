//! The replay simulator: every token of a trace through every MoE layer, against a
//! placement, a dispatcher and a home policy, measuring the metrics of docs/DESIGN.md,
//! "Metrics", exactly, plus an estimated time per layer.
//!
//! Per token and layer the dispatcher picks one GPU for each top-k pick; then
//! - remote GPUs: distinct GPUs other than home among them (one send each);
//! - remote nodes: distinct nodes other than home's node among those GPUs;
//! - cross-node GPUs: remote GPUs on another node;
//! - remote hops: picks served off the home GPU (not deduplicated);
//! - bytes: 2 (dispatch + combine) x sends (remote GPUs) x hidden x bytes/element.
//!
//! Per layer over GPUs, load = picks served; Jain = (sum L)^2 / (G sum L^2),
//! balancedness = mean/max, MaxVio = max/mean - 1, each averaged over layers. Home
//! load: tokens per home GPU, max/mean over all G GPUs.
//!
//! Time estimates (the cost model of [`crate::cluster`]), per layer, treating the
//! whole replayed stream as one batch:
//! - all-to-all: for every GPU and each link type (intra-node, inter-node), the
//!   larger of bytes sent and bytes received divided by the link's one-direction
//!   bandwidth (links are full duplex), plus the link latency times the larger of the
//!   number of peers sent to and received from (one message per peer); a GPU's time
//!   is the slower of its two link types (they run in parallel); the layer's time is
//!   the slowest GPU's, times 2 because the combine mirrors the dispatch.
//! - expert compute: the hottest GPU's picks x FLOPs per token-expert / throughput.
//!
//! Two communication schemes are estimated side by side (docs/DESIGN.md, "Metrics"):
//! - flat: a token sends one copy to every remote GPU it needs (cross-node GPUs are
//!   the inter-node sends);
//! - hierarchical (DeepEP's internode mode, GRACE-MoE's sparse communication): a
//!   token crosses to each remote node it needs once, to its peer GPU there (the GPU
//!   with the home GPU's local index), which forwards it over NVLink to the other
//!   GPUs it needs on that node (remote nodes are the inter-node sends).
//!
//! Bytes are reported per link type for both, and the all-to-all time under both
//! (the same per-GPU link model, on the flat or the hierarchical message pattern).
//!
//! Homes: requests in order of first appearance are dealt round-robin over all GPUs,
//! or by `family_gpus` (round-robin within the family's GPUs; requests of families
//! not listed, or without a family, round-robin over all GPUs), or one GPU per
//! request name given by the caller (requests not named: round-robin over all GPUs).
//!
//! Parallelism and determinism: requests are cut into fixed chunks of consecutive
//! requests (about [`CHUNK_TOKENS`] tokens each, independent of the thread count);
//! each chunk starts a fresh load signal for the dispatcher; chunks run in parallel
//! (one worker per rayon thread taking chunks in turn) and count into the worker's
//! integer accumulators, whose sums are exact whatever the order, so results are
//! identical for any thread count.
//!
//! Inside a chunk the replay goes layer by layer: the dispatcher serves one layer of
//! the chunk's tokens at a time ([`Dispatcher::dispatch_layer`]), in token order. The
//! load signal of a layer counts only that layer's picks, so every choice is the one
//! a token-by-token replay makes, while the per-GPU rows a layer touches stay in
//! cache.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;

use crate::cluster::Cluster;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::dispatch::{Dispatcher, LayerBatch, ReplicaTable};
use crate::placement::Placement;
use crate::trace::{ModelShape, TokenBatch, TokenRef, Trace};

/// Tokens per replay chunk (the dispatcher's load-signal window).
pub const CHUNK_TOKENS: usize = 4096;

/// Where requests are served.
#[derive(Clone, Debug, PartialEq)]
pub enum HomePolicy {
    /// Requests round-robin over all GPUs, in order of first appearance.
    RoundRobin,
    /// Round-robin within each family's GPUs; other requests over all GPUs.
    Family(BTreeMap<String, Vec<usize>>),
    /// A home GPU per request name (e.g. from the `cluster-homes` classifier);
    /// requests not listed round-robin over all GPUs.
    Request(HashMap<String, usize>),
}

/// Why a replay cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    #[error("the placement is for {placement} but the trace is {trace}")]
    ShapeMismatch { placement: String, trace: String },
    #[error("{0}")]
    Cluster(String),
    #[error("family {family:?}: {reason}")]
    BadFamilyGpus { family: String, reason: String },
    #[error("request {request:?}: home GPU {gpu} is out of range (the cluster has {gpus} GPUs)")]
    BadRequestHome { request: String, gpu: usize, gpus: usize },
    #[error("the trace holds no tokens")]
    Empty,
}

/// Per-layer results.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerMetrics {
    /// Picks served per GPU.
    pub load: Vec<u64>,
    pub jain: f64,
    pub balancedness: f64,
    pub maxvio: f64,
    /// Remote GPU sends (token copies leaving their home GPU) at this layer.
    pub remote_sends: u64,
    /// Remote sends that cross nodes.
    pub cross_node_sends: u64,
    pub remote_hops: u64,
    pub all_to_all_us: f64,
    /// All-to-all time with hierarchical communication.
    pub hier_all_to_all_us: f64,
    pub compute_us: f64,
}

/// Exact integer totals of a replay (means are these over `token_layers`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub tokens: u64,
    pub token_layers: u64,
    pub remote_gpus: u64,
    pub remote_nodes: u64,
    pub cross_node_gpus: u64,
    pub remote_hops: u64,
}

/// Results of one replay.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SimResult {
    pub counts: Counts,
    /// Means per token-layer.
    pub remote_gpus: f64,
    pub remote_nodes: f64,
    pub cross_node_gpus: f64,
    pub remote_hops: f64,
    /// Bytes moved by dispatch and combine, whole stream (flat communication).
    pub bytes: u64,
    /// Flat communication: bytes over inter-node and over intra-node links.
    pub inter_node_bytes: u64,
    pub intra_node_bytes: u64,
    /// Hierarchical communication: bytes over inter-node links (one send per remote
    /// node) and over intra-node links (sends inside the home node plus forwards on
    /// remote nodes).
    pub hier_inter_node_bytes: u64,
    pub hier_intra_node_bytes: u64,
    /// Means over layers.
    pub jain: f64,
    pub balancedness: f64,
    pub maxvio: f64,
    pub home_max_over_mean: f64,
    /// Tokens per home GPU.
    pub home_tokens: Vec<u64>,
    /// Sums over layers of the per-layer estimates.
    pub all_to_all_us: f64,
    pub hier_all_to_all_us: f64,
    pub compute_us: f64,
    pub layers: Vec<LayerMetrics>,
}

/// Per-layer load figures of one layer's per-GPU loads: (Jain, balancedness, MaxVio).
pub fn layer_load_figures(load: &[u64]) -> (f64, f64, f64) {
    let g = load.len() as f64;
    let sum: f64 = load.iter().map(|&x| x as f64).sum();
    let sq: f64 = load.iter().map(|&x| (x as f64) * (x as f64)).sum();
    let max = load.iter().copied().max().unwrap_or(0) as f64;
    if sum == 0.0 {
        return (1.0, 1.0, 0.0);
    }
    let mean = sum / g;
    (sum * sum / (g * sq), mean / max, max / mean - 1.0)
}

/// Tokens of one request: (batch, index in batch).
struct Request {
    name: String,
    family: Option<String>,
    tokens: Vec<(u32, u32)>,
}

struct Acc {
    counts: Counts,
    load: Vec<u64>,
    /// `[layer][src][dst]` tokens sent home -> dst.
    traffic: Vec<u64>,
    /// `[layer][src][node]` tokens crossing from home to a remote node (once each).
    node_traffic: Vec<u64>,
    hops: Vec<u64>,
    home_tokens: Vec<u64>,
}

impl Acc {
    fn new(layers: usize, gpus: usize, nodes: usize) -> Acc {
        Acc {
            counts: Counts::default(),
            load: vec![0; layers * gpus],
            traffic: vec![0; layers * gpus * gpus],
            node_traffic: vec![0; layers * gpus * nodes],
            hops: vec![0; layers],
            home_tokens: vec![0; gpus],
        }
    }

    fn add(mut self, o: Acc) -> Acc {
        let c = &mut self.counts;
        c.tokens += o.counts.tokens;
        c.token_layers += o.counts.token_layers;
        c.remote_gpus += o.counts.remote_gpus;
        c.remote_nodes += o.counts.remote_nodes;
        c.cross_node_gpus += o.counts.cross_node_gpus;
        c.remote_hops += o.counts.remote_hops;
        for (a, b) in [
            (&mut self.load, &o.load),
            (&mut self.traffic, &o.traffic),
            (&mut self.node_traffic, &o.node_traffic),
            (&mut self.hops, &o.hops),
            (&mut self.home_tokens, &o.home_tokens),
        ] {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        self
    }
}

/// Replays `trace` against `placement` on `cluster`.
pub fn simulate(
    trace: &Trace,
    placement: &Placement,
    cluster: &Cluster,
    dispatcher: &dyn Dispatcher,
    homes: &HomePolicy,
) -> Result<SimResult, SimError> {
    let mut r = Replay::new(trace.shape, placement, cluster, dispatcher, homes)?;
    r.feed(trace)?;
    r.finish()
}

/// What a replay remembers of a request across windows.
struct Known {
    /// Order of first appearance over the whole stream.
    ordinal: usize,
    home: usize,
    /// Tokens replayed so far (keys the dispatcher's per-token choices).
    seen: u64,
}

/// A replay fed window by window (consecutive parts of one stream), so that a
/// stream longer than memory is replayed with memory bounded by one window.
/// Requests keep their home and ordinal across windows; fed once, it is
/// [`simulate`]. Fed in windows, chunks (and so the dispatcher's load signal) also
/// restart at each window.
pub struct Replay<'a> {
    shape: ModelShape,
    cluster: &'a Cluster,
    dispatcher: &'a dyn Dispatcher,
    homes: &'a HomePolicy,
    table: ReplicaTable,
    node_of: Vec<u32>,
    fixed: Option<Vec<u32>>,
    /// One per worker; each counts the chunks it replayed, over every window.
    workers: Vec<Worker>,
    known: HashMap<String, Known>,
    /// Requests dealt so far per round-robin counter (`None`: over all GPUs).
    dealt: BTreeMap<Option<String>, usize>,
}

impl<'a> Replay<'a> {
    /// Checks the placement, the cluster and the home policy against each other and
    /// the stream's shape.
    pub fn new(
        shape: ModelShape,
        placement: &'a Placement,
        cluster: &'a Cluster,
        dispatcher: &'a dyn Dispatcher,
        homes: &'a HomePolicy,
    ) -> Result<Replay<'a>, SimError> {
        if placement.layers() != shape.layers || placement.experts() != shape.experts {
            return Err(SimError::ShapeMismatch {
                placement: format!("{} layers x {} experts", placement.layers(), placement.experts()),
                trace: shape.to_string(),
            });
        }
        placement.check_cluster(cluster).map_err(SimError::Cluster)?;
        cluster.validate().map_err(|e| SimError::Cluster(e.to_string()))?;
        let g = cluster.gpus;
        if let HomePolicy::Family(map) = homes {
            for (f, gpus) in map {
                if gpus.is_empty() {
                    return Err(SimError::BadFamilyGpus { family: f.clone(), reason: "has no GPUs".into() });
                }
                if let Some(x) = gpus.iter().find(|&&x| x >= g) {
                    return Err(SimError::BadFamilyGpus {
                        family: f.clone(),
                        reason: format!("GPU {x} is out of range (the cluster has {g} GPUs)"),
                    });
                }
            }
        }
        if let HomePolicy::Request(map) = homes {
            if let Some((r, &x)) = map.iter().filter(|(_, &x)| x >= g).min_by_key(|(r, _)| r.as_str()) {
                return Err(SimError::BadRequestHome { request: r.clone(), gpu: x, gpus: g });
            }
        }
        let table = ReplicaTable::new(placement);
        let fixed = (dispatcher.always_primary() || table.single_copies()).then(|| table.primaries());
        Ok(Replay {
            shape,
            cluster,
            dispatcher,
            homes,
            node_of: (0..g).map(|x| cluster.node_of(x) as u32).collect(),
            table,
            fixed,
            workers: Vec::new(),
            known: HashMap::new(),
            dealt: BTreeMap::new(),
        })
    }

    /// The next home of a round-robin counter over `list` (all GPUs when `None`).
    fn deal(&mut self, counter: Option<&str>, list: Option<&[usize]>) -> usize {
        let c = self.dealt.entry(counter.map(str::to_string)).or_insert(0);
        *c += 1;
        match list {
            Some(l) => l[(*c - 1) % l.len()],
            None => (*c - 1) % self.cluster.gpus,
        }
    }

    fn home_of(&mut self, req: &Request, ordinal: usize) -> usize {
        let homes: &'a HomePolicy = self.homes;
        match homes {
            HomePolicy::RoundRobin => ordinal % self.cluster.gpus,
            HomePolicy::Request(map) => match map.get(&req.name) {
                Some(&h) => h,
                None => self.deal(None, None),
            },
            HomePolicy::Family(map) => match req.family.as_deref().and_then(|f| map.get(f).map(|g| (f, g))) {
                Some((f, list)) => self.deal(Some(f), Some(list)),
                None => self.deal(None, None),
            },
        }
    }

    /// Replays the next window of the stream.
    pub fn feed(&mut self, trace: &Trace) -> Result<(), SimError> {
        if trace.shape != self.shape {
            return Err(SimError::ShapeMismatch { placement: self.shape.to_string(), trace: trace.shape.to_string() });
        }
        let requests = index_requests(trace);
        let mut placed: Vec<(usize, usize, u64)> = Vec::with_capacity(requests.len());
        for r in &requests {
            let (ordinal, home, seen) = match self.known.get_mut(&r.name) {
                Some(k) => {
                    let seen = k.seen;
                    k.seen += r.tokens.len() as u64;
                    (k.ordinal, k.home, seen)
                }
                None => {
                    let ordinal = self.known.len();
                    let home = self.home_of(r, ordinal);
                    self.known.insert(r.name.clone(), Known { ordinal, home, seen: r.tokens.len() as u64 });
                    (ordinal, home, 0)
                }
            };
            placed.push((ordinal, home, seen));
        }
        // Fixed chunks of consecutive requests.
        let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
        let mut start = 0;
        let mut n = 0;
        for (i, r) in requests.iter().enumerate() {
            n += r.tokens.len();
            if n >= CHUNK_TOKENS {
                chunks.push(start..i + 1);
                start = i + 1;
                n = 0;
            }
        }
        if start < requests.len() {
            chunks.push(start..requests.len());
        }
        let (layers, g, nodes) = (self.shape.layers, self.cluster.gpus, self.cluster.nodes);
        let threads = rayon::current_num_threads().clamp(1, chunks.len().max(1));
        while self.workers.len() < threads {
            self.workers.push(Worker { acc: Acc::new(layers, g, nodes), scratch: Scratch::new(g, nodes) });
        }
        let route = Route {
            table: &self.table,
            node_of: &self.node_of,
            dispatcher: self.dispatcher,
            fixed: self.fixed.as_deref(),
        };
        // Each worker takes the next chunk until none is left; which worker counts a
        // chunk does not change the sums.
        let next = AtomicUsize::new(0);
        self.workers[..threads].par_iter_mut().for_each(|w| loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            let Some(chunk) = chunks.get(c) else { break };
            w.replay_chunk(trace, &requests[chunk.clone()], &placed[chunk.clone()], &route);
        });
        Ok(())
    }

    /// The results of everything fed so far.
    pub fn finish(self) -> Result<SimResult, SimError> {
        let (layers, g, nodes) = (self.shape.layers, self.cluster.gpus, self.cluster.nodes);
        let acc =
            self.workers.into_iter().map(|w| w.acc).reduce(Acc::add).unwrap_or_else(|| Acc::new(layers, g, nodes));
        if acc.counts.tokens == 0 {
            return Err(SimError::Empty);
        }
        Ok(finish(acc, self.cluster, layers, &self.node_of))
    }
}

/// How picks become GPUs: the dispatcher, or a direct table when choices are fixed.
struct Route<'a> {
    table: &'a ReplicaTable,
    node_of: &'a [u32],
    dispatcher: &'a dyn Dispatcher,
    /// `[layer * experts + expert]` -> GPU, when every choice is the first copy.
    fixed: Option<&'a [u32]>,
}

/// A replay worker: its accumulators and the buffers it reuses from chunk to chunk.
struct Worker {
    acc: Acc,
    scratch: Scratch,
}

struct Scratch {
    /// Per token of the chunk: where its ids start (batch, offset), home, key.
    starts: Vec<(u32, usize)>,
    homes: Vec<u32>,
    keys: Vec<u64>,
    /// One layer of the chunk: `tokens x k` expert ids and the GPUs serving them.
    picks: Vec<u16>,
    out: Vec<u32>,
    /// The layer's load signal: picks served per GPU so far in the chunk.
    running: Vec<u64>,
    /// Last token-layer (stamp) that sent to a GPU / crossed to a node.
    stamp_gpu: Vec<u64>,
    stamp_node: Vec<u64>,
    stamp: u64,
}

impl Scratch {
    fn new(gpus: usize, nodes: usize) -> Scratch {
        Scratch {
            starts: Vec::new(),
            homes: Vec::new(),
            keys: Vec::new(),
            picks: Vec::new(),
            out: Vec::new(),
            running: vec![0; gpus],
            stamp_gpu: vec![0; gpus],
            stamp_node: vec![0; nodes],
            stamp: 0,
        }
    }
}

impl Worker {
    /// Replays one chunk (consecutive requests with their ordinal, home and tokens
    /// already replayed), layer by layer.
    fn replay_chunk(&mut self, trace: &Trace, requests: &[Request], placed: &[(usize, usize, u64)], route: &Route<'_>) {
        let (acc, s) = (&mut self.acc, &mut self.scratch);
        let shape = trace.shape;
        let (layers, k, experts) = (shape.layers, shape.top_k, shape.experts);
        let node_of = route.node_of;
        let (g, nodes) = (node_of.len(), s.stamp_node.len());
        s.starts.clear();
        s.homes.clear();
        s.keys.clear();
        for (req, &(ordinal, home, seen)) in requests.iter().zip(placed) {
            let n = req.tokens.len() as u64;
            acc.home_tokens[home] += n;
            acc.counts.tokens += n;
            acc.counts.token_layers += n * layers as u64;
            for (ti, &(b, t)) in req.tokens.iter().enumerate() {
                s.starts.push((b, t as usize * layers * k));
                s.homes.push(home as u32);
                s.keys.push(((ordinal as u64) << 32) | (seen + ti as u64));
            }
        }
        let tokens = s.homes.len();
        s.picks.resize(tokens * k, 0);
        s.out.resize(tokens * k, 0);
        let (mut rg, mut rn, mut cn, mut hops) = (0u64, 0u64, 0u64, 0u64);
        for layer in 0..layers {
            for (row, &(b, start)) in s.picks.chunks_exact_mut(k).zip(&s.starts) {
                let ids = trace.batches[b as usize].expert_ids();
                row.copy_from_slice(&ids[start + layer * k..start + (layer + 1) * k]);
            }
            match route.fixed {
                Some(fixed) => {
                    let lut = &fixed[layer * experts..(layer + 1) * experts];
                    for (o, &e) in s.out.iter_mut().zip(&s.picks) {
                        *o = lut[e as usize];
                    }
                }
                None => {
                    s.running.iter_mut().for_each(|x| *x = 0);
                    let batch = LayerBatch {
                        replicas: route.table,
                        node_of,
                        layer,
                        k,
                        picks: &s.picks,
                        homes: &s.homes,
                        keys: &s.keys,
                    };
                    route.dispatcher.dispatch_layer(&batch, &mut s.running, &mut s.out);
                }
            }
            // Count the layer: every token's distinct remote GPUs and nodes, marked
            // with a fresh stamp per token (no branch on what was seen).
            let load = &mut acc.load[layer * g..(layer + 1) * g];
            let traffic = &mut acc.traffic[layer * g * g..(layer + 1) * g * g];
            let node_traffic = &mut acc.node_traffic[layer * g * nodes..(layer + 1) * g * nodes];
            let mut layer_hops = 0u64;
            for (dest, &home) in s.out.chunks_exact(k).zip(&s.homes) {
                let home = home as usize;
                let home_node = node_of[home];
                s.stamp += 1;
                let stamp = s.stamp;
                let traffic = &mut traffic[home * g..(home + 1) * g];
                let node_traffic = &mut node_traffic[home * nodes..(home + 1) * nodes];
                for &gpu in dest {
                    let gpu = gpu as usize;
                    load[gpu] += 1;
                    let remote = gpu != home;
                    layer_hops += u64::from(remote);
                    let send = remote & (s.stamp_gpu[gpu] != stamp);
                    s.stamp_gpu[gpu] = stamp;
                    rg += u64::from(send);
                    traffic[gpu] += u64::from(send);
                    let node = node_of[gpu] as usize;
                    let cross = send & (node as u32 != home_node);
                    cn += u64::from(cross);
                    let crossing = cross & (s.stamp_node[node] != stamp);
                    if cross {
                        s.stamp_node[node] = stamp;
                    }
                    rn += u64::from(crossing);
                    node_traffic[node] += u64::from(crossing);
                }
            }
            hops += layer_hops;
            acc.hops[layer] += layer_hops;
        }
        acc.counts.remote_gpus += rg;
        acc.counts.remote_nodes += rn;
        acc.counts.cross_node_gpus += cn;
        acc.counts.remote_hops += hops;
    }
}

/// Requests in order of first appearance across the trace's batches.
fn index_requests(trace: &Trace) -> Vec<Request> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<Request> = Vec::new();
    for (bi, batch) in trace.batches.iter().enumerate() {
        let names = batch.request_names();
        let fams = batch.family_names();
        let mut local: Vec<usize> = vec![usize::MAX; names.len()];
        for (t, (&r, f)) in batch.request_indices().iter().zip(batch.family_indices()).enumerate() {
            let r = r as usize;
            if local[r] == usize::MAX {
                local[r] = *ids.entry(names[r].as_str()).or_insert_with(|| {
                    out.push(Request {
                        name: names[r].clone(),
                        family: f.map(|f| fams[f as usize].clone()),
                        tokens: Vec::new(),
                    });
                    out.len() - 1
                });
            }
            out[local[r]].tokens.push((bi as u32, t as u32));
        }
    }
    out
}

/// The slowest GPU's all-to-all time (one direction) for a message pattern: `intra`
/// holds the counts between GPUs of one node, `inter` between nodes (entries of the
/// other kind are ignored). Module documentation, "Time estimates".
fn slowest_gpu(intra: &[u64], inter: &[u64], cluster: &Cluster, node_of: &[u32]) -> f64 {
    let g = cluster.gpus;
    let tb = cluster.token_bytes() as f64;
    let mut slowest: f64 = 0.0;
    for x in 0..g {
        // [intra, inter] x (out tokens, in tokens, out peers, in peers)
        let mut v = [[0u64; 4]; 2];
        for y in (0..g).filter(|&y| y != x) {
            let kind = usize::from(node_of[x] != node_of[y]);
            let m = if kind == 0 { intra } else { inter };
            let (o, i) = (m[x * g + y], m[y * g + x]);
            v[kind][0] += o;
            v[kind][1] += i;
            v[kind][2] += u64::from(o > 0);
            v[kind][3] += u64::from(i > 0);
        }
        let time = |k: usize, gbps: f64, lat: f64| {
            v[k][0].max(v[k][1]) as f64 * tb / (gbps * 1e3) + v[k][2].max(v[k][3]) as f64 * lat
        };
        let tx = time(0, cluster.intra_node_gbps, cluster.intra_node_latency_us).max(time(
            1,
            cluster.inter_node_gbps,
            cluster.inter_node_latency_us,
        ));
        slowest = slowest.max(tx);
    }
    slowest
}

fn finish(acc: Acc, cluster: &Cluster, layers: usize, node_of: &[u32]) -> SimResult {
    let g = cluster.gpus;
    let (nodes, gpn) = (cluster.nodes, cluster.gpus_per_node());
    let c = &acc.counts;
    let tl = c.token_layers.max(1) as f64;
    let (mut inter_sends, mut intra_sends, mut hier_intra_sends) = (0u64, 0u64, 0u64);
    let mut per_layer = Vec::with_capacity(layers);
    for l in 0..layers {
        let load = acc.load[l * g..(l + 1) * g].to_vec();
        let (jain, balancedness, maxvio) = layer_load_figures(&load);
        let t = &acc.traffic[l * g * g..(l + 1) * g * g];
        let nt = &acc.node_traffic[l * g * nodes..(l + 1) * g * nodes];
        let remote_sends: u64 = t.iter().sum();
        let cross: u64 = (0..g)
            .flat_map(|x| (0..g).map(move |y| (x, y)))
            .filter(|&(x, y)| node_of[x] != node_of[y])
            .map(|(x, y)| t[x * g + y])
            .sum();
        // Hierarchical message pattern: `inter[x][y]` peer-to-peer crossings,
        // `intra[x][y]` sends inside a node (direct, or forwarded by a peer).
        let mut inter = vec![0u64; g * g];
        let mut intra = vec![0u64; g * g];
        for x in 0..g {
            for y in 0..g {
                if node_of[x] == node_of[y] {
                    intra[x * g + y] += t[x * g + y];
                } else {
                    let peer = node_of[y] as usize * gpn + x % gpn;
                    if y != peer {
                        intra[peer * g + y] += t[x * g + y];
                    }
                }
            }
            for n in (0..nodes).filter(|&n| n != node_of[x] as usize) {
                inter[x * g + n * gpn + x % gpn] += nt[x * nodes + n];
            }
        }
        hier_intra_sends += intra.iter().sum::<u64>();
        inter_sends += cross;
        intra_sends += remote_sends - cross;
        let slowest = slowest_gpu(t, t, cluster, node_of);
        let hier_slowest = slowest_gpu(&intra, &inter, cluster, node_of);
        let hottest = load.iter().copied().max().unwrap_or(0) as f64;
        per_layer.push(LayerMetrics {
            jain,
            balancedness,
            maxvio,
            remote_sends,
            cross_node_sends: cross,
            remote_hops: acc.hops[l],
            all_to_all_us: 2.0 * slowest,
            hier_all_to_all_us: 2.0 * hier_slowest,
            compute_us: hottest * cluster.expert_flops_per_token / (cluster.gpu_tflops * 1e6),
            load,
        });
    }
    let nl = layers.max(1) as f64;
    let home_max = acc.home_tokens.iter().copied().max().unwrap_or(0) as f64;
    let home_mean = acc.home_tokens.iter().sum::<u64>() as f64 / g as f64;
    SimResult {
        remote_gpus: c.remote_gpus as f64 / tl,
        remote_nodes: c.remote_nodes as f64 / tl,
        cross_node_gpus: c.cross_node_gpus as f64 / tl,
        remote_hops: c.remote_hops as f64 / tl,
        bytes: 2 * c.remote_gpus * cluster.token_bytes() as u64,
        inter_node_bytes: 2 * inter_sends * cluster.token_bytes() as u64,
        intra_node_bytes: 2 * intra_sends * cluster.token_bytes() as u64,
        hier_inter_node_bytes: 2 * c.remote_nodes * cluster.token_bytes() as u64,
        hier_intra_node_bytes: 2 * hier_intra_sends * cluster.token_bytes() as u64,
        jain: per_layer.iter().map(|l| l.jain).sum::<f64>() / nl,
        balancedness: per_layer.iter().map(|l| l.balancedness).sum::<f64>() / nl,
        maxvio: per_layer.iter().map(|l| l.maxvio).sum::<f64>() / nl,
        home_max_over_mean: if home_mean > 0.0 { home_max / home_mean } else { 1.0 },
        home_tokens: acc.home_tokens,
        all_to_all_us: per_layer.iter().map(|l| l.all_to_all_us).sum(),
        hier_all_to_all_us: per_layer.iter().map(|l| l.hier_all_to_all_us).sum(),
        compute_us: per_layer.iter().map(|l| l.compute_us).sum(),
        layers: per_layer,
        counts: acc.counts,
    }
}

/// A deterministic trace for throughput measurements (not a workload model):
/// `tokens` tokens in requests of `tokens_per_request`, each token picking top-k
/// distinct experts per layer with a skew towards low ids (a squared uniform draw),
/// from a fixed-seed generator. Used by `moeplace-lab bench simulate`.
pub fn benchmark_trace(shape: ModelShape, tokens: usize, tokens_per_request: usize, seed: u64) -> Trace {
    let mut state = seed ^ 0x5851_F42D_4C95_7F2D;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    let mut batch = TokenBatch::with_capacity(shape, tokens);
    let mut ids = vec![0u16; shape.picks_per_token()];
    let names: Vec<String> = (0..tokens.div_ceil(tokens_per_request.max(1))).map(|r| format!("r{r}")).collect();
    for t in 0..tokens {
        for layer in 0..shape.layers {
            let row = &mut ids[layer * shape.top_k..(layer + 1) * shape.top_k];
            let mut n = 0;
            while n < shape.top_k {
                let u = next();
                let e = ((u * u * shape.experts as f64) as usize).min(shape.experts - 1) as u16;
                if !row[..n].contains(&e) {
                    row[n] = e;
                    n += 1;
                }
            }
        }
        let r = t / tokens_per_request.max(1);
        batch
            .push(TokenRef {
                request: &names[r],
                family: None,
                phase: None,
                position: (t % tokens_per_request.max(1)) as u32,
                experts: &ids,
                gate_weights: None,
            })
            .expect("generated ids fit the shape");
    }
    Trace { shape, batches: vec![batch] }
}

/// "Cut" in percent: 100 x (1 - plan / baseline); `None` when the baseline is 0.
pub fn cut_percent(plan: f64, baseline: f64) -> Option<f64> {
    (baseline != 0.0).then(|| 100.0 * (1.0 - plan / baseline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{registry, DispatchContext, Gesr, Nearest, Primary};
    use std::collections::BTreeSet;

    /// 2 layers, 4 experts, top-2; 2 GPUs in 2 nodes, 2 slots each.
    fn tiny() -> (Trace, Cluster) {
        let shape = ModelShape::new(2, 4, 2).unwrap();
        let mut b = TokenBatch::new(shape);
        let tok = |r: &'static str, e: &'static [u16]| TokenRef {
            request: r,
            family: None,
            phase: None,
            position: 0,
            experts: e,
            gate_weights: None,
        };
        b.push(tok("a", &[0, 1, 0, 2])).unwrap();
        b.push(tok("b", &[2, 3, 1, 3])).unwrap();
        b.push(tok("a", &[0, 3, 2, 3])).unwrap();
        (Trace { shape, batches: vec![b] }, Cluster::new(2, 2, 2).unwrap())
    }

    #[test]
    fn a_stream_fed_in_windows_keeps_homes_and_counts() {
        // Request "a" spans both windows: it keeps home 0, and "b" is still the
        // second request (home 1), so with fixed routes the counts are the whole
        // stream's.
        let (trace, cluster) = tiny();
        let p = Placement::new(4, 2, 2, vec![vec![0, 1, 2, 3]; 2]).unwrap();
        let whole = simulate(&trace, &p, &cluster, &Primary, &HomePolicy::RoundRobin).unwrap();
        let b = &trace.batches[0];
        let mut windows = Vec::new();
        for range in [0..2, 2..3] {
            let mut w = TokenBatch::new(trace.shape);
            for t in range {
                w.push(b.token(t)).unwrap();
            }
            windows.push(Trace { shape: trace.shape, batches: vec![w] });
        }
        let mut r = Replay::new(trace.shape, &p, &cluster, &Primary, &HomePolicy::RoundRobin).unwrap();
        for w in &windows {
            r.feed(w).unwrap();
        }
        assert_eq!(r.finish().unwrap(), whole);
        let fam: HomePolicy = HomePolicy::Request([("b".to_string(), 0usize)].into());
        let whole = simulate(&trace, &p, &cluster, &Primary, &fam).unwrap();
        let mut r = Replay::new(trace.shape, &p, &cluster, &Primary, &fam).unwrap();
        windows.iter().for_each(|w| r.feed(w).unwrap());
        assert_eq!(r.finish().unwrap(), whole);
        let r = Replay::new(trace.shape, &p, &cluster, &Primary, &HomePolicy::RoundRobin).unwrap();
        assert_eq!(r.finish().unwrap_err(), SimError::Empty);
    }

    #[test]
    fn hand_counted_linear_replay() {
        let (trace, cluster) = tiny();
        let p = Placement::new(4, 2, 2, vec![vec![0, 1, 2, 3]; 2]).unwrap();
        let r = simulate(&trace, &p, &cluster, &Primary, &HomePolicy::RoundRobin).unwrap();
        // Request a is home 0, b is home 1. GPU 0 holds {0,1}, GPU 1 holds {2,3}.
        // a t0: L0 {0,1} local; L1 {0,2} -> 1 remote. b: L0 {2,3} local; L1 {1,3} -> 1.
        // a t1: L0 {0,3} -> 1; L1 {2,3} -> 1 remote GPU, 2 hops.
        assert_eq!(r.counts.token_layers, 6);
        assert_eq!((r.counts.remote_gpus, r.counts.remote_nodes, r.counts.remote_hops), (4, 4, 5));
        assert_eq!(r.layers[0].load, vec![3, 3]);
        assert_eq!(r.layers[1].load, vec![2, 4]);
        assert_eq!(r.home_tokens, vec![2, 1]);
        assert!((r.home_max_over_mean - 2.0 / 1.5).abs() < 1e-12);
        assert!((r.jain - (1.0 + 36.0 / (2.0 * 20.0)) / 2.0).abs() < 1e-12);
        assert_eq!(r.bytes, 2 * 4 * 7168 * 2);
        assert!(r.all_to_all_us > 0.0 && r.compute_us > 0.0);
    }

    #[test]
    fn family_homes_and_bad_gpu_ids() {
        let (trace, cluster) = tiny();
        let p = Placement::new(4, 2, 2, vec![vec![0, 1, 2, 3]; 2]).unwrap();
        let fam = HomePolicy::Family(BTreeMap::from([("x".to_string(), vec![5])]));
        assert!(matches!(simulate(&trace, &p, &cluster, &Nearest, &fam), Err(SimError::BadFamilyGpus { .. })));
        // Requests without a family fall back to round-robin over all GPUs.
        let fam = HomePolicy::Family(BTreeMap::from([("x".to_string(), vec![1])]));
        let r = simulate(&trace, &p, &cluster, &Nearest, &fam).unwrap();
        assert_eq!(r.home_tokens, vec![2, 1]);
        // Per-request homes: "b" named, "a" round-robin from GPU 0.
        let per = HomePolicy::Request(HashMap::from([("b".to_string(), 0)]));
        let r = simulate(&trace, &p, &cluster, &Nearest, &per).unwrap();
        assert_eq!(r.home_tokens, vec![3, 0]);
        let bad = HomePolicy::Request(HashMap::from([("b".to_string(), 2)]));
        assert!(matches!(simulate(&trace, &p, &cluster, &Nearest, &bad), Err(SimError::BadRequestHome { .. })));
    }

    /// A straightforward replay to check the fast one against: requests one after
    /// another, tokens one by one through every layer, the dispatcher's `dispatch`
    /// per token-layer, destinations deduplicated with sets; round-robin homes, the
    /// same chunks (the load signal restarts after a request that fills one).
    fn reference(trace: &Trace, p: &Placement, cluster: &Cluster, d: &dyn Dispatcher) -> SimResult {
        let (layers, k) = (trace.shape.layers, trace.shape.top_k);
        let (g, nodes) = (cluster.gpus, cluster.nodes);
        let node_of: Vec<u32> = (0..g).map(|x| cluster.node_of(x) as u32).collect();
        let table = ReplicaTable::new(p);
        let mut acc = Acc::new(layers, g, nodes);
        let mut running = vec![0u64; layers * g];
        let mut in_chunk = 0;
        for (ordinal, r) in index_requests(trace).iter().enumerate() {
            let home = ordinal % g;
            let home_node = node_of[home];
            for (ti, &(b, t)) in r.tokens.iter().enumerate() {
                acc.counts.tokens += 1;
                acc.home_tokens[home] += 1;
                for layer in 0..layers {
                    acc.counts.token_layers += 1;
                    let ctx = DispatchContext {
                        replicas: &table,
                        node_of: &node_of,
                        layer,
                        home,
                        home_node: home_node as usize,
                        token_key: ((ordinal as u64) << 32) | ti as u64,
                        loads: &running[layer * g..(layer + 1) * g],
                    };
                    let mut out = vec![0u32; k];
                    d.dispatch(&ctx, trace.batches[b as usize].picks(t as usize, layer), &mut out);
                    let mut sends = BTreeSet::new();
                    for &x in &out {
                        let x = x as usize;
                        running[layer * g + x] += 1;
                        acc.load[layer * g + x] += 1;
                        if x != home {
                            acc.hops[layer] += 1;
                            acc.counts.remote_hops += 1;
                            sends.insert(x);
                        }
                    }
                    let mut crossings = BTreeSet::new();
                    for &x in &sends {
                        acc.counts.remote_gpus += 1;
                        acc.traffic[(layer * g + home) * g + x] += 1;
                        if node_of[x] != home_node {
                            acc.counts.cross_node_gpus += 1;
                            crossings.insert(node_of[x] as usize);
                        }
                    }
                    for &n in &crossings {
                        acc.counts.remote_nodes += 1;
                        acc.node_traffic[(layer * g + home) * nodes + n] += 1;
                    }
                }
            }
            in_chunk += r.tokens.len();
            if in_chunk >= CHUNK_TOKENS {
                running.iter_mut().for_each(|x| *x = 0);
                in_chunk = 0;
            }
        }
        finish(acc, cluster, layers, &node_of)
    }

    /// A placement of `slots` slots per layer holding permutations of the experts one
    /// after another (every expert once, then replicas), drawn until no GPU holds an
    /// expert twice.
    fn random_placement(layers: usize, experts: usize, gpus: usize, slots: usize, seed: &mut u64) -> Placement {
        let mut next = |n: usize| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*seed >> 33) % n as u64) as usize
        };
        for _ in 0..1000 {
            let rows: Vec<Vec<i64>> = (0..layers)
                .map(|_| {
                    let mut row = Vec::with_capacity(slots);
                    while row.len() < slots {
                        let mut perm: Vec<i64> = (0..experts as i64).collect();
                        for i in (1..experts).rev() {
                            perm.swap(i, next(i + 1));
                        }
                        row.extend(perm);
                    }
                    row.truncate(slots);
                    row
                })
                .collect();
            if let Ok(p) = Placement::with_slots(experts, gpus, slots, rows) {
                return p;
            }
        }
        panic!("no valid placement drawn");
    }

    #[test]
    fn fast_replay_matches_a_straightforward_one() {
        // (GPUs, nodes, experts, slots): up to 64 GPUs, and more, with nodes whose
        // GPUs do not divide 64 and a node of more than 64 GPUs.
        let cases = [
            (8, 2, 16, 24),
            (64, 4, 96, 160),
            (72, 6, 96, 160),
            (72, 9, 64, 144),
            (130, 13, 96, 260),
            (130, 2, 160, 390),
        ];
        let mut seed = 7;
        for (g, nodes, experts, slots) in cases {
            let shape = ModelShape::new(3, experts, 6).unwrap();
            // More than two chunks, so that the load signal restarts.
            let trace = benchmark_trace(shape, 2 * CHUNK_TOKENS + 900, 37, g as u64);
            let replicated = random_placement(3, experts, g, slots, &mut seed);
            let baseline = crate::protocol::baseline_placement(3, experts, g).unwrap();
            let mut dispatchers = registry(5);
            dispatchers.push(Box::new(Gesr { free_first: true, ..Gesr::default() }));
            dispatchers.push(Box::new(Gesr { mean_reference: false, join_nodes: false, ..Gesr::default() }));
            for p in [&replicated, &baseline] {
                let cluster = Cluster::new(nodes, g, 1).unwrap().with_slots(p.slots()).unwrap();
                for d in &dispatchers {
                    let want = reference(&trace, p, &cluster, d.as_ref());
                    assert!(want.counts.remote_nodes > 0 && want.counts.remote_gpus > want.counts.remote_nodes);
                    for threads in [1, 3] {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        let got = pool.install(|| simulate(&trace, p, &cluster, d.as_ref(), &HomePolicy::RoundRobin));
                        assert_eq!(got.unwrap(), want, "{} on {g} GPUs in {nodes} nodes, {threads} threads", d.name());
                    }
                }
            }
        }
    }

    #[test]
    fn hierarchical_communication_crosses_once_per_node() {
        // 4 GPUs in 2 nodes, one expert per GPU; one request homed on GPU 0 whose
        // token needs experts 2 and 3, both on node 1 (GPUs 2 and 3).
        let shape = ModelShape::new(1, 4, 2).unwrap();
        let mut b = TokenBatch::new(shape);
        let tok =
            TokenRef { request: "a", family: None, phase: None, position: 0, experts: &[2, 3], gate_weights: None };
        b.push(tok).unwrap();
        let trace = Trace { shape, batches: vec![b] };
        let cluster = Cluster::new(2, 4, 1).unwrap();
        let p = Placement::new(4, 4, 1, vec![vec![0, 1, 2, 3]]).unwrap();
        let r = simulate(&trace, &p, &cluster, &Primary, &HomePolicy::RoundRobin).unwrap();
        let tb = 2 * cluster.token_bytes() as u64;
        // Flat: two cross-node sends. Hierarchical: one crossing to GPU 2 (GPU 0's
        // peer on node 1), then one NVLink forward 2 -> 3.
        assert_eq!((r.inter_node_bytes, r.intra_node_bytes), (2 * tb, 0));
        assert_eq!((r.hier_inter_node_bytes, r.hier_intra_node_bytes), (tb, tb));
        // One crossing instead of two: the inter-node link carries half the bytes and
        // one message; the forward on NVLink is much cheaper.
        let tb1 = cluster.token_bytes() as f64;
        let flat = 2.0 * (2.0 * tb1 / (cluster.inter_node_gbps * 1e3) + 2.0 * cluster.inter_node_latency_us);
        let hier_inter = tb1 / (cluster.inter_node_gbps * 1e3) + cluster.inter_node_latency_us;
        let hier_intra = tb1 / (cluster.intra_node_gbps * 1e3) + cluster.intra_node_latency_us;
        assert!((r.all_to_all_us - flat).abs() < 1e-9, "{} vs {flat}", r.all_to_all_us);
        assert!((r.hier_all_to_all_us - 2.0 * hier_inter.max(hier_intra)).abs() < 1e-9);
    }

    #[test]
    fn cut_is_relative_to_baseline() {
        assert_eq!(cut_percent(0.5, 2.0), Some(75.0));
        assert_eq!(cut_percent(1.0, 0.0), None);
    }
}
