//! `moeplace synth`: write a synthetic multi-task routing trace (docs/SYNTH.md).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use moeplace_core::stats::{ProfileOptions, Statistics, StatisticsBuilder};
use moeplace_core::synth::{self, LengthDist, SynthConfig, PRESETS};
use moeplace_core::trace::{ModelShape, TokenBatch};
use moeplace_formats::writer::{output_format, TraceWriter};

/// Write a synthetic routing trace with the structure real multi-task traces have:
/// skewed expert load, family-specific and generic experts, co-activation clusters,
/// correlated consecutive layers, prefill that predicts decode (docs/SYNTH.md).
/// Same options and seed, same bytes.
///
/// The model shape comes from --preset (deepseek-v2-lite, deepseek-v3,
/// qwen3-30b-a3b, qwen3-235b-a22b, mixtral-8x7b, olmoe-1b-7b, llama-4-maverick), from
/// --layers/--experts/--top-k, or from --fit STATS (statistics of a real trace from
/// `moeplace profile -o`), which fits the generator to that trace; --fit with a
/// shape option carries the fitted structure to another model scale.
/// Lengths: N, MIN..MAX or lognormal:MEDIAN:SIGMA.
///
/// Examples:
///   moeplace synth --preset deepseek-v3 --requests 2000 -o v3.parquet
///   moeplace synth --layers 12 --experts 64 --top-k 4 --families code=2,math=1 -o t.jsonl
///   moeplace synth --requests 4 -o - | head -2
///   moeplace profile traces/esft -o esft-stats.json
///   moeplace synth --fit esft-stats.json --compare -o esft-like.parquet
///   moeplace synth --fit esft-stats.json --shift without:law -o shifted.parquet
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    output: crate::output::TraceOutput,
    /// Output format: jsonl, parquet or npz (default: from the output's extension).
    #[arg(long, value_name = "FORMAT")]
    to: Option<String>,
    /// A built-in model shape (default deepseek-v2-lite when no shape is given).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["layers", "experts", "top_k"])]
    preset: Option<String>,
    #[command(flatten)]
    model: crate::model_args::ModelArgs,
    /// MoE layers (with --experts and --top-k).
    #[arg(long, value_name = "L", requires_all = ["experts", "top_k"])]
    layers: Option<usize>,
    /// Routed experts per layer.
    #[arg(long, value_name = "E", requires_all = ["layers", "top_k"])]
    experts: Option<usize>,
    /// Experts each token picks per layer.
    #[arg(long, value_name = "K", requires_all = ["layers", "experts"])]
    top_k: Option<usize>,
    /// Requests to generate (default 1000; with --fit, as many tokens as the real trace).
    #[arg(long, value_name = "N")]
    requests: Option<usize>,
    /// Generate exactly this many tokens instead of a number of requests.
    #[arg(long, value_name = "N", conflicts_with = "requests")]
    tokens: Option<u64>,
    /// Prefill tokens per request (default lognormal:512:0.6).
    #[arg(long, value_name = "DIST")]
    prefill_len: Option<String>,
    /// Decode tokens per request (default lognormal:256:0.6; 0 for prefill only).
    #[arg(long, value_name = "DIST")]
    decode_len: Option<String>,
    /// Family mix, name=weight,... (default code,math,chat,general, equal weights).
    #[arg(long, value_name = "MIX")]
    families: Option<String>,
    /// Seed of the traffic (requests and tokens).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seed of the model's structure (popularity, family experts, clusters); keep it
    /// to get calibration and test streams of one model from two --seed values.
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    structure_seed: u64,
    /// Request ids are PREFIX0, PREFIX1, ...: give traces you will profile or merge
    /// together prefixes of their own (statistics add up requests that share an id).
    #[arg(long, value_name = "PREFIX", default_value = "req-")]
    request_prefix: String,
    /// Fit the generator to these statistics (from `moeplace profile -o`).
    #[arg(long, value_name = "STATS")]
    fit: Option<PathBuf>,
    /// Distribution shift: `without:FAMILY` (one family absent) or a new mix
    /// name=weight,... of the same model.
    #[arg(long, value_name = "SHIFT")]
    shift: Option<String>,
    /// With --fit: profile the output and print, per layer, load max/mean, entropy,
    /// family JS divergence and top-E co-activation pair share, real vs synthetic.
    #[arg(long, requires = "fit")]
    compare: bool,
}

