//! Fitting the generator to the statistics of a real trace, and comparing a
//! synthetic trace with a real one.
//!
//! [`fit()`] builds, per family and layer, exact tables from the real counts: the
//! load shares (popularity), each expert's most frequent co-activation partners and
//! next-layer successors (weighted by their counts). Then it calibrates by
//! simulation, because drawing top-k without replacement and the cluster/successor
//! moves change the marginals: a few rounds generate as many tokens as the real
//! trace (capped), with the real request lengths, and correct
//! - each expert's weight by (real share / synthetic share)^0.8,
//! - each layer's `cluster_affinity` towards the real top-E co-activation pair share,
//! - each layer's `layer_affinity` towards the real top-E transition share,
//! - `request_variation` towards the real over-dispersion of per-request counts,
//! - `decode_drift` towards the real prefill/decode correlation (only when the real
//!   trace has requests with both phases; otherwise the default is kept).
//!
//! Affinities and request variation move only in the first rounds: picks that follow
//! a co-activation partner or a successor do not use the weights, so while the
//! affinities still grow the weight corrections chase a moving target (on the ESFT
//! logs the load-share error grew round after round); with them fixed, the weights
//! converge. The co-activation affinity is capped at [`MAX_AFFINITY`]: more of it
//! raises the top pair share towards the real one but lets linked picks distort the
//! loads (family divergence rises above the real one as the cap grows; docs/SYNTH.md
//! compares the fit with the ESFT logs).
//!
//! The paper does not prescribe a fitting procedure; these choices are ours and the
//! agreement they reach is measured by the ESFT test and in docs/SYNTH.md.
//!
//! The fit also sets the scale-free [`Knobs`] from the same statistics (Zipf slope of
//! the sorted loads, preferred-expert fraction and boost, generic experts, family
//! jitter, the mean affinities), which is what [`SynthConfig::retarget`] keeps when
//! the exact tables no longer apply to a new shape.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{
    generate, FamilyMix, FittedFamily, FittedProfile, Knobs, LayerTable, LengthDist, Links, SynthConfig, SynthError,
};
use crate::report::ProfileReport;
use crate::stats::{pair_count, pair_index, GroupStats, ProfileOptions, Statistics, StatisticsBuilder};
use crate::trace::Phase;

/// Co-activation partners and successors kept per expert.
const LINKS: usize = 6;
/// Calibration rounds.
const ROUNDS: usize = 14;
/// Rounds that also move the affinities and the request variation; the later rounds
/// correct only the weights, which then converge on fixed structure.
const STRUCTURE_ROUNDS: usize = 6;
/// Largest co-activation affinity the fit uses (and affinities in all at most this plus 0.1).
const MAX_AFFINITY: f64 = 0.6;
/// At most this many tokens per calibration round.
const MAX_CALIBRATION_TOKENS: u64 = 100_000;
/// Traffic seed of the calibration rounds.
const CALIBRATION_SEED: u64 = 0x05EE_DF17;

/// Name given to tokens without a family.
pub const NO_FAMILY: &str = "default";

/// Targets the calibration matches, measured on real or synthetic statistics.
struct Targets {
    top_pairs: Vec<f64>,
    top_transitions: Vec<f64>,
    overdispersion: Option<f64>,
    pd_corr: Option<f64>,
}

