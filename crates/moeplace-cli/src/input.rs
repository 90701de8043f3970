//! Shared input handling: trace-reading flags, progress bars, reading traces into
//! statistics.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use moeplace_core::model::ModelDescription;
use moeplace_core::stats::{ExpertLoads, ProfileOptions, Statistics, StatisticsBuilder};
use moeplace_core::trace::{ModelShape, Trace};
use moeplace_formats::engine_counts::EngineCounts;
use moeplace_formats::{open_trace, stats_file, ProgressUnit, ReadOptions, TraceFormat, TraceReader};

use crate::model_args::{check_shape, layers_of, with_model};

/// Flags every command that reads traces takes.
#[derive(clap::Args, Clone, Debug)]
pub struct TraceArgs {
    /// Trace format, instead of guessing from the path: jsonl, parquet, npz, esft, sglang,
    /// sglang-dump, sglang-routed, vllm-routed, trtllm-raw. Given, the input is read as
    /// a trace even where it also holds counts (a TensorRT-LLM statistics folder).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Option<TraceFormat>,
    /// Experts per layer, for formats that do not record it: ESFT logs (default 64,
    /// DeepSeek-V2-Lite) and NumPy traces without `num_experts`.
    #[arg(long, value_name = "E")]
    pub experts: Option<usize>,
    /// Experts per token per layer, for inputs that do not record it: ESFT logs
    /// (default 6) and engine counts (SGLang `logical_count`, TensorRT-LLM statistics),
    /// which need it.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// TensorRT-LLM statistics taken with the MoE load balancer on count slots: the
    /// load balancer's YAML (`initial_global_assignments`) maps them back to experts.
    #[arg(long, value_name = "FILE")]
    pub slot_assignments: Option<PathBuf>,
    /// Tokens per batch while streaming (memory bound).
    #[arg(long, default_value_t = DEFAULT_BATCH_TOKENS, value_name = "N", hide = true)]
    pub batch_tokens: usize,
}

/// Tokens per batch while streaming: large enough that counting a batch runs long
/// over each table (see moeplace-core's stats::count), small enough to bound memory
/// (28 MB of ids for DeepSeek-V3).
pub const DEFAULT_BATCH_TOKENS: usize = 32768;

fn parse_format(s: &str) -> Result<TraceFormat, String> {
    TraceFormat::parse(s)
        .ok_or_else(|| format!("unknown format {s:?}; expected one of {}", TraceFormat::NAMES.join(", ")))
}

