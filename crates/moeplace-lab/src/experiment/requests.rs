//! `moeplace-lab experiment requests`: runs the request-side experiments
//! (moeplace_core::requests::experiment) on the real traces of a data folder and on
//! synthetic traffic; docs/REQUESTS.md comes from it.

use std::path::{Path, PathBuf};

use crate::requests_lab::{self as experiment, ExperimentConfig, ExperimentReport};
use anyhow::{Context, Result};
use moeplace_core::requests::decode_sim::DecodeModel;
use moeplace_core::requests::records::{requests_from_batches, PhaseSplit, RequestTokens};
use moeplace_core::simulate::cut_percent;
use moeplace_core::synth::{self, LengthDist, SynthConfig};
use moeplace_core::trace::{ModelShape, TokenBatch};
use moeplace_formats::{open_trace, ReadOptions, TraceFormat};

use crate::io::print_stdout;

#[derive(clap::Args)]
pub(super) struct RequestsArgs {
    /// Folder holding esft-deepseek-v2-lite/ and sglang-granite/ (skipped, with a
    /// message, when absent).
    #[arg(long, default_value = "../shared/data", value_name = "DIR")]
    data: PathBuf,
    /// Model preset of the synthetic workload (the `synth --preset` names).
    #[arg(long, value_name = "NAME", default_value = "deepseek-v2-lite")]
    synth_preset: String,
    /// Requests of the synthetic workload (0: no synthetic experiment).
    #[arg(long, value_name = "N", default_value_t = 5000)]
    synth_requests: usize,
    /// Prefill lengths of the synthetic requests (N, MIN..MAX or lognormal:MEDIAN:SIGMA).
    #[arg(long, value_name = "DIST", default_value = "lognormal:128:0.6")]
    prefill_len: String,
    /// Decode lengths of the synthetic requests (same forms as --prefill-len).
    #[arg(long, value_name = "DIST", default_value = "lognormal:128:0.6")]
    decode_len: String,
    /// Family mix of the synthetic requests (name=weight,...; default: the
    /// generator's four families).
    #[arg(long)]
    families: Option<String>,
    /// Synthetic knob `family_experts`: fraction of a layer's experts each family
    /// prefers (default: the generator's, 0.1).
    #[arg(long, value_name = "F")]
    family_experts: Option<f64>,
    /// Synthetic knob `family_boost`: popularity multiplier of a family's preferred
    /// experts (default: the generator's, 4).
    #[arg(long, value_name = "X")]
    family_boost: Option<f64>,
    /// Decode workers of the decode-routing experiment.
    #[arg(long, value_name = "N", default_value_t = 16)]
    workers: usize,
    /// ELDR band of the main comparison.
    #[arg(long, default_value_t = 0.1)]
    tau: f32,
    /// Requests per decode worker the arrival rate aims at.
    #[arg(long, default_value_t = 8.0)]
    target_batch: f64,
    /// Nodes of the placement experiment.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// GPUs of the placement experiment.
    #[arg(long, default_value_t = 16)]
    gpus: usize,
    /// Seed of the split, K-means, arrivals and synthetic traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn read_requests(path: &Path, format: TraceFormat, split: PhaseSplit) -> Result<(ModelShape, Vec<RequestTokens>)> {
    let opts = ReadOptions {
        format: Some(format),
        batch_tokens: 32768,
        experts: None,
        top_k: None,
        layer_map: None,
        slot_assignments: None,
    };
    let reader = open_trace(path, &opts).with_context(|| format!("opening {}", path.display()))?;
    let shape = reader.shape();
    let mut batches = Vec::new();
    for b in reader {
        batches.push(b.with_context(|| format!("reading {}", path.display()))?);
    }
    let (reqs, dropped) = requests_from_batches(shape, &batches, split);
    if dropped > 0 {
        eprintln!("{}: {dropped} tokens without a phase left out", path.display());
    }
    Ok((shape, reqs))
}

