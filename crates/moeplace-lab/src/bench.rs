//! `moeplace-lab bench`: throughput measurements anyone can rerun. Figures in
//! docs/PERFORMANCE.md come from here.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use moeplace_core::stats::{ProfileOptions, StatisticsBuilder};
use moeplace_core::synth::{self, SynthConfig};
use moeplace_formats::jsonl::JsonlWriter;
use moeplace_formats::parquet::ParquetWriter;
use moeplace_formats::{open_trace, ReadOptions, TraceFormat};
use rayon::prelude::*;

use crate::io::print_stdout;

/// Measure the speed and quality figures the docs quote, mostly on synthetic traces
/// (`balance` also reads the shared data folder; results vary with the machine). Use
/// a release build: `cargo run --release -p moeplace-lab -- bench profile`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Profiling (read + statistics) of a DeepSeek-V3-shaped trace (58 layers, 256
    /// experts, top-8) from JSONL and Parquet, in token-layers per second, with peak
    /// memory for two trace lengths.
    Profile(ProfileArgs),
    /// The replay simulator on a DeepSeek-V3-shaped trace (58 layers, 256 experts,
    /// top-8) on 64 GPUs in 8 nodes (linear placement with `primary` and `nearest`,
    /// 64 replicas with `nearest` and `gesr`), a 61 x 384 model on 256 GPUs and the
    /// DeepSeek-V3 shape on 320 GPUs (each with the baseline placement and `primary`,
    /// and with 128 or 256 replicas with `nearest` and `gesr`), in token-layers per second
    /// (wall clock and per CPU-second).
    Simulate(SimulateArgs),
    /// The synthetic workload generator: each preset's trace profiled (the
    /// properties docs/SYNTH.md compares with the papers), then one million
    /// DeepSeek-V3-shaped tokens generated and written to Parquet, timed, with peak
    /// memory.
    Synth(SynthArgs),
    /// Load balancing: `eplb` against `balance` (plain and hierarchical) on the DeepSeek
    /// EPLB README example, on loads profiled from the ESFT DeepSeek-V2-Lite logs, and
    /// on synthetic DeepSeek-V3-shaped loads (58 layers x 256 experts) with 32 and 64
    /// redundant slots. Columns: max/mean GPU load (mean over layers), vLLM and
    /// SGLang balancedness, the lower bound as max/mean, slot moves from the same
    /// placer's plan on an earlier load window (given to the placer as the deployed
    /// plan), and solve time (best of --repeat). Then `eplb` against `balance` at one
    /// and two slots per GPU on fleet shapes (61 x 384 on 256 GPUs, DeepSeek-V3 on 320
    /// GPUs) with the gap to the lower bound (`--fleet-only`: this table alone).
    /// The tables in docs/BALANCE.md come from here.
    Balance(BalanceArgs),
    /// Request routing cost: the ELDR decode router's decision for 64 workers and a
    /// DeepSeek-V3-sized model (58 layers x 256 experts, top-8), with the signature
    /// model fitted on synthetic DeepSeek-V3 traffic (layer mask and 16 entries per
    /// masked layer), and with a mask of all 58 layers as the worst case; also the
    /// cost of building a signature from prefill counts. Microseconds per request
    /// (mean over --decisions decisions, best of 3). docs/REQUESTS.md quotes it.
    Requests(RequestsBenchArgs),
    /// Co-activation placers and the gesr dispatcher at DeepSeek-V3 shape (58 layers x
    /// 256 experts, top-8; synthetic four-family statistics): plan time of coact, tacg
    /// and tacg+gesr for 64 GPUs in 8 nodes with 288 slots (32 redundant: 4 or 5 per GPU),
    /// and the cost of one replica decision (ns per token-expert pick) of gesr (with
    /// and without free first) and nearest on the tacg+gesr plan. docs/TACG.md quotes
    /// this.
    Tacg(TacgBenchArgs),
}

