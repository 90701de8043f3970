//! The characterization report of `moeplace profile`: what a person (or a script)
//! wants to know about their routing traces before planning a placement.
//!
//! Every figure is computed from [`Statistics`], so a report of merged shards equals
//! the report of the whole trace. Definitions (all per MoE layer, over the trace's
//! tokens of every family and phase unless said otherwise):
//! - `max_over_mean`: hottest expert's load / mean expert load (1 = perfectly even).
//! - `cv`: coefficient of variation of expert loads (standard deviation / mean).
//! - `entropy_bits`: Shannon entropy of the load distribution in bits; `log2(E)` is
//!   uniform. `entropy_norm` divides by `log2(E)`.
//! - `top10_share`: share of picks on the top ceil(10% of E) experts.
//! - `js_divergence`: generalized Jensen-Shannon divergence, base 2, equal weights,
//!   between the families' normalised load distributions: H(mean of P_f) - mean of
//!   H(P_f). 0 when the families use experts alike; at most log2(families).
//!   `null` with fewer than two families.
//! - `coact_js_divergence`: the same divergence between the families' normalised
//!   co-activation pair distributions: how much the co-activation structure differs.
//! - `top_pairs_share`: share of co-activation counts on the E most frequent pairs
//!   (how concentrated co-activation is; E pairs could cover every expert once).
//! - `generic_experts`: experts whose load share is at least 1/E (the uniform share)
//!   in every family; candidates for replication. Empty with fewer than two families.
//! - `prefill_decode_correlation`: over requests with both prefill and decode tokens,
//!   the mean Pearson correlation between the request's prefill and decode expert
//!   counts at this layer (docs/METHODS.md, "Activation-pattern micro-batching").
//!   `null` without such requests.

use std::collections::BTreeMap;

use crate::stats::{pair_count, GroupStats, Statistics};
use crate::trace::{ModelShape, Phase};

/// Per-layer figures of the report; see the module documentation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerReport {
    pub layer: usize,
    pub max_over_mean: f64,
    pub cv: f64,
    pub entropy_bits: f64,
    pub entropy_norm: f64,
    pub top10_share: f64,
    pub js_divergence: Option<f64>,
    pub coact_js_divergence: Option<f64>,
    pub top_pairs_share: Option<f64>,
    pub generic_experts: Vec<usize>,
    pub prefill_decode_correlation: Option<f64>,
}

/// The whole report; serialises to the `--json` output of `moeplace profile`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProfileReport {
    pub tokens: u64,
    pub layers: usize,
    pub experts: usize,
    pub top_k: usize,
    /// Tokens per family (tokens without a family are under "(none)").
    pub families: BTreeMap<String, u64>,
    /// Tokens per phase ("prefill", "decode", "(none)").
    pub phases: BTreeMap<String, u64>,
    pub requests: usize,
    /// Means over layers of the per-layer figures (those that exist).
    pub mean: LayerSummary,
    pub per_layer: Vec<LayerReport>,
}

/// Means over layers.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerSummary {
    pub max_over_mean: f64,
    pub cv: f64,
    pub entropy_norm: f64,
    pub top10_share: f64,
    pub js_divergence: Option<f64>,
    pub coact_js_divergence: Option<f64>,
    pub top_pairs_share: Option<f64>,
    pub generic_experts: f64,
    pub prefill_decode_correlation: Option<f64>,
}

const NONE: &str = "(none)";

impl ProfileReport {
    pub fn from_statistics(stats: &Statistics) -> ProfileReport {
        let shape = stats.shape();
        let families = stats.families();
        let pooled = stats.pooled(|_| true);
        let per_family: Vec<GroupStats> =
            families.iter().map(|f| stats.pooled(|k| k.family.as_deref() == Some(f.as_str()))).collect();
        let mut per_layer = Vec::with_capacity(shape.layers);
        for layer in 0..shape.layers {
            per_layer.push(layer_report(stats, shape, layer, &pooled, &per_family));
        }
        let mut fam = BTreeMap::new();
        for (f, n) in stats.family_tokens() {
            fam.insert(f.unwrap_or_else(|| NONE.to_string()), n);
        }
        let mut phases = BTreeMap::new();
        for (k, g) in stats.groups() {
            let name = k.phase.map(|p| p.as_str().to_string()).unwrap_or_else(|| NONE.to_string());
            *phases.entry(name).or_insert(0) += g.tokens;
        }
        let mean = summarize(&per_layer);
        ProfileReport {
            tokens: stats.tokens(),
            layers: shape.layers,
            experts: shape.experts,
            top_k: shape.top_k,
            families: fam,
            phases,
            requests: stats.requests().len(),
            mean,
            per_layer,
        }
    }

