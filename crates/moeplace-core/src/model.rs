//! Which decoder layers of a model are its MoE layers.
//!
//! Traces, statistics and plans number MoE layers 0..L-1 in order (the MoE-layer
//! ordinal). Engines number them differently: SGLang keeps one row per hidden
//! (decoder) layer, dense layers included; TensorRT-LLM keys rows by the decoder-layer
//! index of each MoE layer; vLLM and DeepSeek's EPLB use MoE-layer ordinals. A
//! [`LayerMap`] carries what converts between them, and where it came from, so that no
//! export ever shifts a row.

use crate::trace::{ModelShape, ShapeError};

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

/// Which decoder layers are MoE layers, as the model families' configs say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoeLayerRule {
    /// Every decoder layer (Mixtral, OLMoE).
    All,
    /// DeepSeek-V2/V3: layer i is MoE when `i >= first_k_dense_replace` and
    /// `i % moe_layer_freq == 0`.
    DenseFirst { first_k_dense_replace: usize, moe_layer_freq: usize },
    /// Qwen MoE: layer i is MoE when `(i + 1) % decoder_sparse_step == 0` and i is not
    /// in `mlp_only_layers`.
    SparseStep { decoder_sparse_step: usize, mlp_only_layers: Vec<usize> },
    /// Llama 4: every `interleave_moe_layer_step`-th layer, the last of each step
    /// (layers step-1, 2*step-1, ...).
    Interleave { interleave_moe_layer_step: usize },
    /// The decoder-layer ids, listed.
    Listed(Vec<usize>),
}

impl MoeLayerRule {
    /// The MoE decoder-layer ids of a model with `hidden_layers` layers.
    pub fn moe_layers(&self, hidden_layers: usize) -> Result<Vec<usize>, ShapeError> {
        let zero = |f: &str| ShapeError::BadShape(format!("{f} must be at least 1"));
        Ok(match self {
            MoeLayerRule::All => (0..hidden_layers).collect(),
            MoeLayerRule::DenseFirst { first_k_dense_replace, moe_layer_freq } => {
                if *moe_layer_freq == 0 {
                    return Err(zero("moe_layer_freq"));
                }
                (0..hidden_layers).filter(|i| i >= first_k_dense_replace && i % moe_layer_freq == 0).collect()
            }
            MoeLayerRule::SparseStep { decoder_sparse_step, mlp_only_layers } => {
                if *decoder_sparse_step == 0 {
                    return Err(zero("decoder_sparse_step"));
                }
                (0..hidden_layers)
                    .filter(|i| (i + 1) % decoder_sparse_step == 0 && !mlp_only_layers.contains(i))
                    .collect()
            }
            MoeLayerRule::Interleave { interleave_moe_layer_step } => {
                if *interleave_moe_layer_step == 0 {
                    return Err(zero("interleave_moe_layer_step"));
                }
                (0..hidden_layers).filter(|i| (i + 1) % interleave_moe_layer_step == 0).collect()
            }
            MoeLayerRule::Listed(ids) => ids.clone(),
        })
    }
}

/// Expert groups of group-limited routing (DeepSeek's `n_group`, `topk_group`); EPLB's
/// `num_groups` is `n_group`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertGroups {
    pub n_group: usize,
    pub topk_group: usize,
}

/// What moeplace needs of a model: its layers, routed experts, top-k and expert groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDescription {
    pub name: String,
    pub layers: LayerMap,
    pub experts: usize,
    pub top_k: usize,
    pub groups: Option<ExpertGroups>,
}

/// Names of the built-in model descriptions (aliases included).
pub const BUILTIN_MODELS: &[&str] = &[
    "deepseek-v2-lite",
    "deepseek-v3",
    "deepseek-r1",
    "qwen3-30b-a3b",
    "qwen3-235b-a22b",
    "mixtral-8x7b",
    "olmoe-1b-7b",
    "llama-4-maverick",
];

impl ModelDescription {
    /// A description from a config's fields; checks them against each other.
    pub fn new(
        name: &str,
        hidden_layers: usize,
        rule: &MoeLayerRule,
        experts: usize,
        top_k: usize,
        groups: Option<ExpertGroups>,
    ) -> Result<Self, ShapeError> {
        let layers = LayerMap::new(hidden_layers, rule.moe_layers(hidden_layers)?, LayerSource::Model)?;
        ModelShape::new(layers.len(), experts, top_k)?;
        if let Some(g) = groups {
            if g.n_group == 0 || !experts.is_multiple_of(g.n_group) {
                return Err(ShapeError::BadShape(format!(
                    "n_group {} does not divide the {experts} routed experts",
                    g.n_group
                )));
            }
            if g.topk_group == 0 || g.topk_group > g.n_group {
                return Err(ShapeError::BadShape(format!(
                    "topk_group {} must be between 1 and n_group {}",
                    g.topk_group, g.n_group
                )));
            }
        }
        Ok(ModelDescription { name: name.to_string(), layers, experts, top_k, groups })
    }

