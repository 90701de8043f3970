//! `linear`: the default placement of serving engines, laid out as the protocol's
//! baseline (docs/DESIGN.md, "Baseline"): GPU g holds experts [g*E/G, (g+1)*E/G) in
//! id order; redundant slots (if any) take extra copies of the hottest
//! experts of the calibration loads.

use super::{check_fits, fill_redundant_hottest, PlaceError, Placer, PlacerInput, PlacerOutput};

pub struct Linear;

impl Placer for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn about(&self) -> &'static str {
        "expert e on GPU e/(E/G) in id order; redundant slots copy the hottest experts (the baseline)"
    }

    fn needs(&self) -> crate::stats::Parts {
        crate::stats::Parts::LOADS
    }

    fn place(&self, input: &PlacerInput<'_>) -> Result<PlacerOutput, PlaceError> {
        input.params.allow_only(self)?;
        check_fits(input.shape, input.cluster)?;
        let (e, g) = (input.shape.experts, input.cluster.gpus);
        // Contiguous blocks: GPU g holds experts [g*E/G, (g+1)*E/G), the same rule
        // as slots ([g*S/G, (g+1)*S/G)), so with no redundant slots every GPU is full.
        let gpus: Vec<Vec<usize>> = (0..g).map(|gpu| (gpu * e / g..(gpu + 1) * e / g).collect()).collect();
        let base = vec![gpus; input.shape.layers];
        let placement = fill_redundant_hottest(input.shape, input.cluster, input.loads, base)?;
        Ok(PlacerOutput::placement(placement))
    }
}
