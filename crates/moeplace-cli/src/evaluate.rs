//! Side-by-side evaluation shared by `eval` and `demo`: replay one test stream
//! against several plans and the linear baseline, compute "cut" columns, print the
//! table, the JSON and the HTML report.
//!
//! The baseline and the metrics are the protocol's (`moeplace_core::protocol`).

use anyhow::{Context, Result};
use moeplace_core::cluster::Cluster;
use moeplace_core::gpu_load::bound_max_over_mean;
use moeplace_core::placement::Placement;
use moeplace_core::placers::Params;
use moeplace_core::protocol::{self, METRICS};
use moeplace_core::serving::{Homes, Serving};
use moeplace_core::simulate::{cut_percent, HomePolicy, Replay, SimResult};
use moeplace_core::stats::ExpertLoads;
use moeplace_core::trace::{ModelShape, Trace};
use moeplace_formats::plan_file::{Plan, Tuning};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// `--homes` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HomesArg {
    /// Round-robin over all GPUs.
    Rr,
    /// By the plan's family_gpus (plans without it: round-robin).
    Family,
}

impl From<HomesArg> for Homes {
    fn from(h: HomesArg) -> Homes {
        match h {
            HomesArg::Rr => Homes::RoundRobin,
            HomesArg::Family => Homes::Family,
        }
    }
}

/// The flags that change how plans are served (`eval`, `demo`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServingArgs {
    /// Serve every plan with this dispatcher instead of the one it names: primary,
    /// random, nearest, grace, gesr (`moeplace placers` describes them).
    #[arg(long, value_name = "NAME")]
    pub dispatcher: Option<String>,
    /// A dispatcher parameter (repeatable), on top of the plan's (e.g. gesr's
    /// theta=1.5, free_first=true; `moeplace placers` lists them).
    #[arg(long = "dispatcher-param", value_name = "KEY=VALUE")]
    pub dispatcher_params: Vec<String>,
    /// Where requests are served, instead of what each plan says: rr (round-robin
    /// over all GPUs) or family (by the plan's family_gpus; round-robin for plans or
    /// families without it).
    #[arg(long, value_enum)]
    pub homes: Option<HomesArg>,
}

impl ServingArgs {
    pub fn overrides(&self) -> Result<ServingOverride> {
        let params = Params::parse(self.dispatcher_params.iter().map(String::as_str)).context("--dispatcher-param")?;
        if let Some(d) = &self.dispatcher {
            anyhow::ensure!(
                moeplace_core::dispatch::names().contains(&d.as_str()),
                "unknown dispatcher {d:?} (known: {})",
                moeplace_core::dispatch::names().join(", ")
            );
        }
        Ok(ServingOverride { dispatcher: self.dispatcher.clone(), params, homes: self.homes.map(Homes::from) })
    }
}

/// What the command line changes in the serving each plan names.
#[derive(Clone, Debug, Default)]
pub struct ServingOverride {
    /// Another dispatcher (its parameters: `params`, else its defaults).
    pub dispatcher: Option<String>,
    /// Dispatcher parameters set on top of the plan's (or replacing them with
    /// `dispatcher`).
    pub params: Params,
    pub homes: Option<Homes>,
}

impl ServingOverride {
    /// The serving of `plan` with these changes; says on stderr when the plan names
    /// none (`label` names the plan).
    pub fn apply(&self, label: &str, plan: &Plan) -> Result<Serving> {
        let mut s = match &plan.serving {
            Some(s) => s.clone(),
            None => {
                let d = Serving::default();
                if self.dispatcher.is_none() || self.homes.is_none() {
                    eprintln!(
                        "{label}: the plan does not say how it is served (written before plans did); \
                         serving it with the default: {}",
                        d.label()
                    );
                }
                d
            }
        };
        if let Some(d) = &self.dispatcher {
            if *d != s.dispatcher {
                s.dispatcher = d.clone();
                s.params = Params::default();
            }
        }
        for (k, v) in &self.params.0 {
            s.params.0.insert(k.clone(), v.clone());
        }
        if let Some(h) = self.homes {
            s.homes = h;
        }
        s.check().with_context(|| format!("serving {label}"))?;
        Ok(s)
    }
}

