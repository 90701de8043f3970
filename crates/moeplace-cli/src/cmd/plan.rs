//! `moeplace plan`: statistics (or a trace) + cluster -> a plan file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use moeplace_core::gpu_load::{load_figures, per_step_max_over_mean};
use moeplace_core::model::ModelDescription;
use moeplace_core::placers::{by_name, registry, Params, PlacerInput, REFINE_SKIPPED_NOTE, SPLIT_GROUPS_NOTE};
use moeplace_core::stats::{parse_family_shares, ExpertLoads, Parts, ProfileOptions, Statistics};
use moeplace_formats::plan_file::{self, Plan};

use crate::cluster_args::ClusterArgs;
use moeplace_core::tune::{self, Objective, TuneOptions, Tuned};

use crate::input::{engine_counts, profile_inputs, read_statistics_parts, read_trace_for, TraceArgs};
use crate::model_args::ModelArgs;

/// Plan an expert placement with a placer, from calibration statistics (`moeplace
/// profile -o`) or a calibration trace, for a cluster; write a plan file.
///
/// The plan file holds the slot -> expert map per layer, the nodes, optional family
/// homes, and provenance (placer, parameters, seed, a digest of the input file). The
/// same inputs and seed give a byte-identical file. Use `moeplace eval` to replay
/// held-out traces against it and `moeplace export` to hand it to an engine.
///
/// Examples:
///   moeplace plan --placer linear --stats calib.json --gpus 16 --nodes 4 -o linear.json
///   moeplace plan --placer round-robin --trace calib.jsonl --machine h100 --nodes 2 \
///       --slots-per-gpu 17 -o rr.json
///   moeplace plan --placer eplb --stats sglang_logical_count.json --model deepseek-v3 \
///       --gpus 32 --nodes 4 --slots-per-gpu 9 -o eplb.json
///   moeplace plan --placer tacg+gesr --stats calib.json --gpus 16 --nodes 4 \
///       --slots-per-gpu 5 --family-share law=0.7 -o law-surge.json
///
/// --stats also takes engine counts: an SGLang `{"logical_count": ...}` JSON file or
/// expert-distribution recorder dump (`.pt`, stat or per_pass mode), a TensorRT-LLM
/// expert statistics folder (add --slot-assignments when taken with the load balancer
/// on) or vLLM `eplb_load_stats` JSONL. Only TensorRT-LLM records top-k; for the others
/// pass --top-k or --model, except for the load-only placers eplb and balance.
///
/// Tuning (the default with --trace): placers with a tuning grid (coact, tacg,
/// tacg+gesr, cluster-homes, grace; `moeplace placers` lists them) choose their own
/// parameters and their serving's (e.g. gesr's tolerance and free first) by K-fold
/// cross-validation over the calibration requests: folds by request, seeded by
/// --seed, every family in every fold; each setting is planned on K-1 folds and
/// replayed on the held-out one as it would be served. The setting with the best
/// mean cut of --objective among those keeping Jain >= --min-jain on every fold is
/// then planned on all calibration requests; the plan records it (parameters,
/// serving, the held-out figures in `notes`, `tune_*`, and every setting tried in
/// `tuning`, which `eval --report` plots) and `plan` prints the figures with their
/// spread over folds. Parameters given with --param are kept
/// fixed. --no-tune plans with the defaults; plans from --stats, or with
/// --family-share, are not tuned (they have no requests to hold out). Tuning holds
/// the calibration trace in memory.
///
/// The plan records which decoder layer each of its rows is (`moe_layers`,
/// `hidden_layers`): as the input recorded it, else as --model / --model-config say,
/// else MoE layer i = decoder layer i (`layer_source: default`). Give the model for
/// models with dense layers (DeepSeek, Llama 4) so that exports are exact.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The placer (see the list in `moeplace plan --help` under --placer).
    #[arg(long, value_name = "NAME", help = placer_help())]
    placer: String,
    /// Calibration statistics from `moeplace profile -o`.
    #[arg(long, value_name = "STATS", conflicts_with = "trace_path", required_unless_present = "trace_path")]
    stats: Option<PathBuf>,
    /// A calibration trace (profiled on the fly).
    #[arg(long = "trace", value_name = "TRACE")]
    trace_path: Option<PathBuf>,
    #[command(flatten)]
    trace: TraceArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// A placer parameter, key=value (repeatable); `moeplace placers NAME` lists a placer's
    /// parameters with their defaults.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// A named operating point of the placer (`moeplace placers NAME` lists them, e.g.
    /// tacg+gesr's min-remote-nodes or shift-robust): placer and serving parameters
    /// set together; --param given as well wins over it. With --trace, tuning varies
    /// only what the preset leaves open.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Expert groups (contiguous ids) for load balancers, EPLB's `num_groups`; the same
    /// as `--param groups=K`. With eplb, groups divisible by --nodes select DeepSeek's
    /// hierarchical policy (groups packed onto nodes), otherwise the global one.
    #[arg(long, value_name = "K")]
    groups: Option<usize>,
    /// Seed for placers that draw random numbers.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Plan for another family mix than the calibration one, FAMILY=SHARE (repeatable;
    /// shares of all tokens, 0 for a family that is gone). The statistics are
    /// re-weighted so that each listed family sends its share; families not listed
    /// split the rest in their calibration proportions. Use it when request counters
    /// show the mix has moved: no new traces are needed (docs/TACG.md, "Re-planned for
    /// the shifted mix").
    #[arg(long = "family-share", value_name = "FAMILY=SHARE")]
    family_shares: Vec<String>,
    /// The plan deployed now, for placers that limit expert moves: `balance` (with
    /// `--param move_slack`), and `coact`, `tacg`, `tacg+gesr` (with `--param stay`).
    #[arg(long, value_name = "PLAN.json")]
    previous: Option<PathBuf>,
    /// What tuning maximises the cut of, against the baseline on held-out folds:
    /// remote-nodes, remote-gpus, bytes or all-to-all-time.
    #[arg(long, value_name = "OBJECTIVE", default_value = "remote-nodes")]
    objective: String,
    /// The Jain index (GPU load) a tuned setting must keep on every held-out fold;
    /// when none does, the most balanced setting is chosen, with a note.
    #[arg(long, value_name = "J", default_value_t = tune::DEFAULT_MIN_JAIN)]
    min_jain: f64,
    /// Folds of the calibration requests for tuning (fewer when a family has fewer
    /// requests).
    #[arg(long, value_name = "K", default_value_t = tune::DEFAULT_FOLDS)]
    folds: usize,
    /// Plan with the placer's defaults (and the --param given) instead of tuning.
    #[arg(long)]
    no_tune: bool,
    /// Where to write the plan (`-`: standard output).
    #[arg(short, long, value_name = "PLAN.json")]
    output: PathBuf,
}

