//! Cluster flags shared by `plan` and `eval`: the layout by `--gpus/--nodes/
//! --slots-per-gpu`, a named machine's links by `--machine`, or a whole `--cluster` file.

use std::path::PathBuf;

use anyhow::{bail, Result};
use moeplace_core::cluster::{Cluster, Machine};
use moeplace_formats::cluster_file;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// GPUs in the cluster (expert-parallel size). With --machine: nodes x the machine's
    /// GPUs per node unless given.
    #[arg(long, value_name = "G")]
    pub gpus: Option<usize>,
    /// Nodes the GPUs are spread over (default 1, with or without --machine).
    #[arg(long, value_name = "N")]
    pub nodes: Option<usize>,
    /// Expert slots per GPU per layer (default: no redundant slots). Redundant slots
    /// = GPUs x S - experts.
    #[arg(long, value_name = "S", conflicts_with = "slots")]
    pub slots_per_gpu: Option<usize>,
    /// Expert slots per layer over all GPUs (experts + redundant slots), when they do
    /// not divide evenly over the GPUs: GPU g owns slots [g*S/G, (g+1)*S/G), e.g.
    /// --slots 288 on 64 GPUs gives 4 or 5 per GPU. Default: the number of experts.
    #[arg(long, value_name = "S")]
    pub slots: Option<usize>,
    /// Link figures of a named machine: h100 (8 GPUs/node, NVLink, 400 Gb/s IB) or
    /// a100-eth (4 GPUs/node, NVLink, 25 Gb/s Ethernet). Default links: h100's.
    #[arg(long, value_name = "NAME", conflicts_with = "cluster")]
    pub machine: Option<String>,
    /// A cluster TOML file (layout, links, model sizes); see docs/FORMATS.md.
    #[arg(long, value_name = "CLUSTER.toml")]
    pub cluster: Option<PathBuf>,
}

impl ClusterArgs {
    /// The cluster for a model with `experts` experts per layer.
    pub fn resolve(&self, experts: usize) -> Result<Cluster> {
        if let Some(path) = &self.cluster {
            if self.gpus.is_some() || self.nodes.is_some() || self.slots_per_gpu.is_some() || self.slots.is_some() {
                bail!("--cluster gives the layout; do not combine it with --gpus/--nodes/--slots-per-gpu/--slots");
            }
            return Ok(cluster_file::read(path)?);
        }
        let preset =
            match &self.machine {
                Some(name) => Some(Machine::by_name(name).ok_or_else(|| {
                    anyhow::anyhow!("unknown machine {name:?} (known: {})", Machine::names().join(", "))
                })?),
                None => None,
            };
        let nodes = self.nodes.unwrap_or(1);
        let gpus = match (self.gpus, preset) {
            (Some(g), _) => g,
            (None, Some(p)) => {
                nodes.checked_mul(p.gpus_per_node).ok_or_else(|| anyhow::anyhow!("--nodes {nodes} is too large"))?
            }
            (None, None) => bail!("give the cluster: --gpus G [--nodes N] [--slots-per-gpu S], --machine or --cluster"),
        };
        let slots = match (self.slots_per_gpu, self.slots) {
            (Some(s), _) => gpus
                .checked_mul(s)
                .ok_or_else(|| anyhow::anyhow!("--slots-per-gpu {s} on {gpus} GPUs is too large a slot count"))?,
            (None, Some(s)) => s,
            (None, None) => experts,
        };
        let mut c = match preset {
            Some(p) => p.cluster(nodes, 1)?,
            None => Cluster::new(nodes, gpus, 1)?,
        };
        c.gpus = gpus;
        c.slots = slots;
        c.validate()?;
        Ok(c)
    }

    /// Link figures for a layout fixed elsewhere (a plan's GPUs, nodes and slots per
    /// layer).
    pub fn for_layout(&self, nodes: usize, gpus: usize, slots: usize) -> Result<Cluster> {
        if let Some(path) = &self.cluster {
            let c = cluster_file::read(path)?;
            if (c.nodes, c.gpus, c.slots) != (nodes, gpus, slots) {
                bail!(
                    "{}: the cluster is {} nodes x {} GPUs with {} slots per layer but the plan is {nodes} x {gpus} \
                     with {slots}",
                    path.display(),
                    c.nodes,
                    c.gpus,
                    c.slots
                );
            }
            return Ok(c);
        }
        let mut c = Cluster::new(nodes, gpus, 1)?.with_slots(slots)?;
        if let Some(name) = &self.machine {
            let p = Machine::by_name(name)
                .ok_or_else(|| anyhow::anyhow!("unknown machine {name:?} (known: {})", Machine::names().join(", ")))?;
            c = c.with_links_of(&p);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_layouts_are_refused() {
        let big = 1usize << 33;
        let args = ClusterArgs { gpus: Some(big), slots_per_gpu: Some(big), ..Default::default() };
        let e = args.resolve(8).unwrap_err().to_string();
        assert!(e.contains("--slots-per-gpu") && e.contains("too large"), "{e}");
        let args = ClusterArgs { nodes: Some(usize::MAX / 2), machine: Some("h100".into()), ..Default::default() };
        let e = args.resolve(8).unwrap_err().to_string();
        assert!(e.contains("--nodes") && e.contains("too large"), "{e}");
    }
}
