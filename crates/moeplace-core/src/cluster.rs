//! The cluster a placement is for: N nodes x (G/N) GPUs, S slots per GPU per layer,
//! and the links and sizes that turn traffic counts into time.
//!
//! Named machines ([`Machine`]) give explicit link figures for common machines; a cluster
//! file (moeplace-formats `cluster_file`) or command-line flags override any field.
//!
//! Cost model of the simulator (see `simulate`): moving one token activation costs
//! `hidden_size x bytes_per_element` bytes over an intra-node link (NVLink) when both
//! GPUs share a node and over the GPU's inter-node link otherwise; every message also
//! pays the link's latency. Serving one token at one expert costs
//! `expert_flops_per_token` floating-point operations (a SwiGLU expert: 3 matrices of
//! hidden x intermediate, 2 FLOPs per multiply-add, so 6 x hidden x intermediate),
//! run at `gpu_tflops` effective TFLOP/s.

/// Cluster topology and cost parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cluster {
    pub nodes: usize,
    pub gpus: usize,
    /// Expert slots per MoE layer over all GPUs (S in docs/DESIGN.md); GPU g owns
    /// slots [g*S/G, (g+1)*S/G), so GPUs own S/G slots each when G divides S.
    pub slots: usize,
    /// Per-GPU bandwidth to GPUs of the same node, GB/s (one direction).
    pub intra_node_gbps: f64,
    /// Per-GPU bandwidth to other nodes, GB/s (one direction).
    pub inter_node_gbps: f64,
    /// Latency of one intra-node message, microseconds.
    pub intra_node_latency_us: f64,
    /// Latency of one inter-node message, microseconds.
    pub inter_node_latency_us: f64,
    /// Model hidden size (elements per token activation).
    pub hidden_size: usize,
    /// Bytes per activation element (2 for bf16).
    pub bytes_per_element: usize,
    /// FLOPs to run one token through one routed expert.
    pub expert_flops_per_token: f64,
    /// Effective GPU throughput on expert matrix multiplies, TFLOP/s.
    pub gpu_tflops: f64,
}

/// DeepSeek-V3's hidden size, the default model the named machines assume.
pub const DEEPSEEK_V3_HIDDEN: usize = 7168;
/// DeepSeek-V3's routed-expert intermediate size.
pub const DEEPSEEK_V3_EXPERT_INTERMEDIATE: usize = 2048;
/// Most bytes of one token's activation a cluster may give (`hidden_size x
/// bytes_per_element`): 16 MiB, a thousand times DeepSeek-V3's; more is a typo.
pub const MAX_TOKEN_BYTES: usize = 1 << 24;

/// Most GPUs a cluster may have: several times the largest expert-parallel
/// deployments, and small enough that every placer's GPU x GPU tables fit in memory.
pub const MAX_GPUS: usize = 4096;

/// Most slots per layer: placers keep slot x slot tables of 8-byte counters
/// (16,384 slots: 2 GiB).
pub const MAX_SLOTS: usize = 16384;

/// Named machine types with explicit link figures.
///
/// - `h100`: 8 GPUs per node; NVLink 4 at 450 GB/s per direction per GPU, 2 us per
///   message; one 400 Gb/s InfiniBand NIC per GPU = 50 GB/s, 5 us per message;
///   400 effective TFLOP/s on expert GEMMs (about 40% of the 989 dense bf16 peak,
///   our choice for small per-expert batches).
/// - `a100-eth`: 4 GPUs per node; NVLink 3 at 300 GB/s per direction per GPU
///   (a PCIe-only box would be about 25 GB/s: override `intra_node_gbps`), 3 us per
///   message; one 25 Gb/s Ethernet NIC per node shared by its 4 GPUs = 0.78125 GB/s
///   per GPU, 20 us per message (TCP); 150 effective TFLOP/s (about half of the 312
///   bf16 peak).
///
/// Both assume a DeepSeek-V3-sized expert (hidden 7168, intermediate 2048, bf16);
/// set `hidden_size` / `expert_flops_per_token` for other models.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Machine {
    pub name: &'static str,
    pub gpus_per_node: usize,
    pub intra_node_gbps: f64,
    pub inter_node_gbps: f64,
    pub intra_node_latency_us: f64,
    pub inter_node_latency_us: f64,
    pub gpu_tflops: f64,
}