impl TraceArgs {
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            format: self.format,
            batch_tokens: self.batch_tokens,
            experts: self.experts,
            top_k: self.top_k,
            layer_map: None,
            slot_assignments: self.slot_assignments.clone(),
        }
    }

    /// Opens a trace of `model`: formats that do not record experts or top-k take the
    /// model's (flags that contradict the model are refused), and the trace must have
    /// the model's shape.
    pub fn open_for(&self, path: &Path, model: Option<&ModelDescription>) -> Result<Box<dyn TraceReader>> {
        let mut opts = self.read_options();
        if let Some(m) = model {
            for (flag, given, want) in [("--experts", self.experts, m.experts), ("--top-k", self.top_k, m.top_k)] {
                if let Some(g) = given.filter(|&g| g != want) {
                    bail!("{flag} {g} contradicts model {} ({want}); drop {flag} or fix it", m.name);
                }
            }
            opts.experts = Some(m.experts);
            opts.top_k = Some(m.top_k);
            opts.layer_map = Some(m.layers.clone());
        }
        match open_trace(path, &opts) {
            Ok(reader) => {
                check_shape(path, reader.shape(), model)?;
                Ok(reader)
            }
            // A file that records another shape than the model's is refused by the
            // reader as if --experts/--top-k had been given: read it as it is to say
            // what differs from the model.
            Err(e) if model.is_some() => {
                let reader = open_trace(path, &self.read_options()).map_err(|_| e)?;
                check_shape(path, reader.shape(), model)?;
                Ok(reader)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A progress bar on stderr over what `reader` counts (bytes of the file, or tokens)
/// (hidden when stderr is not a terminal).
pub fn read_progress(reader: &dyn TraceReader, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(reader.progress().1);
    let counts = match reader.progress_unit() {
        ProgressUnit::Bytes => "{bytes}/{total_bytes}",
        ProgressUnit::Tokens => "{human_pos}/{human_len} tokens",
    };
    pb.set_style(
        ProgressStyle::with_template(&format!("{{msg}} [{{bar:30}}] {counts} ({{eta}})"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Statistics files from this size up show a progress bar while they are read; smaller
/// ones take too short a time for a bar to be seen.
const STATS_PROGRESS_BYTES: u64 = 32 << 20;

/// Reads a statistics file, decoding `parts`, with the digest of its bytes. A large
/// file shows a bar on stderr over the bytes read, then says it is decoding (hidden
/// when stderr is not a terminal, like the trace bars).
pub fn read_stats_file(path: &Path, parts: moeplace_core::stats::Parts) -> Result<(Statistics, String)> {
    let large = std::fs::metadata(path).is_ok_and(|m| m.len() >= STATS_PROGRESS_BYTES);
    let pb = if large { ProgressBar::new(0) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(format!("reading {}", path.display()));
    let read = stats_file::read_parts_with_digest_progress(path, parts, &mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
        if done == total {
            pb.set_message(format!("decoding {}", path.display()));
        }
    });
    pb.finish_and_clear();
    Ok(read?)
}

/// Whether `path` is a moeplace statistics file (binary or JSON) rather than a trace.
pub fn is_stats_file(path: &Path) -> bool {
    stats_file::is_statistics_file(path)
}

/// Profiles every input (traces, or statistics files which are merged as they are)
/// into one set of statistics; all inputs must have the same model shape.
/// With a `model`, every input must have its shape, and the statistics carry the
/// decoder-layer index of each MoE layer (recorded by the input, else the model's).
pub fn profile_inputs(
    inputs: &[PathBuf],
    args: &TraceArgs,
    model: Option<&ModelDescription>,
    options: ProfileOptions,
) -> Result<Statistics> {
    crate::output::refuse_repeated_inputs(inputs)?;
    let mut acc: Option<Statistics> = None;
    for path in inputs {
        let stats = if is_stats_file(path) {
            let (stats, _) = read_stats_file(path, moeplace_core::stats::Parts::ALL)?;
            check_shape_flags(path, stats.shape(), args)?;
            with_model(path, stats, model)?
        } else if let Some(stats) = engine_statistics(path, args, model) {
            stats?
        } else {
            let mut reader = args.open_for(path, model)?;
            let recorded = reader.layer_map();
            let mut stats = StatisticsBuilder::new(reader.shape(), options);
            let pb = read_progress(reader.as_ref(), &format!("profiling {}", path.display()));
            while let Some(batch) = reader.next() {
                let batch = batch?;
                stats.add_batch(&batch).with_context(|| format!("{}", path.display()))?;
                pb.set_position(reader.progress().0);
            }
            pb.finish_and_clear();
            let stats = stats.finish();
            if stats.tokens() == 0 {
                bail!("{}: the trace holds no tokens", path.display());
            }
            let map = layers_of(path, recorded, model)?;
            stats.with_layer_map(map).with_context(|| path.display().to_string())?
        };
        match &mut acc {
            None => acc = Some(stats),
            Some(a) => a.merge(&stats).with_context(|| format!("adding {}", path.display()))?,
        }
    }
    acc.context("no input given")
}

/// Reads a whole trace into memory (for commands that split or replay it).
#[allow(dead_code)]
pub fn read_trace(path: &Path, args: &TraceArgs) -> Result<Trace> {
    read_trace_for(path, args, None)
}

/// Reads a whole trace of `model` into memory (see [`TraceArgs::open_for`]).
pub fn read_trace_for(path: &Path, args: &TraceArgs, model: Option<&ModelDescription>) -> Result<Trace> {
    let reader = open_trace_for_replay(path, args, model)?;
    let mut whole = None;
    read_windows(path, reader, usize::MAX, |w| {
        whole = Some(w);
        Ok(())
    })?;
    whole.ok_or_else(|| anyhow::anyhow!("{}: the trace holds no tokens", path.display()))
}

/// Opens a trace to replay token by token (a statistics file is refused with a word
/// on why), with its layers checked against the model.
pub fn open_trace_for_replay(
    path: &Path,
    args: &TraceArgs,
    model: Option<&ModelDescription>,
) -> Result<Box<dyn TraceReader>> {
    // A statistics file would otherwise be refused as a malformed JSONL header.
    if is_stats_file(path) {
        bail!(
            "{}: this is a statistics file (moeplace profile -o); replaying needs the trace itself, token by token",
            path.display()
        );
    }
    let reader = args.open_for(path, model)?;
    layers_of(path, reader.layer_map(), model)?;
    Ok(reader)
}

/// Reads `reader` in windows of whole batches holding at least `window_tokens`
/// tokens (the last may hold fewer), handing each to `each` in order, so that memory
/// holds one window; a trace without tokens is refused naming `path`.
pub fn read_windows(
    path: &Path,
    mut reader: Box<dyn TraceReader>,
    window_tokens: usize,
    mut each: impl FnMut(Trace) -> Result<()>,
) -> Result<()> {
    let shape: ModelShape = reader.shape();
    let mut window = Trace::new(shape);
    let (mut in_window, mut total) = (0usize, 0usize);
    let pb = read_progress(reader.as_ref(), &format!("reading {}", path.display()));
    while let Some(batch) = reader.next() {
        let batch = batch?;
        in_window += batch.len();
        window.batches.push(batch);
        pb.set_position(reader.progress().0);
        if in_window >= window_tokens {
            total += in_window;
            in_window = 0;
            each(std::mem::replace(&mut window, Trace::new(shape)))?;
        }
    }
    pb.finish_and_clear();
    total += in_window;
    if total == 0 {
        bail!("{}: the trace holds no tokens", path.display());
    }
    if in_window > 0 {
        each(window)?;
    }
    Ok(())
}

/// Prints to stdout; a closed pipe (`moeplace ... | head`) ends quietly instead of
/// panicking.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Engine counts at `path` (SGLang `logical_count` JSON or recorder dumps in stat or
/// per_pass mode, TensorRT-LLM expert statistics, vLLM `eplb_load_stats`) as one row
/// per MoE layer, or `None` if `path` is none of them or `--format` asks for a trace.
/// Rows per hidden layer (SGLang) lose their dense rows: by the model's layers when
/// given (refused if a dense row holds counts), else as the reader finds them.
pub fn engine_counts(path: &Path, args: &TraceArgs, model: Option<&ModelDescription>) -> Option<Result<EngineCounts>> {
    if args.format.is_some() {
        return None;
    }
    let mut opts = args.read_options();
    opts.layer_map = model.map(|m| m.layers.clone());
    let counts = moeplace_formats::engine_counts::read_engine_recording(path, &opts)?;
    Some((|| -> Result<EngineCounts> {
        let mut counts = counts?;
        if let Some(m) = model {
            if counts.loads.layers != m.layers.len() && counts.loads.layers == m.layers.hidden_layers() {
                counts.loads = moe_rows_of(path, &counts.loads, m)?;
                counts.layer_map = Some(m.layers.clone());
            }
        }
        Ok(counts)
    })())
}

/// Statistics from an engine's counts (see [`engine_counts`]), or `None`. The counts
/// carry loads only (summed over steps); top-k comes from the recording where it
/// tells (TensorRT-LLM), else from `--top-k` or the model.
pub fn engine_statistics(
    path: &Path,
    args: &TraceArgs,
    model: Option<&ModelDescription>,
) -> Option<Result<Statistics>> {
    let counts = engine_counts(path, args, model)?;
    Some((|| {
        let counts = counts?;
        let loads = counts.loads;
        let k = match (counts.top_k, args.top_k.or(model.map(|m| m.top_k))) {
            (Some(r), Some(g)) if r != g => {
                bail!(
                    "{}: the counts record top-{r} but {g} was given (--top-k or the model); drop --top-k or fix it",
                    path.display()
                )
            }
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => bail!(
                "{}: these engine counts do not record top-k; pass --top-k (e.g. 8 for DeepSeek-V3) or --model",
                path.display()
            ),
        };
        let shape = ModelShape::new(loads.layers, loads.experts, k).with_context(|| path.display().to_string())?;
        check_shape_flags(path, shape, args)?;
        let total: Vec<u64> = loads.total().iter().map(|x| x.round() as u64).collect();
        let stats = Statistics::from_loads(shape, total, None).with_context(|| path.display().to_string())?;
        let stats = match counts.layer_map {
            Some(map) => stats.with_layer_map(Some(map)).with_context(|| path.display().to_string())?,
            None => stats,
        };
        with_model(path, stats, model)
    })())
}

/// The MoE rows of `loads` recorded per hidden layer of model `m`; a dense row that
/// holds counts is refused (the counts are from another model).
fn moe_rows_of(path: &Path, loads: &ExpertLoads, m: &ModelDescription) -> Result<ExpertLoads> {
    let map = &m.layers;
    let e = loads.experts;
    let mut steps = Vec::with_capacity(loads.steps.len());
    for (i, step) in loads.steps.iter().enumerate() {
        let mut moe = Vec::with_capacity(map.len() * e);
        for layer in 0..loads.layers {
            let row = &step[layer * e..(layer + 1) * e];
            if map.moe_ordinal(layer).is_some() {
                moe.extend_from_slice(row);
            } else if row.iter().any(|&c| c != 0.0) {
                bail!(
                    "{}: step {i}: decoder layer {layer} is dense in model {} but has expert counts; are these \
                     counts from another model?",
                    path.display(),
                    m.name
                );
            }
        }
        steps.push(moe);
    }
    ExpertLoads::new(map.len(), e, steps).with_context(|| path.display().to_string())
}

/// Reads `--stats`: a statistics file or an engine count dump, with the digest of
/// its bytes.
/// Only `parts` of a statistics file are decoded (what a placer needs); engine
/// counts are read whole.
pub fn read_statistics_parts(
    path: &Path,
    args: &TraceArgs,
    model: Option<&ModelDescription>,
    parts: moeplace_core::stats::Parts,
) -> Result<(Statistics, String)> {
    match engine_statistics(path, args, model) {
        Some(s) => Ok((s?, moeplace_formats::plan_file::digest_file(path)?)),
        None => {
            let (stats, digest) = read_stats_file(path, parts)?;
            check_shape_flags(path, stats.shape(), args)?;
            Ok((with_model(path, stats, model)?, digest))
        }
    }
}

/// Statistics record E and k (engine counts record E): a different `--experts` or
/// `--top-k` is refused, as the trace readers refuse it, rather than ignored.
fn check_shape_flags(path: &Path, shape: ModelShape, args: &TraceArgs) -> Result<()> {
    for (flag, given, recorded) in [("--experts", args.experts, shape.experts), ("--top-k", args.top_k, shape.top_k)] {
        if let Some(given) = given.filter(|&g| g != recorded) {
            bail!(
                "{}: the statistics record {recorded} for {flag} but {given} was given; drop {flag} or fix it",
                path.display()
            );
        }
    }
    Ok(())
}