fn placer_help() -> String {
    let list: Vec<String> = registry().iter().map(|p| format!("{} ({})", p.name(), p.about())).collect();
    format!("The placer: {}", list.join("; "))
}

/// A spinner line on stderr for a step that may take seconds (hidden when stderr is
/// not a terminal).
fn spinner(msg: String) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    pb.set_message(msg);
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

/// Reads the calibration input into statistics, with the digest of the input's
/// bytes (the plan's `input_digest`). `loads_only`: the placer reads only expert
/// loads, so engine counts need no top-k (1 stands in for it). `parts`: what of a
/// statistics file the placer reads; the rest is not decoded.
pub fn calibration(
    stats: Option<&PathBuf>,
    trace: Option<&PathBuf>,
    args: &TraceArgs,
    model: Option<&ModelDescription>,
    loads_only: bool,
    parts: Parts,
) -> Result<(Statistics, String)> {
    match (stats, trace) {
        (Some(s), _) => {
            let mut args = args.clone();
            if loads_only && args.top_k.is_none() && model.is_none() && engine_counts(s, &args, None).is_some() {
                args.top_k = Some(1);
            }
            let pb = spinner(format!("reading {}", s.display()));
            let read = read_statistics_parts(s, &args, model, parts);
            pb.finish_and_clear();
            read
        }
        (None, Some(t)) => {
            let stats = profile_inputs(std::slice::from_ref(t), args, model, ProfileOptions::default())?;
            Ok((stats, plan_file::digest_file(t)?))
        }
        (None, None) => bail!("give --stats or --trace"),
    }
}