/// One evaluated plan.
pub struct Row {
    pub label: String,
    pub placer: String,
    /// The placer's parameters, as the plan records them.
    pub parameters: BTreeMap<String, String>,
    pub serving: Serving,
    pub placement: Placement,
    pub result: SimResult,
    /// Index into [`Evaluation::baselines`].
    pub baseline: usize,
    /// What tuning tried, when the plan records it.
    pub tuning: Option<Tuning>,
}

pub struct Evaluation {
    pub tokens: usize,
    pub baselines: Vec<(Cluster, Placement, SimResult)>,
    pub rows: Vec<Row>,
    /// Picks per (layer, expert) of the replayed stream, for the lower bound.
    pub loads: ExpertLoads,
}

/// Replays `trace` against every plan (with `links` giving link figures for a plan's
/// layout) and the baseline of each distinct layout.
pub fn evaluate(
    trace: &Trace,
    plans: &[(String, Plan)],
    overrides: &ServingOverride,
    seed: u64,
    links: &dyn Fn(usize, usize, usize) -> Result<Cluster>,
) -> Result<Evaluation> {
    evaluate_windows(trace.shape, plans, overrides, seed, links, |feed| feed(trace))
}

/// A stream window by window: `source` hands each window of the stream, in order, to
/// the function it is given. Memory stays bounded by one window (docs/DESIGN.md,
/// "Evaluation protocol"; each plan and baseline replayed with `simulate::Replay`).
pub fn evaluate_windows(
    shape: ModelShape,
    plans: &[(String, Plan)],
    overrides: &ServingOverride,
    seed: u64,
    links: &dyn Fn(usize, usize, usize) -> Result<Cluster>,
    source: impl FnOnce(&mut dyn FnMut(&Trace) -> Result<()>) -> Result<()>,
) -> Result<Evaluation> {
    let mut baselines: Vec<(Cluster, Placement)> = Vec::new();
    let mut setups = Vec::new();
    for (label, plan) in plans {
        let p = &plan.placement;
        let cluster = links(plan.num_nodes, p.gpus(), p.slots())?;
        let b = match baselines.iter().position(|(c, _)| c.gpus == cluster.gpus && c.nodes == cluster.nodes) {
            Some(i) => i,
            None => {
                baselines.push(protocol::baseline_layout(shape.layers, shape.experts, &cluster)?);
                baselines.len() - 1
            }
        };
        let serving = overrides.apply(label, plan)?;
        let dispatcher = serving.dispatcher(seed)?;
        let policy = serving.home_policy(plan.family_gpus.as_ref());
        setups.push((cluster, dispatcher, policy, serving, b));
    }
    let mut base_replays = baselines
        .iter()
        .map(|(c, p)| Replay::new(shape, p, c, protocol::BASELINE_DISPATCHER, &protocol::BASELINE_HOMES))
        .collect::<Result<Vec<_>, _>>()?;
    let mut replays = Vec::new();
    for ((label, plan), (cluster, dispatcher, policy, _, _)) in plans.iter().zip(&setups) {
        replays.push(
            Replay::new(shape, &plan.placement, cluster, dispatcher.as_ref(), policy)
                .with_context(|| format!("replaying {label}"))?,
        );
    }
    let mut tokens = 0;
    let mut families: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut loads = ExpertLoads {
        layers: shape.layers,
        experts: shape.experts,
        steps: vec![vec![0.0; shape.layers * shape.experts]],
    };
    source(&mut |window: &Trace| {
        tokens += window.tokens();
        for b in &window.batches {
            families.extend(b.family_names().iter().cloned());
        }
        for r in base_replays.iter_mut() {
            r.feed(window)?;
        }
        for (r, (label, _)) in replays.iter_mut().zip(plans) {
            r.feed(window).with_context(|| format!("replaying {label}"))?;
        }
        let w = ExpertLoads::from_trace(window);
        loads.steps[0].iter_mut().zip(&w.steps[0]).for_each(|(a, b)| *a += b);
        Ok(())
    })?;
    warn_unknown_families(plans, &setups, &families);
    let mut base_results = Vec::new();
    for ((c, p), r) in baselines.iter().zip(base_replays) {
        base_results.push((c.clone(), p.clone(), r.finish()?));
    }
    let mut rows = Vec::new();
    for (((label, plan), (_, _, _, serving, b)), r) in plans.iter().zip(&setups).zip(replays) {
        rows.push(Row {
            label: label.clone(),
            placer: plan.provenance.placer.clone(),
            parameters: plan.provenance.parameters.clone(),
            serving: serving.clone(),
            placement: plan.placement.clone(),
            result: r.finish().with_context(|| format!("replaying {label}"))?,
            baseline: *b,
            tuning: plan.tuning.clone(),
        });
    }
    Ok(Evaluation { tokens, baselines: base_results, rows, loads })
}

