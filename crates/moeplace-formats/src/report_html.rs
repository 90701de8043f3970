//! The HTML report of `moeplace eval --report`: one self-contained page (inline
//! SVG drawn by hand, no scripts, no external assets) with
//! - the side-by-side table,
//! - remote sends per token at every layer, one line per plan,
//! - per plan, per-GPU load bars for every layer (each row scaled to its hottest GPU),
//! - per plan, the co-activation heatmap of one layer with experts ordered by the GPU
//!   of their first copy and the GPU boundaries drawn.

use std::fmt::Write as _;
use std::path::Path;

use moeplace_core::placement::Placement;
use moeplace_core::simulate::SimResult;
use moeplace_core::stats::pair_index;

use crate::atomic;
use crate::error::FormatError;

/// One column of the report.
pub struct ReportPlan<'a> {
    pub label: &'a str,
    pub placement: &'a Placement,
    pub result: &'a SimResult,
}

/// What the page shows.
pub struct ReportInput<'a> {
    pub title: &'a str,
    /// The text table (shown preformatted).
    pub summary: &'a str,
    pub tokens: u64,
    pub plans: Vec<ReportPlan<'a>>,
    /// The layer of the heatmap and its co-activation pair counts (`pair_index` order).
    pub coact_layer: usize,
    pub coact: &'a [u64],
    pub experts: usize,
}

const COLORS: &[&str] =
    &["#555555", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn remote_chart(input: &ReportInput<'_>) -> String {
    let (w, h, ml, mb, mt) = (820.0, 300.0, 60.0, 40.0, 20.0);
    let layers = input.plans.first().map(|p| p.result.layers.len()).unwrap_or(0).max(1);
    let tokens = input.tokens.max(1) as f64;
    let ymax = input
        .plans
        .iter()
        .flat_map(|p| p.result.layers.iter().map(|l| l.remote_sends as f64 / tokens))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |l: usize| ml + (w - ml - 170.0) * l as f64 / (layers.max(2) - 1) as f64;
    let y = |v: f64| mt + (h - mt - mb) * (1.0 - v / ymax);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">");
    let _ =
        write!(s, "<line x1=\"{ml}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#000\"/>", y(0.0), x(layers - 1), y(0.0));
    let _ = write!(s, "<line x1=\"{ml}\" y1=\"{mt}\" x2=\"{ml}\" y2=\"{}\" stroke=\"#000\"/>", y(0.0));
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.2}</text>", ml - 4.0, y(v) + 4.0);
    }
    let step = (layers / 10).max(1);
    for l in (0..layers).step_by(step) {
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{l}</text>", x(l), h - mb + 16.0);
    }
    let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">MoE layer</text>", x(layers / 2), h - 6.0);
    for (i, p) in input.plans.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<String> = p
            .result
            .layers
            .iter()
            .enumerate()
            .map(|(l, m)| format!("{:.1},{:.1}", x(l), y(m.remote_sends as f64 / tokens)))
            .collect();
        let _ = write!(s, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>", pts.join(" "));
        let ly = mt + 16.0 * i as f64;
        let _ = write!(s, "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{c}\"/>", w - 160.0, ly + 4.0);
        let _ = write!(s, "<text x=\"{}\" y=\"{}\">{}</text>", w - 144.0, ly + 9.0, esc(p.label));
    }
    s.push_str("</svg>");
    s
}

fn load_bars(p: &ReportPlan<'_>) -> String {
    let layers = &p.result.layers;
    let g = layers.first().map(|l| l.load.len()).unwrap_or(1).max(1);
    let bw = (640.0 / g as f64).clamp(1.0, 24.0);
    let rh = 14.0;
    let (ml, w) = (40.0, 40.0 + bw * g as f64 + 90.0);
    let h = rh * layers.len() as f64 + 10.0;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" font-family=\"sans-serif\" font-size=\"10\">");
    for (l, m) in layers.iter().enumerate() {
        let top = 5.0 + rh * l as f64;
        let max = m.load.iter().copied().max().unwrap_or(0).max(1) as f64;
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">L{l}</text>", ml - 4.0, top + rh - 4.0);
        for (gpu, &x) in m.load.iter().enumerate() {
            let bh = (rh - 3.0) * x as f64 / max;
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#4477aa\"/>",
                ml + bw * gpu as f64,
                top + rh - 2.0 - bh,
                (bw - 0.5).max(0.5)
            );
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\">MaxVio {:.2}</text>",
            ml + bw * g as f64 + 6.0,
            top + rh - 4.0,
            m.maxvio
        );
    }
    s.push_str("</svg>");
    s
}