/// Runs a placer and returns the plan (shared with `demo`). `step_loads` are the
/// loads per step when the input had them (engine dumps); otherwise the loads are
/// the statistics' totals. `input_digest` names the calibration input in the plan.
#[allow(clippy::too_many_arguments)]
pub fn make_plan(
    placer: &str,
    stats: &Statistics,
    input_digest: String,
    step_loads: Option<&ExpertLoads>,
    cluster: &moeplace_core::cluster::Cluster,
    params: &Params,
    seed: u64,
    previous: Option<&moeplace_core::placement::Placement>,
) -> Result<Plan> {
    let p = by_name(placer).ok_or_else(|| {
        let names: Vec<&str> = registry().iter().map(|p| p.name()).collect();
        anyhow::anyhow!("unknown placer {placer:?} (known: {})", names.join(", "))
    })?;
    let totals;
    let loads = match step_loads {
        Some(l) => l,
        None => {
            totals = stats.loads(|_| true);
            &totals
        }
    };
    let input = PlacerInput { shape: stats.shape(), cluster, loads, stats: Some(stats), previous, params, seed };
    let out = p.place(&input).with_context(|| format!("placer {placer}"))?;
    Ok(Plan::from_placer(out, cluster.nodes, placer, params, seed, input_digest, stats.layer_map().cloned()))
}

