//! What engine recordings share: rows per hidden (decoder) layer whose dense rows are
//! dropped, physical slots mapped back to logical experts, and a reader over batches
//! decoded up front.

use std::collections::VecDeque;
use std::path::Path;

use moeplace_core::model::{LayerMap, LayerSource};
use moeplace_core::stats::ExpertLoads;
use moeplace_core::trace::{ModelShape, TokenBatch};

use crate::detect::TraceReader;
use crate::error::FormatError;

/// Counts read from an engine recording, with what the recording tells of the model.
#[derive(Clone, Debug)]
pub struct EngineCounts {
    /// One entry per recorded step, MoE layers in order.
    pub loads: ExpertLoads,
    /// Top-k, when the recording tells it.
    pub top_k: Option<usize>,
    /// The decoder-layer index of each MoE layer, when the recording or the model tells.
    pub layer_map: Option<LayerMap>,
}

/// Chooses the MoE rows among `hidden` rows recorded per hidden layer.
///
/// With the model's layers (`given`), its hidden-layer count must be `hidden` and every
/// dense row must be empty (`is_empty_row`); the map is the model's. Without, the
/// empty rows are taken as the dense layers (engines write dense layers as zeros or
/// padding, and a real MoE layer always routes its tokens somewhere) and the map says
/// it was recorded.
pub fn moe_rows(
    path: &Path,
    hidden: usize,
    is_empty_row: impl Fn(usize) -> bool,
    given: Option<&LayerMap>,
) -> Result<LayerMap, FormatError> {
    if let Some(m) = given {
        if m.hidden_layers() != hidden {
            return Err(FormatError::file(
                path,
                format!(
                    "the file has {hidden} rows (one per hidden layer) but the model has {} hidden layers",
                    m.hidden_layers()
                ),
            ));
        }
        if let Some(d) = (0..hidden).find(|&d| m.moe_ordinal(d).is_none() && !is_empty_row(d)) {
            return Err(FormatError::file(
                path,
                format!("decoder layer {d} is dense in the model, but the file routes tokens there"),
            ));
        }
        return Ok(m.clone().with_source(LayerSource::Model));
    }
    let moe: Vec<usize> = (0..hidden).filter(|&d| !is_empty_row(d)).collect();
    if moe.is_empty() {
        return Err(FormatError::file(path, "every layer is empty: there is no routing to read"));
    }
    LayerMap::new(hidden, moe, LayerSource::Recorded).map_err(|e| FormatError::file(path, e.to_string()))
}

/// Physical slot -> logical expert, one row per MoE layer (the engines' map in force).
#[derive(Clone, Debug)]
pub struct SlotMap {
    pub slots: usize,
    pub experts: usize,
    /// `[moe layer][slot]`.
    map: Vec<Vec<u16>>,
}

impl SlotMap {
    /// From rows of logical ids per slot (`rows[i]` for MoE layer i). The expert count
    /// is `experts` when given, else one more than the largest id; either way every
    /// logical expert must have a slot (EPLB-style maps always cover every expert).
    pub fn new(path: &Path, what: &str, rows: Vec<Vec<i64>>, experts: Option<usize>) -> Result<SlotMap, FormatError> {
        let slots = rows.first().map(Vec::len).unwrap_or(0);
        if slots == 0 {
            return Err(FormatError::file(path, format!("{what}: empty")));
        }
        let max = rows.iter().flatten().copied().max().unwrap_or(-1);
        let e = match experts {
            Some(e) => e,
            None => usize::try_from(max + 1).unwrap_or(0),
        };
        if e == 0 || e > u16::MAX as usize + 1 {
            return Err(FormatError::file(path, format!("{what}: no usable logical expert ids")));
        }
        let mut map = Vec::with_capacity(rows.len());
        for (l, row) in rows.iter().enumerate() {
            if row.len() != slots {
                return Err(FormatError::file(
                    path,
                    format!("{what}: layer {l} has {} slots, layer 0 {slots}", row.len()),
                ));
            }
            let mut seen = vec![false; e];
            let mut out = Vec::with_capacity(slots);
            for (s, &x) in row.iter().enumerate() {
                if x < 0 || x as usize >= e {
                    return Err(FormatError::file(
                        path,
                        format!("{what}: layer {l} slot {s} holds expert {x}, outside 0..{e}"),
                    ));
                }
                seen[x as usize] = true;
                out.push(x as u16);
            }
            if let Some(miss) = seen.iter().position(|&b| !b) {
                return Err(FormatError::file(path, format!("{what}: layer {l} has no slot for expert {miss}")));
            }
            map.push(out);
        }
        Ok(SlotMap { slots, experts: e, map })
    }

    /// The logical expert of `slot` in MoE layer `layer`.
    pub fn logical(&self, path: &Path, layer: usize, slot: i64) -> Result<u16, FormatError> {
        if slot < 0 || slot as usize >= self.slots {
            return Err(FormatError::file(
                path,
                format!("slot id {slot} is beyond the slot count {} (MoE layer {layer})", self.slots),
            ));
        }
        Ok(self.map[layer][slot as usize])
    }

    /// Per-slot counts of MoE layer `layer` summed onto logical experts into `out`.
    pub fn add_counts(&self, layer: usize, counts: &[f64], out: &mut [f64]) {
        for (s, c) in counts.iter().enumerate() {
            out[self.map[layer][s] as usize] += c;
        }
    }
}

/// A trace decoded whole when opened (formats that cannot be streamed: pickles, `.npy`).
pub struct DecodedTrace {
    pub shape: ModelShape,
    pub layer_map: Option<LayerMap>,
    pub batches: VecDeque<TokenBatch>,
    pub total_bytes: u64,
}

impl Iterator for DecodedTrace {
    type Item = Result<TokenBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.batches.pop_front().map(Ok)
    }
}

impl TraceReader for DecodedTrace {
    fn shape(&self) -> ModelShape {
        self.shape
    }

    fn layer_map(&self) -> Option<LayerMap> {
        self.layer_map.clone()
    }

    fn progress(&self) -> (u64, u64) {
        let done = if self.batches.is_empty() { self.total_bytes } else { 0 };
        (done, self.total_bytes)
    }
}

/// Splits full batches off as tokens are pushed.
pub struct Batcher {
    pub shape: ModelShape,
    pub batch_tokens: usize,
    pub current: TokenBatch,
    pub done: VecDeque<TokenBatch>,
}

impl Batcher {
    pub fn new(shape: ModelShape, batch_tokens: usize) -> Self {
        Batcher { shape, batch_tokens: batch_tokens.max(1), current: TokenBatch::new(shape), done: VecDeque::new() }
    }

    /// Call after each push.
    pub fn roll(&mut self) {
        if self.current.len() >= self.batch_tokens {
            let full = std::mem::replace(&mut self.current, TokenBatch::new(self.shape));
            self.done.push_back(full);
        }
    }

    pub fn finish(mut self) -> VecDeque<TokenBatch> {
        if !self.current.is_empty() {
            self.done.push_back(self.current);
        }
        self.done
    }
}

/// The model shape, or an error naming the file.
pub fn check_shape(path: &Path, layers: usize, experts: usize, k: usize) -> Result<ModelShape, FormatError> {
    ModelShape::new(layers, experts, k).map_err(|e| FormatError::file(path, e.to_string()))
}
