//! Cluster flags shared by `plan` and `eval`: the layout by `--gpus/--nodes/
//! --slots-per-gpu`, a preset's links by `--preset`, or a whole `--cluster` file.

use std::path::PathBuf;

use anyhow::{bail, Result};
use moeplace_core::cluster::{Cluster, Preset};
use moeplace_formats::cluster_file;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// GPUs in the cluster (expert-parallel size). With --preset: nodes x the preset's
    /// GPUs per node unless given.
    #[arg(long, value_name = "G")]
    pub gpus: Option<usize>,
    /// Nodes the GPUs are spread over (default 1; with --preset, required).
    #[arg(long, value_name = "N")]
    pub nodes: Option<usize>,
    /// Expert slots per GPU per layer (default: experts / GPUs, i.e. no replicas).
    #[arg(long, value_name = "S")]
    pub slots_per_gpu: Option<usize>,
    /// Link figures of a named machine: h100 (8 GPUs/node, NVLink, 400 Gb/s IB) or
    /// a100-eth (4 GPUs/node, NVLink, 25 Gb/s Ethernet). Default links: h100's.
    #[arg(long, value_name = "NAME", conflicts_with = "cluster")]
    pub preset: Option<String>,
    /// A cluster TOML file (layout, links, model sizes); see docs/FORMATS.md.
    #[arg(long, value_name = "CLUSTER.toml")]
    pub cluster: Option<PathBuf>,
}

impl ClusterArgs {
    /// The cluster for a model with `experts` experts per layer.
    pub fn resolve(&self, experts: usize) -> Result<Cluster> {
        if let Some(path) = &self.cluster {
            if self.gpus.is_some() || self.nodes.is_some() || self.slots_per_gpu.is_some() {
                bail!("--cluster gives the layout; do not combine it with --gpus/--nodes/--slots-per-gpu");
            }
            return Ok(cluster_file::read(path)?);
        }
        let preset =
            match &self.preset {
                Some(name) => Some(Preset::by_name(name).ok_or_else(|| {
                    anyhow::anyhow!("unknown preset {name:?} (known: {})", Preset::names().join(", "))
                })?),
                None => None,
            };
        let nodes = self.nodes.unwrap_or(1);
        let gpus = match (self.gpus, preset) {
            (Some(g), _) => g,
            (None, Some(p)) => nodes * p.gpus_per_node,
            (None, None) => bail!("give the cluster: --gpus G [--nodes N] [--slots-per-gpu S], --preset or --cluster"),
        };
        let slots = match self.slots_per_gpu {
            Some(s) => s,
            None if gpus > 0 && experts.is_multiple_of(gpus) => experts / gpus,
            None => bail!("{experts} experts do not divide over {gpus} GPUs; give --slots-per-gpu"),
        };
        let mut c = match preset {
            Some(p) => p.cluster(nodes, slots)?,
            None => Cluster::new(nodes, gpus, slots)?,
        };
        c.gpus = gpus;
        c.validate()?;
        Ok(c)
    }

    /// Link figures for a layout fixed elsewhere (a plan's GPUs, nodes and slots).
    pub fn for_layout(&self, nodes: usize, gpus: usize, slots_per_gpu: usize) -> Result<Cluster> {
        if let Some(path) = &self.cluster {
            let c = cluster_file::read(path)?;
            if (c.nodes, c.gpus, c.slots_per_gpu) != (nodes, gpus, slots_per_gpu) {
                bail!(
                    "{}: the cluster is {} nodes x {} GPUs x {} slots but the plan is {nodes} x {gpus} x {slots_per_gpu}",
                    path.display(),
                    c.nodes,
                    c.gpus,
                    c.slots_per_gpu
                );
            }
            return Ok(c);
        }
        let mut c = Cluster::new(nodes, gpus, slots_per_gpu)?;
        if let Some(name) = &self.preset {
            let p = Preset::by_name(name)
                .ok_or_else(|| anyhow::anyhow!("unknown preset {name:?} (known: {})", Preset::names().join(", ")))?;
            c.intra_node_gbps = p.intra_node_gbps;
            c.inter_node_gbps = p.inter_node_gbps;
            c.intra_node_latency_us = p.intra_node_latency_us;
            c.inter_node_latency_us = p.inter_node_latency_us;
            c.gpu_tflops = p.gpu_tflops;
        }
        Ok(c)
    }
}
