//! The HTML report of `moeplace eval --report`: one self-contained page (inline SVG
//! drawn by hand, no scripts, no external assets) with
//! - per plan, a card: placer and parameters, cluster, serving, tuning;
//! - the summary table, the best value of each column highlighted;
//! - remote GPUs, remote nodes and inter-node bytes per plan against the baseline;
//! - remote and cross-node sends per token at every layer, one line per plan;
//! - per plan, the load view: each GPU's load over all layers (GPU ids, node
//!   boundaries) above a layer x GPU strip of load against the layer's mean;
//! - per plan, the co-activation of one layer, experts ordered by the GPU of their
//!   first copy, GPU and node boundaries drawn;
//! - per tuned plan, the objective's cut against Jain for every setting tuning tried.
//!
//! The page stays light whatever the model's size: cells of one colour are drawn as
//! one `<path>` (a colour scale of a few levels), and the co-activation of more than
//! [`MAX_BINS`] experts is summed into bins that never straddle a GPU.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use moeplace_core::placement::Placement;
use moeplace_core::serving::Serving;
use moeplace_core::simulate::{cut_percent, SimResult};
use moeplace_core::stats::pair_index;

use crate::atomic;
use crate::error::FormatError;
use crate::plan_file::Tuning;

/// One plan of the report (a baseline has no `baseline`).
pub struct ReportPlan<'a> {
    pub label: &'a str,
    pub placer: &'a str,
    pub parameters: &'a BTreeMap<String, String>,
    pub serving: &'a Serving,
    pub nodes: usize,
    pub placement: &'a Placement,
    pub result: &'a SimResult,
    /// The baseline the plan is compared with.
    pub baseline: Option<&'a SimResult>,
    /// The best max/mean any placement with these GPUs and slots could reach.
    pub bound_max_over_mean: f64,
    pub tuning: Option<&'a Tuning>,
}

/// What the page shows.
pub struct ReportInput<'a> {
    pub title: &'a str,
    /// The full text table (shown folded, preformatted).
    pub summary: &'a str,
    pub tokens: u64,
    pub plans: Vec<ReportPlan<'a>>,
    /// The layer of the heatmap and its co-activation pair counts (`pair_index` order).
    pub coact_layer: usize,
    pub coact: &'a [u64],
    pub experts: usize,
}

/// Most rows and columns of a co-activation heatmap; larger models are binned.
pub const MAX_BINS: usize = 64;

const COLORS: &[&str] =
    &["#666666", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];

/// Sequential scale (white to dark red) for co-activation.
const HEAT: &[&str] = &[
    "#fff5f0", "#fee4d8", "#fdd0bc", "#fcb89d", "#fc9f81", "#fb8464", "#f6694b", "#ee4a36", "#da2f27", "#c0181f",
    "#a10d16", "#7a0510",
];

/// Diverging scale (blue below the mean, white at it, red above) for load.
const DIVERGE: &[&str] =
    &["#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn color(i: usize) -> &'static str {
    COLORS[i % COLORS.len()]
}

