//! The memory statistics take, checked before it is allocated.
//!
//! Pair and transition tables are dense (layers x experts^2 counters per (family,
//! phase) group) and request vectors too (layers x experts per request and phase),
//! while a trace or statistics file only lists what happened: a file of a few hundred
//! bytes can declare a shape whose tables need more memory than any machine has.
//! Every place that creates a group or a request vector first checks the total
//! against [`MEMORY_LIMIT`] and refuses with the limit named (docs/FORMATS.md, "Model
//! limits").

use super::pair_count;
use crate::trace::{ModelShape, ShapeError};

/// Bytes the dense tables of one statistics object may take: 8 GiB. A DeepSeek-V3
/// group (58 layers x 256 experts) needs about 61 MB while counting.
pub const MEMORY_LIMIT: u64 = 8 << 30;

/// Bytes of one group's `u64` tables: loads, and with `pairs` the co-activation and
/// transition tables.
pub fn group_bytes(shape: ModelShape, pairs: bool) -> u64 {
    let (l, e) = (shape.layers as u64, shape.experts as u64);
    let cells = if pairs { e + pair_count(shape.experts) as u64 + e * e } else { e };
    l.saturating_mul(cells).saturating_mul(8)
}

/// Bytes of one group while counting: its totals plus the pending `u16` tables of
/// the counting kernel (loads, ordered pairs, transitions).
pub fn counting_group_bytes(shape: ModelShape) -> u64 {
    let (l, e) = (shape.layers as u64, shape.experts as u64);
    group_bytes(shape, true).saturating_add(l.saturating_mul(e + 2 * e * e).saturating_mul(2))
}

/// Bytes of one request vector (one request and phase).
pub fn request_vector_bytes(shape: ModelShape) -> u64 {
    (shape.layers as u64).saturating_mul(shape.experts as u64).saturating_mul(4)
}

/// Refuses `groups` groups of `per_group` bytes plus `vectors` request vectors when
/// they would pass [`MEMORY_LIMIT`].
pub fn check(shape: ModelShape, groups: usize, per_group: u64, vectors: usize) -> Result<(), ShapeError> {
    let tables = (groups as u64).saturating_mul(per_group);
    let requests = (vectors as u64).saturating_mul(request_vector_bytes(shape));
    let total = tables.saturating_add(requests);
    if total <= MEMORY_LIMIT {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(ShapeError::BadShape(format!(
        "statistics of {groups} (family, phase) groups and {vectors} request vectors for {shape} \
         would need {:.1} GiB of tables, more than the limit of {:.0} GiB (docs/FORMATS.md, model limits)",
        gib(total),
        gib(MEMORY_LIMIT)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deepseek_group_fits_and_a_huge_declared_shape_does_not() {
        let ds = ModelShape::new(58, 256, 8).unwrap();
        assert!(counting_group_bytes(ds) < 64 << 20);
        assert!(check(ds, 100, counting_group_bytes(ds), 10_000).is_ok());
        let huge = ModelShape::new(1, 32768, 1).unwrap();
        let e = check(huge, 1, counting_group_bytes(huge), 0).unwrap_err().to_string();
        assert!(e.contains("limit of 8 GiB"), "{e}");
        let many = ModelShape::new(1, 16384, 1).unwrap();
        assert!(check(many, 1, counting_group_bytes(many), 0).is_ok());
        assert!(check(many, 3, counting_group_bytes(many), 0).is_err());
    }
}