/// The configuration the options describe.
fn build_config(args: &Args) -> Result<(SynthConfig, Option<Statistics>)> {
    let mut shape = match (args.layers, args.experts, args.top_k) {
        (Some(l), Some(e), Some(k)) => Some(ModelShape::new(l, e, k)?),
        _ => None,
    };
    if let Some(m) = args.model.resolve()? {
        if args.preset.is_some() || shape.is_some() {
            bail!("give the shape once: --model/--model-config, --preset or --layers/--experts/--top-k");
        }
        shape = Some(m.shape());
    }
    let (mut config, real) = match &args.fit {
        Some(path) => {
            let (stats, _) = crate::input::read_stats_file(path, moeplace_core::stats::Parts::ALL)?;
            let mut c = synth::fit(&stats).with_context(|| format!("fitting to {}", path.display()))?;
            if let Some(p) = &args.preset {
                let shape = SynthConfig::preset(p)?.shape;
                c = c.retarget(shape)?;
            } else if let Some(s) = shape {
                c = c.retarget(s)?;
            }
            (c, Some(stats))
        }
        None => {
            let c = match (&args.preset, shape) {
                (Some(p), _) => SynthConfig::preset(p)?,
                (None, Some(s)) => SynthConfig::for_shape(s.layers, s.experts, s.top_k)?,
                (None, None) => SynthConfig::preset(PRESETS[0].name)?,
            };
            (c, None)
        }
    };
    config.structure_seed = args.structure_seed;
    config.request_prefix = args.request_prefix.clone();
    if let Some(n) = args.requests {
        config.requests = n;
        config.tokens = None;
    }
    if let Some(t) = args.tokens {
        config.tokens = Some(t);
    }
    if let Some(d) = &args.prefill_len {
        config.prefill_len = LengthDist::parse(d)?;
    }
    if let Some(d) = &args.decode_len {
        config.decode_len = LengthDist::parse(d)?;
    }
    if let Some(m) = &args.families {
        config = config.with_families(synth::parse_families(m)?)?;
    }
    if let Some(s) = &args.shift {
        config = match s.strip_prefix("without:") {
            Some(f) => config.without_family(f.trim())?,
            None => config.with_families(synth::parse_families(s)?)?,
        };
    }
    config.validate()?;
    Ok((config, real))
}

/// A progress bar over the tokens written (a counter when only requests are set),
/// on stderr when it is a terminal.
fn synth_progress(tokens: Option<u64>) -> indicatif::ProgressBar {
    let (pb, template) = match tokens {
        Some(t) => (indicatif::ProgressBar::new(t), "synthesising [{bar:30}] {human_pos}/{human_len} tokens ({eta})"),
        None => (indicatif::ProgressBar::new_spinner(), "synthesising {spinner} {human_pos} tokens"),
    };
    pb.set_style(indicatif::ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> "));
    pb
}

pub fn run(args: Args) -> Result<()> {
    let format = output_format(args.output.path(), args.to.as_deref())?;
    let inputs: Vec<&std::path::Path> = args.fit.iter().map(|p| p.as_path()).collect();
    crate::output::check_output_of(args.output.path(), &inputs)?;
    let (config, real) = build_config(&args)?;
    let shape = config.shape;
    let mut stats = args
        .compare
        .then(|| StatisticsBuilder::new(shape, ProfileOptions { request_vectors: false, ..Default::default() }));
    let mut tokens = 0usize;
    let mut each = |b: &TokenBatch| -> Result<()> {
        tokens += b.len();
        if let Some(s) = &mut stats {
            s.add_batch(b)?;
        }
        Ok(())
    };
    let mut w = TraceWriter::create(args.output.path(), format, shape)?;
    let pb = synth_progress(config.tokens);
    for b in synth::generate(&config, args.seed)? {
        each(&b)?;
        pb.inc(b.len() as u64);
        w.write_batch(b)?;
    }
    pb.finish_and_clear();
    w.finish()?;
    eprintln!("wrote {tokens} synthetic tokens ({shape}) to {}", args.output.path().display());
    if let (Some(real), Some(synth_stats)) = (real, stats) {
        if real.shape() != shape {
            bail!("--compare needs the fitted shape; the output was retargeted to {shape}");
        }
        let table = comparison_table(&synth::compare(&real, &synth_stats.finish())?);
        crate::output::print_summary(Some(args.output.path()), &table)?;
    }
    Ok(())
}

/// A Markdown table of the per-layer comparison, with the means in the last row.
fn comparison_table(rows: &[synth::LayerComparison]) -> String {
    use std::fmt::Write;
    let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| layer | max/mean real | max/mean synth | entropy real | entropy synth | family JS real | family JS synth | top-E pairs real | top-E pairs synth |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} |",
            r.layer,
            r.real_max_over_mean,
            r.synth_max_over_mean,
            r.real_entropy_norm,
            r.synth_entropy_norm,
            f(r.real_js_divergence),
            f(r.synth_js_divergence),
            f(r.real_top_pairs_share),
            f(r.synth_top_pairs_share)
        );
    }
    let n = rows.len().max(1) as f64;
    let mean = |g: &dyn Fn(&synth::LayerComparison) -> Option<f64>| {
        let v: Vec<f64> = rows.iter().filter_map(g).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let _ = writeln!(
        s,
        "| mean | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} |",
        rows.iter().map(|r| r.real_max_over_mean).sum::<f64>() / n,
        rows.iter().map(|r| r.synth_max_over_mean).sum::<f64>() / n,
        rows.iter().map(|r| r.real_entropy_norm).sum::<f64>() / n,
        rows.iter().map(|r| r.synth_entropy_norm).sum::<f64>() / n,
        f(mean(&|r| r.real_js_divergence)),
        f(mean(&|r| r.synth_js_divergence)),
        f(mean(&|r| r.real_top_pairs_share)),
        f(mean(&|r| r.synth_top_pairs_share)),
    );
    s
}
