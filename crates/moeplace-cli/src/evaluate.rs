//! Side-by-side evaluation shared by `eval` and `demo`: replay one test stream
//! against several plans and the linear baseline, compute "cut" columns, print the
//! table, the JSON and the HTML report.
//!
//! The baseline (DESIGN.md): the linear placement with no replicas (expert e on GPU
//! e / (E/G)) and requests dealt round-robin over all GPUs, on the same GPUs and nodes
//! as the plan, replayed on the same stream. It has exactly E slots; when G does not
//! divide E, GPU g holds experts [g*E/G, (g+1)*E/G) (counts differ by one).

use anyhow::{Context, Result};
use moeplace_core::balance::bound_max_over_mean;
use moeplace_core::cluster::Cluster;
use moeplace_core::dispatch::{Dispatcher, Primary};
use moeplace_core::placement::Placement;
use moeplace_core::placers::{by_name, Params, PlacerInput};
use moeplace_core::simulate::{cut_percent, simulate, HomePolicy, SimResult};
use moeplace_core::stats::ExpertLoads;
use moeplace_core::trace::Trace;
use moeplace_formats::plan_file::Plan;
use serde_json::{json, Value};

/// How requests find their home in an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Homes {
    /// Round-robin over all GPUs.
    Rr,
    /// By the plan's family_gpus (plans without it: round-robin).
    Family,
}

/// One evaluated plan.
pub struct Row {
    pub label: String,
    pub placer: String,
    pub placement: Placement,
    pub result: SimResult,
    /// Index into [`Evaluation::baselines`].
    pub baseline: usize,
}

pub struct Evaluation {
    pub tokens: usize,
    pub dispatcher: String,
    pub homes: Homes,
    pub baselines: Vec<(Cluster, Placement, SimResult)>,
    pub rows: Vec<Row>,
    /// Picks per (layer, expert) of the replayed stream, for the lower bound.
    pub loads: ExpertLoads,
}

/// The metrics of the JSON output, in table order: (key, label, value getter).
pub type Getter = fn(&SimResult) -> f64;
pub const METRICS: &[(&str, &str, Getter)] = &[
    ("remote_gpus", "remote GPUs / token-layer", |r| r.remote_gpus),
    ("remote_nodes", "remote nodes / token-layer", |r| r.remote_nodes),
    ("cross_node_gpus", "cross-node GPUs / token-layer", |r| r.cross_node_gpus),
    ("remote_hops", "remote hops / token-layer", |r| r.remote_hops),
    ("jain", "Jain (load)", |r| r.jain),
    ("balancedness", "balancedness SGLang (mean of mean/max)", |r| r.balancedness),
    ("balancedness_vllm", "balancedness vLLM (sum mean/sum max)", balancedness_vllm),
    ("maxvio", "MaxVio (max/mean - 1)", |r| r.maxvio),
    ("max_over_mean", "max/mean (mean over layers)", |r| r.maxvio + 1.0),
    ("home_max_over_mean", "home load max/mean", |r| r.home_max_over_mean),
];

/// vLLM's balancedness: sum over layers of the mean GPU load / sum over layers of the
/// maximum GPU load (1 when nothing is served).
fn balancedness_vllm(r: &SimResult) -> f64 {
    let (mut mean, mut max) = (0.0, 0.0);
    for l in &r.layers {
        mean += l.load.iter().sum::<u64>() as f64 / l.load.len().max(1) as f64;
        max += l.load.iter().copied().max().unwrap_or(0) as f64;
    }
    if max > 0.0 {
        mean / max
    } else {
        1.0
    }
}

/// The no-replica linear placement for `cluster`'s GPUs.
pub fn baseline_placement(layers: usize, experts: usize, nodes: usize, gpus: usize) -> Result<(Cluster, Placement)> {
    let cluster = Cluster::new(nodes, gpus, 1)?.with_slots(experts)?;
    let shape = moeplace_core::trace::ModelShape::new(layers, experts, 1)?;
    let loads = ExpertLoads::new(layers, experts, vec![vec![1.0; layers * experts]])?;
    let params = Params::default();
    let linear = by_name("linear").context("the linear placer is registered")?;
    let out = linear.place(&PlacerInput {
        shape,
        cluster: &cluster,
        loads: &loads,
        stats: None,
        previous: None,
        params: &params,
        seed: 0,
    })?;
    Ok((cluster, out.placement))
}