pub(super) fn requests(a: RequestsArgs) -> Result<()> {
    // (--gpus 0 divided by zero; a NaN band or batch ran and printed figures.)
    anyhow::ensure!(a.gpus >= 1, "--gpus must be at least 1");
    anyhow::ensure!(a.tau.is_finite() && a.tau >= 0.0, "--tau {} must be a non-negative number", a.tau);
    anyhow::ensure!(
        a.target_batch.is_finite() && a.target_batch > 0.0,
        "--target-batch {} must be a positive number",
        a.target_batch
    );
    let cfg = ExperimentConfig {
        nodes: a.nodes,
        gpus: a.gpus,
        workers: a.workers,
        tau: a.tau,
        target_batch: a.target_batch,
        seed: a.seed,
        ..ExperimentConfig::default()
    };
    let mut out = String::new();
    out.push_str(&format!(
        "Settings: {} GPUs in {} nodes; {} decode workers; ELDR tau {}; target batch {}; seed {}; decode model of the \
         real traces {:?}.\n\n",
        cfg.gpus, cfg.nodes, cfg.workers, cfg.tau, cfg.target_batch, cfg.seed, cfg.model
    ));
    let esft = a.data.join("esft-deepseek-v2-lite");
    let sglang = a.data.join("sglang-granite/routing-trace.jsonl");
    if !a.data.is_dir() {
        let msg = format!(
            "data folder {} not found: the ESFT and SGLang experiments were not run (give --data DIR)",
            a.data.display()
        );
        eprintln!("{msg}");
        out.push_str(&format!("**{msg}.**\n\n"));
    } else {
        for (title, path, format, split) in [
            (
                "ESFT DeepSeek-V2-Lite logs (first quarter of each sequence as prefill)",
                &esft,
                TraceFormat::Esft,
                PhaseSplit::Prefix(0.25),
            ),
            ("SGLang granite trace (recorded phases)", &sglang, TraceFormat::Sglang, PhaseSplit::Recorded),
        ] {
            if !path.exists() {
                out.push_str(&format!("## {title}\n\n**{} not found; not run.**\n\n", path.display()));
                continue;
            }
            let (shape, reqs) = read_requests(path, format, split)?;
            eprintln!("running {title} ...");
            out.push_str(&section(title, &experiment::run(shape, &reqs, &cfg)));
        }
    }
    if a.synth_requests > 0 {
        let mut sc = SynthConfig::preset(&a.synth_preset)?;
        sc.requests = a.synth_requests;
        sc.prefill_len = LengthDist::parse(&a.prefill_len)?;
        sc.decode_len = LengthDist::parse(&a.decode_len)?;
        if let Some(f) = &a.families {
            sc = sc.with_families(synth::parse_families(f)?)?;
        }
        if let Some(x) = a.family_experts {
            sc.knobs.family_experts = x;
        }
        if let Some(x) = a.family_boost {
            sc.knobs.family_boost = x;
        }
        sc.knobs.validate()?;
        let families: Vec<String> = sc.families.iter().map(|f| f.name.clone()).collect();
        let batches: Vec<TokenBatch> = synth::generate(&sc, a.seed)?.collect();
        let (reqs, _) = requests_from_batches(sc.shape, &batches, PhaseSplit::Recorded);
        let title = format!(
            "Synthetic: {} ({}), {} requests of families {}, family_experts {}, family_boost {}, prefill {}, decode {}, \
             seed {}",
            a.synth_preset,
            sc.shape,
            a.synth_requests,
            families.join(", "),
            sc.knobs.family_experts,
            sc.knobs.family_boost,
            sc.prefill_len,
            sc.decode_len,
            a.seed
        );
        // The decode model follows the preset: DeepSeek-V3 experts on an 8-GPU worker,
        // else DeepSeek-V2-Lite experts on one H100.
        let model = if a.synth_preset.eq_ignore_ascii_case("deepseek-v3") {
            DecodeModel::deepseek_v3_h100_node()
        } else {
            DecodeModel::deepseek_v2_lite_h100()
        };
        let title = format!("{title}; decode model {model:?}");
        eprintln!("running synthetic traffic ...");
        out.push_str(&section(&title, &experiment::run(sc.shape, &reqs, &ExperimentConfig { model, ..cfg.clone() })));
    }
    print_stdout(&out)
}

fn f3(x: f64) -> String {
    format!("{x:.3}")
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:+.1}%"))
}

