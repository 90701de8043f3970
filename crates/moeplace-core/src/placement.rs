//! Placements (DESIGN.md vocabulary): per MoE layer, the slot -> expert map
//! (`physical_to_logical_map`). GPU g owns slots [g*S/G, (g+1)*S/G).
//!
//! [`Placement::new`] is the one place the invariants are checked; every reader and
//! writer of plans goes through it:
//! - every layer has exactly G x slots-per-GPU slots (exact slot counts),
//! - every expert id is in range,
//! - every expert has at least one copy in every layer,
//! - no GPU holds two copies of one expert in one layer.

use crate::cluster::Cluster;

/// Why a placement breaks an invariant; names the layer, GPU and expert.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error("placement has no layers")]
    NoLayers,
    #[error("bad shape: {gpus} GPUs x {slots_per_gpu} slots per GPU for {experts} experts (need G >= 1, slots >= 1 and G x slots >= experts)")]
    BadShape { experts: usize, gpus: usize, slots_per_gpu: usize },
    #[error("layer {layer}: {found} slots, expected {expected} ({gpus} GPUs x {slots_per_gpu} slots per GPU)")]
    SlotCount { layer: usize, found: usize, expected: usize, gpus: usize, slots_per_gpu: usize },
    #[error(
        "layer {layer}, GPU {gpu}, slot {slot}: expert id {expert} is out of range (the model has {experts} experts)"
    )]
    ExpertOutOfRange { layer: usize, gpu: usize, slot: usize, expert: i64, experts: usize },
    #[error("layer {layer}: expert {expert} has no copy on any GPU")]
    MissingExpert { layer: usize, expert: usize },
    #[error("layer {layer}, GPU {gpu}: expert {expert} has two copies on this GPU (slots {first} and {second})")]
    DuplicateOnGpu { layer: usize, gpu: usize, expert: usize, first: usize, second: usize },
}

/// A validated placement. See the module documentation for the invariants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    experts: usize,
    gpus: usize,
    slots_per_gpu: usize,
    /// `[layers][slots]`.
    phy2log: Vec<Vec<u32>>,
    /// `[layers][experts]` -> slots holding the expert, in slot order.
    log2phy: Vec<Vec<Vec<u32>>>,
}

impl Placement {
    /// Checks every invariant and builds the placement.
    pub fn new(
        experts: usize,
        gpus: usize,
        slots_per_gpu: usize,
        phy2log: Vec<Vec<i64>>,
    ) -> Result<Placement, PlacementError> {
        if gpus == 0 || slots_per_gpu == 0 || experts == 0 || gpus * slots_per_gpu < experts {
            return Err(PlacementError::BadShape { experts, gpus, slots_per_gpu });
        }
        if phy2log.is_empty() {
            return Err(PlacementError::NoLayers);
        }
        let slots = gpus * slots_per_gpu;
        let mut out = Vec::with_capacity(phy2log.len());
        let mut log2phy = Vec::with_capacity(phy2log.len());
        for (layer, row) in phy2log.iter().enumerate() {
            if row.len() != slots {
                return Err(PlacementError::SlotCount {
                    layer,
                    found: row.len(),
                    expected: slots,
                    gpus,
                    slots_per_gpu,
                });
            }
            let mut copies: Vec<Vec<u32>> = vec![Vec::new(); experts];
            for (slot, &x) in row.iter().enumerate() {
                let gpu = slot / slots_per_gpu;
                if x < 0 || x as u64 >= experts as u64 {
                    return Err(PlacementError::ExpertOutOfRange { layer, gpu, slot, expert: x, experts });
                }
                let e = x as usize;
                if let Some(&prev) = copies[e].iter().find(|&&s| s as usize / slots_per_gpu == gpu) {
                    return Err(PlacementError::DuplicateOnGpu {
                        layer,
                        gpu,
                        expert: e,
                        first: prev as usize,
                        second: slot,
                    });
                }
                copies[e].push(slot as u32);
            }
            if let Some(e) = copies.iter().position(|c| c.is_empty()) {
                return Err(PlacementError::MissingExpert { layer, expert: e });
            }
            out.push(row.iter().map(|&x| x as u32).collect());
            log2phy.push(copies);
        }
        Ok(Placement { experts, gpus, slots_per_gpu, phy2log: out, log2phy })
    }

    /// Same as [`Placement::new`] from unsigned ids.
    pub fn from_slots(
        experts: usize,
        gpus: usize,
        slots_per_gpu: usize,
        phy2log: Vec<Vec<u32>>,
    ) -> Result<Placement, PlacementError> {
        Self::new(
            experts,
            gpus,
            slots_per_gpu,
            phy2log.into_iter().map(|r| r.into_iter().map(i64::from).collect()).collect(),
        )
    }

    /// Builds a placement from per-GPU expert lists (`[layers][gpus][slots_per_gpu]`).
    pub fn from_gpu_lists(
        experts: usize,
        gpus: usize,
        slots_per_gpu: usize,
        lists: &[Vec<Vec<usize>>],
    ) -> Result<Placement, PlacementError> {
        let rows = lists.iter().map(|layer| layer.iter().flatten().map(|&e| e as i64).collect()).collect();
        Self::new(experts, gpus, slots_per_gpu, rows)
    }