fn heatmap(p: &ReportPlan<'_>, layer: usize, coact: &[u64], e: usize) -> String {
    let pl = p.placement;
    let mut order: Vec<usize> = (0..e).collect();
    let first_gpu = |x: usize| pl.gpu_of_slot(pl.replicas(layer, x)[0] as usize);
    order.sort_by_key(|&x| (first_gpu(x), x));
    let cell = (480.0 / e as f64).clamp(1.0, 12.0);
    let n = e as f64 * cell;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{:.0}\"><rect width=\"{n:.1}\" height=\"{n:.1}\" fill=\"#fff\" stroke=\"#999\"/>", n + 2.0, n + 2.0);
    let max = coact.iter().copied().max().unwrap_or(0).max(1) as f64;
    for (i, &a) in order.iter().enumerate() {
        for (j, &b) in order.iter().enumerate() {
            if a == b || coact.is_empty() {
                continue;
            }
            let c = coact[pair_index(a, b, e)];
            if c == 0 {
                continue;
            }
            let t = (1.0 + c as f64).ln() / (1.0 + max).ln();
            let v = (255.0 * (1.0 - t)) as u8;
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"rgb(255,{v},{v})\"/>",
                j as f64 * cell,
                i as f64 * cell
            );
        }
    }
    // GPU boundaries.
    let mut i = 0;
    while i < e {
        let g = first_gpu(order[i]);
        let mut j = i;
        while j < e && first_gpu(order[j]) == g {
            j += 1;
        }
        let (a, b) = (i as f64 * cell, j as f64 * cell);
        let _ = write!(s, "<rect x=\"{a:.1}\" y=\"{a:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#000\" stroke-width=\"1\"/>", b - a, b - a);
        i = j;
    }
    s.push_str("</svg>");
    s
}

/// The page.
pub fn render(input: &ReportInput<'_>) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;margin:24px;color:#222}}pre{{background:#f6f6f6;padding:12px;overflow-x:auto}}.plots{{display:flex;flex-wrap:wrap;gap:24px}}figure{{margin:0}}figcaption{{font-size:13px;font-weight:bold;margin-bottom:4px}}</style></head><body>\n<h1>{t}</h1>\n",
        t = esc(input.title)
    );
    let _ = write!(s, "<h2>Side by side</h2>\n<pre>{}</pre>\n", esc(input.summary));
    let _ = write!(s, "<h2>Remote sends per token, by layer</h2>\n<p>Distinct remote GPUs a token is sent to at each MoE layer (lower is better).</p>\n{}\n", remote_chart(input));
    s.push_str("<h2>Per-GPU load by layer</h2>\n<p>Picks served per GPU; each row is scaled to its hottest GPU (even bars are balanced).</p>\n<div class=\"plots\">\n");
    for p in &input.plans {
        let _ = writeln!(s, "<figure><figcaption>{}</figcaption>{}</figure>", esc(p.label), load_bars(p));
    }
    s.push_str("</div>\n");
    let _ = write!(
        s,
        "<h2>Co-activation at layer {}</h2>\n<p>Tokens picking both experts (log colour scale), experts ordered by the GPU of their first copy; squares are GPUs. Mass inside the squares stays on one GPU.</p>\n<div class=\"plots\">\n",
        input.coact_layer
    );
    for p in &input.plans {
        let _ = writeln!(
            s,
            "<figure><figcaption>{}</figcaption>{}</figure>",
            esc(p.label),
            heatmap(p, input.coact_layer, input.coact, input.experts)
        );
    }
    s.push_str("</div>\n</body></html>\n");
    s
}

/// Writes the page atomically.
pub fn write(path: &Path, input: &ReportInput<'_>) -> Result<(), FormatError> {
    atomic::write_bytes(path, render(input).as_bytes())
}
