//! A model's Hugging Face `config.json` read as a
//! [`ModelDescription`](moeplace_core::model::ModelDescription).
//!
//! Fields read (docs/DESIGN.md, "Model description"): `num_hidden_layers`; the routed expert
//! count from `n_routed_experts` (DeepSeek), `num_experts` (Qwen MoE, OLMoE) or
//! `num_local_experts` (Mixtral, Llama 4); `num_experts_per_tok`; `n_group` and
//! `topk_group`; and which decoder layers are MoE layers:
//! - `moe_layers` (a list of decoder-layer ids), when given;
//! - `first_k_dense_replace` and `moe_layer_freq` (DeepSeek-V2/V3);
//! - `decoder_sparse_step` and `mlp_only_layers` (Qwen MoE);
//! - `interleave_moe_layer_step` (Llama 4: every step-th layer);
//! - otherwise every decoder layer.
//!
//! A config whose fields sit under `text_config` (Llama 4's multimodal configs) is read
//! from there. A config without MoE fields is refused, naming the file.

use std::path::Path;

use moeplace_core::model::{ExpertGroups, ModelDescription, MoeLayerRule};
use serde_json::Value;

use crate::error::{FormatError, Location};

/// Reads a Hugging Face `config.json`.
pub fn read(path: &Path) -> Result<ModelDescription, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    parse(path, &text)
}

fn part(path: &Path, key: &str, msg: impl Into<String>) -> FormatError {
    FormatError::new(path, Location::Part(key.to_string()), msg)
}

fn uint(path: &Path, cfg: &Value, key: &str) -> Result<Option<usize>, FormatError> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|x| Some(x as usize))
            .ok_or_else(|| part(path, key, format!("{v} is not a non-negative integer"))),
    }
}

/// Parses config text (`path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<ModelDescription, FormatError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| FormatError::line(path, e.line() as u64, format!("not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(FormatError::file(path, "a model config is a JSON object"));
    }
    let cfg = match v.get("text_config") {
        Some(t) if t.is_object() => t,
        _ => &v,
    };
    let hidden = uint(path, cfg, "num_hidden_layers")?
        .ok_or_else(|| part(path, "num_hidden_layers", "missing: is this a model's config.json?"))?;
    // Layer lists are built from it: refuse a count no model has before allocating.
    let max = moeplace_core::trace::MAX_LAYERS;
    if hidden > max {
        return Err(part(path, "num_hidden_layers", format!("{hidden} is above the limit of {max} layers")));
    }
    let experts = ["n_routed_experts", "num_experts", "num_local_experts"]
        .into_iter()
        .map(|k| uint(path, cfg, k).map(|x| x.map(|x| (k, x))))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .find(|&(_, x)| x > 0)
        .map(|(_, x)| x);
    let top_k = uint(path, cfg, "num_experts_per_tok")?;
    let (experts, top_k) = match (experts, top_k) {
        (Some(e), Some(k)) => (e, k),
        _ => {
            return Err(FormatError::file(
                path,
                "not a Mixture-of-Experts config: it needs the routed expert count (n_routed_experts, num_experts \
                 or num_local_experts) and num_experts_per_tok",
            ))
        }
    };
    let rule = if let Some(ids) = cfg.get("moe_layers").filter(|v| !v.is_null()) {
        MoeLayerRule::Listed(ids_of(path, ids, "moe_layers")?)
    } else if cfg.get("first_k_dense_replace").is_some() || cfg.get("moe_layer_freq").is_some() {
        MoeLayerRule::DenseFirst {
            first_k_dense_replace: uint(path, cfg, "first_k_dense_replace")?.unwrap_or(0),
            moe_layer_freq: uint(path, cfg, "moe_layer_freq")?.unwrap_or(1),
        }
    } else if cfg.get("decoder_sparse_step").is_some() || cfg.get("mlp_only_layers").is_some() {
        MoeLayerRule::SparseStep {
            decoder_sparse_step: uint(path, cfg, "decoder_sparse_step")?.unwrap_or(1),
            mlp_only_layers: match cfg.get("mlp_only_layers") {
                None | Some(Value::Null) => Vec::new(),
                Some(ids) => ids_of(path, ids, "mlp_only_layers")?,
            },
        }
    } else if let Some(step) = uint(path, cfg, "interleave_moe_layer_step")? {
        MoeLayerRule::Interleave { interleave_moe_layer_step: step }
    } else {
        MoeLayerRule::All
    };
    let groups = match (uint(path, cfg, "n_group")?, uint(path, cfg, "topk_group")?) {
        (Some(n_group), Some(topk_group)) => Some(ExpertGroups { n_group, topk_group }),
        (Some(n_group), None) => Some(ExpertGroups { n_group, topk_group: n_group }),
        (None, Some(_)) => return Err(part(path, "topk_group", "given without n_group")),
        (None, None) => None,
    };
    let name = ["_name_or_path", "model_type"]
        .into_iter()
        .find_map(|k| cfg.get(k).or_else(|| v.get(k)).and_then(Value::as_str))
        .unwrap_or("model")
        .to_string();
    ModelDescription::new(&name, hidden, &rule, experts, top_k, groups)
        .map_err(|e| FormatError::file(path, e.to_string()))
}