    pub fn layers(&self) -> usize {
        self.phy2log.len()
    }

    pub fn experts(&self) -> usize {
        self.experts
    }

    pub fn gpus(&self) -> usize {
        self.gpus
    }

    pub fn slots_per_gpu(&self) -> usize {
        self.slots_per_gpu
    }

    pub fn slots(&self) -> usize {
        self.gpus * self.slots_per_gpu
    }

    /// `physical_to_logical_map`, `[layers][slots]`.
    pub fn phy2log(&self) -> &[Vec<u32>] {
        &self.phy2log
    }

    /// Slots holding `expert` in `layer`, in slot order (the first is the primary).
    #[inline]
    pub fn replicas(&self, layer: usize, expert: usize) -> &[u32] {
        &self.log2phy[layer][expert]
    }

    #[inline]
    pub fn gpu_of_slot(&self, slot: usize) -> usize {
        slot / self.slots_per_gpu
    }

    /// Copies per expert, `[layers][experts]` (EPLB's `logcnt`).
    pub fn logcnt(&self) -> Vec<Vec<usize>> {
        self.log2phy.iter().map(|l| l.iter().map(Vec::len).collect()).collect()
    }

    /// `log2phy` padded with -1 to the largest copy count (EPLB's convention).
    pub fn log2phy_padded(&self) -> Vec<Vec<Vec<i64>>> {
        let width = self.log2phy.iter().flat_map(|l| l.iter().map(Vec::len)).max().unwrap_or(1);
        self.log2phy
            .iter()
            .map(|l| {
                l.iter()
                    .map(|c| {
                        let mut v: Vec<i64> = c.iter().map(|&s| s as i64).collect();
                        v.resize(width, -1);
                        v
                    })
                    .collect()
            })
            .collect()
    }

    /// The slots `gpu` owns in every layer: [g*S/G, (g+1)*S/G).
    #[inline]
    pub fn gpu_slots(&self, gpu: usize) -> std::ops::Range<usize> {
        gpu * self.slots_per_gpu..(gpu + 1) * self.slots_per_gpu
    }

    /// Experts on `gpu` in `layer`, in slot order.
    pub fn gpu_experts(&self, layer: usize, gpu: usize) -> &[u32] {
        &self.phy2log[layer][gpu * self.slots_per_gpu..(gpu + 1) * self.slots_per_gpu]
    }

    /// Whether the placement fits `cluster` (same GPU count and slots per GPU).
    pub fn check_cluster(&self, cluster: &Cluster) -> Result<(), String> {
        if cluster.gpus != self.gpus || cluster.slots_per_gpu != self.slots_per_gpu {
            return Err(format!(
                "the placement is for {} GPUs x {} slots, the cluster has {} GPUs x {} slots",
                self.gpus, self.slots_per_gpu, cluster.gpus, cluster.slots_per_gpu
            ));
        }
        Ok(())
    }

    /// Number of (layer, slot) positions whose expert differs from `previous`: expert
    /// weights that must move to go from `previous` to this placement.
    pub fn moves_from(&self, previous: &Placement) -> usize {
        self.phy2log.iter().zip(&previous.phy2log).map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x != y).count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invariants_are_named() {
        assert!(Placement::new(4, 2, 2, vec![vec![0, 1, 2, 3]]).is_ok());
        let e = Placement::new(4, 2, 2, vec![vec![0, 1, 2]]).unwrap_err();
        assert!(matches!(e, PlacementError::SlotCount { layer: 0, found: 3, .. }));
        let e = Placement::new(4, 2, 3, vec![vec![0, 1, 2, 3, 2, 2]]).unwrap_err();
        assert_eq!(e, PlacementError::DuplicateOnGpu { layer: 0, gpu: 1, expert: 2, first: 4, second: 5 });
        assert!(e.to_string().contains("layer 0, GPU 1: expert 2"));
        let e = Placement::new(4, 2, 2, vec![vec![0, 1, 2, 2]]).unwrap_err();
        assert!(matches!(e, PlacementError::DuplicateOnGpu { .. }));
        let e = Placement::new(4, 2, 3, vec![vec![0, 1, 2, 0, 1, 2]]).unwrap_err();
        assert_eq!(e, PlacementError::MissingExpert { layer: 0, expert: 3 });
        let e = Placement::new(4, 2, 2, vec![vec![0, 1, 2, 9]]).unwrap_err();
        assert!(matches!(e, PlacementError::ExpertOutOfRange { gpu: 1, expert: 9, .. }));
    }

    #[test]
    fn replicas_and_logcnt() {
        let p = Placement::new(3, 2, 2, vec![vec![0, 1, 2, 0]]).unwrap();
        assert_eq!(p.replicas(0, 0), &[0, 3]);
        assert_eq!(p.logcnt(), vec![vec![2, 1, 1]]);
        assert_eq!(p.log2phy_padded()[0][1], vec![1, -1]);
    }
}