/// Says on stderr which of the trace's families a plan homed by family has no GPUs
/// for: their requests are homed round-robin over all GPUs, away from the groups the
/// plan built, so its figures for them are not what the plan was made for.
fn warn_unknown_families<D, S, B>(
    plans: &[(String, Plan)],
    setups: &[(Cluster, D, HomePolicy, S, B)],
    families: &std::collections::BTreeSet<String>,
) {
    for ((label, _), (_, _, policy, _, _)) in plans.iter().zip(setups) {
        if let HomePolicy::Family(map) = policy {
            let unknown: Vec<&str> = families.iter().filter(|f| !map.contains_key(*f)).map(String::as_str).collect();
            if !unknown.is_empty() {
                eprintln!(
                    "warning: {label} homes requests by family but has no GPUs for famil{} {} of this trace; \
                     their requests are homed round-robin over all GPUs",
                    if unknown.len() == 1 { "y" } else { "ies" },
                    unknown.join(", ")
                );
            }
        }
    }
}

impl Evaluation {
    /// The best max/mean any placement with `p`'s GPUs and slots could reach on the
    /// replayed picks (copies splitting an expert's load evenly).
    fn bound_max_over_mean(&self, p: &Placement) -> f64 {
        bound_max_over_mean(&self.loads, p.gpus(), p.slots())
    }