/// Fits a synthetic workload to `stats` (see the module documentation). The result
/// generates as many tokens as the real trace (`tokens`), with the real families in
/// their real proportions; change `requests`/`tokens`/`families` for more traffic or
/// a shift.
pub fn fit(stats: &Statistics) -> Result<SynthConfig, SynthError> {
    let shape = stats.shape();
    let (l, e, k) = (shape.layers, shape.experts, shape.top_k);
    let total_tokens = stats.tokens();
    if total_tokens == 0 {
        return Err(SynthError::BadStatistics("they hold no tokens".into()));
    }
    // Families and their pooled counts (over phases).
    let fam_tokens = stats.family_tokens();
    let mut keys: Vec<(Option<String>, String, u64)> = Vec::new();
    for (f, n) in &fam_tokens {
        if *n == 0 {
            continue;
        }
        let name = f.clone().unwrap_or_else(|| NO_FAMILY.to_string());
        if f.is_none() && fam_tokens.keys().any(|g| g.as_deref() == Some(NO_FAMILY)) {
            return Err(SynthError::BadStatistics(format!(
                "tokens without a family and a family named {NO_FAMILY:?} cannot be told apart"
            )));
        }
        keys.push((f.clone(), name, *n));
    }
    let groups: Vec<GroupStats> = keys.iter().map(|(f, _, _)| stats.pooled(|key| &key.family == f)).collect();
    // Real load shares per family, [l * e], summing to 1 per layer.
    let shares: Vec<Vec<f64>> =
        groups.iter().map(|g| g.load.iter().map(|&x| x as f64 / (g.tokens as f64 * k as f64)).collect()).collect();
    let pairs = stats.has_pairs() && stats.has_transitions() && e > 1;
    let mut families = Vec::with_capacity(keys.len());
    for ((_, name, _), (g, share)) in keys.iter().zip(groups.iter().zip(&shares)) {
        let layers = (0..l)
            .map(|layer| {
                let (partners, successors) = if pairs {
                    (partner_lists(g, layer, e), successor_lists(g, layer, l, e))
                } else {
                    Default::default()
                };
                LayerTable { weights: share[layer * e..(layer + 1) * e].to_vec(), partners, successors }
            })
            .collect();
        families.push(FittedFamily { name: name.clone(), layers });
    }
    let mut config = SynthConfig::for_shape(l, e, k)?;
    config.families = keys.iter().map(|(_, n, t)| FamilyMix { name: n.clone(), weight: *t as f64 }).collect();
    config.tokens = Some(total_tokens);
    fit_lengths(stats, &mut config);
    let real = measure(stats);
    let init_affinity = if pairs { 0.25 } else { 0.0 };
    let mut profile = FittedProfile {
        shape,
        families,
        cluster_affinity: vec![init_affinity; l],
        layer_affinity: vec![if pairs && l > 1 { 0.15 } else { 0.0 }; l],
    };
    config.knobs.request_variation = real.overdispersion.map(|d| (1.0 + d).ln().sqrt().min(3.0)).unwrap_or(0.5);
    let calibrate_decode = real.pd_corr.is_some();

    let sim_tokens = total_tokens.min(MAX_CALIBRATION_TOKENS);
    for round in 0..ROUNDS {
        let mut sim_config = config.clone();
        sim_config.tokens = Some(sim_tokens);
        sim_config.profile = Some(Arc::new(profile.clone()));
        let sim_stats = profile_config(&sim_config, CALIBRATION_SEED)?;
        let sim = measure(&sim_stats);
        // Weights.
        for (fam, (name, target)) in profile.families.iter_mut().zip(keys.iter().map(|x| &x.1).zip(&shares)) {
            let g = sim_stats.pooled(|key| key.family.as_deref().unwrap_or(NO_FAMILY) == name);
            if g.tokens == 0 {
                continue;
            }
            for (layer, table) in fam.layers.iter_mut().enumerate() {
                for (x, w) in table.weights.iter_mut().enumerate() {
                    let want = target[layer * e + x];
                    let got = g.load[layer * e + x] as f64 / (g.tokens as f64 * k as f64);
                    let ratio = if got > 0.0 {
                        want / got
                    } else if want > 0.0 {
                        4.0
                    } else {
                        1.0
                    };
                    *w *= ratio.clamp(0.25, 4.0).powf(if round < STRUCTURE_ROUNDS { 0.8 } else { 1.0 });
                }
            }
        }
        // Affinities.
        if pairs && round < STRUCTURE_ROUNDS {
            for layer in 0..l {
                let ac = &mut profile.cluster_affinity[layer];
                *ac = (*ac + 1.2 * (real.top_pairs[layer] - sim.top_pairs[layer])).clamp(0.0, MAX_AFFINITY);
                if layer > 0 {
                    let al = &mut profile.layer_affinity[layer];
                    let d = real.top_transitions[layer - 1] - sim.top_transitions[layer - 1];
                    *al = (*al + 1.2 * d).clamp(0.0, MAX_AFFINITY + 0.1 - profile.cluster_affinity[layer]);
                }
            }
        }
        if let (Some(r), Some(s), true) = (real.overdispersion, sim.overdispersion, round < STRUCTURE_ROUNDS) {
            let v = &mut config.knobs.request_variation;
            let var = (*v * *v + ((1.0 + r) / (1.0 + s)).ln()).max(0.0);
            *v = var.sqrt().min(3.0);
        }
        if calibrate_decode {
            if let (Some(r), Some(s)) = (real.pd_corr, sim.pd_corr) {
                let d = &mut config.knobs.decode_drift;
                *d = (*d + 1.5 * (s - r)).clamp(0.0, 3.0);
            }
        }
    }
    config.knobs = fit_knobs(stats, &keys, &shares, &profile, &config.knobs);
    config.profile = Some(Arc::new(profile));
    config.validate()?;
    Ok(config)
}