#[derive(clap::Args)]
struct RequestsBenchArgs {
    /// Decode workers (ELDR centroids).
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Synthetic calibration requests the signature model and centroids are fitted on.
    #[arg(long, default_value_t = 600)]
    requests: usize,
    /// Routing decisions timed per repetition.
    #[arg(long, default_value_t = 200_000)]
    decisions: usize,
    /// Seed of the synthetic traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args)]
struct TacgBenchArgs {
    /// Calibration tokens of the synthetic statistics.
    #[arg(long, default_value_t = 20_000)]
    tokens: u64,
    /// Tokens replayed through the dispatchers.
    #[arg(long, default_value_t = 20_000)]
    dispatch_tokens: usize,
    /// Repetitions; the table shows the fastest.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Slots per layer over the 64 GPUs (288: 32 redundant, GPUs own 4 or 5).
    #[arg(long, default_value_t = 288)]
    slots: usize,
    /// A parameter of tacg and tacg+gesr, key=value (repeatable), e.g. robust=0.75.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Tokens of the timed DeepSeek-V3 run.
    #[arg(long, default_value_t = 1_000_000)]
    tokens: u64,
    /// Requests per preset for the property table.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Seed of the traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args)]
struct BalanceArgs {
    /// The shared data folder (holding eplb-readme-example.json and
    /// esft-deepseek-v2-lite/); rows needing a missing file are left out with a note.
    #[arg(long, value_name = "DIR", default_value = "../shared/data")]
    data: std::path::PathBuf,
    /// Tokens of each synthetic DeepSeek-V3 load window.
    #[arg(long, default_value_t = 20_000)]
    tokens: u64,
    /// Repetitions of each solve; the table shows the fastest.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Tokens per step in the per-step table (32 calibration and 32 held-out steps).
    #[arg(long, default_value_t = 512)]
    step_tokens: usize,
    /// Print only the table of one and two slots per GPU at fleet scale.
    #[arg(long)]
    fleet_only: bool,
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Tokens of the trace (requests of 500 tokens).
    #[arg(long, default_value_t = 50_000)]
    tokens: usize,
    /// Repetitions per case; the table shows the fastest.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

#[derive(clap::Args)]
struct ProfileArgs {
    /// Tokens of the larger trace (the smaller has a quarter).
    #[arg(long, default_value_t = 400_000)]
    tokens: u64,
    /// Model preset of the synthetic trace.
    #[arg(long, default_value = "deepseek-v3")]
    preset: String,
    /// Keep per-request activation vectors while profiling (memory then grows with
    /// the number of requests).
    #[arg(long)]
    request_vectors: bool,
    /// Seed of the synthetic trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Profile(a) => bench_profile(a),
        What::Simulate(a) => bench_simulate(a),
        What::Synth(a) => bench_synth(a),
        What::Balance(a) => bench_balance(a),
        What::Requests(a) => bench_requests(a),
        What::Tacg(a) => bench_tacg(a),
    }
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn write_trace(config: &SynthConfig, seed: u64, dir: &Path) -> Result<()> {
    let mut j = JsonlWriter::create(&dir.join("t.jsonl"), config.shape)?;
    let mut p = ParquetWriter::create(&dir.join("t.parquet"), config.shape)?;
    for b in synth::generate(config, seed)? {
        j.write_batch(&b)?;
        p.write_batch(&b)?;
    }
    j.finish()?;
    p.finish()?;
    Ok(())
}

/// How a row of `bench profile` runs.
#[derive(Clone, Copy, PartialEq)]
enum ProfileRun {
    /// Read and count, as `moeplace profile` does.
    Full,
    /// Read (decode and validate) only.
    ReadOnly,
    /// Count batches already decoded into memory (read first, untimed).
    CountOnly,
}

/// Profiles `path` (read + statistics, as `moeplace profile` does them, without the
/// report), or only one half of that: token count, wall seconds and CPU seconds.
fn profile_file(
    path: &Path,
    format: TraceFormat,
    options: ProfileOptions,
    run: ProfileRun,
) -> Result<(u64, f64, Option<f64>)> {
    let opts = ReadOptions { format: Some(format), batch_tokens: crate::io::BATCH_TOKENS, ..Default::default() };
    let in_memory = match run {
        ProfileRun::CountOnly => Some(open_trace(path, &opts)?.collect::<Result<Vec<_>, _>>()?),
        _ => None,
    };
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut tokens = 0u64;
    // Token-layers per CPU-second compare runs on a machine shared with other work,
    // where wall-clock rates do not.
    let stats = if let Some(batches) = &in_memory {
        let shape = batches.first().map(|b| b.shape()).context("empty trace")?;
        let mut s = StatisticsBuilder::new(shape, options);
        for b in batches {
            tokens += b.len() as u64;
            s.add_batch(b)?;
        }
        s.finish()
    } else {
        let mut r = open_trace(path, &opts)?;
        let mut s = StatisticsBuilder::new(r.shape(), options);
        for b in r.by_ref() {
            let b = b?;
            tokens += b.len() as u64;
            if run == ProfileRun::Full {
                s.add_batch(&b)?;
            }
        }
        s.finish()
    };
    let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds().zip(cpu).map(|(b, a)| b - a));
    anyhow::ensure!(
        run == ProfileRun::ReadOnly || stats.tokens() == tokens,
        "statistics count {} tokens of {tokens}",
        stats.tokens()
    );
    drop(stats);
    Ok((tokens, secs, cpu))
}

/// Memory copy bandwidth with every thread of the pool copying its own buffer
/// (GB/s of bytes read plus bytes written; the best of a few rounds), the bound
/// the counting kernel's cost model compares against.
fn copy_bandwidth_gbs() -> f64 {
    const BYTES: usize = 256 << 20;
    let threads = rayon::current_num_threads().max(1);
    let per = BYTES / threads;
    let mut bufs: Vec<(Vec<u8>, Vec<u8>)> = (0..threads).map(|i| (vec![i as u8 + 1; per], vec![0u8; per])).collect();
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        bufs.par_iter_mut().for_each(|(src, dst)| dst.copy_from_slice(src));
        let secs = start.elapsed().as_secs_f64();
        best = best.max(2.0 * (per * threads) as f64 / secs / 1e9);
    }
    std::hint::black_box(&bufs);
    best
}

fn bench_profile(a: ProfileArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let options = ProfileOptions { request_vectors: a.request_vectors, ..Default::default() };
    let mut out = String::new();
    out.push_str(&format!(
        "bench profile: preset {}, request vectors {}, token sample {}, {} threads; memory copy {:.1} GB/s \
         (read + written)\n",
        a.preset,
        if a.request_vectors { "on" } else { "off" },
        options.token_sample,
        rayon::current_num_threads(),
        copy_bandwidth_gbs()
    ));
    out.push_str(
        "format                    tokens   token-layers   seconds  M token-layers/s  CPU s  M per CPU-s  peak RSS MiB\n",
    );
    // Smaller trace first: peak RSS only grows, so the larger run shows any growth.
    // The in-memory row holds the whole trace, so it comes last.
    for tokens in [a.tokens / 4, a.tokens] {
        let mut config = SynthConfig::preset(&a.preset)?;
        config.tokens = Some(tokens);
        config.requests = usize::MAX / 2;
        eprintln!("generating {tokens} tokens ...");
        write_trace(&config, a.seed, dir.path())?;
        for (name, file, format, run) in [
            ("jsonl", "t.jsonl", TraceFormat::Jsonl, ProfileRun::Full),
            ("parquet", "t.parquet", TraceFormat::Parquet, ProfileRun::Full),
            ("parquet (read only)", "t.parquet", TraceFormat::Parquet, ProfileRun::ReadOnly),
            ("parquet (count only)", "t.parquet", TraceFormat::Parquet, ProfileRun::CountOnly),
        ] {
            let (n, secs, cpu) = profile_file(&dir.path().join(file), format, options, run)?;
            let tl = n * config.shape.layers as u64;
            out.push_str(&format!(
                "{name:<21} {n:>10} {tl:>14} {secs:>9.3} {:>17.2} {:>6} {:>12} {:>13}\n",
                tl as f64 / secs / 1e6,
                cpu.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into()),
                cpu.map(|c| format!("{:.2}", tl as f64 / c / 1e6)).unwrap_or_else(|| "-".into()),
                peak_rss_mib().map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into())
            ));
        }
    }
    print_stdout(&out)
}