/// A number as short SVG text (one decimal, no trailing `.0`).
fn n(x: f64) -> String {
    let s = format!("{x:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

fn svg_open(id: &str, w: f64, h: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"{id}\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\" \
         role=\"img\" font-family=\"sans-serif\" font-size=\"11\"><title>{}</title>",
        n(w),
        n(h),
        n(w),
        n(h),
        esc(title)
    )
}

/// Cells grouped by colour level: one `<path>` per level in use, neighbours of one
/// level in a row merged into one rectangle (balanced rows are mostly one level).
#[derive(Default)]
struct Cells(BTreeMap<usize, Vec<[f64; 4]>>);

impl Cells {
    fn add(&mut self, level: usize, x: f64, y: f64, w: f64, h: f64) {
        let cells = self.0.entry(level).or_default();
        if let Some(last) = cells.last_mut() {
            if last[1] == y && last[3] == h && (last[0] + last[2] - x).abs() < 1e-6 {
                last[2] += w;
                return;
            }
        }
        cells.push([x, y, w, h]);
    }

    fn render(&self, scale: &[&str]) -> String {
        let mut s = String::new();
        for (&level, cells) in &self.0 {
            let _ = write!(s, "<path fill=\"{}\" d=\"", scale[level.min(scale.len() - 1)]);
            for &[x, y, w, h] in cells {
                let _ = write!(s, "M{} {}h{}v{}h{}z", n(x), n(y), n(w), n(h), n(-w));
            }
            s.push_str("\"/>");
        }
        s
    }
}

/// A figure of a plan.
type Figure = fn(&ReportPlan<'_>) -> f64;

/// One column of the summary table.
struct Column {
    header: &'static str,
    get: Figure,
    lower_is_better: bool,
    decimals: usize,
    cut: bool,
    /// Whether the plan's lower bound of max/mean goes under it.
    bound: bool,
}

const GB: f64 = 1e9;

const COLUMNS: &[Column] = &[
    Column {
        header: "remote GPUs / token-layer",
        get: |p| p.result.remote_gpus,
        lower_is_better: true,
        decimals: 4,
        cut: true,
        bound: false,
    },
    Column {
        header: "remote nodes / token-layer",
        get: |p| p.result.remote_nodes,
        lower_is_better: true,
        decimals: 4,
        cut: true,
        bound: false,
    },
    Column {
        header: "cross-node GPUs / token-layer",
        get: |p| p.result.cross_node_gpus,
        lower_is_better: true,
        decimals: 4,
        cut: true,
        bound: false,
    },
    Column {
        header: "inter-node GB (flat)",
        get: |p| p.result.inter_node_bytes as f64 / GB,
        lower_is_better: true,
        decimals: 3,
        cut: true,
        bound: false,
    },
    Column {
        header: "inter-node GB (hierarchical)",
        get: |p| p.result.hier_inter_node_bytes as f64 / GB,
        lower_is_better: true,
        decimals: 3,
        cut: true,
        bound: false,
    },
    Column {
        header: "Jain (load)",
        get: |p| p.result.jain,
        lower_is_better: false,
        decimals: 4,
        cut: false,
        bound: false,
    },
    Column {
        header: "max/mean (bound)",
        get: |p| p.result.maxvio + 1.0,
        lower_is_better: true,
        decimals: 4,
        cut: false,
        bound: true,
    },
    Column {
        header: "home load max/mean",
        get: |p| p.result.home_max_over_mean,
        lower_is_better: true,
        decimals: 4,
        cut: false,
        bound: false,
    },
    Column {
        header: "all-to-all ms (flat, est.)",
        get: |p| p.result.all_to_all_us / 1e3,
        lower_is_better: true,
        decimals: 3,
        cut: true,
        bound: false,
    },
    Column {
        header: "all-to-all ms (hierarchical, est.)",
        get: |p| p.result.hier_all_to_all_us / 1e3,
        lower_is_better: true,
        decimals: 3,
        cut: true,
        bound: false,
    },
    Column {
        header: "expert compute ms (est.)",
        get: |p| p.result.compute_us / 1e3,
        lower_is_better: true,
        decimals: 3,
        cut: false,
        bound: false,
    },
];

/// The value of `get` for a plan's baseline (the plan's own for a baseline).
fn base_of(p: &ReportPlan<'_>, get: Figure) -> Option<f64> {
    p.baseline.map(|b| get(&ReportPlan { result: b, ..*p }))
}

fn cut_text(p: &ReportPlan<'_>, get: Figure) -> Option<String> {
    let b = base_of(p, get)?;
    cut_percent(get(p), b).map(|c| format!("{}{:.1}%", if c >= 0.0 { "\u{2212}" } else { "+" }, c.abs()))
}

fn summary_table(input: &ReportInput<'_>) -> String {
    let mut s = String::from("<div class=\"scroll\"><table id=\"summary\" class=\"summary\"><thead><tr><th>plan</th>");
    for c in COLUMNS {
        let _ = write!(
            s,
            "<th>{}<br><span class=\"dir\">{}</span></th>",
            esc(c.header),
            if c.lower_is_better { "lower is better" } else { "higher is better" }
        );
    }
    s.push_str("</tr></thead><tbody>");
    let shown: Vec<Vec<String>> = COLUMNS
        .iter()
        .map(|c| input.plans.iter().map(|p| format!("{:.*}", c.decimals, (c.get)(p))).collect())
        .collect();
    // The best as shown: every plan showing the best value is highlighted.
    let best: Vec<Option<String>> = COLUMNS
        .iter()
        .zip(&shown)
        .map(|(c, vals)| {
            let finite = input.plans.iter().zip(vals).filter(|(p, _)| (c.get)(p).is_finite());
            let pick = if c.lower_is_better {
                finite.min_by(|a, b| (c.get)(a.0).total_cmp(&(c.get)(b.0)))
            } else {
                finite.max_by(|a, b| (c.get)(a.0).total_cmp(&(c.get)(b.0)))
            };
            pick.map(|(_, v)| v.clone())
        })
        .collect();
    for (i, p) in input.plans.iter().enumerate() {
        let _ = write!(
            s,
            "<tr><th class=\"name\"><span class=\"swatch\" style=\"background:{}\"></span>{}</th>",
            color(i),
            esc(p.label)
        );
        for (k, c) in COLUMNS.iter().enumerate() {
            let v = &shown[k][i];
            let is_best = best[k].as_ref() == Some(v) && input.plans.len() > 1;
            let _ = write!(s, "<td{}>{v}", if is_best { " class=\"best\"" } else { "" });
            if c.cut {
                if let Some(t) = cut_text(p, c.get) {
                    let _ = write!(s, "<span class=\"cut\">{t}</span>");
                }
            }
            if c.bound {
                let _ = write!(s, "<span class=\"cut\">\u{2265} {:.4}</span>", p.bound_max_over_mean);
            }
            s.push_str("</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table></div>");
    s
}

fn kv(map: &BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "defaults".into();
    }
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

fn plan_card(i: usize, p: &ReportPlan<'_>) -> String {
    let pl = p.placement;
    let (g, slots, e) = (pl.gpus(), pl.slots(), pl.experts());
    let per_gpu = match pl.uniform_slots_per_gpu() {
        Some(x) => x.to_string(),
        None => format!("{}-{}", slots / g, slots.div_ceil(g)),
    };
    let mut s = format!(
        "<div class=\"card\" id=\"plan-{i}\" style=\"border-top-color:{}\"><h3>{}</h3><table>",
        color(i),
        esc(p.label)
    );
    let mut row = |k: &str, v: String| {
        let _ = write!(s, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    row("placer", esc(p.placer));
    row("parameters", esc(&kv(p.parameters)));
    row(
        "cluster",
        format!(
            "{g} GPUs in {} node{} ({} per node), {per_gpu} slots per GPU: {slots} per layer for {e} experts ({} \
             redundant)",
            p.nodes,
            if p.nodes == 1 { "" } else { "s" },
            g / p.nodes.max(1),
            slots.saturating_sub(e)
        ),
    );
    row("dispatcher", esc(&format!("{} ({})", p.serving.dispatcher, kv(&p.serving.params.0))));
    row("homes", esc(p.serving.homes.name()));
    if let Some(t) = p.tuning {
        row(
            "tuned",
            esc(&format!(
                "{}-fold cross-validation, {} settings, objective {}, Jain \u{2265} {}{}",
                t.folds,
                t.candidates.len(),
                t.objective,
                t.min_jain,
                if t.held { "" } else { " (no setting held it: the most balanced chosen)" }
            )),
        );
    }
    s.push_str("</table></div>");
    s
}

/// Horizontal bars, one group per plan: `series` names the bars of a group (values
/// from `get`, the first one's cut written beside it).
fn bar_chart(id: &str, title: &str, input: &ReportInput<'_>, series: &[(&str, Figure)], decimals: usize) -> String {
    let (ml, mr, mt, bh, gap) = (150.0, 130.0, 24.0, 14.0, 8.0);
    let plot_w = 300.0;
    let group = bh * series.len() as f64 + gap;
    let legend = if series.len() > 1 { 18.0 } else { 0.0 };
    let h = mt + legend + group * input.plans.len() as f64 + 24.0;
    let w = ml + plot_w + mr;
    let max = input
        .plans
        .iter()
        .flat_map(|p| series.iter().map(move |(_, get)| get(p)))
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let mut s = svg_open(id, w, h, title);
    let _ = write!(s, "<text x=\"0\" y=\"14\" font-size=\"13\" font-weight=\"bold\">{}</text>", esc(title));
    if series.len() > 1 {
        for (k, (name, _)) in series.iter().enumerate() {
            let x = ml + 150.0 * k as f64;
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"#888\" fill-opacity=\"{}\"/><text x=\"{}\" \
                 y=\"{}\">{}</text>",
                n(x),
                n(mt),
                if k == 0 { "1" } else { "0.45" },
                n(x + 14.0),
                n(mt + 9.0),
                esc(name)
            );
        }
    }
    let top = mt + legend;
    for (i, p) in input.plans.iter().enumerate() {
        let y0 = top + group * i as f64;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            n(ml - 6.0),
            n(y0 + bh * series.len() as f64 / 2.0 + 4.0),
            esc(p.label)
        );
        for (k, (_, get)) in series.iter().enumerate() {
            let v = get(p);
            let bw = if v.is_finite() { plot_w * v / max } else { 0.0 };
            let y = y0 + bh * k as f64;
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" fill-opacity=\"{}\"/>",
                n(ml),
                n(y),
                n(bw),
                n(bh - 2.0),
                color(i),
                if k == 0 { "1" } else { "0.45" }
            );
            let mut label = format!("{v:.decimals$}");
            if k == 0 {
                if let Some(c) = cut_text(p, *get) {
                    label.push_str(&format!(" ({c})"));
                }
            }
            let _ = write!(s, "<text x=\"{}\" y=\"{}\">{}</text>", n(ml + bw + 4.0), n(y + bh - 4.0), esc(&label));
        }
    }
    // The first baseline's value of the first series, as a reference line.
    if let Some(b) = input.plans.iter().find(|p| p.baseline.is_none()) {
        let v = (series[0].1)(b);
        if v.is_finite() {
            let x = ml + plot_w * v / max;
            let _ = write!(
                s,
                "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#000\" stroke-dasharray=\"4 3\"/><text x=\"{}\" \
                 y=\"{}\" text-anchor=\"middle\" fill=\"#444\">baseline</text>",
                n(x),
                n(top - 2.0),
                n(x),
                n(h - 20.0),
                n(x),
                n(h - 8.0)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Per-token sends at every layer (`get` gives a layer's count), one line per plan.
fn layer_chart(
    id: &str,
    title: &str,
    input: &ReportInput<'_>,
    get: fn(&moeplace_core::simulate::LayerMetrics) -> u64,
) -> String {
    let (w, h, ml, mb, mt, legend) = (640.0, 260.0, 50.0, 36.0, 24.0, 150.0);
    let layers = input.plans.first().map(|p| p.result.layers.len()).unwrap_or(0).max(1);
    let tokens = input.tokens.max(1) as f64;
    let ymax = input
        .plans
        .iter()
        .flat_map(|p| p.result.layers.iter().map(|l| get(l) as f64 / tokens))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |l: usize| ml + (w - ml - legend) * l as f64 / (layers.max(2) - 1) as f64;
    let y = |v: f64| mt + (h - mt - mb) * (1.0 - v / ymax);
    let mut s = svg_open(id, w, h, title);
    let _ = write!(s, "<text x=\"0\" y=\"14\" font-size=\"13\" font-weight=\"bold\">{}</text>", esc(title));
    let _ = write!(
        s,
        "<path fill=\"none\" stroke=\"#000\" d=\"M{} {}V{}H{}\"/>",
        n(ml),
        n(mt),
        n(y(0.0)),
        n(x(layers - 1))
    );
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.2}</text>", n(ml - 4.0), n(y(v) + 4.0));
    }
    let step = layers.div_ceil(10).max(1);
    for l in (0..layers).step_by(step) {
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{l}</text>", n(x(l)), n(h - mb + 14.0));
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">MoE layer</text>",
        n((ml + x(layers - 1)) / 2.0),
        n(h - 6.0)
    );
    for (i, p) in input.plans.iter().enumerate() {
        let pts: Vec<String> = p
            .result
            .layers
            .iter()
            .enumerate()
            .map(|(l, m)| format!("{},{}", n(x(l)), n(y(get(m) as f64 / tokens))))
            .collect();
        let dash = if p.baseline.is_none() { " stroke-dasharray=\"5 3\"" } else { "" };
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            color(i),
            pts.join(" ")
        );
        let ly = mt + 16.0 * i as f64;
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            n(w - legend + 16.0),
            n(ly + 4.0),
            color(i),
            n(w - legend + 32.0),
            n(ly + 9.0),
            esc(p.label)
        );
    }
    s.push_str("</svg>");
    s
}

/// Which GPUs get an id label on an axis of `g` GPUs drawn `bw` wide each (every
/// `step`-th): labels written across need about 16 px, upwards about 9.
fn label_step(g: usize, bw: f64, upright: bool) -> usize {
    let need = if upright { 16.0 } else { 9.0 };
    ((need / bw).ceil() as usize).clamp(1, g.max(1))
}

/// The load view of a plan: load per GPU over all layers (against the mean), GPU ids
/// and node boundaries, and the layer x GPU strip (load against the layer's mean).
fn load_view(i: usize, p: &ReportPlan<'_>) -> String {
    let layers = &p.result.layers;
    let g = p.placement.gpus().max(1);
    let nodes = p.nodes.clamp(1, g);
    let per_node = g / nodes;
    let bw = (760.0 / g as f64).clamp(4.0, 28.0);
    let (ml, mt, bars_h) = (44.0, 20.0, 110.0);
    let rh = (160.0 / layers.len().max(1) as f64).clamp(2.0, 10.0);
    let strip_top = mt + bars_h + 34.0;
    let strip_h = rh * layers.len() as f64;
    let w = ml + bw * g as f64 + 20.0;
    let h = strip_top + strip_h + 30.0;
    let mut s = svg_open(&format!("load-{i}"), w, h, &format!("load per GPU: {}", p.label));
    // Node backgrounds, alternating, with their names.
    let node_step = ((60.0 / (bw * per_node as f64)).ceil() as usize).max(1);
    for node in 0..nodes {
        let x = ml + bw * (node * per_node) as f64;
        if node % 2 == 1 {
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#eef1f5\"/>",
                n(x),
                n(mt),
                n(bw * per_node as f64),
                n(bars_h)
            );
        }
        if node % node_step == 0 {
            let _ = write!(s, "<text x=\"{}\" y=\"{}\" fill=\"#444\">node {node}</text>", n(x + 2.0), n(mt - 6.0));
        }
    }
    // Total load per GPU against the mean: 1 is perfect balance.
    let totals: Vec<f64> =
        (0..g).map(|gpu| layers.iter().map(|l| l.load.get(gpu).copied().unwrap_or(0) as f64).sum()).collect();
    let mean = totals.iter().sum::<f64>() / g as f64;
    let rel: Vec<f64> = totals.iter().map(|&t| if mean > 0.0 { t / mean } else { 0.0 }).collect();
    let top = rel.iter().copied().fold(1.0f64, f64::max).max(1.2);
    let yb = |v: f64| mt + bars_h * (1.0 - v / top);
    let mut d = String::new();
    for (gpu, &r) in rel.iter().enumerate() {
        let _ = write!(
            d,
            "M{} {}h{}V{}h{}z",
            n(ml + bw * gpu as f64 + 0.5),
            n(yb(r)),
            n((bw - 1.0).max(1.0)),
            n(yb(0.0)),
            n(-(bw - 1.0).max(1.0))
        );
    }
    let _ = write!(s, "<path fill=\"{}\" d=\"{d}\"/>", color(i));
    let _ = write!(
        s,
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#000\" stroke-dasharray=\"4 3\"/>",
        n(ml),
        n(yb(1.0)),
        n(ml + bw * g as f64),
        n(yb(1.0))
    );
    for v in [0.0, 1.0, top] {
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.2}</text>", n(ml - 4.0), n(yb(v) + 4.0));
    }
    // GPU ids under the bars; written upwards when a bar is too narrow for them.
    let upright = bw >= 18.0;
    let step = label_step(g, bw, upright);
    for gpu in (0..g).step_by(step) {
        let (x, y) = (ml + bw * (gpu as f64 + 0.5), mt + bars_h + 4.0);
        if upright {
            let _ = write!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"9\">{gpu}</text>",
                n(x),
                n(y + 8.0)
            );
        } else {
            let _ = write!(
                s,
                "<text transform=\"translate({} {}) rotate(-90)\" text-anchor=\"end\" font-size=\"8\">{gpu}</text>",
                n(x + 3.0),
                n(y)
            );
        }
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"9\" text-anchor=\"end\">GPU</text>",
        n(ml - 4.0),
        n(mt + bars_h + 12.0)
    );
    // The strip: a cell per (layer, GPU), coloured by load / layer mean.
    let mut cells = Cells::default();
    for (l, m) in layers.iter().enumerate() {
        let lm = m.load.iter().sum::<u64>() as f64 / g as f64;
        for (gpu, &x) in m.load.iter().enumerate() {
            let r = if lm > 0.0 { x as f64 / lm } else { 1.0 };
            // Levels of a quarter of the mean around it: 0 (no load) .. 8 (twice the mean or more).
            let level = ((r * 4.0).round() as usize).min(DIVERGE.len() - 1);
            cells.add(level, ml + bw * gpu as f64, strip_top + rh * l as f64, bw, rh);
        }
    }
    s.push_str(&cells.render(DIVERGE));
    let lstep = layers.len().div_ceil(8).max(1);
    for l in (0..layers.len()).step_by(lstep) {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"9\">L{l}</text>",
            n(ml - 4.0),
            n(strip_top + rh * l as f64 + rh.min(9.0))
        );
    }
    // Node boundaries through both views.
    let mut b = String::new();
    for node in 1..nodes {
        let x = ml + bw * (node * per_node) as f64;
        let _ =
            write!(b, "M{} {}V{}M{} {}V{}", n(x), n(mt), n(mt + bars_h), n(x), n(strip_top), n(strip_top + strip_h));
    }
    let _ = write!(
        s,
        "<path fill=\"none\" stroke=\"#000\" stroke-width=\"1.5\" d=\"{b}M{} {}h{}v{}h{}z\"/>",
        n(ml),
        n(strip_top),
        n(bw * g as f64),
        n(strip_h),
        n(-bw * g as f64)
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#444\">max/mean per layer, mean {:.3}; whole run {:.3}</text>",
        n(ml),
        n(h - 8.0),
        p.result.maxvio + 1.0,
        rel.iter().copied().fold(0.0f64, f64::max)
    );
    s.push_str("</svg>");
    s
}