pub fn run(args: Args) -> Result<()> {
    let inputs: Vec<&std::path::Path> = [&args.stats, &args.trace_path, &args.previous, &args.cluster.cluster]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect();
    crate::output::check_output_of(&args.output, &inputs)?;
    let shares = parse_family_shares(args.family_shares.iter().map(String::as_str)).context("--family-share")?;
    let objective = Objective::parse(&args.objective).ok_or_else(|| {
        anyhow::anyhow!("--objective {:?}: unknown objective (known: {})", args.objective, Objective::NAMES.join(", "))
    })?;
    if !(args.min_jain > 0.0 && args.min_jain <= 1.0) {
        bail!("--min-jain {}: the Jain index lies in (0, 1]; give a floor in that range", args.min_jain);
    }
    if args.folds < 2 {
        bail!("--folds {}: cross-validation needs at least 2 folds", args.folds);
    }
    let model = args.model.resolve()?;
    let placer = by_name(&args.placer);
    let preset = match (&args.preset, &placer) {
        (Some(name), Some(p)) => Some(moeplace_core::placers::preset(p.as_ref(), name).context("--preset")?),
        _ => None,
    };
    let loads_only = placer.as_ref().is_some_and(|p| p.loads_only());
    let parts = placer.as_ref().map_or(Parts::ALL, |p| p.needs());
    let (mut stats, digest) =
        calibration(args.stats.as_ref(), args.trace_path.as_ref(), &args.trace, model.as_ref(), loads_only, parts)?;
    if !shares.is_empty() {
        stats = stats.with_family_shares(&shares).context("--family-share")?;
    }
    let shape = stats.shape();
    let cluster = args.cluster.resolve(shape.experts)?;
    let mut params = Params::parse(args.params.iter().map(String::as_str))?;
    if let Some(preset) = &preset {
        params = params.over(&preset.placer_params());
    }
    let serving_params = preset.as_ref().map(|p| p.serving_params()).unwrap_or_default();
    if let Some(k) = args.groups {
        if params.0.contains_key("groups") {
            bail!("give the number of groups once: --groups or --param groups=K, not both");
        }
        params.0.insert("groups".into(), k.to_string());
    }
    // The model's expert groups are EPLB's num_groups, as DeepSeek's EPLB takes them.
    if let Some(g) = model.as_ref().and_then(|m| m.groups).filter(|g| g.n_group > 1) {
        if args.placer == "eplb" && !params.0.contains_key("groups") {
            params.0.insert("groups".into(), g.n_group.to_string());
        }
    }
    let previous = match &args.previous {
        Some(p) => {
            let prev = plan_file::read(p)?;
            if prev.placement.experts() != shape.experts || prev.placement.layers() != shape.layers {
                bail!("{}: the previous plan is for another model shape than the statistics ({shape})", p.display());
            }
            // Slot moves compare slot by slot, so the layouts must match.
            let q = &prev.placement;
            if q.gpus() != cluster.gpus || q.slots() != cluster.slots() {
                bail!(
                    "{}: the previous plan has {} GPUs with {} slots per layer, the cluster {} with {}; slot moves \
                     are counted only between plans of the same layout",
                    p.display(),
                    q.gpus(),
                    q.slots(),
                    cluster.gpus,
                    cluster.slots()
                );
            }
            Some(prev.placement)
        }
        None => None,
    };
    // Engine dumps keep their steps, for placers that balance per step.
    let step_loads = match &args.stats {
        Some(p) => engine_counts(p, &args.trace, model.as_ref()).transpose()?.map(|c| c.loads),
        None => None,
    };
    let fixed = tune::Fixed { placer: params.clone(), serving: serving_params.clone() };
    let tunable = placer.as_ref().filter(|p| {
        let (settings, servings) = tune::candidates(p.as_ref(), &fixed);
        settings.len() * servings.len() > 1
    });
    let tuned = match (tunable, &args.trace_path) {
        (Some(p), Some(path)) if !args.no_tune && shares.is_empty() => {
            let options = TuneOptions {
                objective,
                min_jain: args.min_jain,
                folds: args.folds,
                seed: args.seed,
                profile: ProfileOptions::default(),
            };
            tune_on(p.as_ref(), path, &args, model.as_ref(), &cluster, &fixed, options, previous.as_ref())?
        }
        (Some(_), _) if !args.no_tune => {
            eprintln!(
                "note: {} plans with its defaults (and the --param given): {}",
                args.placer,
                if shares.is_empty() {
                    "tuning needs the calibration requests (--trace), not statistics"
                } else {
                    "tuning replays calibration requests, which --family-share re-weights"
                }
            );
            None
        }
        _ => None,
    };
    if let Some(t) = &tuned {
        params = t.chosen().setting.params.clone();
    }
    let pb = spinner(format!("placing with {} ({shape} on {} GPUs)", args.placer, cluster.gpus));
    let plan =
        make_plan(&args.placer, &stats, digest, step_loads.as_ref(), &cluster, &params, args.seed, previous.as_ref());
    pb.finish_and_clear();
    let mut plan = plan?;
    plan.notes.extend(shares.iter().map(|(f, s)| (format!("family_share_{f}"), *s)));
    if let Some(serving) = plan.serving.as_mut() {
        serving.params = serving_params.over(&serving.params);
    }
    if let Some(t) = &tuned {
        plan.serving = Some(t.chosen().setting.serving.clone());
        plan.notes.extend(t.notes());
        plan.tuning = Some(plan_file::Tuning::from_tuned(t));
    }
    plan_file::write(&args.output, &plan)?;
    let p = &plan.placement;
    let f = load_figures(p, &stats.loads(|_| true));
    eprintln!(
        "calibration loads (each expert's load split evenly over its copies): max/mean {:.4} (lower bound {:.4}), \
         balancedness vLLM {:.4}, SGLang {:.4}",
        f.max_over_mean, f.bound_max_over_mean, f.balancedness_vllm, f.balancedness_sglang
    );
    if let (Some(before), Some(after)) = (plan.notes.get("refine_before"), plan.notes.get("refine_after")) {
        eprintln!(
            "token-level refinement: expected remote nodes + remote GPUs per sampled token-layer {before:.4} -> \
             {after:.4} ({:.1} swaps per layer)",
            plan.notes.get("refine_swaps").copied().unwrap_or(0.0)
        );
    } else if plan.notes.contains_key(REFINE_SKIPPED_NOTE) {
        eprintln!(
            "note: the statistics carry no token-path sample (written by an older moeplace, or profiled with \
             --token-sample 0), so {} skipped its token-level steps; profile the traces again to get them",
            args.placer
        );
    }
    if let Some(&n) = plan.notes.get(SPLIT_GROUPS_NOTE).filter(|&&n| n > 0.0) {
        eprintln!(
            "warning: the traffic shares do not allow whole nodes per group: {n} GPU group(s) of {} span more \
             nodes than their size needs and pay cross-node sends for their own experts (the split chosen costs \
             least)",
            args.placer
        );
    }
    if let Some(t) = &tuned {
        print_tuned(t);
    }
    if let Some(l) = step_loads.as_ref().filter(|l| l.steps.len() > 1) {
        eprintln!("per step ({} steps): max/mean {:.4}", l.steps.len(), per_step_max_over_mean(p, l));
    }
    eprintln!(
        "{}: {} layers, {} experts on {} GPUs in {} nodes, {} slots per layer ({} redundant){}",
        args.output.display(),
        p.layers(),
        p.experts(),
        p.gpus(),
        plan.num_nodes,
        p.slots(),
        p.slots() - p.experts(),
        previous
            .as_ref()
            .map(|q| format!(", {} slot moves from the previous plan", p.moves_from(q)))
            .unwrap_or_default()
    );
    let m = &plan.layers;
    eprintln!(
        "rows are decoder layers {} of {} hidden layers (layer_source: {}){}",
        span(m.moe_layers()),
        m.hidden_layers(),
        plan_file::layer_source_name(m.source()),
        if m.source() == moeplace_core::model::LayerSource::Assumed {
            "; give --model or --model-config if the model has dense layers"
        } else {
            ""
        }
    );
    Ok(())
}

