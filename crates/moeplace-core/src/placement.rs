//! Placements (docs/DESIGN.md, "Vocabulary"): per MoE layer, the slot -> expert map
//! (`physical_to_logical_map`). GPU g owns slots [g*S/G, (g+1)*S/G).
//!
//! [`Placement::new`] is the one place the invariants are checked; every reader and
//! writer of plans goes through it:
//! - every layer has exactly S slots (exact slot counts); GPU g owns slots
//!   [g*S/G, (g+1)*S/G), so when G does not divide S, GPUs own floor(S/G) or
//!   ceil(S/G) slots (the later GPUs of each run get the extra one),
//! - every expert id is in range,
//! - every expert has at least one copy in every layer,
//! - no GPU holds two copies of one expert in one layer.

use crate::cluster::Cluster;

/// Why a placement breaks an invariant; names the layer, GPU and expert.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error("placement has no layers")]
    NoLayers,
    #[error("bad shape: {slots} slots on {gpus} GPUs for {experts} experts (need at least one slot per GPU and one slot per expert)")]
    BadShape { experts: usize, gpus: usize, slots: usize },
    #[error("layer {layer}: {found} slots, expected {expected} (on {gpus} GPUs)")]
    SlotCount { layer: usize, found: usize, expected: usize, gpus: usize },
    #[error("GPU {gpu}: {found} slots, expected {expected} (GPU g owns slots [g*S/G, (g+1)*S/G) of S = {slots})")]
    GpuSlotCount { gpu: usize, found: usize, expected: usize, slots: usize },
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
    /// Slots per layer, S.
    slots: usize,
    /// GPU of each slot.
    slot_gpu: Vec<u32>,
    /// `[layers][slots]`.
    phy2log: Vec<Vec<u32>>,
    /// `[layers][experts]` -> slots holding the expert, in slot order.
    log2phy: Vec<Vec<Vec<u32>>>,
}

impl Placement {
    /// Checks every invariant and builds the placement, with `slots_per_gpu` slots on
    /// every GPU.
    pub fn new(
        experts: usize,
        gpus: usize,
        slots_per_gpu: usize,
        phy2log: Vec<Vec<i64>>,
    ) -> Result<Placement, PlacementError> {
        Self::with_slots(experts, gpus, gpus * slots_per_gpu, phy2log)
    }