/// Profiles the whole output of a config (with request vectors).
fn profile_config(config: &SynthConfig, seed: u64) -> Result<Statistics, SynthError> {
    let mut s = StatisticsBuilder::new(config.shape, ProfileOptions { request_vectors: true, ..Default::default() });
    for b in generate(config, seed)? {
        s.add_batch(&b)?;
    }
    Ok(s.finish())
}

/// Top co-activation partners of each expert of `layer` (the most frequent pairs),
/// weighted by lift: the pair count over the partner's load. Weighting by the raw
/// count would steer partner picks to popular experts, and since those picks ignore
/// the weights, the calibrated loads could not be reached (the family divergence of the fit
/// overshot the real one).
fn partner_lists(g: &GroupStats, layer: usize, e: usize) -> Links {
    let pc = pair_count(e);
    let block = &g.coact[layer * pc..(layer + 1) * pc];
    let load = &g.load[layer * e..(layer + 1) * e];
    let lists: Vec<Vec<(u16, f64)>> =
        (0..e).map(|a| top_links((0..e).filter(|&b| b != a).map(|b| (b, block[pair_index(a, b, e)])), load)).collect();
    Links::new(&lists)
}

/// Top successors of each expert of `layer` at `layer + 1`, weighted by lift (see
/// [`partner_lists`]).
fn successor_lists(g: &GroupStats, layer: usize, l: usize, e: usize) -> Links {
    if layer + 1 >= l {
        return Links::new(&vec![Vec::new(); e]);
    }
    let block = &g.transitions[layer * e * e..(layer + 1) * e * e];
    let next_load = &g.load[(layer + 1) * e..(layer + 2) * e];
    let lists: Vec<Vec<(u16, f64)>> =
        (0..e).map(|a| top_links((0..e).map(|b| (b, block[a * e + b])), next_load)).collect();
    Links::new(&lists)
}

/// The [`LINKS`] most frequent links, each weighted by count / load of its target.
fn top_links(it: impl Iterator<Item = (usize, u64)>, load: &[u64]) -> Vec<(u16, f64)> {
    let mut v: Vec<(usize, u64)> = it.filter(|x| x.1 > 0).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(LINKS);
    // A linked expert was picked at least as often as the link, so its load is positive.
    v.into_iter().map(|(b, c)| (b as u16, c as f64 / load[b].max(1) as f64)).collect()
}

/// Request count and length distributions from the per-request token counts (a
/// log-normal fitted to the logs of the lengths); without request vectors, requests
/// of 512 prefill tokens.
fn fit_lengths(stats: &Statistics, config: &mut SynthConfig) {
    let mut pre = Vec::new();
    let mut dec = Vec::new();
    for r in stats.requests().values() {
        let p = r.tokens.get(&Some(Phase::Prefill)).copied().unwrap_or(0) + r.tokens.get(&None).copied().unwrap_or(0);
        let d = r.tokens.get(&Some(Phase::Decode)).copied().unwrap_or(0);
        pre.push(p);
        dec.push(d);
    }
    let lognormal = |v: &[u64]| -> LengthDist {
        let logs: Vec<f64> = v.iter().filter(|&&x| x > 0).map(|&x| (x as f64).ln()).collect();
        if logs.is_empty() {
            return LengthDist::Fixed(0);
        }
        let m = logs.iter().sum::<f64>() / logs.len() as f64;
        let var = logs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / logs.len() as f64;
        LengthDist::LogNormal { median: m.exp().max(1.0), sigma: var.sqrt().min(4.0) }
    };
    if pre.is_empty() {
        config.requests = (stats.tokens() as usize).div_ceil(512).max(1);
        config.prefill_len = LengthDist::Fixed(512);
        config.decode_len = LengthDist::Fixed(0);
    } else {
        config.requests = pre.len();
        config.prefill_len = lognormal(&pre);
        config.decode_len = lognormal(&dec);
        if matches!(config.prefill_len, LengthDist::Fixed(0)) && matches!(config.decode_len, LengthDist::Fixed(0)) {
            config.prefill_len = LengthDist::Fixed(1);
        }
    }
}