    /// One text table: a column per plan (the first is the baseline), a row per metric,
    /// cut rows under the traffic metrics.
    pub fn table(&self) -> String {
        let mut cols: Vec<(String, &SimResult, Option<&SimResult>)> = Vec::new();
        let mut layouts: Vec<&Placement> = Vec::new();
        for (i, (c, p, r)) in self.baselines.iter().enumerate() {
            layouts.push(p);
            let name = if self.baselines.len() > 1 {
                format!("baseline{i} ({}x{})", c.nodes, c.gpus)
            } else {
                "baseline".into()
            };
            cols.push((name, r, None));
        }
        for row in &self.rows {
            layouts.push(&row.placement);
            cols.push((row.label.clone(), &row.result, Some(&self.baselines[row.baseline].2)));
        }
        let mut lines: Vec<(String, Vec<String>)> = Vec::new();
        for m in METRICS {
            let get = m.get;
            lines.push((m.label.to_string(), cols.iter().map(|(_, r, _)| format!("{:.4}", get(r))).collect()));
            if m.cut {
                lines.push((
                    "  cut vs baseline %".to_string(),
                    cols.iter()
                        .map(|(_, r, b)| match b.and_then(|b| cut_percent(get(r), get(b))) {
                            Some(c) => format!("{c:.1}"),
                            None => "-".into(),
                        })
                        .collect(),
                ));
            }
        }
        lines.push((
            "  lower bound of max/mean (these GPUs and slots)".into(),
            layouts.iter().map(|p| format!("{:.4}", self.bound_max_over_mean(p))).collect(),
        ));
        lines.push((
            "GB moved (dispatch+combine)".into(),
            cols.iter().map(|(_, r, _)| format!("{:.3}", r.bytes as f64 / 1e9)).collect(),
        ));
        let gb = |x: u64| format!("{:.3}", x as f64 / 1e9);
        lines.push(("  inter-node GB (flat)".into(), cols.iter().map(|(_, r, _)| gb(r.inter_node_bytes)).collect()));
        lines.push(("  intra-node GB (flat)".into(), cols.iter().map(|(_, r, _)| gb(r.intra_node_bytes)).collect()));
        lines.push((
            "  inter-node GB (hierarchical)".into(),
            cols.iter().map(|(_, r, _)| gb(r.hier_inter_node_bytes)).collect(),
        ));
        lines.push((
            "  intra-node GB (hierarchical)".into(),
            cols.iter().map(|(_, r, _)| gb(r.hier_intra_node_bytes)).collect(),
        ));
        lines.push((
            "all-to-all time, ms (est.)".into(),
            cols.iter().map(|(_, r, _)| format!("{:.3}", r.all_to_all_us / 1e3)).collect(),
        ));
        lines.push((
            "  hierarchical, ms (est.)".into(),
            cols.iter().map(|(_, r, _)| format!("{:.3}", r.hier_all_to_all_us / 1e3)).collect(),
        ));
        lines.push((
            "expert compute, ms (est.)".into(),
            cols.iter().map(|(_, r, _)| format!("{:.3}", r.compute_us / 1e3)).collect(),
        ));
        let w0 = lines.iter().map(|l| l.0.len()).max().unwrap_or(0).max(6);
        let widths: Vec<usize> = (0..cols.len())
            .map(|c| cols[c].0.len().max(lines.iter().map(|l| l.1[c].len()).max().unwrap_or(0)))
            .collect();
        let mut s = format!("{} tokens; baseline: primary copies, homes round-robin\n", self.tokens);
        for row in &self.rows {
            s.push_str(&format!("{} ({}): served with {}\n", row.label, row.placer, row.serving.label()));
        }
        s.push_str(&format!("{:w0$}", "metric"));
        for (c, (name, _, _)) in cols.iter().enumerate() {
            s.push_str(&format!("  {:>w$}", name, w = widths[c]));
        }
        s.push('\n');
        for (label, vals) in &lines {
            s.push_str(&format!("{label:w0$}"));
            for (c, v) in vals.iter().enumerate() {
                s.push_str(&format!("  {:>w$}", v, w = widths[c]));
            }
            s.push('\n');
        }
        s
    }

    /// The JSON document of `eval --json`.
    pub fn json(&self) -> Value {
        let metrics = |r: &SimResult, b: Option<&SimResult>| {
            let mut m = serde_json::Map::new();
            for metric in METRICS {
                let (key, get) = (metric.key, metric.get);
                m.insert(key.to_string(), json!(get(r)));
                if let Some(b) = b {
                    m.insert(format!("cut_{key}"), json!(cut_percent(get(r), get(b))));
                }
            }
            m.insert("bytes".into(), json!(r.bytes));
            m.insert("all_to_all_ms".into(), json!(r.all_to_all_us / 1e3));
            m.insert("hier_all_to_all_ms".into(), json!(r.hier_all_to_all_us / 1e3));
            m.insert("inter_node_bytes".into(), json!(r.inter_node_bytes));
            m.insert("intra_node_bytes".into(), json!(r.intra_node_bytes));
            m.insert("hier_inter_node_bytes".into(), json!(r.hier_inter_node_bytes));
            m.insert("hier_intra_node_bytes".into(), json!(r.hier_intra_node_bytes));
            m.insert("compute_ms".into(), json!(r.compute_us / 1e3));
            m.insert("counts".into(), serde_json::to_value(&r.counts).expect("counts serialise"));
            m.insert(
                "per_layer_remote_sends".into(),
                json!(r.layers.iter().map(|l| l.remote_sends).collect::<Vec<_>>()),
            );
            m
        };
        let plans: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let mut m = metrics(&row.result, Some(&self.baselines[row.baseline].2));
                m.insert("plan".into(), json!(row.label));
                m.insert("placer".into(), json!(row.placer));
                m.insert(
                    "serving".into(),
                    json!({
                        "dispatcher": row.serving.dispatcher,
                        "parameters": row.serving.params.0,
                        "homes": row.serving.homes.name(),
                    }),
                );
                m.insert("baseline".into(), json!(row.baseline));
                m.insert("bound_max_over_mean".into(), json!(self.bound_max_over_mean(&row.placement)));
                Value::Object(m)
            })
            .collect();
        let baselines: Vec<Value> = self
            .baselines
            .iter()
            .map(|(c, p, r)| {
                let mut m = metrics(r, None);
                m.insert("bound_max_over_mean".into(), json!(self.bound_max_over_mean(p)));
                m.insert("gpus".into(), json!(c.gpus));
                m.insert("nodes".into(), json!(c.nodes));
                Value::Object(m)
            })
            .collect();
        json!({
            "tokens": self.tokens,
            "baselines": baselines,
            "plans": plans,
        })
    }
}