fn bench_synth(a: SynthArgs) -> Result<()> {
    use moeplace_core::report::ProfileReport;
    use moeplace_core::stats::Statistics;

    anyhow::ensure!(a.tokens > 0 && a.requests > 0, "--tokens and --requests must be positive");
    let mut out = String::new();
    out.push_str(&format!("bench synth: {} requests per preset, seed {}\n\n", a.requests, a.seed));
    out.push_str("| preset | tokens | max/mean | entropy | family JS | generic experts | top-E pairs | pairs if independent | prefill-decode corr |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    for preset in synth::PRESETS {
        let mut config = SynthConfig::preset(preset.name)?;
        config.requests = a.requests;
        eprintln!("profiling preset {} ...", preset.name);
        let batches: Vec<_> = synth::generate(&config, a.seed)?.collect();
        let stats = Statistics::from_batches(config.shape, ProfileOptions::default(), &batches)?;
        let r = ProfileReport::from_statistics(&stats);
        let m = &r.mean;
        // Top-E pair share if picks were independent draws from the same loads.
        let independent = independent_top_pairs_share(&stats);
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.3} | {} | {:.1} | {} | {:.3} | {} |\n",
            preset.name,
            r.tokens,
            m.max_over_mean,
            m.entropy_norm,
            opt(m.js_divergence),
            m.generic_experts,
            opt(m.top_pairs_share),
            independent,
            opt(m.prefill_decode_correlation),
        ));
    }
    // Timed: generation streamed into the Parquet writer, as `moeplace synth` does.
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let path = dir.path().join("v3.parquet");
    let mut config = SynthConfig::preset("deepseek-v3")?;
    config.tokens = Some(a.tokens);
    eprintln!("generating {} DeepSeek-V3 tokens to Parquet ...", a.tokens);
    let start = Instant::now();
    let mut w = ParquetWriter::create(&path, config.shape)?;
    let mut n = 0u64;
    for b in synth::generate(&config, a.seed)? {
        n += b.len() as u64;
        w.write_batch(&b)?;
    }
    w.finish()?;
    let secs = start.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    out.push_str(&format!(
        "\ndeepseek-v3 to Parquet: {n} tokens in {secs:.2} s ({:.0} tokens/s), file {:.0} MB, peak RSS {} MiB\n",
        n as f64 / secs,
        size as f64 / 1e6,
        peak_rss_mib().map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into())
    ));
    print_stdout(&out)
}

/// Mean over layers of the share of co-activation the top-E pairs would hold if each
/// token drew its k experts independently from the layer's load (pair weight
/// proportional to the product of the two loads): the baseline the measured share
/// is compared with.
fn independent_top_pairs_share(stats: &moeplace_core::stats::Statistics) -> f64 {
    let shape = stats.shape();
    let (l, e) = (shape.layers, shape.experts);
    let pooled = stats.pooled(|_| true);
    let mut sum = 0.0;
    for layer in 0..l {
        let load = &pooled.load[layer * e..(layer + 1) * e];
        let mut w: Vec<f64> = Vec::with_capacity(e * (e - 1) / 2);
        for a in 0..e {
            for b in a + 1..e {
                w.push(load[a] as f64 * load[b] as f64);
            }
        }
        let total: f64 = w.iter().sum();
        w.sort_unstable_by(|x, y| y.total_cmp(x));
        sum += if total > 0.0 { w.iter().take(e).sum::<f64>() / total } else { 0.0 };
    }
    sum / l as f64
}

/// CPU time of this process (user + system) in seconds (Linux `/proc/self/stat`).
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A placement for replay measurements: `experts` primaries in id order and
/// `replicas` extra copies, one after every `experts / replicas`-th expert, each a copy
/// of the expert half the id range away (so never on its primary's GPU), laid out
/// over the slots in that order: every GPU holds primaries and replicas alike.
fn replay_bench_placement(
    layers: usize,
    experts: usize,
    gpus: usize,
    replicas: usize,
) -> Result<moeplace_core::placement::Placement> {
    anyhow::ensure!(replicas > 0 && replicas <= experts, "replicas must be in 1..=experts");
    let every = experts / replicas;
    let mut row: Vec<i64> = Vec::with_capacity(experts + replicas);
    for e in 0..experts {
        row.push(e as i64);
        if e % every == 0 && e / every < replicas {
            row.push(((e + experts / 2) % experts) as i64);
        }
    }
    Ok(moeplace_core::placement::Placement::with_slots(experts, gpus, row.len(), vec![row; layers])?)
}