fn measure(stats: &Statistics) -> Targets {
    let shape = stats.shape();
    let (l, e, k) = (shape.layers, shape.experts, shape.top_k);
    let pooled = stats.pooled(|_| true);
    let pc = pair_count(e);
    let top_share = |block: &[u64], n: usize| -> f64 {
        let total: u64 = block.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let mut v = block.to_vec();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.iter().take(n).sum::<u64>() as f64 / total as f64
    };
    let top_pairs = if stats.has_pairs() {
        (0..l).map(|x| top_share(&pooled.coact[x * pc..(x + 1) * pc], e)).collect()
    } else {
        vec![0.0; l]
    };
    let top_transitions = if stats.has_transitions() {
        (0..l).map(|x| top_share(&pooled.transitions[x * e * e..(x + 1) * e * e], e)).collect()
    } else {
        vec![0.0; l]
    };
    // Over-dispersion of per-request counts around the family profile: the
    // method-of-moments estimate of exp(sigma^2) - 1 for a log-normal factor.
    let mut fam_share: BTreeMap<Option<String>, Vec<f64>> = BTreeMap::new();
    let (mut num, mut den) = (0.0, 0.0);
    for r in stats.requests().values() {
        let share = fam_share.entry(r.family.clone()).or_insert_with(|| {
            let g = stats.pooled(|key| key.family == r.family);
            g.load.iter().map(|&x| x as f64 / (g.tokens.max(1) as f64 * k as f64)).collect()
        });
        for (p, v) in &r.by_phase {
            let n = r.tokens.get(p).copied().unwrap_or(0);
            if n < 8 {
                continue;
            }
            for (i, &c) in v.iter().enumerate() {
                let m = n as f64 * k as f64 * share[i];
                num += (c as f64 - m).powi(2) - m * (1.0 - share[i]);
                den += m * m;
            }
        }
    }
    let overdispersion = (den > 0.0).then(|| (num / den).max(0.0));
    let report_pd: Vec<f64> = (0..l).filter_map(|x| crate::report::prefill_decode_correlation(stats, x)).collect();
    let pd_corr = (!report_pd.is_empty()).then(|| report_pd.iter().sum::<f64>() / report_pd.len() as f64);
    Targets { top_pairs, top_transitions, overdispersion, pd_corr }
}