/// The co-activation heatmap of a plan at `layer`: experts ordered by the GPU of their
/// first copy and summed into at most about [`MAX_BINS`] bins that never straddle a GPU
/// group; a cell's colour is its mean pair count (log scale).
fn heatmap(i: usize, p: &ReportPlan<'_>, layer: usize, coact: &[u64], e: usize, nodes: usize) -> String {
    let pl = p.placement;
    let g = pl.gpus().max(1);
    let first_gpu = |x: usize| pl.gpu_of_slot(pl.replicas(layer, x)[0] as usize);
    let mut order: Vec<usize> = (0..e).collect();
    order.sort_by_key(|&x| (first_gpu(x), x));
    // GPU groups: whole GPUs, several per group when there are more than MAX_BINS.
    let gpus_per_unit = g.div_ceil(MAX_BINS);
    let chunk = e.div_ceil(MAX_BINS).max(1);
    // Bins: runs of `order` within one GPU group, each at most about `chunk` experts.
    let mut bins: Vec<(usize, usize)> = Vec::new(); // [start, end) in `order`
    let mut a = 0;
    while a < e {
        let unit = first_gpu(order[a]) / gpus_per_unit;
        let mut b = a;
        while b < e && first_gpu(order[b]) / gpus_per_unit == unit {
            b += 1;
        }
        let parts = (b - a).div_ceil(chunk);
        for k in 0..parts {
            bins.push((a + (b - a) * k / parts, a + (b - a) * (k + 1) / parts));
        }
        a = b;
    }
    let mut bin_of = vec![0usize; e];
    for (k, &(s0, s1)) in bins.iter().enumerate() {
        for &x in &order[s0..s1] {
            bin_of[x] = k;
        }
    }
    let nb = bins.len();
    let mut sums = vec![0u64; nb * nb];
    if !coact.is_empty() {
        for x in 0..e {
            for y in x + 1..e {
                let c = coact[pair_index(x, y, e)];
                let (bx, by) = (bin_of[x].min(bin_of[y]), bin_of[x].max(bin_of[y]));
                sums[bx * nb + by] += c;
            }
        }
    }
    let size = |k: usize| (bins[k].1 - bins[k].0) as f64;
    let mean = |bx: usize, by: usize| {
        let pairs = if bx == by { size(bx) * (size(bx) - 1.0) / 2.0 } else { size(bx) * size(by) };
        if pairs > 0.0 {
            sums[bx * nb + by] as f64 / pairs
        } else {
            0.0
        }
    };
    let max = (0..nb).flat_map(|x| (x..nb).map(move |y| (x, y))).map(|(x, y)| mean(x, y)).fold(0.0f64, f64::max);
    let side = 380.0;
    let unit = side / e.max(1) as f64;
    let (ml, mt) = (4.0, 4.0);
    let pos = |k: usize| bins[k].0 as f64 * unit;
    let mut s =
        svg_open(&format!("coact-{i}"), side + 2.0 * ml, side + 2.0 * mt, &format!("co-activation: {}", p.label));
    let _ = write!(s, "<rect x=\"{ml}\" y=\"{mt}\" width=\"{}\" height=\"{}\" fill=\"#fff\"/>", n(side), n(side));
    let mut cells = Cells::default();
    for bx in 0..nb {
        for by in 0..nb {
            let v = mean(bx.min(by), bx.max(by));
            if v <= 0.0 || max <= 0.0 {
                continue;
            }
            let t = (1.0 + v).ln() / (1.0 + max).ln();
            let level = ((t * HEAT.len() as f64).ceil() as usize).clamp(1, HEAT.len()) - 1;
            cells.add(level, ml + pos(by), mt + pos(bx), size(by) * unit, size(bx) * unit);
        }
    }
    s.push_str(&cells.render(HEAT));
    // GPU squares (thin) and node squares (thick) on the diagonal.
    let per_node = g / nodes.clamp(1, g);
    let mut gpu_d = String::new();
    let mut node_d = String::new();
    let mut a = 0;
    while a < e {
        let gpu = first_gpu(order[a]);
        let mut b = a;
        while b < e && first_gpu(order[b]) == gpu {
            b += 1;
        }
        let (x, w) = (a as f64 * unit, (b - a) as f64 * unit);
        if g <= 128 {
            let _ = write!(gpu_d, "M{} {}h{}v{}h{}z", n(ml + x), n(mt + x), n(w), n(w), n(-w));
        }
        a = b;
    }
    let mut a = 0;
    while a < e {
        let node = first_gpu(order[a]) / per_node.max(1);
        let mut b = a;
        while b < e && first_gpu(order[b]) / per_node.max(1) == node {
            b += 1;
        }
        let (x, w) = (a as f64 * unit, (b - a) as f64 * unit);
        let _ = write!(node_d, "M{} {}h{}v{}h{}z", n(ml + x), n(mt + x), n(w), n(w), n(-w));
        a = b;
    }
    let _ = write!(s, "<path fill=\"none\" stroke=\"#555\" stroke-width=\"0.6\" d=\"{gpu_d}\"/>");
    let _ = write!(s, "<path fill=\"none\" stroke=\"#000\" stroke-width=\"2\" d=\"{node_d}\"/>");
    let _ = write!(
        s,
        "<rect x=\"{ml}\" y=\"{mt}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
        n(side),
        n(side)
    );
    s.push_str("</svg>");
    s
}