/// Every named machine.
pub const MACHINES: &[Machine] = &[
    Machine {
        name: "h100",
        gpus_per_node: 8,
        intra_node_gbps: 450.0,
        inter_node_gbps: 50.0,
        intra_node_latency_us: 2.0,
        inter_node_latency_us: 5.0,
        gpu_tflops: 400.0,
    },
    Machine {
        name: "a100-eth",
        gpus_per_node: 4,
        intra_node_gbps: 300.0,
        inter_node_gbps: 25.0 / 8.0 / 4.0,
        intra_node_latency_us: 3.0,
        inter_node_latency_us: 20.0,
        gpu_tflops: 150.0,
    },
];

impl Machine {
    /// The machine called `name`.
    pub fn by_name(name: &str) -> Option<Machine> {
        MACHINES.iter().copied().find(|p| p.name == name)
    }

    /// Names of every machine, for help texts and errors.
    pub fn names() -> Vec<&'static str> {
        MACHINES.iter().map(|p| p.name).collect()
    }

    /// A cluster of `nodes` such machines with `slots_per_gpu` slots per GPU.
    pub fn cluster(&self, nodes: usize, slots_per_gpu: usize) -> Result<Cluster, ClusterError> {
        let c = Cluster {
            nodes,
            gpus: nodes * self.gpus_per_node,
            slots: nodes * self.gpus_per_node * slots_per_gpu,
            intra_node_gbps: self.intra_node_gbps,
            inter_node_gbps: self.inter_node_gbps,
            intra_node_latency_us: self.intra_node_latency_us,
            inter_node_latency_us: self.inter_node_latency_us,
            hidden_size: DEEPSEEK_V3_HIDDEN,
            bytes_per_element: 2,
            expert_flops_per_token: expert_flops(DEEPSEEK_V3_HIDDEN, DEEPSEEK_V3_EXPERT_INTERMEDIATE),
            gpu_tflops: self.gpu_tflops,
        };
        c.validate()?;
        Ok(c)
    }
}

/// FLOPs of one token through a SwiGLU expert: 3 matrices, 2 FLOPs per multiply-add.
pub fn expert_flops(hidden: usize, intermediate: usize) -> f64 {
    6.0 * hidden as f64 * intermediate as f64
}

/// Why a cluster description is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bad cluster: {0}")]
pub struct ClusterError(pub String);

impl Cluster {
    /// A cluster with the given layout and the `h100` machine's links and costs
    /// (NVLink inside a node, 400 Gb/s InfiniBand between nodes, DeepSeek-V3-sized
    /// experts in bf16), whatever the GPUs per node.
    pub fn new(nodes: usize, gpus: usize, slots_per_gpu: usize) -> Result<Cluster, ClusterError> {
        let p = MACHINES[0];
        let c = Cluster {
            nodes,
            gpus,
            slots: gpus.saturating_mul(slots_per_gpu),
            intra_node_gbps: p.intra_node_gbps,
            inter_node_gbps: p.inter_node_gbps,
            intra_node_latency_us: p.intra_node_latency_us,
            inter_node_latency_us: p.inter_node_latency_us,
            hidden_size: DEEPSEEK_V3_HIDDEN,
            bytes_per_element: 2,
            expert_flops_per_token: expert_flops(DEEPSEEK_V3_HIDDEN, DEEPSEEK_V3_EXPERT_INTERMEDIATE),
            gpu_tflops: p.gpu_tflops,
        };
        c.validate()?;
        Ok(c)
    }

    /// The same cluster with `slots` slots per layer in total (GPU g owns
    /// [g*S/G, (g+1)*S/G)), e.g. 288 slots on 64 GPUs: 4 or 5 each.
    pub fn with_slots(mut self, slots: usize) -> Result<Cluster, ClusterError> {
        self.slots = slots;
        self.validate()?;
        Ok(self)
    }