fn ids_of(path: &Path, v: &Value, key: &str) -> Result<Vec<usize>, FormatError> {
    v.as_array()
        .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| part(path, key, "expected a list of decoder-layer ids"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<ModelDescription, FormatError> {
        parse(Path::new("config.json"), text)
    }

    #[test]
    fn deepseek_dense_prefix_and_groups() {
        let m = p(r#"{"model_type": "deepseek_v3", "num_hidden_layers": 61, "first_k_dense_replace": 3,
            "moe_layer_freq": 1, "n_routed_experts": 256, "num_experts_per_tok": 8, "n_group": 8,
            "topk_group": 4}"#)
        .unwrap();
        assert_eq!(m, {
            let mut b = ModelDescription::builtin("deepseek-v3").unwrap();
            b.name = "deepseek_v3".into();
            b
        });
        let lite = p(r#"{"num_hidden_layers": 27, "first_k_dense_replace": 1, "moe_layer_freq": 1,
            "n_routed_experts": 64, "num_experts_per_tok": 6, "n_group": 1, "topk_group": 1}"#)
        .unwrap();
        assert_eq!(lite.layers, ModelDescription::builtin("deepseek-v2-lite").unwrap().layers);
    }

    #[test]
    fn qwen_sparse_step_and_mlp_only_layers() {
        let m = p(r#"{"num_hidden_layers": 6, "decoder_sparse_step": 1, "mlp_only_layers": [0, 4],
            "num_experts": 128, "num_experts_per_tok": 8}"#)
        .unwrap();
        assert_eq!(m.layers.moe_layers(), &[1, 2, 3, 5]);
        assert_eq!((m.experts, m.top_k, m.groups), (128, 8, None));
        let m = p(r#"{"num_hidden_layers": 6, "decoder_sparse_step": 2, "num_experts": 8, "num_experts_per_tok": 2}"#)
            .unwrap();
        assert_eq!(m.layers.moe_layers(), &[1, 3, 5]);
    }

    #[test]
    fn llama4_text_config_interleaves() {
        let m = p(r#"{"model_type": "llama4", "text_config": {"num_hidden_layers": 48,
            "interleave_moe_layer_step": 2, "num_local_experts": 128, "num_experts_per_tok": 1}}"#)
        .unwrap();
        assert_eq!(m.layers, ModelDescription::builtin("llama-4-maverick").unwrap().layers);
        let listed = p(r#"{"num_hidden_layers": 4, "moe_layers": [0, 2], "num_local_experts": 16,
            "num_experts_per_tok": 1, "interleave_moe_layer_step": 1}"#)
        .unwrap();
        assert_eq!(listed.layers.moe_layers(), &[0, 2]);
    }

    #[test]
    fn mixtral_and_olmoe_are_all_moe() {
        let m = p(r#"{"num_hidden_layers": 32, "num_local_experts": 8, "num_experts_per_tok": 2}"#).unwrap();
        // A layer count no model has is refused before any list is built (found by fuzzing).
        let e = p(r#"{"num_hidden_layers": 999999999992, "num_local_experts": 8, "num_experts_per_tok": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_hidden_layers") && e.contains("65536"), "{e}");
        assert_eq!(m.layers, ModelDescription::builtin("mixtral-8x7b").unwrap().layers);
        let o = p(r#"{"num_hidden_layers": 16, "num_experts": 64, "num_experts_per_tok": 8}"#).unwrap();
        assert_eq!(o.shape(), ModelDescription::builtin("olmoe-1b-7b").unwrap().shape());
    }

    #[test]
    fn bad_configs_are_named() {
        let e = p(r#"{"num_hidden_layers": 32, "hidden_size": 4096}"#).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("not a Mixture-of-Experts config"), "{e}");
        let e = p(r#"{"num_experts": 8, "num_experts_per_tok": 2}"#).unwrap_err().to_string();
        assert!(e.contains("num_hidden_layers"), "{e}");
        let e = p(r#"{"num_hidden_layers": 4, "num_experts": 8, "num_experts_per_tok": 2, "moe_layers": [1, 9]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range"), "{e}");
        let e = p(r#"{"num_hidden_layers": 4, "num_experts": 8, "num_experts_per_tok": 2, "n_group": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_group 3"), "{e}");
        assert!(p("[1]").is_err());
        assert!(p("{").unwrap_err().to_string().contains("not valid JSON"));
    }
}