fn bench_simulate(a: SimulateArgs) -> Result<()> {
    use moeplace_core::cluster::Cluster;
    use moeplace_core::dispatch::by_name;
    use moeplace_core::placement::Placement;
    use moeplace_core::protocol::baseline_placement;
    use moeplace_core::simulate::{benchmark_trace, simulate, HomePolicy};
    use moeplace_core::trace::{ModelShape, Trace};

    anyhow::ensure!(a.tokens > 0 && a.repeat > 0, "--tokens and --repeat must be positive");
    let v3 = ModelShape::new(58, 256, 8)?;
    let wide = ModelShape::new(61, 384, 8)?;
    let v3_trace = benchmark_trace(v3, a.tokens, 500, 1);
    let wide_trace = benchmark_trace(wide, a.tokens, 500, 1);
    let linear = Placement::new(256, 64, 4, vec![(0..256).collect(); 58])?;
    // 5 slots per GPU: a copy of every fourth expert on a GPU 16 away, so the
    // dispatcher chooses.
    let lists: Vec<Vec<usize>> = (0..64)
        .map(|gpu| {
            let mut l: Vec<usize> = (gpu * 4..gpu * 4 + 4).collect();
            l.push(((gpu + 16) % 64) * 4);
            l
        })
        .collect();
    let replicated = Placement::from_gpu_lists(256, &vec![lists; 58])?;
    let ep256 = baseline_placement(61, 384, 256)?;
    let ep256_r = replay_bench_placement(61, 384, 256, 128)?;
    let ep320 = baseline_placement(58, 256, 320)?;
    let ep320_r = replay_bench_placement(58, 256, 320, 256)?;
    let c64 = Cluster::new(8, 64, 1)?;
    let (c256, c320) = (Cluster::new(32, 256, 1)?, Cluster::new(40, 320, 1)?);
    // (shape label, placement label, dispatcher, trace, placement, nodes and links)
    let cases: Vec<(&str, &str, &str, &Trace, &Placement, &Cluster)> = vec![
        ("58x256, 64 GPUs", "linear, 4 slots/GPU", "primary", &v3_trace, &linear, &c64),
        ("58x256, 64 GPUs", "linear, 4 slots/GPU", "nearest", &v3_trace, &linear, &c64),
        ("58x256, 64 GPUs", "64 replicas, 5 slots/GPU", "nearest", &v3_trace, &replicated, &c64),
        ("58x256, 64 GPUs", "64 replicas, 5 slots/GPU", "gesr", &v3_trace, &replicated, &c64),
        ("61x384, 256 GPUs", "baseline, 384 slots", "primary", &wide_trace, &ep256, &c256),
        ("61x384, 256 GPUs", "128 replicas, 512 slots", "nearest", &wide_trace, &ep256_r, &c256),
        ("61x384, 256 GPUs", "128 replicas, 512 slots", "gesr", &wide_trace, &ep256_r, &c256),
        ("58x256, 320 GPUs", "baseline, 320 slots", "primary", &v3_trace, &ep320, &c320),
        ("58x256, 320 GPUs", "baseline, 320 slots", "nearest", &v3_trace, &ep320, &c320),
        ("58x256, 320 GPUs", "256 replicas, 512 slots", "nearest", &v3_trace, &ep320_r, &c320),
        ("58x256, 320 GPUs", "256 replicas, 512 slots", "gesr", &v3_trace, &ep320_r, &c320),
    ];
    let mut out = format!(
        "simulate: {} tokens (requests of 500, top-8), 8 GPUs per node, round-robin homes, {} threads, best of {}\n",
        a.tokens,
        rayon::current_num_threads(),
        a.repeat
    );
    out.push_str(
        "model, GPUs        placement                 dispatcher  seconds  M token-layers/s  M per CPU-second\n",
    );
    for (shape, name, dispatcher, trace, placement, links) in cases {
        let cluster = links.clone().with_slots(placement.slots())?;
        let d = by_name(dispatcher, 0).context("unknown dispatcher")?;
        let token_layers = (a.tokens * trace.shape.layers) as f64;
        let (mut best, mut best_cpu) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..a.repeat {
            let (t0, c0) = (Instant::now(), cpu_seconds());
            simulate(trace, placement, &cluster, d.as_ref(), &HomePolicy::RoundRobin)?;
            best = best.min(t0.elapsed().as_secs_f64());
            if let (Some(c0), Some(c1)) = (c0, cpu_seconds()) {
                best_cpu = best_cpu.min(c1 - c0);
            }
        }
        let per_cpu = if best_cpu.is_finite() && best_cpu > 0.0 {
            format!("{:.1}", token_layers / best_cpu / 1e6)
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "{shape:<18} {name:<25} {dispatcher:<10} {best:>8.3} {:>17.1} {per_cpu:>17}\n",
            token_layers / best / 1e6
        ));
    }
    print_stdout(&out)
}

/// One load-balancing case of `bench balance`: two load windows (the plan of the
/// first is the "previous plan" the second's moves are counted against).
struct BalanceCase {
    name: String,
    previous: moeplace_core::stats::ExpertLoads,
    current: moeplace_core::stats::ExpertLoads,
    cluster: moeplace_core::cluster::Cluster,
    groups: usize,
}

fn loads_of(stats: &moeplace_core::stats::Statistics) -> moeplace_core::stats::ExpertLoads {
    stats.loads(|_| true)
}

fn synth_loads(tokens: u64, seed: u64) -> Result<moeplace_core::stats::ExpertLoads> {
    let mut config = SynthConfig::preset("deepseek-v3")?;
    config.tokens = Some(tokens);
    config.requests = usize::MAX / 2;
    let mut s = StatisticsBuilder::new(config.shape, ProfileOptions::default());
    for b in synth::generate(&config, seed)? {
        s.add_batch(&b)?;
    }
    Ok(loads_of(&s.finish()))
}

