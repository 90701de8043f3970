//! `--model` / `--model-config`: the model a command's inputs and outputs belong to.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use moeplace_core::model::{LayerMap, LayerSource, ModelDescription, BUILTIN_MODELS};
use moeplace_core::stats::Statistics;
use moeplace_core::trace::ModelShape;
use moeplace_formats::plan_file::{self, Plan};

/// Flags naming the model, for every command that needs its shape or layers.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// A built-in model: deepseek-v2-lite, deepseek-v3 (alias deepseek-r1),
    /// qwen3-30b-a3b, qwen3-235b-a22b, mixtral-8x7b, olmoe-1b-7b, llama-4-maverick.
    /// Gives the hidden-layer count, which decoder layers are MoE, experts, top-k and
    /// expert groups.
    #[arg(long, value_name = "NAME", conflicts_with = "model_config")]
    pub model: Option<String>,
    /// The model's Hugging Face config.json (the same facts, read from the file).
    #[arg(long, value_name = "config.json")]
    pub model_config: Option<PathBuf>,
}

impl ModelArgs {
    /// The model description, if one was given.
    pub fn resolve(&self) -> Result<Option<ModelDescription>> {
        if let Some(name) = &self.model {
            return match ModelDescription::builtin(name) {
                Some(m) => Ok(Some(m)),
                None => bail!(
                    "--model {name:?} is not a built-in model (known: {}); give its config.json with --model-config",
                    BUILTIN_MODELS.join(", ")
                ),
            };
        }
        match &self.model_config {
            Some(p) => Ok(Some(moeplace_formats::model_config::read(p)?)),
            None => Ok(None),
        }
    }
}

/// Refuses an input of `shape` that cannot be `model`'s.
pub fn check_shape(path: &Path, shape: ModelShape, model: Option<&ModelDescription>) -> Result<()> {
    if let Some(why) = model.and_then(|m| m.mismatch(shape)) {
        bail!("{}: {why}", path.display());
    }
    Ok(())
}

/// The layer map of an input: what it recorded, checked against the model, else the
/// model's; `None` when neither tells.
pub fn layers_of(
    path: &Path,
    recorded: Option<LayerMap>,
    model: Option<&ModelDescription>,
) -> Result<Option<LayerMap>> {
    match (recorded, model) {
        (Some(r), Some(m)) if !r.same_layers(&m.layers) => bail!(
            "{}: the input puts its MoE layers at decoder layers {:?} of {} hidden layers, but model {} has them at \
             {:?} of {}",
            path.display(),
            r.moe_layers(),
            r.hidden_layers(),
            m.name,
            m.layers.moe_layers(),
            m.layers.hidden_layers()
        ),
        (Some(r), _) => Ok(Some(r)),
        (None, Some(m)) => Ok(Some(m.layers.clone())),
        (None, None) => Ok(None),
    }
}

/// `stats` checked against `model` and carrying the layer map the input or the model
/// gives.
pub fn with_model(path: &Path, stats: Statistics, model: Option<&ModelDescription>) -> Result<Statistics> {
    check_shape(path, stats.shape(), model)?;
    let recorded = stats.layer_map().cloned();
    let map = layers_of(path, recorded, model)?;
    Ok(stats.with_layer_map(map)?)
}

/// The layer map of a plan (from `path`) for `model`: a plan whose rows carry the
/// default numbering takes the model's when the row count matches; a plan whose
/// layers or experts differ from the model's is refused.
pub fn plan_layers(path: &Path, plan: &Plan, model: Option<&ModelDescription>) -> Result<LayerMap> {
    let Some(m) = model else { return Ok(plan.layers.clone()) };
    let p = &plan.placement;
    if p.experts() != m.experts {
        bail!(
            "{}: the plan places {} experts per layer, model {} has {}",
            path.display(),
            p.experts(),
            m.name,
            m.experts
        );
    }
    if plan.layers.same_layers(&m.layers) {
        return Ok(plan.layers.clone());
    }
    if plan.layers.source() == LayerSource::Assumed && p.layers() == m.layers.len() {
        return Ok(m.layers.clone());
    }
    bail!(
        "{}: the plan's {} rows are decoder layers {:?} of {} hidden layers ({}), but model {} has its {} MoE layers at \
         {:?} of {}; plan again with --model {}",
        path.display(),
        p.layers(),
        plan.layers.moe_layers(),
        plan.layers.hidden_layers(),
        plan_file::layer_source_name(plan.layers.source()),
        m.name,
        m.layers.len(),
        m.layers.moe_layers(),
        m.layers.hidden_layers(),
        m.name
    )
}