/// Cross-validates `placer`'s settings on the calibration trace at `path` (read
/// whole), with a progress bar over (placer settings x folds). None, with a note,
/// when the trace has too few requests to hold any out: the plan then takes the
/// defaults, as with --no-tune.
#[allow(clippy::too_many_arguments)]
fn tune_on(
    placer: &dyn moeplace_core::placers::Placer,
    path: &std::path::Path,
    args: &Args,
    model: Option<&ModelDescription>,
    cluster: &moeplace_core::cluster::Cluster,
    fixed: &tune::Fixed,
    options: TuneOptions,
    previous: Option<&moeplace_core::placement::Placement>,
) -> Result<Option<Tuned>> {
    let trace = read_trace_for(path, &args.trace, model)?;
    let k = match tune::folds(&trace, options.folds, options.seed) {
        Ok(k) => k,
        Err(e) => {
            eprintln!(
                "note: {} plans with its defaults (and the --param given): {}: {e}",
                placer.name(),
                path.display()
            );
            return Ok(None);
        }
    };
    let pb = indicatif::ProgressBar::new(tune::jobs(placer, fixed, k.len()) as u64);
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} plans ({eta} left)")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_message(format!("tuning {} ({}-fold cross-validation)", placer.name(), k.len()));
    let tuned = tune::cross_validate(placer, &trace, cluster, fixed, options, previous, &|| pb.inc(1));
    pb.finish_and_clear();
    match tuned {
        // A parameter the user gave is wrong in every setting: say so as planning would.
        Err(tune::TuneError::Place { error: error @ moeplace_core::placers::PlaceError::BadParam(_), .. }) => {
            Err(anyhow::Error::new(error).context(format!("{}: --param", placer.name())))
        }
        t => t.map(Some).with_context(|| format!("tuning {} on {}", placer.name(), path.display())),
    }
}

/// What tuning chose and the held-out figures it expects, on stderr.
fn print_tuned(t: &Tuned) {
    let o = t.options;
    let c = t.chosen();
    let (cut, jain) = (c.cut(), c.jain());
    eprintln!(
        "tuned by {}-fold cross-validation over the calibration requests: {} settings, objective {} ({}), Jain >= {} \
         on every fold",
        t.folds,
        t.scores.len(),
        o.objective.name(),
        o.objective.describe(),
        o.min_jain
    );
    eprintln!("settings tried ({} cut % and Jain: mean, least over folds):", o.objective.name());
    for (i, s) in t.scores.iter().enumerate() {
        eprintln!(
            "  {} {:>6.1} {:>6.1}  {:.4} {:.4}  {}",
            if i == t.chosen { '*' } else { ' ' },
            s.cut().mean,
            s.cut().min,
            s.jain().mean,
            s.jain().min,
            s.setting.label()
        );
    }
    eprintln!("chosen: {}", c.setting.label());
    eprintln!(
        "expected on requests the plan has not seen (mean, min..max over {} folds): {} cut {:.1}% ({:.1}..{:.1}), \
         Jain {:.4} ({:.4}..{:.4})",
        t.folds,
        o.objective.name(),
        cut.mean,
        cut.min,
        cut.max,
        jain.mean,
        jain.min,
        jain.max
    );
    if !t.held {
        eprintln!(
            "note: no setting keeps Jain >= {} on every fold; chose the most balanced one (least Jain {:.4}); lower \
             --min-jain, or give more slots per GPU",
            o.min_jain, jain.min
        );
    }
}

/// `a..=b` when ids are consecutive, else the list.
pub fn span(ids: &[usize]) -> String {
    match (ids.first(), ids.last()) {
        (Some(&a), Some(&b)) if b - a + 1 == ids.len() => format!("{a}..={b}"),
        _ => format!("{ids:?}"),
    }
}