fn balance_cases(a: &BalanceArgs) -> Result<(Vec<BalanceCase>, Vec<String>)> {
    use moeplace_core::cluster::Cluster;
    use moeplace_core::stats::ExpertLoads;
    let mut cases = Vec::new();
    let mut skipped = Vec::new();
    let readme = a.data.join("eplb-readme-example.json");
    match std::fs::read_to_string(&readme) {
        Ok(text) => {
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: not JSON", readme.display()))?;
            let w: Vec<Vec<f64>> = serde_json::from_value(v["weight"].clone())
                .with_context(|| format!("{}: `weight` is not a list of lists of numbers", readme.display()))?;
            let n = |k: &str| {
                v[k].as_u64()
                    .map(|x| x as usize)
                    .with_context(|| format!("{}: `{k}` is not a non-negative integer", readme.display()))
            };
            let (gpus, nodes) = (n("num_gpus")?, n("num_nodes")?);
            let loads = ExpertLoads::new(w.len(), w.first().map_or(0, Vec::len), vec![w.concat()])?;
            cases.push(BalanceCase {
                name: "EPLB README example".into(),
                previous: loads.clone(),
                current: loads,
                cluster: Cluster::new(nodes, gpus, n("num_replicas")? / gpus)?,
                groups: n("num_groups")?,
            });
        }
        Err(e) => skipped.push(format!("{}: {e}", readme.display())),
    }
    let esft = a.data.join("esft-deepseek-v2-lite");
    if esft.is_dir() {
        let opts = ReadOptions { batch_tokens: 65536, ..Default::default() };
        let mut acc: Option<moeplace_core::stats::Statistics> = None;
        let mut first: Option<ExpertLoads> = None;
        for family in ["intent", "law", "summary", "translation"] {
            let mut r = open_trace(&esft.join(family), &opts)?;
            let mut s = StatisticsBuilder::new(r.shape(), ProfileOptions::default());
            for b in r.by_ref() {
                s.add_batch(&b?)?;
            }
            let s = s.finish();
            match &mut acc {
                None => acc = Some(s),
                Some(x) => x.merge(&s)?,
            }
            if family == "law" {
                first = acc.as_ref().map(loads_of);
            }
        }
        let all = acc.context("ESFT families")?;
        let first = first.context("ESFT families")?;
        cases.push(BalanceCase {
            name: "ESFT DeepSeek-V2-Lite, 16 redundant".into(),
            previous: first,
            current: loads_of(&all),
            cluster: Cluster::new(4, 16, 5)?,
            groups: 4,
        });
    } else {
        skipped.push(format!("{}: not a folder", esft.display()));
    }
    eprintln!("generating synthetic DeepSeek-V3 loads ({} tokens x 2 windows) ...", a.tokens);
    let (prev, cur) = (synth_loads(a.tokens, 1)?, synth_loads(a.tokens, 2)?);
    cases.push(BalanceCase {
        name: "synthetic DeepSeek-V3, 32 redundant".into(),
        previous: prev.clone(),
        current: cur.clone(),
        cluster: Cluster::new(8, 64, 1)?.with_slots(288)?,
        groups: 8,
    });
    cases.push(BalanceCase {
        name: "synthetic DeepSeek-V3, 64 redundant".into(),
        previous: prev,
        current: cur,
        cluster: Cluster::new(8, 64, 5)?,
        groups: 8,
    });
    Ok((cases, skipped))
}

fn bench_balance(a: BalanceArgs) -> Result<()> {
    use moeplace_core::gpu_load::load_figures;
    use moeplace_core::placement::Placement;
    use moeplace_core::trace::ModelShape;

    // Zero-token steps gave a per-step table of perfect balance on no load.
    anyhow::ensure!(
        a.tokens > 0 && a.repeat > 0 && a.step_tokens > 0,
        "--tokens, --repeat and --step-tokens must be positive"
    );
    if a.fleet_only {
        return print_stdout(&fleet_table(&a)?);
    }
    let (cases, skipped) = balance_cases(&a)?;
    let mut out = format!("bench balance: {} threads, solve time best of {}\n", rayon::current_num_threads(), a.repeat);
    out.push_str(
        "| loads | layers x experts | GPUs (nodes), slots | placer | max/mean | bal. vLLM | bal. SGLang | bound max/mean | moves | solve ms |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for case in &cases {
        let c = &case.cluster;
        let shape = ModelShape::new(case.current.layers, case.current.experts, 1)?;
        let hier = format!("groups={}", case.groups);
        let runs: [(&str, &str, Vec<&str>); 4] = [
            ("eplb (global)", "eplb", vec![]),
            ("eplb (hierarchical)", "eplb", vec![hier.as_str()]),
            ("balance", "balance", vec![hier.as_str()]),
            ("balance (hierarchical)", "balance", vec![hier.as_str(), "hierarchical=true"]),
        ];
        for (label, placer, params) in runs {
            let solve = |loads: &moeplace_core::stats::ExpertLoads, previous: Option<&Placement>| {
                solve_best(placer, &params, loads, c, previous, a.repeat)
            };
            let (previous, _) = solve(&case.previous, None)?;
            let (plan, secs) = solve(&case.current, Some(&previous.placement))?;
            let plan = plan.placement;
            let f = load_figures(&plan, &case.current);
            out.push_str(&format!(
                "| {} | {} x {} | {} ({}), {} slots | {label} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {:.1} |\n",
                case.name,
                shape.layers,
                shape.experts,
                c.gpus,
                c.nodes,
                c.slots,
                f.max_over_mean,
                f.balancedness_vllm,
                f.balancedness_sglang,
                f.bound_max_over_mean,
                plan.moves_from(&previous.placement),
                secs * 1e3
            ));
        }
    }
    for s in skipped {
        out.push_str(&format!("(left out: {s})\n"));
    }
    if let Some(case) = cases.iter().find(|c| c.name.contains("64 redundant")) {
        out.push_str(&slack_table(case)?);
    }
    out.push_str(&per_step_table(&a)?);
    out.push_str(&fleet_table(&a)?);
    print_stdout(&out)
}

/// Synthetic loads of `layers` x `experts` (top-8) from `tokens` tokens of the
/// generator's default families, with `seed`.
fn synth_shape_loads(
    layers: usize,
    experts: usize,
    tokens: u64,
    seed: u64,
) -> Result<moeplace_core::stats::ExpertLoads> {
    let mut config = SynthConfig::for_shape(layers, experts, 8)?;
    config.tokens = Some(tokens);
    config.requests = usize::MAX / 2;
    let mut s = StatisticsBuilder::new(config.shape, ProfileOptions::default());
    for b in synth::generate(&config, seed)? {
        s.add_batch(&b)?;
    }
    Ok(loads_of(&s.finish()))
}