    /// The same layout with the link and compute figures of `machine`.
    pub fn with_links_of(mut self, machine: &Machine) -> Cluster {
        self.intra_node_gbps = machine.intra_node_gbps;
        self.inter_node_gbps = machine.inter_node_gbps;
        self.intra_node_latency_us = machine.intra_node_latency_us;
        self.inter_node_latency_us = machine.inter_node_latency_us;
        self.gpu_tflops = machine.gpu_tflops;
        self
    }

    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.nodes == 0 || self.gpus == 0 {
            return Err(ClusterError("a cluster needs at least one node and one GPU".into()));
        }
        if self.gpus > MAX_GPUS {
            return Err(ClusterError(format!("{} GPUs: at most {MAX_GPUS} are supported", self.gpus)));
        }
        if self.slots > MAX_SLOTS {
            return Err(ClusterError(format!("{} slots per layer: at most {MAX_SLOTS} are supported", self.slots)));
        }
        if !self.gpus.is_multiple_of(self.nodes) {
            return Err(ClusterError(format!("{} GPUs do not divide evenly into {} nodes", self.gpus, self.nodes)));
        }
        if self.slots < self.gpus {
            return Err(ClusterError(format!(
                "{} slots per layer leave some of the {} GPUs without a slot (need at least one per GPU)",
                self.slots, self.gpus
            )));
        }
        if self.hidden_size == 0 || self.bytes_per_element == 0 {
            return Err(ClusterError("hidden size and bytes per element must be at least 1".into()));
        }
        // Their product is a token's bytes on every link; one that overflows (or is
        // beyond any model) wraps or saturates the byte counts and time estimates.
        match self.hidden_size.checked_mul(self.bytes_per_element) {
            Some(b) if b <= MAX_TOKEN_BYTES => {}
            _ => {
                return Err(ClusterError(format!(
                    "hidden_size = {} x bytes_per_element = {} is more than {MAX_TOKEN_BYTES} bytes per token \
                     (16 MiB; DeepSeek-V3's is 14336)",
                    self.hidden_size, self.bytes_per_element
                )))
            }
        }
        for (name, v) in [
            ("intra-node bandwidth", self.intra_node_gbps),
            ("inter-node bandwidth", self.inter_node_gbps),
            ("GPU throughput", self.gpu_tflops),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ClusterError(format!("{name} must be a positive number, got {v}")));
            }
        }
        for (name, v) in [
            ("intra-node latency", self.intra_node_latency_us),
            ("inter-node latency", self.inter_node_latency_us),
            ("expert FLOPs per token", self.expert_flops_per_token),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ClusterError(format!("{name} must be a non-negative number, got {v}")));
            }
        }
        Ok(())
    }

    pub fn gpus_per_node(&self) -> usize {
        self.gpus / self.nodes
    }

    /// Slots per layer, S.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Slots per GPU when every GPU owns the same number, else `None`.
    pub fn uniform_slots_per_gpu(&self) -> Option<usize> {
        self.slots.is_multiple_of(self.gpus).then_some(self.slots / self.gpus)
    }

    /// The most slots any GPU owns, ceil(S/G).
    pub fn max_slots_per_gpu(&self) -> usize {
        self.slots.div_ceil(self.gpus)
    }

    /// "5 slots per GPU" or "288 slots (4-5 per GPU)", for messages and tables.
    pub fn slots_label(&self) -> String {
        match self.uniform_slots_per_gpu() {
            Some(s) => format!("{s} slots per GPU"),
            None => format!("{} slots ({}-{} per GPU)", self.slots, self.slots / self.gpus, self.max_slots_per_gpu()),
        }
    }

    /// The slots GPU `gpu` owns in every layer: [g*S/G, (g+1)*S/G) (docs/DESIGN.md, "Vocabulary").
    /// Placers should size GPUs through this (or [`Cluster::gpu_slot_count`]) rather
    /// than assume every GPU has the same number of slots.
    #[inline]
    pub fn gpu_slots(&self, gpu: usize) -> std::ops::Range<usize> {
        crate::placement::slot_range(self.gpus, self.slots, gpu)
    }

    /// Number of slots GPU `gpu` owns in every layer.
    #[inline]
    pub fn gpu_slot_count(&self, gpu: usize) -> usize {
        self.gpu_slots(gpu).len()
    }

    #[inline]
    pub fn node_of(&self, gpu: usize) -> usize {
        gpu / self.gpus_per_node()
    }

    /// Bytes of one token's activation (one direction).
    pub fn token_bytes(&self) -> usize {
        self.hidden_size * self.bytes_per_element
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_have_their_layout() {
        let h = Machine::by_name("h100").unwrap().cluster(8, 4).unwrap();
        assert_eq!((h.gpus, h.gpus_per_node(), h.inter_node_gbps), (64, 8, 50.0));
        let a = Machine::by_name("a100-eth").unwrap().cluster(4, 2).unwrap();
        assert_eq!((a.gpus, a.gpus_per_node()), (16, 4));
        assert!((a.inter_node_gbps - 0.78125).abs() < 1e-12);
        assert!(Machine::by_name("tpu").is_none());
        assert!(Machine::by_name("h100").unwrap().cluster(0, 4).is_err());
    }
}
