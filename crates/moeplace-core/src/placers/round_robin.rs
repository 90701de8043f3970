//! `round-robin`: expert e's primary on GPU e mod G; redundant slots copy the
//! hottest experts. A second load-blind baseline that spreads neighbouring ids.

use super::{check_fits, fill_redundant_hottest, PlaceError, Placer, PlacerInput, PlacerOutput};

pub struct RoundRobin;

impl Placer for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn about(&self) -> &'static str {
        "expert e on GPU e mod G; redundant slots copy the hottest experts"
    }

    fn needs(&self) -> crate::stats::Parts {
        crate::stats::Parts::LOADS
    }

    fn place(&self, input: &PlacerInput<'_>) -> Result<PlacerOutput, PlaceError> {
        input.params.allow_only(self)?;
        check_fits(input.shape, input.cluster)?;
        let g = input.cluster.gpus;
        let mut gpus: Vec<Vec<usize>> = vec![Vec::new(); g];
        for e in 0..input.shape.experts {
            gpus[e % g].push(e);
        }
        let base = vec![gpus; input.shape.layers];
        let placement = fill_redundant_hottest(input.shape, input.cluster, input.loads, base)?;
        Ok(PlacerOutput::placement(placement))
    }
}