/// `eplb` against `balance` at one and two slots per GPU on fleet shapes (synthetic
/// loads, seed 2): max/mean of both, the lower bound as max/mean, `balance`'s gap to
/// it (mean over layers of max / bound - 1) and solve times (best of --repeat).
fn fleet_table(a: &BalanceArgs) -> Result<String> {
    use moeplace_core::cluster::Cluster;
    use moeplace_core::gpu_load::load_figures;
    let mut out = format!(
        "\none and two slots per GPU: synthetic loads ({} tokens, seed 2), global policy, solve time best of {} on {} threads\n",
        a.tokens,
        a.repeat,
        rayon::current_num_threads()
    );
    out.push_str(
        "| model | GPUs (nodes) x slots per GPU | eplb max/mean | balance max/mean | bound max/mean | balance gap to bound | eplb ms | balance ms |\n|---|---|---|---|---|---|---|---|\n",
    );
    let cases = [
        ("61 x 384 (Kimi-K2-like)", 61, 384, Cluster::new(32, 256, 2)?),
        ("58 x 256 (DeepSeek-V3)", 58, 256, Cluster::new(40, 320, 1)?),
        ("58 x 256 (DeepSeek-V3)", 58, 256, Cluster::new(40, 320, 2)?),
    ];
    let mut loads: Vec<((usize, usize), moeplace_core::stats::ExpertLoads)> = Vec::new();
    for (name, layers, experts, c) in cases {
        let w = match loads.iter().find(|(k, _)| *k == (layers, experts)) {
            Some((_, w)) => w.clone(),
            None => {
                eprintln!("generating synthetic {layers} x {experts} loads ({} tokens) ...", a.tokens);
                let w = synth_shape_loads(layers, experts, a.tokens, 2)?;
                loads.push(((layers, experts), w.clone()));
                w
            }
        };
        let (e, te) = solve_best("eplb", &[], &w, &c, None, a.repeat)?;
        let (b, tb) = solve_best("balance", &[], &w, &c, None, a.repeat)?;
        let (fe, fb) = (load_figures(&e.placement, &w), load_figures(&b.placement, &w));
        let gap = b.notes.get("gap_to_bound").copied().context("balance reports gap_to_bound")?;
        out.push_str(&format!(
            "| {name} | {} ({}) x {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1} | {:.1} |\n",
            c.gpus,
            c.nodes,
            c.slots / c.gpus,
            fe.max_over_mean,
            fb.max_over_mean,
            fb.bound_max_over_mean,
            gap,
            te * 1e3,
            tb * 1e3
        ));
    }
    Ok(out)
}

/// Runs one placer on loads `repeat` times, returning the last output and the
/// fastest solve time in seconds.
fn solve_best(
    placer: &str,
    params: &[&str],
    loads: &moeplace_core::stats::ExpertLoads,
    cluster: &moeplace_core::cluster::Cluster,
    previous: Option<&moeplace_core::placement::Placement>,
    repeat: usize,
) -> Result<(moeplace_core::placers::PlacerOutput, f64)> {
    use moeplace_core::placers::{by_name, Params, PlacerInput};
    let p = by_name(placer).context("placer registered")?;
    let params = Params::parse(params.iter().copied())?;
    let shape = moeplace_core::trace::ModelShape::new(loads.layers, loads.experts, 1)?;
    let mut best = (None, f64::INFINITY);
    for _ in 0..repeat.max(1) {
        let t0 = Instant::now();
        let out = p.place(&PlacerInput { shape, cluster, loads, stats: None, previous, params: &params, seed: 0 })?;
        best = (Some(out), best.1.min(t0.elapsed().as_secs_f64()));
    }
    Ok((best.0.expect("at least one repetition"), best.1))
}

/// One run of a placer (see [`solve_best`]).
fn solve_once(
    placer: &str,
    params: &[&str],
    loads: &moeplace_core::stats::ExpertLoads,
    cluster: &moeplace_core::cluster::Cluster,
    previous: Option<&moeplace_core::placement::Placement>,
) -> Result<(moeplace_core::placers::PlacerOutput, f64)> {
    solve_best(placer, params, loads, cluster, previous, 1)
}

/// Balance against moves: `balance` with growing `move_slack` given the plan of the
/// earlier window.
fn slack_table(case: &BalanceCase) -> Result<String> {
    use moeplace_core::gpu_load::load_figures;
    let c = &case.cluster;
    let groups = format!("groups={}", case.groups);
    let (previous, _) = solve_once("balance", &[&groups], &case.previous, c, None)?;
    let mut out = format!(
        "\nmoves against balance: {} on {} GPUs ({} nodes), {} slots, previous plan from the earlier window\n",
        case.name, c.gpus, c.nodes, c.slots
    );
    out.push_str("| placer | move_slack | max/mean | bal. vLLM | moves | moved share | solve ms |\n|---|---|---|---|---|---|---|\n");
    let slots = (case.current.layers * c.slots()) as f64;
    let (eplb, t) = solve_once("eplb", &[&groups], &case.current, c, None)?;
    let f = load_figures(&eplb.placement, &case.current);
    let m = eplb.placement.moves_from(&previous.placement);
    out.push_str(&format!(
        "| eplb (hierarchical) | - | {:.4} | {:.4} | {m} | {:.3} | {:.1} |\n",
        f.max_over_mean,
        f.balancedness_vllm,
        m as f64 / slots,
        t * 1e3
    ));
    for slack in ["0", "0.002", "0.005", "0.01", "0.02", "0.05"] {
        let param = format!("move_slack={slack}");
        let (o, t) = solve_once("balance", &[&groups, &param], &case.current, c, Some(&previous.placement))?;
        let f = load_figures(&o.placement, &case.current);
        let m = o.placement.moves_from(&previous.placement);
        out.push_str(&format!(
            "| balance | {slack} | {:.4} | {:.4} | {m} | {:.3} | {:.1} |\n",
            f.max_over_mean,
            f.balancedness_vllm,
            m as f64 / slots,
            t * 1e3
        ));
    }
    Ok(out)
}

