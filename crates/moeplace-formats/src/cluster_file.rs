//! Cluster files: a small TOML description of the cluster a plan is for.
//!
//! ```toml
//! machine = "h100"         # optional: start from a named machine's links (h100, a100-eth)
//! nodes = 2                # required
//! gpus = 16                # default: nodes x the machine's GPUs per node
//! slots_per_gpu = 5        # required, or `slots = 288`: slots per layer over all GPUs
//!                          # (GPU g owns [g*S/G, (g+1)*S/G), so counts may differ by one)
//! intra_node_gbps = 450.0  # GB/s per GPU, one direction
//! inter_node_gbps = 50.0
//! intra_node_latency_us = 2.0
//! inter_node_latency_us = 5.0
//! hidden_size = 7168
//! bytes_per_element = 2
//! expert_flops_per_token = 88080384.0
//! gpu_tflops = 400.0
//! ```
//! Without a machine, unspecified links are the `h100` machine's and `gpus` is required
//! (`preset` is read as an older name of `machine`).
//! `hidden_size x bytes_per_element` is at most 16 MiB (`Cluster::validate`).
//! Unknown keys are refused (typos must not pass silently).

use std::path::Path;

use moeplace_core::cluster::{Cluster, Machine};

use crate::error::FormatError;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterRepr {
    #[serde(alias = "preset")]
    machine: Option<String>,
    nodes: usize,
    gpus: Option<usize>,
    slots_per_gpu: Option<usize>,
    slots: Option<usize>,
    intra_node_gbps: Option<f64>,
    inter_node_gbps: Option<f64>,
    intra_node_latency_us: Option<f64>,
    inter_node_latency_us: Option<f64>,
    hidden_size: Option<usize>,
    bytes_per_element: Option<usize>,
    expert_flops_per_token: Option<f64>,
    gpu_tflops: Option<f64>,
}

/// Reads and validates a cluster file.
pub fn read(path: &Path) -> Result<Cluster, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    parse(path, &text)
}

/// Parses cluster TOML text (`path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Cluster, FormatError> {
    let r: ClusterRepr = toml::from_str(text).map_err(|e| FormatError::file(path, e.to_string().trim().to_string()))?;
    let slots_of = |gpus: usize| match (r.slots_per_gpu, r.slots) {
        (Some(s), None) => s.checked_mul(gpus).ok_or_else(|| {
            FormatError::file(path, format!("{s} slots per GPU on {gpus} GPUs is too large a slot count"))
        }),
        (None, Some(s)) => Ok(s),
        (None, None) => Err(FormatError::file(path, "give `slots_per_gpu` or `slots` (slots per layer over all GPUs)")),
        (Some(_), Some(_)) => Err(FormatError::file(path, "give `slots_per_gpu` or `slots`, not both")),
    };
    let mut c = match &r.machine {
        Some(name) => {
            let p = Machine::by_name(name).ok_or_else(|| {
                FormatError::file(path, format!("unknown machine {name:?} (known: {})", Machine::names().join(", ")))
            })?;
            let mut c = p.cluster(r.nodes.max(1), 1).map_err(|e| FormatError::file(path, e.to_string()))?;
            c.nodes = r.nodes;
            if let Some(g) = r.gpus {
                c.gpus = g;
            }
            c.slots = slots_of(c.gpus)?;
            c
        }
        None => {
            let gpus = r.gpus.ok_or_else(|| FormatError::file(path, "`gpus` is required without a machine"))?;
            let mut c = Cluster::new(1, 1, 1).expect("a 1-GPU cluster is valid");
            c.nodes = r.nodes;
            c.gpus = gpus;
            c.slots = slots_of(gpus)?;
            c
        }
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = r.$f { c.$f = v; } )* };
    }
    set!(
        intra_node_gbps,
        inter_node_gbps,
        intra_node_latency_us,
        inter_node_latency_us,
        hidden_size,
        bytes_per_element,
        expert_flops_per_token,
        gpu_tflops
    );
    c.validate().map_err(|e| FormatError::file(path, e.to_string()))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_and_overrides() {
        let p = Path::new("c.toml");
        let c = parse(p, "machine = \"a100-eth\"\nnodes = 2\nslots_per_gpu = 5\ngpu_tflops = 100.0\n").unwrap();
        assert_eq!((c.nodes, c.gpus, c.slots, c.gpu_tflops), (2, 8, 40, 100.0));
        let c = parse(p, "preset = \"h100\"\nnodes = 8\nslots = 288\n").unwrap();
        assert_eq!((c.gpus, c.slots, c.max_slots_per_gpu(), c.uniform_slots_per_gpu()), (64, 288, 5, None));
        let e = parse(p, "nodes = 8\ngpus = 64\nslots = 288\nslots_per_gpu = 4\n").unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let e = parse(p, "nodes = 8\ngpus = 64\n").unwrap_err().to_string();
        assert!(e.contains("give `slots_per_gpu` or `slots`"), "{e}");
        let c = parse(p, "nodes = 4\ngpus = 16\nslots_per_gpu = 4\ninter_node_gbps = 12.5\n").unwrap();
        assert_eq!((c.gpus, c.inter_node_gbps, c.intra_node_gbps), (16, 12.5, 450.0));
    }

    #[test]
    fn errors_name_the_problem() {
        let p = Path::new("c.toml");
        let e = parse(p, "nodes = 4\nslots_per_gpu = 4\n").unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("gpus"), "{e}");
        let e = parse(p, "nodes = 3\ngpus = 16\nslots_per_gpu = 4\n").unwrap_err().to_string();
        assert!(e.contains("do not divide"), "{e}");
        let e = parse(p, "nodes = 4\ngpus = 16\nslots_per_gpu = 4\nspeed = 3\n").unwrap_err().to_string();
        assert!(e.contains("speed"), "{e}");
        let e = parse(p, "preset = \"tpu\"\nnodes = 1\nslots_per_gpu = 4\n").unwrap_err().to_string();
        assert!(e.contains("h100"), "{e}");
    }
}