    /// A built-in description by name (case-insensitive; see [`BUILTIN_MODELS`]), with
    /// the values of the model's published `config.json`.
    pub fn builtin(name: &str) -> Option<ModelDescription> {
        let n = name.to_ascii_lowercase();
        let g = |n_group, topk_group| Some(ExpertGroups { n_group, topk_group });
        let dense_first = |k| MoeLayerRule::DenseFirst { first_k_dense_replace: k, moe_layer_freq: 1 };
        let (canon, hidden, rule, experts, k, groups) = match n.as_str() {
            "deepseek-v2-lite" => ("deepseek-v2-lite", 27, dense_first(1), 64, 6, g(1, 1)),
            "deepseek-v3" | "deepseek-r1" => ("deepseek-v3", 61, dense_first(3), 256, 8, g(8, 4)),
            "qwen3-30b-a3b" => ("qwen3-30b-a3b", 48, MoeLayerRule::All, 128, 8, None),
            "qwen3-235b-a22b" => ("qwen3-235b-a22b", 94, MoeLayerRule::All, 128, 8, None),
            "mixtral-8x7b" => ("mixtral-8x7b", 32, MoeLayerRule::All, 8, 2, None),
            "olmoe-1b-7b" => ("olmoe-1b-7b", 16, MoeLayerRule::All, 64, 8, None),
            "llama-4-maverick" => {
                ("llama-4-maverick", 48, MoeLayerRule::Interleave { interleave_moe_layer_step: 2 }, 128, 1, None)
            }
            _ => return None,
        };
        Some(ModelDescription::new(canon, hidden, &rule, experts, k, groups).expect("built-in models are valid"))
    }

    /// The MoE-layer shape: MoE layers, routed experts, top-k.
    pub fn shape(&self) -> ModelShape {
        ModelShape { layers: self.layers.len(), experts: self.experts, top_k: self.top_k }
    }

    /// Why `shape` (of an input) cannot be this model's, if it cannot: a different
    /// expert count, top-k or MoE-layer count.
    pub fn mismatch(&self, shape: ModelShape) -> Option<String> {
        let m = self.shape();
        let what = if shape.experts != m.experts {
            format!("{} experts per layer, the model {} routed experts", shape.experts, m.experts)
        } else if shape.top_k != m.top_k {
            format!("top-k {}, the model top-k {}", shape.top_k, m.top_k)
        } else if shape.layers != m.layers {
            format!(
                "{} MoE layers, the model {} ({} hidden layers)",
                shape.layers,
                m.layers,
                self.layers.hidden_layers()
            )
        } else {
            return None;
        };
        Some(format!("the input has {what} (model {})", self.name))
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

    #[test]
    fn builtin_models_have_their_layers() {
        let v3 = ModelDescription::builtin("DeepSeek-R1").unwrap();
        assert_eq!(v3.name, "deepseek-v3");
        assert_eq!((v3.layers.hidden_layers(), v3.layers.len(), v3.layers.decoder_layer(0)), (61, 58, Some(3)));
        assert_eq!((v3.experts, v3.top_k), (256, 8));
        assert_eq!(v3.groups, Some(ExpertGroups { n_group: 8, topk_group: 4 }));
        let lite = ModelDescription::builtin("deepseek-v2-lite").unwrap();
        assert_eq!((lite.layers.hidden_layers(), lite.layers.moe_layers()[0], lite.layers.len()), (27, 1, 26));
        let maverick = ModelDescription::builtin("llama-4-maverick").unwrap();
        assert_eq!(maverick.layers.len(), 24);
        assert_eq!(&maverick.layers.moe_layers()[..3], &[1, 3, 5]);
        assert_eq!(maverick.layers.moe_layers().last(), Some(&47));
        for name in BUILTIN_MODELS {
            assert!(ModelDescription::builtin(name).is_some(), "{name}");
        }
        assert!(ModelDescription::builtin("gpt-2").is_none());
    }

    #[test]
    fn layer_rules_follow_the_configs() {
        let qwen = MoeLayerRule::SparseStep { decoder_sparse_step: 2, mlp_only_layers: vec![3] };
        assert_eq!(qwen.moe_layers(8).unwrap(), vec![1, 5, 7]);
        let ds = MoeLayerRule::DenseFirst { first_k_dense_replace: 1, moe_layer_freq: 2 };
        assert_eq!(ds.moe_layers(7).unwrap(), vec![2, 4, 6]);
        assert!(MoeLayerRule::Interleave { interleave_moe_layer_step: 0 }.moe_layers(4).is_err());
    }

    #[test]
    fn mismatches_are_named() {
        let v3 = ModelDescription::builtin("deepseek-v3").unwrap();
        assert_eq!(v3.mismatch(ModelShape { layers: 58, experts: 256, top_k: 8 }), None);
        let e = v3.mismatch(ModelShape { layers: 61, experts: 256, top_k: 8 }).unwrap();
        assert!(e.contains("61 MoE layers, the model 58"), "{e}");
        let e = v3.mismatch(ModelShape { layers: 58, experts: 64, top_k: 8 }).unwrap();
        assert!(e.contains("64 experts"), "{e}");
    }
}