/// Synthetic DeepSeek-V3 loads per step: `steps` steps of `step_tokens` consecutive
/// tokens each.
fn synth_step_loads(steps: usize, step_tokens: usize, seed: u64) -> Result<moeplace_core::stats::ExpertLoads> {
    let mut config = SynthConfig::preset("deepseek-v3")?;
    config.tokens = Some((steps * step_tokens) as u64);
    config.requests = usize::MAX / 2;
    let (layers, experts, k) = (config.shape.layers, config.shape.experts, config.shape.top_k);
    let mut out = vec![vec![0.0f64; layers * experts]; steps];
    let mut t = 0usize;
    for b in synth::generate(&config, seed)? {
        for (i, ids) in b.expert_ids().chunks_exact(layers * k).enumerate() {
            let step = &mut out[((t + i) / step_tokens).min(steps - 1)];
            for (l, picks) in ids.chunks_exact(k).enumerate() {
                for &e in picks {
                    step[l * experts + e as usize] += 1.0;
                }
            }
        }
        t += b.len();
    }
    Ok(moeplace_core::stats::ExpertLoads::new(layers, experts, out)?)
}

/// Per-step balance: plans from 32 calibration steps, measured per step on those
/// and on 32 held-out steps.
fn per_step_table(a: &BalanceArgs) -> Result<String> {
    use moeplace_core::cluster::Cluster;
    use moeplace_core::gpu_load::{load_figures, per_step_max_over_mean};
    let (steps, step_tokens) = (32, a.step_tokens);
    eprintln!("generating synthetic DeepSeek-V3 steps ({steps} x {step_tokens} tokens, twice) ...");
    let (calib, held_out) = (synth_step_loads(steps, step_tokens, 3)?, synth_step_loads(steps, step_tokens, 4)?);
    let c = Cluster::new(8, 64, 5)?;
    let mut out = format!(
        "\nper-step balance: synthetic DeepSeek-V3, {steps} steps of {step_tokens} consecutive tokens, 64 GPUs (8 nodes) x 5 slots, 8 groups\n"
    );
    out.push_str(
        "| placer | max/mean of summed loads | per-step max/mean (calibration) | per-step max/mean (held out) | solve ms |\n|---|---|---|---|---|\n",
    );
    for (label, placer, params) in [
        ("eplb (global)", "eplb", vec![]),
        ("eplb (hierarchical)", "eplb", vec!["groups=8"]),
        ("balance", "balance", vec!["groups=8"]),
        ("balance per_step=true", "balance", vec!["groups=8", "per_step=true"]),
    ] {
        let (o, t) = solve_once(placer, &params, &calib, &c, None)?;
        out.push_str(&format!(
            "| {label} | {:.4} | {:.4} | {:.4} | {:.1} |\n",
            load_figures(&o.placement, &calib).max_over_mean,
            per_step_max_over_mean(&o.placement, &calib),
            per_step_max_over_mean(&o.placement, &held_out),
            t * 1e3
        ));
    }
    Ok(out)
}

fn bench_requests(a: RequestsBenchArgs) -> Result<()> {
    use moeplace_core::requests::records::{counts, requests_from_batches, PhaseSplit};
    use moeplace_core::requests::router::{Eldr, Router};
    use moeplace_core::requests::signature::{Signature, SignatureModel, SignatureOptions};
    use moeplace_core::synth::LengthDist;

    // With no decision timed the table showed "inf" microseconds per decision.
    anyhow::ensure!(a.decisions > 0 && a.workers > 0, "--decisions and --workers must be positive");

    let mut sc = SynthConfig::preset("deepseek-v3")?;
    sc.requests = a.requests;
    sc.prefill_len = LengthDist::LogNormal { median: 64.0, sigma: 0.5 };
    sc.decode_len = LengthDist::LogNormal { median: 32.0, sigma: 0.5 };
    let shape = sc.shape;
    let batches: Vec<_> = synth::generate(&sc, a.seed)?.collect();
    let (reqs, _) = requests_from_batches(shape, &batches, PhaseSplit::Recorded);
    let pre: Vec<Vec<u32>> = reqs.iter().map(|r| counts(shape, &r.prefill)).collect();
    let dec: Vec<Vec<u32>> = reqs.iter().map(|r| counts(shape, &r.decode)).collect();
    let start = Instant::now();
    let fitted = SignatureModel::fit(shape, &pre, &dec, SignatureOptions::default(), a.seed)?;
    let fit_s = start.elapsed().as_secs_f64();
    let mut all_layers = fitted.clone();
    all_layers.mask = (0..shape.layers).collect();
    let mut out = format!(
        "ELDR routing cost, {shape}, {} workers, {} calibration requests (signature model fit: {fit_s:.2} s)\n\n\
         | signature | masked layers | entries per signature (mean) | ELDR decision (us) | signature from prefill \
         counts (us) | centroid fit (s) |\n|---|---:|---:|---:|---:|---:|\n",
        a.workers,
        reqs.len()
    );
    for (name, model) in [("fitted mask, 16 per layer", &fitted), ("all 58 layers, 16 per layer", &all_layers)] {
        let t = Instant::now();
        let sigs: Vec<Signature> = pre.iter().map(|p| model.signature(p)).collect();
        let sig_us = t.elapsed().as_secs_f64() * 1e6 / pre.len() as f64;
        let t = Instant::now();
        let mut eldr = Eldr::fit(&sigs, model.dims(), a.workers, true, 0.1, a.seed)?;
        let fit_s = t.elapsed().as_secs_f64();
        let entries = sigs.iter().map(|s| s.idx.len()).sum::<usize>() as f64 / sigs.len() as f64;
        let mut loads = vec![0u32; a.workers];
        let mut best = f64::INFINITY;
        let mut check = 0usize;
        for _ in 0..3 {
            let t = Instant::now();
            for i in 0..a.decisions {
                let w = eldr.route(&sigs[i % sigs.len()], &loads);
                check = check.wrapping_add(w);
                loads[w] += 1;
                if loads[w] > 16 {
                    loads.iter_mut().for_each(|l| *l /= 2);
                }
            }
            best = best.min(t.elapsed().as_secs_f64() * 1e6 / a.decisions as f64);
        }
        std::hint::black_box(check);
        out.push_str(&format!(
            "| {name} | {} | {entries:.0} | {best:.3} | {sig_us:.2} | {fit_s:.2} |\n",
            model.mask.len()
        ));
    }
    print_stdout(&out)
}