/// The statistics of `trace` the report shows (co-activation; no request vectors).
pub fn report_statistics(trace: &Trace) -> Result<moeplace_core::stats::Statistics> {
    use moeplace_core::stats::{ProfileOptions, Statistics};
    Ok(Statistics::from_batches(
        trace.shape,
        ProfileOptions { request_vectors: false, ..Default::default() },
        &trace.batches,
    )?)
}

/// Writes the HTML report of `eval`, with the co-activation of `stats` (the replayed
/// stream's, [`report_statistics`]) at `layer` (default the middle layer).
pub fn write_report(
    path: &std::path::Path,
    eval: &Evaluation,
    stats: &moeplace_core::stats::Statistics,
    layer: Option<usize>,
) -> Result<()> {
    use moeplace_core::stats::pair_count;
    use moeplace_formats::report_html::{self, ReportInput, ReportPlan};
    let shape = stats.shape();
    let layer = layer.unwrap_or(shape.layers / 2);
    if layer >= shape.layers {
        anyhow::bail!("--report-layer {layer}: the trace has {} layers", shape.layers);
    }
    let pooled = stats.pooled(|_| true);
    let pc = pair_count(shape.experts);
    let coact = if pooled.coact.is_empty() { &[][..] } else { &pooled.coact[layer * pc..(layer + 1) * pc] };
    let summary = eval.table();
    // The baseline is served as the protocol replays it: primary copies, homes round-robin.
    let base_serving = Serving::new("primary", Homes::RoundRobin);
    let no_params = BTreeMap::new();
    let base_name = |i: usize| if i == 0 { "baseline (linear)" } else { "baseline (other layout)" };
    let mut plans: Vec<ReportPlan<'_>> = Vec::new();
    for (i, (c, p, r)) in eval.baselines.iter().enumerate() {
        plans.push(ReportPlan {
            label: base_name(i),
            placer: "linear (the protocol's baseline)",
            parameters: &no_params,
            serving: &base_serving,
            nodes: c.nodes,
            placement: p,
            result: r,
            baseline: None,
            bound_max_over_mean: eval.bound_max_over_mean(p),
            tuning: None,
        });
    }
    for row in &eval.rows {
        plans.push(ReportPlan {
            label: &row.label,
            placer: &row.placer,
            parameters: &row.parameters,
            serving: &row.serving,
            nodes: eval.baselines[row.baseline].0.nodes,
            placement: &row.placement,
            result: &row.result,
            baseline: Some(&eval.baselines[row.baseline].2),
            bound_max_over_mean: eval.bound_max_over_mean(&row.placement),
            tuning: row.tuning.as_ref(),
        });
    }
    let input = ReportInput {
        title: "moeplace evaluation",
        summary: &summary,
        tokens: eval.tokens as u64,
        plans,
        coact_layer: layer,
        coact,
        experts: shape.experts,
    };
    report_html::write(path, &input)?;
    Ok(())
}