    /// A plain-text report for people.
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "moeplace profile: {} tokens, {} MoE layers x {} experts, top-{}",
            self.tokens, self.layers, self.experts, self.top_k
        );
        let _ = writeln!(s, "requests: {}", self.requests);
        let _ = writeln!(s, "families:");
        for (f, n) in &self.families {
            let _ = writeln!(s, "  {f:<16} {n:>10} tokens  {:5.1}%", 100.0 * *n as f64 / self.tokens.max(1) as f64);
        }
        let _ = writeln!(s, "phases:");
        for (p, n) in &self.phases {
            let _ = writeln!(s, "  {p:<16} {n:>10} tokens");
        }
        let m = &self.mean;
        let _ = writeln!(s, "\nmeans over layers:");
        let _ = writeln!(s, "  load max/mean            {:.3}   (1.0 = every expert equally busy)", m.max_over_mean);
        let _ = writeln!(s, "  load CV                  {:.3}", m.cv);
        let _ = writeln!(s, "  entropy / log2(E)        {:.3}", m.entropy_norm);
        let _ = writeln!(s, "  top 10% experts' share   {:.3}", m.top10_share);
        let _ = writeln!(s, "  family JS divergence     {}   (0 = families use experts alike)", opt(m.js_divergence));
        let _ = writeln!(s, "  family co-act JS div.    {}", opt(m.coact_js_divergence));
        let _ = writeln!(s, "  top-E pairs' co-act share {}", opt(m.top_pairs_share));
        let _ = writeln!(
            s,
            "  generic experts / layer  {:.1}   (used above uniform share by every family)",
            m.generic_experts
        );
        let _ = writeln!(
            s,
            "  prefill-decode corr.     {}   (per request, mean over requests)",
            opt(m.prefill_decode_correlation)
        );
        let _ = writeln!(s, "\nper layer:");
        let _ =
            writeln!(s, "  layer  max/mean     cv  entropy  top10%  family-JS  coact-JS  pf-dec-corr  generic experts");
        for r in &self.per_layer {
            let generic: Vec<String> = r.generic_experts.iter().map(|e| e.to_string()).collect();
            let _ = writeln!(
                s,
                "  {:>5}  {:>8.3}  {:>5.3}  {:>7.3}  {:>6.3}  {:>9}  {:>8}  {:>11}  {}",
                r.layer,
                r.max_over_mean,
                r.cv,
                r.entropy_norm,
                r.top10_share,
                opt(r.js_divergence),
                opt(r.coact_js_divergence),
                opt(r.prefill_decode_correlation),
                generic.join(",")
            );
        }
        s
    }
}

fn opt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".to_string())
}

