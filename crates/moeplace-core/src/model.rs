//! Which decoder layers of a model are its MoE layers.
//!
//! Traces, statistics and plans number MoE layers 0..L-1 in order (the MoE-layer
//! ordinal). Engines number them differently: SGLang keeps one row per hidden
//! (decoder) layer, dense layers included; TensorRT-LLM keys rows by the decoder-layer
//! index of each MoE layer; vLLM and DeepSeek's EPLB use MoE-layer ordinals. A
//! [`LayerMap`] carries what converts between them, and where it came from, so that no
//! export ever shifts a row.

use crate::trace::ShapeError;

/// Where a [`LayerMap`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerSource {
    /// The input recorded the engine's decoder-layer ids.
    Recorded,
    /// A model description (a config file or a built-in model) decided.
    Model,
    /// Nothing told: MoE layer i is assumed to be decoder layer i, with no dense layers.
    Assumed,
}

impl LayerSource {
    pub fn name(self) -> &'static str {
        match self {
            LayerSource::Recorded => "recorded",
            LayerSource::Model => "model",
            LayerSource::Assumed => "assumed",
        }
    }

    pub fn parse(s: &str) -> Option<LayerSource> {
        Some(match s {
            "recorded" => LayerSource::Recorded,
            "model" => LayerSource::Model,
            "assumed" => LayerSource::Assumed,
            _ => return None,
        })
    }
}

/// The model's hidden-layer count and the decoder-layer index of each MoE layer.
///
/// Invariants (checked by [`LayerMap::new`], the one constructor): at least one MoE
/// layer; decoder-layer ids strictly increasing and below `hidden_layers`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayerMap {
    hidden_layers: usize,
    moe_layers: Vec<usize>,
    source: LayerSource,
}

impl LayerMap {
    pub fn new(hidden_layers: usize, moe_layers: Vec<usize>, source: LayerSource) -> Result<Self, ShapeError> {
        if moe_layers.is_empty() {
            return Err(ShapeError::BadShape("the model has no MoE layer".into()));
        }
        for w in moe_layers.windows(2) {
            if w[1] <= w[0] {
                return Err(ShapeError::BadShape(format!(
                    "MoE decoder-layer ids must increase: {} follows {}",
                    w[1], w[0]
                )));
            }
        }
        let last = *moe_layers.last().expect("checked non-empty");
        if last >= hidden_layers {
            return Err(ShapeError::BadShape(format!(
                "MoE decoder layer {last} is out of range: the model has {hidden_layers} hidden layers (ids 0..{hidden_layers})"
            )));
        }
        Ok(LayerMap { hidden_layers, moe_layers, source })
    }

    /// The default when nothing tells: `layers` MoE layers, decoder layer i = MoE layer i.
    pub fn assumed(layers: usize) -> Self {
        LayerMap { hidden_layers: layers, moe_layers: (0..layers).collect(), source: LayerSource::Assumed }
    }

    /// Hidden (decoder) layers of the model, dense ones included.
    pub fn hidden_layers(&self) -> usize {
        self.hidden_layers
    }

    /// The decoder-layer index of each MoE layer, in order.
    pub fn moe_layers(&self) -> &[usize] {
        &self.moe_layers
    }

    /// Number of MoE layers.
    pub fn len(&self) -> usize {
        self.moe_layers.len()
    }

    /// Always false: a map has at least one MoE layer.
    pub fn is_empty(&self) -> bool {
        self.moe_layers.is_empty()
    }

    pub fn source(&self) -> LayerSource {
        self.source
    }

    /// The same map, said to come from `source`.
    pub fn with_source(mut self, source: LayerSource) -> Self {
        self.source = source;
        self
    }

    /// The decoder-layer index of MoE layer `ordinal`.
    pub fn decoder_layer(&self, ordinal: usize) -> Option<usize> {
        self.moe_layers.get(ordinal).copied()
    }

    /// The MoE-layer ordinal of decoder layer `decoder_layer`, if it is an MoE layer.
    pub fn moe_ordinal(&self, decoder_layer: usize) -> Option<usize> {
        self.moe_layers.binary_search(&decoder_layer).ok()
    }

    /// Whether both maps put the MoE layers at the same decoder layers of the same
    /// model (their sources may differ).
    pub fn same_layers(&self, other: &LayerMap) -> bool {
        self.hidden_layers == other.hidden_layers && self.moe_layers == other.moe_layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_prefix_maps_both_ways() {
        let m = LayerMap::new(61, (3..61).collect(), LayerSource::Model).unwrap();
        assert_eq!(m.len(), 58);
        assert_eq!(m.decoder_layer(0), Some(3));
        assert_eq!(m.decoder_layer(57), Some(60));
        assert_eq!(m.decoder_layer(58), None);
        assert_eq!(m.moe_ordinal(2), None);
        assert_eq!(m.moe_ordinal(60), Some(57));
    }

    #[test]
    fn refuses_bad_maps() {
        assert!(LayerMap::new(5, vec![], LayerSource::Recorded).is_err());
        assert!(LayerMap::new(5, vec![1, 1], LayerSource::Recorded).is_err());
        assert!(LayerMap::new(5, vec![2, 1], LayerSource::Recorded).is_err());
        let e = LayerMap::new(5, vec![1, 5], LayerSource::Recorded).unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn assumed_is_identity() {
        let m = LayerMap::assumed(4);
        assert_eq!(m.moe_layers(), &[0, 1, 2, 3]);
        assert_eq!(m.hidden_layers(), 4);
        assert_eq!(m.source(), LayerSource::Assumed);
        assert!(m.same_layers(&LayerMap::new(4, vec![0, 1, 2, 3], LayerSource::Recorded).unwrap()));
    }
}