/// Replays `trace` against every plan (with `links` giving link figures for a plan's
/// layout) and the baseline of each distinct layout.
pub fn evaluate(
    trace: &Trace,
    plans: &[(String, Plan)],
    dispatcher: &dyn Dispatcher,
    homes: Homes,
    links: &dyn Fn(usize, usize, usize) -> Result<Cluster>,
) -> Result<Evaluation> {
    let shape = trace.shape;
    let mut baselines: Vec<(Cluster, Placement, SimResult)> = Vec::new();
    let mut rows = Vec::new();
    for (label, plan) in plans {
        let p = &plan.placement;
        let cluster = links(plan.num_nodes, p.gpus(), p.slots())?;
        let b = match baselines.iter().position(|(c, _, _)| c.gpus == cluster.gpus && c.nodes == cluster.nodes) {
            Some(i) => i,
            None => {
                let (mut bc, bp) = baseline_placement(shape.layers, shape.experts, cluster.nodes, cluster.gpus)?;
                let slots = bc.slots;
                bc = Cluster { slots, ..cluster.clone() };
                let r = simulate(trace, &bp, &bc, &Primary, &HomePolicy::RoundRobin).context("baseline replay")?;
                baselines.push((bc, bp, r));
                baselines.len() - 1
            }
        };
        let policy = match (homes, &plan.family_gpus) {
            (Homes::Family, Some(f)) => HomePolicy::Family(f.clone()),
            _ => HomePolicy::RoundRobin,
        };
        let result = simulate(trace, p, &cluster, dispatcher, &policy).with_context(|| format!("replaying {label}"))?;
        rows.push(Row {
            label: label.clone(),
            placer: plan.provenance.placer.clone(),
            placement: p.clone(),
            result,
            baseline: b,
        });
    }
    Ok(Evaluation {
        tokens: trace.tokens(),
        dispatcher: dispatcher.name().to_string(),
        homes,
        baselines,
        rows,
        loads: ExpertLoads::from_trace(trace),
    })
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
        for (i, (key, label, get)) in METRICS.iter().enumerate() {
            lines.push((label.to_string(), cols.iter().map(|(_, r, _)| format!("{:.4}", get(r))).collect()));
            if i < 4 || *key == "maxvio" {
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
        let mut s = format!(
            "{} tokens, dispatcher {}, homes {}\n",
            self.tokens,
            self.dispatcher,
            match self.homes {
                Homes::Rr => "round-robin",
                Homes::Family => "by family_gpus",
            }
        );
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
            for (key, _, get) in METRICS {
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
            "dispatcher": self.dispatcher,
            "homes": match self.homes { Homes::Rr => "rr", Homes::Family => "family" },
            "baselines": baselines,
            "plans": plans,
        })
    }
}

/// Writes the HTML report of `eval` for `trace` (the heatmap shows `layer`, default
/// the middle layer).
pub fn write_report(path: &std::path::Path, eval: &Evaluation, trace: &Trace, layer: Option<usize>) -> Result<()> {
    use moeplace_core::stats::{pair_count, ProfileOptions, Statistics};
    use moeplace_formats::report_html::{self, ReportInput, ReportPlan};
    let shape = trace.shape;
    let layer = layer.unwrap_or(shape.layers / 2);
    if layer >= shape.layers {
        anyhow::bail!("--report-layer {layer}: the trace has {} layers", shape.layers);
    }
    let stats = Statistics::from_batches(
        shape,
        ProfileOptions { request_vectors: false, ..Default::default() },
        &trace.batches,
    )?;
    let pooled = stats.pooled(|_| true);
    let pc = pair_count(shape.experts);
    let coact = if pooled.coact.is_empty() { &[][..] } else { &pooled.coact[layer * pc..(layer + 1) * pc] };
    let summary = eval.table();
    let mut plans: Vec<ReportPlan<'_>> = Vec::new();
    for (i, (_, p, r)) in eval.baselines.iter().enumerate() {
        plans.push(ReportPlan {
            label: if i == 0 { "baseline (linear)" } else { "baseline (other layout)" },
            placement: p,
            result: r,
        });
    }
    for row in &eval.rows {
        plans.push(ReportPlan { label: &row.label, placement: &row.placement, result: &row.result });
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
