//! Shared input handling: trace-reading flags, progress bars, reading traces into
//! statistics.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use moeplace_core::stats::{ProfileOptions, Statistics, StatisticsBuilder};
use moeplace_core::trace::{ModelShape, Trace};
use moeplace_formats::engine_counts::EngineCounts;
use moeplace_formats::{open_trace, stats_file, ReadOptions, TraceFormat, TraceReader};

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

    pub fn open(&self, path: &Path) -> Result<Box<dyn TraceReader>> {
        Ok(open_trace(path, &self.read_options())?)
    }
}

/// A progress bar over bytes on stderr (hidden when stderr is not a terminal).
pub fn byte_progress(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Whether `path` is a moeplace statistics file rather than a trace.
pub fn is_stats_file(path: &Path) -> bool {
    use std::io::Read;
    if path.is_dir() {
        return false;
    }
    let mut head = [0u8; 64];
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let n = f.read(&mut head).unwrap_or(0);
    String::from_utf8_lossy(&head[..n]).contains(stats_file::FORMAT_NAME)
}

/// Profiles every input (traces, or statistics files which are merged as they are)
/// into one set of statistics; all inputs must have the same model shape.
pub fn profile_inputs(inputs: &[PathBuf], args: &TraceArgs, options: ProfileOptions) -> Result<Statistics> {
    let mut acc: Option<Statistics> = None;
    for path in inputs {
        let stats = if is_stats_file(path) {
            let stats = stats_file::read(path)?;
            check_shape_flags(path, stats.shape(), args)?;
            stats
        } else if let Some(stats) = engine_statistics(path, args) {
            stats?
        } else {
            let mut reader = args.open(path)?;
            let mut stats = StatisticsBuilder::new(reader.shape(), options);
            let pb = byte_progress(reader.progress().1, &format!("profiling {}", path.display()));
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
            stats
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
    // A statistics file would otherwise be refused as a malformed JSONL header.
    if is_stats_file(path) {
        bail!(
            "{}: this is a statistics file (moeplace profile -o); replaying needs the trace itself, token by token",
            path.display()
        );
    }
    let mut reader = args.open(path)?;
    let shape: ModelShape = reader.shape();
    let mut trace = Trace::new(shape);
    let pb = byte_progress(reader.progress().1, &format!("reading {}", path.display()));
    while let Some(batch) = reader.next() {
        trace.batches.push(batch?);
        pb.set_position(reader.progress().0);
    }
    pb.finish_and_clear();
    if trace.tokens() == 0 {
        bail!("{}: the trace holds no tokens", path.display());
    }
    Ok(trace)
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
/// per_pass mode, TensorRT-LLM expert statistics, vLLM `eplb_load_stats`), or `None`
/// if `path` is none of them or `--format` asks for a trace.
pub fn engine_counts(path: &Path, args: &TraceArgs) -> Option<Result<EngineCounts>> {
    if args.format.is_some() {
        return None;
    }
    let counts = moeplace_formats::engine_counts::read_engine_recording(path, &args.read_options())?;
    Some(counts.map_err(Into::into))
}

/// Statistics from an engine's counts (see [`engine_counts`]), or `None`. The counts
/// carry loads only (summed over steps); top-k comes from the recording where it
/// tells (TensorRT-LLM), else from `--top-k`.
pub fn engine_statistics(path: &Path, args: &TraceArgs) -> Option<Result<Statistics>> {
    let counts = engine_counts(path, args)?;
    Some((|| {
        let counts = counts?;
        let loads = counts.loads;
        let k = match (counts.top_k, args.top_k) {
            (Some(r), Some(g)) if r != g => {
                bail!("{}: the counts record top-{r} but --top-k {g} was given; drop --top-k or fix it", path.display())
            }
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => bail!(
                "{}: these engine counts do not record top-k; pass --top-k (e.g. 8 for DeepSeek-V3)",
                path.display()
            ),
        };
        let shape = ModelShape::new(loads.layers, loads.experts, k).with_context(|| path.display().to_string())?;
        check_shape_flags(path, shape, args)?;
        let total: Vec<u64> = loads.total().iter().map(|x| x.round() as u64).collect();
        Statistics::from_loads(shape, total, None).with_context(|| path.display().to_string())
    })())
}

/// Reads `--stats`: a statistics file or an engine count dump.
pub fn read_statistics(path: &Path, args: &TraceArgs) -> Result<Statistics> {
    match engine_statistics(path, args) {
        Some(s) => s,
        None => {
            let stats = stats_file::read(path)?;
            check_shape_flags(path, stats.shape(), args)?;
            Ok(stats)
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
