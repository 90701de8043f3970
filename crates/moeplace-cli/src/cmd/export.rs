//! `moeplace export`: a plan in a serving engine's format, and the server flags that
//! load it.

use std::path::{Path, PathBuf};

use anyhow::Result;
use moeplace_core::model::LayerMap;
use moeplace_core::placement::Placement;
use moeplace_formats::export::{self, ExportFormat};
use moeplace_formats::plan_file;

use crate::model_args::ModelArgs;

/// Write a plan in the format a serving engine loads, and print the server flags that
/// load it:
///   sglang    SGLang --init-expert-location JSON: one row per hidden layer (dense
///             layers get a valid identity-like row), indexed by decoder layer
///   trtllm    TensorRT-LLM load-balancer YAML (num_slots, initial_global_assignments
///             keyed by the decoder-layer id of each MoE layer)
///   vllm      vLLM PR #41141 JSONL (record_type eplb_initial_mapping, MoE-layer keys)
///   vllm-map  vLLM PR #49572 JSON for eplb_config.initial_expert_map_path
///             ([[slots] per MoE layer])
///   eplb      DeepSeek-EPLB arrays as JSON (phy2log, log2phy padded with -1, logcnt)
///
/// The plan says which decoder layer each row is. A plan made without a model (layer
/// numbering `default`) takes the layers of --model / --model-config when its row count
/// matches; a plan whose layers or experts disagree with the model is refused.
///
/// Example:
///   moeplace export plan.json --to sglang --model deepseek-v3 -o expert-location.json
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The plan file.
    plan: PathBuf,
    /// Engine format: sglang, trtllm, vllm, vllm-map, eplb.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    to: ExportFormat,
    #[command(flatten)]
    model: ModelArgs,
    /// Output file (default: the plan's name with .<format>.<ext>; `-`: standard
    /// output).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
}

fn parse_format(s: &str) -> Result<ExportFormat, String> {
    ExportFormat::parse(s)
        .ok_or_else(|| format!("unknown format {s:?}; expected sglang, trtllm, vllm, vllm-map or eplb"))
}

pub fn run(args: Args) -> Result<()> {
    let out =
        args.output.unwrap_or_else(|| args.plan.with_extension(format!("{}.{}", args.to.name(), args.to.extension())));
    crate::output::check_output_of(&out, &[&args.plan])?;
    let plan = plan_file::read(&args.plan)?;
    let model = args.model.resolve()?;
    let layers = crate::model_args::plan_layers(&args.plan, &plan, model.as_ref())?;
    export::write(&out, &plan.placement, &layers, args.to)?;
    eprintln!(
        "wrote {} ({}; rows are decoder layers {} of {} hidden layers, layer_source: {})",
        out.display(),
        args.to.name(),
        crate::cmd::plan::span(layers.moe_layers()),
        layers.hidden_layers(),
        plan_file::layer_source_name(layers.source())
    );
    if layers.source() == moeplace_core::model::LayerSource::Assumed && args.to.decoder_layer_keys() {
        eprintln!(
            "warning: the plan does not say which decoder layers are MoE layers; for a model with dense layers \
             (DeepSeek, Llama 4) export with --model or --model-config"
        );
    }
    // The engine file holds the placement only; how the plan was meant to be served
    // travels in the plan file.
    match &plan.serving {
        Some(s) if s.dispatcher != "primary" => eprintln!(
            "the plan is served with {} (replica choice per pick and request homes); an engine that takes \
             every expert's first copy serves it as `eval --dispatcher primary` replays it",
            s.label()
        ),
        _ => {}
    }
    crate::output::print_summary(Some(&out), &server_flags(&out, &plan.placement, &layers, args.to))?;
    Ok(())
}

/// The flags to start the engine with so that it loads `out` as the plan intends.
pub fn server_flags(out: &Path, p: &Placement, layers: &LayerMap, to: ExportFormat) -> String {
    let (g, r, s) = (p.gpus(), p.slots() - p.experts(), p.slots());
    let file = out.display();
    match to {
        ExportFormat::Sglang => format!(
            "# SGLang: {g} GPUs in expert parallel, {s} slots per layer ({r} redundant)\n\
             --ep-size {g} --ep-num-redundant-experts {r} --init-expert-location {file}\n"
        ),
        ExportFormat::Trtllm => format!(
            "# TensorRT-LLM: in the YAML given to --extra_llm_api_options (with --ep_size {g}):\n\
             moe_config:\n  load_balancer: {file}\n\
             # the file sets num_slots: {s} for the {} MoE layers (decoder layers {})\n",
            layers.len(),
            crate::cmd::plan::span(layers.moe_layers())
        ),
        ExportFormat::VllmMap => format!(
            "# vLLM with PR #49572: {g} GPUs in expert parallel, {r} redundant experts\n\
             --enable-expert-parallel --enable-eplb --eplb-config '{{\"num_redundant_experts\": {r}, \
             \"initial_expert_map_path\": \"{file}\"}}'\n"
        ),
        ExportFormat::Vllm => format!(
            "# vLLM with PR #41141: {g} GPUs in expert parallel, {r} redundant experts; the plan stays in \
             place (drop disable_online_rebalancing to let vLLM rebalance from it)\n\
             --enable-expert-parallel --enable-eplb --eplb-config '{{\"num_redundant_experts\": {r}, \
             \"initial_mapping_path\": \"{file}\", \"disable_online_rebalancing\": true}}'\n"
        ),
        ExportFormat::Eplb => format!(
            "# DeepSeek-EPLB arrays for {g} GPUs, {s} physical experts per layer ({r} redundant): load phy2log, \
             log2phy and logcnt from {file}\n"
        ),
    }
}