/// Scale-free knobs describing the same statistics (for [`SynthConfig::retarget`]).
fn fit_knobs(
    stats: &Statistics,
    keys: &[(Option<String>, String, u64)],
    shares: &[Vec<f64>],
    profile: &FittedProfile,
    fitted: &Knobs,
) -> Knobs {
    let shape = stats.shape();
    let (l, e) = (shape.layers, shape.experts);
    let pooled = stats.pooled(|_| true);
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    // Zipf slope of the sorted pooled loads.
    let mut slopes = Vec::new();
    for layer in 0..l {
        let mut v: Vec<f64> = pooled.load[layer * e..(layer + 1) * e].iter().map(|&x| x as f64).collect();
        v.sort_by(|a, b| b.total_cmp(a));
        let pts: Vec<(f64, f64)> =
            v.iter().enumerate().filter(|x| *x.1 > 0.0).map(|(r, &y)| (((r + 1) as f64).ln(), y.ln())).collect();
        if pts.len() >= 2 {
            let mx = mean(&pts.iter().map(|p| p.0).collect::<Vec<_>>());
            let my = mean(&pts.iter().map(|p| p.1).collect::<Vec<_>>());
            let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
            let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
            if sxx > 0.0 {
                slopes.push(-sxy / sxx);
            }
        }
    }
    let total = pooled.tokens as f64 * shape.top_k as f64;
    let (mut pref_frac, mut boosts, mut jitter) = (Vec::new(), Vec::new(), Vec::new());
    let mut generic_counts = Vec::new();
    let mut generic_ratio = Vec::new();
    for layer in 0..l {
        let pool: Vec<f64> =
            pooled.load[layer * e..(layer + 1) * e].iter().map(|&x| x as f64 / total.max(1.0)).collect();
        if keys.len() >= 2 {
            for share in shares {
                let s = &share[layer * e..(layer + 1) * e];
                let ratios: Vec<f64> = s.iter().zip(&pool).filter(|(_, &p)| p > 0.0).map(|(&f, &p)| f / p).collect();
                let pref: Vec<f64> = ratios.iter().copied().filter(|&r| r >= 2.0).collect();
                pref_frac.push(pref.len() as f64 / e as f64);
                if !pref.is_empty() {
                    boosts.push(mean(&pref));
                }
                let rest: Vec<f64> = ratios.iter().filter(|&&r| r > 0.0 && r < 2.0).map(|r| r.ln()).collect();
                let m = mean(&rest);
                jitter.push((rest.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / rest.len().max(1) as f64).sqrt());
            }
            let generic: Vec<usize> =
                (0..e).filter(|&x| shares.iter().all(|s| s[layer * e + x] >= 1.0 / e as f64)).collect();
            generic_counts.push(generic.len() as f64 / e as f64);
            if !generic.is_empty() && generic.len() < e {
                let g = mean(&generic.iter().map(|&x| pool[x]).collect::<Vec<_>>());
                let o = mean(&(0..e).filter(|x| !generic.contains(x)).map(|x| pool[x]).collect::<Vec<_>>());
                if o > 0.0 {
                    generic_ratio.push(g / o);
                }
            }
        }
    }
    let base = Knobs::default();
    Knobs {
        skew: if slopes.is_empty() { base.skew } else { mean(&slopes).clamp(0.0, 8.0) },
        family_experts: if pref_frac.is_empty() { base.family_experts } else { mean(&pref_frac).clamp(0.0, 1.0) },
        family_boost: if boosts.is_empty() { 1.0 } else { mean(&boosts).max(1.0) },
        family_noise: if jitter.is_empty() { 0.0 } else { mean(&jitter).min(5.0) },
        generic_experts: mean(&generic_counts).clamp(0.0, 1.0),
        generic_boost: if generic_ratio.is_empty() { 1.0 } else { mean(&generic_ratio).clamp(1.0, 1e6) },
        cluster_size: base.cluster_size,
        cluster_affinity: mean(&profile.cluster_affinity).min(0.8),
        layer_successors: base.layer_successors,
        layer_affinity: mean(&profile.layer_affinity).min(0.95 - mean(&profile.cluster_affinity).min(0.8)).max(0.0),
        request_variation: fitted.request_variation,
        decode_drift: fitted.decode_drift,
    }
}

/// One layer's figures, real against synthetic.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerComparison {
    pub layer: usize,
    pub real_max_over_mean: f64,
    pub synth_max_over_mean: f64,
    pub real_entropy_norm: f64,
    pub synth_entropy_norm: f64,
    pub real_js_divergence: Option<f64>,
    pub synth_js_divergence: Option<f64>,
    pub real_top_pairs_share: Option<f64>,
    pub synth_top_pairs_share: Option<f64>,
}

/// Per-layer load imbalance (max/mean), normalised entropy, family JS divergence and
/// top-E co-activation pair share of two traces of one shape (report definitions).
pub fn compare(real: &Statistics, synth: &Statistics) -> Result<Vec<LayerComparison>, SynthError> {
    if real.shape() != synth.shape() {
        return Err(SynthError::BadStatistics(format!(
            "the traces differ in shape: {} against {}",
            real.shape(),
            synth.shape()
        )));
    }
    let a = ProfileReport::from_statistics(real);
    let b = ProfileReport::from_statistics(synth);
    Ok(a.per_layer
        .iter()
        .zip(&b.per_layer)
        .map(|(x, y)| LayerComparison {
            layer: x.layer,
            real_max_over_mean: x.max_over_mean,
            synth_max_over_mean: y.max_over_mean,
            real_entropy_norm: x.entropy_norm,
            synth_entropy_norm: y.entropy_norm,
            real_js_divergence: x.js_divergence,
            synth_js_divergence: y.js_divergence,
            real_top_pairs_share: x.top_pairs_share,
            synth_top_pairs_share: y.top_pairs_share,
        })
        .collect())
}