/// Per tuned plan: every setting tried as the objective's cut (y) against Jain (x),
/// means with min..max whiskers over folds, the chosen one ringed, the floor dashed.
fn tuning_plot(i: usize, p: &ReportPlan<'_>, t: &Tuning) -> String {
    let (w, h, ml, mr, mt, mb) = (560.0, 340.0, 56.0, 20.0, 28.0, 44.0);
    let cs = &t.candidates;
    let (mut x0, mut x1) = (t.min_jain, t.min_jain);
    // The cuts' own range (zero is drawn when inside it): points stay apart.
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for c in cs {
        x0 = x0.min(c.jain.min);
        x1 = x1.max(c.jain.max);
        y0 = y0.min(c.cut.min);
        y1 = y1.max(c.cut.max);
    }
    let pad = |a: f64, b: f64| ((b - a) * 0.08).max(1e-4);
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    let (x0, x1, y0, y1) = (x0 - px, x1 + px, y0 - py, y1 + py);
    let x = |v: f64| ml + (w - ml - mr) * (v - x0) / (x1 - x0);
    let y = |v: f64| mt + (h - mt - mb) * (1.0 - (v - y0) / (y1 - y0));
    let mut s = svg_open(&format!("tuning-{i}"), w, h, &format!("tuning of {}", p.label));
    let _ = write!(
        s,
        "<text x=\"0\" y=\"14\" font-size=\"13\" font-weight=\"bold\">{}: {} settings, {}-fold</text>",
        esc(p.label),
        cs.len(),
        t.folds
    );
    let _ = write!(s, "<path fill=\"none\" stroke=\"#000\" d=\"M{} {}V{}H{}\"/>", n(ml), n(mt), n(h - mb), n(w - mr));
    for k in 0..=4 {
        let vx = x0 + (x1 - x0) * k as f64 / 4.0;
        let vy = y0 + (y1 - y0) * k as f64 / 4.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{vx:.4}</text><text x=\"{}\" y=\"{}\" \
             text-anchor=\"end\">{vy:.1}</text>",
            n(x(vx)),
            n(h - mb + 14.0),
            n(ml - 4.0),
            n(y(vy) + 4.0)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">Jain (load), mean over folds</text><text \
         transform=\"translate(12 {}) rotate(-90)\" text-anchor=\"middle\">{} cut %</text>",
        n((ml + w - mr) / 2.0),
        n(h - 8.0),
        n((mt + h - mb) / 2.0),
        esc(&t.objective)
    );
    if y0 < 0.0 && y1 > 0.0 {
        let _ = write!(
            s,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#bbb\"/>",
            n(ml),
            n(y(0.0)),
            n(w - mr),
            n(y(0.0))
        );
    }
    let fx = x(t.min_jain);
    // The floor's name on the side of its line with room for it.
    let (lx, anchor) = if fx > (ml + w - mr) / 2.0 { (fx - 4.0, "end") } else { (fx + 4.0, "start") };
    let _ = write!(
        s,
        "<line class=\"floor\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#d62728\" stroke-dasharray=\"5 4\"/><text \
         x=\"{}\" y=\"{}\" fill=\"#d62728\" text-anchor=\"{anchor}\">Jain floor {}</text>",
        n(fx),
        n(mt),
        n(fx),
        n(h - mb),
        n(lx),
        n(mt + 10.0),
        t.min_jain
    );
    let mut whiskers = String::new();
    for c in cs {
        let (cx, cy) = (x(c.jain.mean), y(c.cut.mean));
        let _ = write!(
            whiskers,
            "M{} {}H{}M{} {}V{}",
            n(x(c.jain.min)),
            n(cy),
            n(x(c.jain.max)),
            n(cx),
            n(y(c.cut.min)),
            n(y(c.cut.max))
        );
    }
    let _ = write!(s, "<path fill=\"none\" stroke=\"#999\" d=\"{whiskers}\"/>");
    for c in cs {
        let holds = c.jain.min >= t.min_jain;
        let _ = write!(
            s,
            "<circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"{}\"><title>{}: cut {:.1}% ({:.1}..{:.1}), Jain {:.4} \
             ({:.4}..{:.4})</title></circle>",
            n(x(c.jain.mean)),
            n(y(c.cut.mean)),
            if holds { color(i) } else { "#bbb" },
            esc(&c.label),
            c.cut.mean,
            c.cut.min,
            c.cut.max,
            c.jain.mean,
            c.jain.min,
            c.jain.max
        );
    }
    let c = &cs[t.chosen.min(cs.len() - 1)];
    let (cx, cy) = (x(c.jain.mean), y(c.cut.mean));
    let _ = write!(
        s,
        "<circle class=\"chosen\" cx=\"{}\" cy=\"{}\" r=\"9\" fill=\"none\" stroke=\"#000\" stroke-width=\"2\"/><text \
         x=\"{}\" y=\"{}\" font-weight=\"bold\" text-anchor=\"{}\">chosen</text>",
        n(cx),
        n(cy),
        n(if cx > w / 2.0 { cx - 12.0 } else { cx + 12.0 }),
        n(cy - 10.0),
        if cx > w / 2.0 { "end" } else { "start" }
    );
    s.push_str("</svg>");
    let _ = write!(
        s,
        "<p class=\"note\">Chosen: {}. Grey points fall below the Jain floor on some fold; whiskers span the \
         folds.</p>",
        esc(&c.label)
    );
    s
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#222}\
h1{margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}p.lead{color:#555;margin-top:0}\
.cards,.plots{display:flex;flex-wrap:wrap;gap:20px}\
.card{border:1px solid #ddd;border-top:4px solid #666;border-radius:6px;padding:8px 12px;min-width:260px;max-width:420px;font-size:13px}\
.card h3{margin:4px 0 8px}.card th{text-align:left;color:#666;font-weight:normal;padding-right:10px;vertical-align:top}\
.scroll{overflow-x:auto}table.summary{border-collapse:collapse;font-size:13px}\
table.summary th,table.summary td{border-bottom:1px solid #e4e4e4;padding:5px 10px;text-align:right;white-space:nowrap}\
table.summary thead th{font-weight:600;vertical-align:bottom;white-space:normal;max-width:120px}\
table.summary th.name{text-align:left}.dir{font-weight:normal;color:#888;font-size:11px}\
td.best{background:#d9f2d9;font-weight:bold}.cut{display:block;color:#777;font-size:11px;font-weight:normal}\
.swatch{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}\
figure{margin:0}figcaption{font-size:13px;font-weight:bold;margin-bottom:4px}.note{color:#555;font-size:13px;max-width:900px}\
details pre{background:#f6f6f6;padding:12px;overflow-x:auto;font-size:12px}";

/// The page.
pub fn render(input: &ReportInput<'_>) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n",
        t = esc(input.title)
    );
    let layers = input.plans.first().map(|p| p.result.layers.len()).unwrap_or(0);
    let _ = writeln!(
        s,
        "<p class=\"lead\">{} held-out tokens, {layers} MoE layers x {} experts; {} plans beside the baseline.</p>",
        input.tokens,
        input.experts,
        input.plans.iter().filter(|p| p.baseline.is_some()).count()
    );
    s.push_str("<h2>Plans</h2>\n<div class=\"cards\" id=\"plans\">");
    for (i, p) in input.plans.iter().enumerate() {
        s.push_str(&plan_card(i, p));
    }
    s.push_str("</div>\n");
    s.push_str(
        "<h2>Summary</h2>\n<p class=\"note\">Per token and MoE layer, over the held-out stream; under each figure its cut \
         against the baseline of the same cluster. The best value of each column is highlighted.</p>\n",
    );
    s.push_str(&summary_table(input));
    let _ =
        writeln!(s, "<details><summary>Every metric (text table)</summary><pre>{}</pre></details>", esc(input.summary));
    s.push_str("<h2>Traffic</h2>\n<div class=\"plots\" id=\"traffic\">");
    s.push_str(&bar_chart(
        "plot-remote-gpus",
        "Remote GPUs per token-layer",
        input,
        &[("remote GPUs", |p| p.result.remote_gpus)],
        3,
    ));
    s.push_str(&bar_chart(
        "plot-remote-nodes",
        "Remote nodes per token-layer",
        input,
        &[("remote nodes", |p| p.result.remote_nodes)],
        3,
    ));
    s.push_str(&bar_chart(
        "plot-inter-node-bytes",
        "Inter-node GB",
        input,
        &[
            ("flat (per remote GPU)", |p| p.result.inter_node_bytes as f64 / GB),
            ("hierarchical (per node)", |p| p.result.hier_inter_node_bytes as f64 / GB),
        ],
        3,
    ));
    s.push_str("</div>\n<div class=\"plots\">");
    s.push_str(&layer_chart("plot-by-layer", "Remote GPU sends per token, by layer", input, |l| l.remote_sends));
    s.push_str(&layer_chart("plot-cross-node-by-layer", "Cross-node sends per token, by layer", input, |l| {
        l.cross_node_sends
    }));
    s.push_str("</div>\n");
    s.push_str(
        "<h2>Load</h2>\n<p class=\"note\">Bars: each GPU's picks over all layers against the mean GPU (dashed: 1, \
         perfect balance); shaded bands and thick lines are nodes. Strip: a row per MoE layer, a cell per GPU, \
         coloured by load against the layer's mean (blue below, white at, red above; a step is a quarter of \
         the mean).</p>\n<div class=\"plots\" id=\"load\">\n",
    );
    for (i, p) in input.plans.iter().enumerate() {
        let _ = writeln!(s, "<figure><figcaption>{}</figcaption>{}</figure>", esc(p.label), load_view(i, p));
    }
    s.push_str("</div>\n");
    let binned = if input.experts > MAX_BINS {
        format!(
            " With {} experts, experts are summed into bins within a GPU; a cell is the mean pair count of its bins.",
            input.experts
        )
    } else {
        String::new()
    };
    let _ = write!(
        s,
        "<h2>Co-activation at layer {}</h2>\n<p class=\"note\">Tokens picking both experts (log colour scale), experts ordered by the GPU of their first copy; thin squares are GPUs, thick ones nodes: mass inside them stays on one GPU or node.{binned}</p>\n<div class=\"plots\" id=\"coact\">\n",
        input.coact_layer
    );
    for (i, p) in input.plans.iter().enumerate() {
        let _ = writeln!(
            s,
            "<figure><figcaption>{}</figcaption>{}</figure>",
            esc(p.label),
            heatmap(i, p, input.coact_layer, input.coact, input.experts, p.nodes)
        );
    }
    s.push_str("</div>\n");
    if input.plans.iter().any(|p| p.tuning.is_some()) {
        s.push_str(
            "<h2>Tuning</h2>\n<p class=\"note\">Every setting `plan` tried by cross-validation over the calibration \
             requests: the objective's cut against the baseline (y) and the Jain index (x), means over the held-out \
             folds. The chosen one has the best mean cut among those at or above the Jain floor on every fold.</p>\n\
             <div class=\"plots\" id=\"tuning\">\n",
        );
        for (i, p) in input.plans.iter().enumerate() {
            if let Some(t) = p.tuning.filter(|t| !t.candidates.is_empty()) {
                let _ = writeln!(s, "<figure>{}</figure>", tuning_plot(i, p, t));
            }
        }
        s.push_str("</div>\n");
    }
    s.push_str("</body></html>\n");
    s
}

/// Writes the page atomically.
pub fn write(path: &Path, input: &ReportInput<'_>) -> Result<(), FormatError> {
    atomic::write_bytes(path, render(input).as_bytes())
}