    /// Checks every invariant and builds the placement, with `slots` slots per layer
    /// (GPU g owns [g*S/G, (g+1)*S/G)).
    pub fn with_slots(
        experts: usize,
        gpus: usize,
        slots: usize,
        phy2log: Vec<Vec<i64>>,
    ) -> Result<Placement, PlacementError> {
        if gpus == 0 || experts == 0 || slots < gpus || slots < experts {
            return Err(PlacementError::BadShape { experts, gpus, slots });
        }
        if phy2log.is_empty() {
            return Err(PlacementError::NoLayers);
        }
        // Row lengths first: `slots` may come from a file, and the tables below have
        // `slots` entries.
        if let Some((layer, row)) = phy2log.iter().enumerate().find(|(_, r)| r.len() != slots) {
            return Err(PlacementError::SlotCount { layer, found: row.len(), expected: slots, gpus });
        }
        let slot_gpu: Vec<u32> = (0..gpus).flat_map(|g| slot_range(gpus, slots, g).map(move |_| g as u32)).collect();
        let mut out = Vec::with_capacity(phy2log.len());
        let mut log2phy = Vec::with_capacity(phy2log.len());
        for (layer, row) in phy2log.iter().enumerate() {
            let mut copies: Vec<Vec<u32>> = vec![Vec::new(); experts];
            for (slot, &x) in row.iter().enumerate() {
                let gpu = slot_gpu[slot] as usize;
                if x < 0 || x as u64 >= experts as u64 {
                    return Err(PlacementError::ExpertOutOfRange { layer, gpu, slot, expert: x, experts });
                }
                let e = x as usize;
                if let Some(&prev) = copies[e].iter().find(|&&s| slot_gpu[s as usize] as usize == gpu) {
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
        Ok(Placement { experts, gpus, slots, slot_gpu, phy2log: out, log2phy })
    }

    /// Same as [`Placement::with_slots`] from unsigned ids.
    pub fn from_slots(
        experts: usize,
        gpus: usize,
        slots: usize,
        phy2log: Vec<Vec<u32>>,
    ) -> Result<Placement, PlacementError> {
        Self::with_slots(
            experts,
            gpus,
            slots,
            phy2log.into_iter().map(|r| r.into_iter().map(i64::from).collect()).collect(),
        )
    }

    /// Builds a placement from per-GPU expert lists (`[layers][gpus][slots of that
    /// GPU]`): the slot count S is the first layer's total, and every GPU's list must
    /// have the length of its slot range [g*S/G, (g+1)*S/G).
    pub fn from_gpu_lists(experts: usize, lists: &[Vec<Vec<usize>>]) -> Result<Placement, PlacementError> {
        let first = lists.first().ok_or(PlacementError::NoLayers)?;
        let (gpus, slots) = (first.len(), first.iter().map(Vec::len).sum::<usize>());
        for layer in lists {
            if layer.len() != gpus {
                return Err(PlacementError::BadShape { experts, gpus: layer.len(), slots });
            }
            for (g, l) in layer.iter().enumerate() {
                let expected = slot_range(gpus, slots, g).len();
                if l.len() != expected {
                    return Err(PlacementError::GpuSlotCount { gpu: g, found: l.len(), expected, slots });
                }
            }
        }
        let rows = lists.iter().map(|layer| layer.iter().flatten().map(|&e| e as i64).collect()).collect();
        Self::with_slots(experts, gpus, slots, rows)
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

    /// Slots per GPU when every GPU owns the same number, else `None`.
    pub fn uniform_slots_per_gpu(&self) -> Option<usize> {
        self.slots.is_multiple_of(self.gpus).then_some(self.slots / self.gpus)
    }

    /// The most slots any GPU owns, ceil(S/G).
    pub fn max_slots_per_gpu(&self) -> usize {
        self.slots.div_ceil(self.gpus)
    }

    /// Slots per layer, S.
    pub fn slots(&self) -> usize {
        self.slots
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
        self.slot_gpu[slot] as usize
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
        slot_range(self.gpus, self.slots, gpu)
    }

    /// Experts on `gpu` in `layer`, in slot order.
    pub fn gpu_experts(&self, layer: usize, gpu: usize) -> &[u32] {
        &self.phy2log[layer][self.gpu_slots(gpu)]
    }

    /// Whether the placement fits `cluster` (same GPU count and slots per layer).
    pub fn check_cluster(&self, cluster: &Cluster) -> Result<(), String> {
        if cluster.gpus != self.gpus || cluster.slots != self.slots {
            return Err(format!(
                "the placement is for {} slots on {} GPUs, the cluster has {} slots on {} GPUs",
                self.slots, self.gpus, cluster.slots, cluster.gpus
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

/// The slots GPU `gpu` of `gpus` owns among `slots`: [g*S/G, (g+1)*S/G)
/// (docs/DESIGN.md, "Vocabulary").
#[inline]
pub fn slot_range(gpus: usize, slots: usize, gpu: usize) -> std::ops::Range<usize> {
    gpu * slots / gpus..(gpu + 1) * slots / gpus
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
    fn uneven_slot_counts() {
        // 5 slots on 2 GPUs: GPU 0 owns [0, 2), GPU 1 owns [2, 5).
        let p = Placement::with_slots(4, 2, 5, vec![vec![0, 1, 2, 3, 0]]).unwrap();
        assert_eq!((p.gpu_slots(0), p.gpu_slots(1)), (0..2, 2..5));
        assert_eq!(p.gpu_experts(0, 1), &[2, 3, 0]);
        assert_eq!((p.uniform_slots_per_gpu(), p.max_slots_per_gpu()), (None, 3));
        assert_eq!(p.gpu_of_slot(1), 0);
        let e = Placement::with_slots(4, 2, 5, vec![vec![0, 1, 2, 2, 3]]).unwrap_err();
        assert_eq!(e, PlacementError::DuplicateOnGpu { layer: 0, gpu: 1, expert: 2, first: 2, second: 3 });
        // Slot 1 is GPU 0's, so 0 in slots 0 and 1 is a duplicate; 0 in slots 1 and 2 is not.
        assert!(Placement::with_slots(3, 2, 5, vec![vec![0, 0, 1, 2, 1]]).is_err());
        assert!(Placement::with_slots(3, 2, 5, vec![vec![1, 0, 0, 2, 1]]).is_ok());
        let lists = vec![vec![vec![0, 1], vec![2, 3, 0]]];
        assert_eq!(Placement::from_gpu_lists(4, &lists).unwrap(), p);
        let bad = vec![vec![vec![0, 1, 2], vec![3, 0]]];
        assert_eq!(
            Placement::from_gpu_lists(4, &bad).unwrap_err(),
            PlacementError::GpuSlotCount { gpu: 0, found: 3, expected: 2, slots: 5 }
        );
        // 288 slots on 64 GPUs: 4 or 5 each, every slot owned once.
        let owned: usize = (0..64).map(|g| slot_range(64, 288, g).len()).sum();
        assert_eq!(owned, 288);
        assert!((0..64).all(|g| matches!(slot_range(64, 288, g).len(), 4 | 5)));
    }

    #[test]
    fn replicas_and_logcnt() {
        let p = Placement::new(3, 2, 2, vec![vec![0, 1, 2, 0]]).unwrap();
        assert_eq!(p.replicas(0, 0), &[0, 3]);
        assert_eq!(p.logcnt(), vec![vec![2, 1, 1]]);
        assert_eq!(p.log2phy_padded()[0][1], vec![1, -1]);
    }
}