/// One input's markdown: a summary line and the four tables.
pub fn section(title: &str, r: &ExperimentReport) -> String {
    let mut s = format!("## {title}\n\n");
    s.push_str(&format!(
        "{}: {} requests with prefill and decode tokens ({} calibration, {} held out); mean {:.1} prefill and {:.1} \
         decode tokens per request.\n\n",
        r.shape, r.requests, r.calibration, r.test, r.mean_prefill_tokens, r.mean_decode_tokens
    ));
    s.push_str("### Prefill-to-cluster classification (cluster-homes, held-out requests)\n\n");
    match &r.classification {
        Err(e) => s.push_str(&format!("Not run: {e}.\n\n")),
        Ok(rows) => {
            s.push_str(
                "| K-means | clusters | calibration cluster sizes | held out | accuracy | calibration node-local picks |\n\
                 |---|---:|---:|---:|---:|---:|\n",
            );
            for c in rows {
                s.push_str(&format!(
                    "| {} | {} | {}-{} | {} | {:.1}% ({}/{}) | {:.1}% |\n",
                    if c.balanced { "size-balanced" } else { "plain" },
                    c.clusters,
                    c.min_size,
                    c.max_size,
                    c.tested,
                    100.0 * c.accuracy(),
                    c.correct,
                    c.tested,
                    100.0 * c.calibration_local_share
                ));
            }
            s.push('\n');
        }
    }
    s.push_str("### All-to-all of the held-out stream (replay, `nearest` dispatcher)\n\n");
    match &r.placement {
        Err(e) => s.push_str(&format!("Not run: {e}.\n\n")),
        Ok(rows) => {
            s.push_str(
                "| slots/GPU | placement | homes | all-to-all data (MB) | remote GPUs / token-layer | remote nodes / \
                 token-layer | home max/mean | data cut vs round-robin homes | data cut vs linear |\n\
                 |---:|---|---|---:|---:|---:|---:|---:|---:|\n",
            );
            let linear = rows.iter().find(|x| x.placement == "linear").map(|x| x.result.bytes as f64);
            for x in rows {
                let same_rr = rows
                    .iter()
                    .find(|y| {
                        y.slots_per_gpu == x.slots_per_gpu && y.placement == x.placement && y.homes == "round-robin"
                    })
                    .map(|y| y.result.bytes as f64);
                let vs_rr = if x.homes == "round-robin" {
                    "-".into()
                } else {
                    pct(same_rr.and_then(|b| cut_percent(x.result.bytes as f64, b)))
                };
                let vs_lin = if x.placement == "linear" {
                    "-".into()
                } else {
                    pct(linear.and_then(|b| cut_percent(x.result.bytes as f64, b)))
                };
                s.push_str(&format!(
                    "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {} |\n",
                    x.slots_per_gpu,
                    x.placement,
                    x.homes,
                    x.result.bytes as f64 / 1e6,
                    f3(x.result.remote_gpus),
                    f3(x.result.remote_nodes),
                    f3(x.result.home_max_over_mean),
                    vs_rr,
                    vs_lin
                ));
            }
            s.push('\n');
        }
    }
    if let Some((same, mixed)) = r.family_batches {
        s.push_str(&format!(
            "Held-out batches of {} requests (one decode token each) activate {same:.2} distinct experts per layer \
             when all requests share a family and {mixed:.2} when drawn from all requests ({}).\n\n",
            r.batch,
            pct(cut_percent(same, mixed).map(|c| -c))
        ));
    }
    match &r.decode {
        Err(e) => s.push_str(&format!("### Decode routing\n\nNot run: {e}.\n\n")),
        Ok(d) => {
            s.push_str(&format!(
                "### Decode routing ({} held-out requests, Poisson arrivals at {:.1}/s; signature layer mask {:?})\n\n",
                r.test, d.rate_per_s, d.mask
            ));
            let rr = d.main.first().map(|x| x.active_experts_per_step);
            s.push_str(&decode_table(&d.main, rr));
            s.push_str("### Ablation: ELDR band tau and K-means variant\n\n");
            s.push_str(&decode_table(&d.ablation, rr));
        }
    }
    s
}

fn decode_table(rows: &[moeplace_core::requests::decode_sim::DecodeResult], rr: Option<f64>) -> String {
    let mut s = String::from(
        "| router | active experts / layer / step | vs round-robin | mean batch | median TPOT (ms) | p99 TPOT (ms) | \
         worker load max/mean | Jain |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for x in rows {
        let vs = rr.and_then(|b| cut_percent(x.active_experts_per_step, b)).map(|c| -c);
        s.push_str(&format!(
            "| {} | {:.2} | {} | {:.2} | {} | {} | {} | {} |\n",
            x.router,
            x.active_experts_per_step,
            pct(vs),
            x.mean_batch,
            f3(x.tpot_median_ms),
            f3(x.tpot_p99_ms),
            f3(x.load_max_over_mean),
            f3(x.load_jain)
        ));
    }
    s.push('\n');
    s
}