fn mean_of(xs: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in xs {
        s += x;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

fn mean_opt(xs: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = xs.flatten().collect();
    if v.is_empty() {
        None
    } else {
        Some(mean_of(v.into_iter()))
    }
}

fn summarize(layers: &[LayerReport]) -> LayerSummary {
    LayerSummary {
        max_over_mean: mean_of(layers.iter().map(|r| r.max_over_mean)),
        cv: mean_of(layers.iter().map(|r| r.cv)),
        entropy_norm: mean_of(layers.iter().map(|r| r.entropy_norm)),
        top10_share: mean_of(layers.iter().map(|r| r.top10_share)),
        js_divergence: mean_opt(layers.iter().map(|r| r.js_divergence)),
        coact_js_divergence: mean_opt(layers.iter().map(|r| r.coact_js_divergence)),
        top_pairs_share: mean_opt(layers.iter().map(|r| r.top_pairs_share)),
        generic_experts: mean_of(layers.iter().map(|r| r.generic_experts.len() as f64)),
        prefill_decode_correlation: mean_opt(layers.iter().map(|r| r.prefill_decode_correlation)),
    }
}

fn layer_report(
    stats: &Statistics,
    shape: ModelShape,
    layer: usize,
    pooled: &GroupStats,
    per_family: &[GroupStats],
) -> LayerReport {
    let e = shape.experts;
    let load = &pooled.load[layer * e..(layer + 1) * e];
    let lf: Vec<f64> = load.iter().map(|&x| x as f64).collect();
    let d = distribution::LoadFigures::of(&lf);
    let fam_loads: Vec<Vec<f64>> =
        per_family.iter().map(|g| g.load[layer * e..(layer + 1) * e].iter().map(|&x| x as f64).collect()).collect();
    let js = (per_family.len() >= 2).then(|| distribution::js_divergence(&fam_loads));
    let pc = pair_count(e);
    let (coact_js, top_pairs) = if stats.has_pairs() && pc > 0 {
        let fam_pairs: Vec<Vec<f64>> = per_family
            .iter()
            .map(|g| g.coact[layer * pc..(layer + 1) * pc].iter().map(|&x| x as f64).collect())
            .collect();
        let js = (per_family.len() >= 2).then(|| distribution::js_divergence(&fam_pairs));
        let mut pairs: Vec<u64> = pooled.coact[layer * pc..(layer + 1) * pc].to_vec();
        let total: u64 = pairs.iter().sum();
        pairs.sort_unstable_by(|a, b| b.cmp(a));
        let top: u64 = pairs.iter().take(e).sum();
        (js, (total > 0).then(|| top as f64 / total as f64))
    } else {
        (None, None)
    };
    let generic = if per_family.len() >= 2 {
        (0..e)
            .filter(|&x| {
                fam_loads.iter().all(|l| {
                    let t: f64 = l.iter().sum();
                    t > 0.0 && l[x] / t >= 1.0 / e as f64
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    LayerReport {
        layer,
        max_over_mean: d.max_over_mean,
        cv: d.cv,
        entropy_bits: d.entropy_bits,
        entropy_norm: if e > 1 { d.entropy_bits / (e as f64).log2() } else { 1.0 },
        top10_share: d.top10_share,
        js_divergence: js,
        coact_js_divergence: coact_js,
        top_pairs_share: top_pairs,
        generic_experts: generic,
        prefill_decode_correlation: prefill_decode_correlation(stats, layer),
    }
}

/// Mean over requests with both phases of Pearson(prefill counts, decode counts) at
/// `layer`; requests where either vector is constant are skipped (no correlation).
pub fn prefill_decode_correlation(stats: &Statistics, layer: usize) -> Option<f64> {
    let e = stats.shape().experts;
    let mut vals = Vec::new();
    for r in stats.requests().values() {
        let (Some(p), Some(d)) = (r.by_phase.get(&Some(Phase::Prefill)), r.by_phase.get(&Some(Phase::Decode))) else {
            continue;
        };
        let p: Vec<f64> = p[layer * e..(layer + 1) * e].iter().map(|&x| x as f64).collect();
        let d: Vec<f64> = d[layer * e..(layer + 1) * e].iter().map(|&x| x as f64).collect();
        if let Some(c) = distribution::pearson(&p, &d) {
            vals.push(c);
        }
    }
    (!vals.is_empty()).then(|| mean_of(vals.into_iter()))
}

/// Small numeric helpers on distributions, shared by reports and the synthetic
/// workload fitter.
pub mod distribution {
    /// Load figures of one layer.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct LoadFigures {
        pub max_over_mean: f64,
        pub cv: f64,
        pub entropy_bits: f64,
        pub top10_share: f64,
    }

    impl LoadFigures {
        pub fn of(load: &[f64]) -> LoadFigures {
            let n = load.len() as f64;
            let total: f64 = load.iter().sum();
            if total <= 0.0 {
                return LoadFigures { max_over_mean: 0.0, cv: 0.0, entropy_bits: 0.0, top10_share: 0.0 };
            }
            let mean = total / n;
            let max = load.iter().cloned().fold(f64::MIN, f64::max);
            let var = load.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            let mut sorted = load.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let top = (load.len() as f64 * 0.1).ceil() as usize;
            LoadFigures {
                max_over_mean: max / mean,
                cv: var.sqrt() / mean,
                entropy_bits: entropy_bits(load),
                top10_share: sorted[..top.max(1)].iter().sum::<f64>() / total,
            }
        }
    }

    /// Shannon entropy (bits) of the distribution proportional to `w`.
    pub fn entropy_bits(w: &[f64]) -> f64 {
        let total: f64 = w.iter().sum();
        if total <= 0.0 {
            return 0.0;
        }
        -w.iter()
            .filter(|&&x| x > 0.0)
            .map(|&x| {
                let p = x / total;
                p * p.log2()
            })
            .sum::<f64>()
    }

    /// Generalized Jensen-Shannon divergence (bits, equal weights) between the
    /// distributions proportional to each of `dists`; empty ones are ignored.
    pub fn js_divergence(dists: &[Vec<f64>]) -> f64 {
        let normed: Vec<Vec<f64>> = dists
            .iter()
            .filter_map(|d| {
                let t: f64 = d.iter().sum();
                (t > 0.0).then(|| d.iter().map(|x| x / t).collect())
            })
            .collect();
        if normed.len() < 2 {
            return 0.0;
        }
        let n = normed[0].len();
        let mut mix = vec![0.0; n];
        for d in &normed {
            mix.iter_mut().zip(d).for_each(|(m, x)| *m += x / normed.len() as f64);
        }
        let h_mix = entropy_bits(&mix);
        let h_mean = normed.iter().map(|d| entropy_bits(d)).sum::<f64>() / normed.len() as f64;
        (h_mix - h_mean).max(0.0)
    }

    /// Pearson correlation; `None` if either side is constant.
    pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
        let n = a.len() as f64;
        let ma = a.iter().sum::<f64>() / n;
        let mb = b.iter().sum::<f64>() / n;
        let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
        for (x, y) in a.iter().zip(b) {
            sab += (x - ma) * (y - mb);
            saa += (x - ma) * (x - ma);
            sbb += (y - mb) * (y - mb);
        }
        (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn js_of_identical_is_zero_and_disjoint_is_one_bit() {
            assert!(js_divergence(&[vec![1.0, 2.0], vec![2.0, 4.0]]).abs() < 1e-12);
            assert!((js_divergence(&[vec![1.0, 0.0], vec![0.0, 3.0]]) - 1.0).abs() < 1e-12);
        }

        #[test]
        fn load_figures_by_hand() {
            let f = LoadFigures::of(&[1.0, 1.0, 1.0, 5.0]);
            assert!((f.max_over_mean - 2.5).abs() < 1e-12);
            assert!((f.top10_share - 5.0 / 8.0).abs() < 1e-12);
            assert!((entropy_bits(&[1.0; 4]) - 2.0).abs() < 1e-12);
            assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-12);
            assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_none());
        }
    }
}