fn bench_tacg(a: TacgBenchArgs) -> Result<()> {
    use moeplace_core::cluster::Cluster;
    use moeplace_core::dispatch::{DispatchContext, Dispatcher, Gesr, Nearest, ReplicaTable};
    use moeplace_core::placers::{by_name, Params, PlacerInput};
    use moeplace_core::simulate::benchmark_trace;
    use moeplace_core::stats::Statistics;

    anyhow::ensure!(a.tokens > 0 && a.repeat > 0 && a.dispatch_tokens > 0, "counts must be positive");
    anyhow::ensure!(a.slots >= 256, "--slots must be at least the 256 experts");
    let mut config = SynthConfig::preset("deepseek-v3")?;
    config.tokens = Some(a.tokens);
    let batches = synth::generate_all(&config, 1)?;
    // With per-request vectors, as `profile` keeps them (cluster-homes needs them).
    let stats = Statistics::from_batches(config.shape, ProfileOptions::default(), &batches)?;
    let shape = stats.shape();
    let cluster = Cluster::new(8, 64, 4)?.with_slots(a.slots)?;
    let loads = stats.loads(|_| true);
    let params = Params::parse(a.params.iter().map(String::as_str))?;
    let mut out = format!(
        "tacg: {shape}, {} calibration tokens in {} families, 64 GPUs in 8 nodes, {} slots ({} redundant), \
         {} threads, best of {}\n\nplacer      plan seconds\n",
        stats.tokens(),
        stats.families().len(),
        a.slots,
        a.slots - shape.experts,
        rayon::current_num_threads(),
        a.repeat
    );
    if !params.0.is_empty() {
        out.insert_str(0, &format!("tacg and tacg+gesr parameters: {}\n", a.params.join(" ")));
    }
    let no_params = Params::default();
    let mut gesr_plan = None;
    for name in ["coact", "tacg", "tacg+gesr"] {
        let placer = by_name(name).context("placer registered")?;
        let mut best = f64::INFINITY;
        for _ in 0..a.repeat {
            let t0 = Instant::now();
            let o = placer.place(&PlacerInput {
                shape,
                cluster: &cluster,
                loads: &loads,
                stats: Some(&stats),
                previous: None,
                params: if name == "coact" { &no_params } else { &params },
                seed: 0,
            })?;
            best = best.min(t0.elapsed().as_secs_f64());
            gesr_plan = Some(o.placement);
        }
        out.push_str(&format!("{name:<11} {best:>12.3}\n"));
    }
    let placement = gesr_plan.context("a plan was made")?;
    let table = ReplicaTable::new(&placement);
    let node_of: Vec<u32> = (0..cluster.gpus).map(|g| cluster.node_of(g) as u32).collect();
    let trace = benchmark_trace(shape, a.dispatch_tokens, 500, 2);
    let ids = trace.batches[0].expert_ids();
    let k = shape.top_k;
    out.push_str("\ndispatcher      ns per pick  (one thread; picks with several copies in this plan: ");
    let multi = (0..shape.layers)
        .map(|l| (0..shape.experts).filter(|&e| table.gpus(l, e).len() > 1).count())
        .sum::<usize>() as f64
        / (shape.layers * shape.experts) as f64;
    out.push_str(&format!("{:.1}% of experts)\n", 100.0 * multi));
    let free_first = Gesr { free_first: true, ..Gesr::default() };
    let dispatchers: [(&str, Box<dyn Dispatcher>); 3] = [
        ("gesr", Box::new(Gesr::default())),
        ("gesr free first", Box::new(free_first)),
        ("nearest", Box::new(Nearest)),
    ];
    for (name, d) in dispatchers {
        let mut best = f64::INFINITY;
        let mut sink = 0u64;
        for _ in 0..a.repeat {
            let mut running = vec![0u64; shape.layers * cluster.gpus];
            let mut o = vec![0u32; k];
            let t0 = Instant::now();
            for t in 0..a.dispatch_tokens {
                let home = (t / 500) % cluster.gpus;
                for layer in 0..shape.layers {
                    let picks = &ids[(t * shape.layers + layer) * k..(t * shape.layers + layer + 1) * k];
                    let row = &mut running[layer * cluster.gpus..(layer + 1) * cluster.gpus];
                    let ctx = DispatchContext {
                        replicas: &table,
                        node_of: &node_of,
                        layer,
                        home,
                        home_node: node_of[home] as usize,
                        token_key: t as u64,
                        loads: row,
                    };
                    d.dispatch(&ctx, picks, &mut o);
                    for &g in &o {
                        row[g as usize] += 1;
                    }
                }
            }
            best = best.min(t0.elapsed().as_secs_f64());
            sink += running.iter().sum::<u64>();
        }
        let picks = (a.dispatch_tokens * shape.layers * k) as f64;
        out.push_str(&format!("{name:<15} {:>11.1}\n", best * 1e9 / picks));
        std::hint::black_box(sink);
    }
    print_stdout(&out)
}
