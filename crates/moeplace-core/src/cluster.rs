//! The cluster a placement is for: N nodes x (G/N) GPUs, S slots per GPU per layer,
//! and the links and sizes that turn traffic counts into time.

/// Cluster topology and cost parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cluster {
    pub nodes: usize,
    pub gpus: usize,
    /// Expert slots per GPU in every MoE layer (S/G in DESIGN.md's words).
    pub slots_per_gpu: usize,
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
}

/// Why a cluster description is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bad cluster: {0}")]
pub struct ClusterError(pub String);

impl Cluster {
    /// A cluster with the given layout and H100-like links (NVLink inside a node,
    /// 400 Gb/s InfiniBand between nodes), hidden size 7168 in bf16.
    pub fn new(nodes: usize, gpus: usize, slots_per_gpu: usize) -> Result<Cluster, ClusterError> {
        let c = Cluster {
            nodes,
            gpus,
            slots_per_gpu,
            intra_node_gbps: 450.0,
            inter_node_gbps: 50.0,
            intra_node_latency_us: 2.0,
            inter_node_latency_us: 5.0,
            hidden_size: 7168,
            bytes_per_element: 2,
        };
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.nodes == 0 || self.gpus == 0 {
            return Err(ClusterError("a cluster needs at least one node and one GPU".into()));
        }
        if !self.gpus.is_multiple_of(self.nodes) {
            return Err(ClusterError(format!("{} GPUs do not divide evenly into {} nodes", self.gpus, self.nodes)));
        }
        if self.slots_per_gpu == 0 {
            return Err(ClusterError("slots per GPU must be at least 1".into()));
        }
        for (name, v) in
            [("intra-node bandwidth", self.intra_node_gbps), ("inter-node bandwidth", self.inter_node_gbps)]
        {
            if !(v.is_finite() && v > 0.0) {
                return Err(ClusterError(format!("{name} must be a positive number, got {v}")));
            }
        }
        for (name, v) in
            [("intra-node latency", self.intra_node_latency_us), ("inter-node latency", self.inter_node_latency_us)]
        {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ClusterError(format!("{name} must be a non-negative number, got {v}")));
            }
        }
        Ok(())
    }

    pub fn gpus_per_node(&self) -> usize {
        self.gpus / self.nodes
    }

    /// Slots per layer, S = G x slots per GPU.
    pub fn slots(&self) -> usize {
        self.gpus * self.slots_per_gpu
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
