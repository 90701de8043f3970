//! Statistics re-weighted to another family mix: what the calibration requests would
//! have counted had each family sent a given share of the tokens.
//!
//! A server knows its current family mix from request counters long before it has
//! new routing traces. Re-weighting the statistics it has lets a placer plan for the
//! new mix at once (`moeplace plan --family-share`); docs/TACG.md measures such
//! re-plans on held-out shifted traffic.
//!
//! Rule: family f's counts (tokens, loads, co-activation, transitions) are multiplied
//! by `w_f = share_f / current_share_f`, scaled so that the smallest positive
//! multiplier is 1 (counts only grow, so small families lose no precision), and
//! rounded to the nearest integer. Families listed with share 0 are dropped (their
//! groups, request vectors and sampled tokens). The families not listed, and tokens
//! without a family, split what the listed shares leave in proportion to their
//! current tokens. The token-path sample keeps, of each family, the fraction
//! `w_f / max w` of its sampled tokens with the smallest hashes (a uniform subsample,
//! as the sample is bottom-k by hash), so its family mix follows the new shares too.
//! Request vectors are per request and do not depend on the mix; they are kept.
//!
//! Re-weighted statistics describe a hypothetical trace: merging them with other
//! statistics adds counts of different weights.

use std::collections::BTreeMap;

use super::{SampledToken, Statistics, TokenSample};

/// Why a family mix cannot be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MixError {
    #[error("family {family:?} is not in the statistics (families: {known})")]
    UnknownFamily { family: String, known: String },
    #[error("share {share} of family {family:?} must be a number from 0 to 1")]
    BadShare { family: String, share: f64 },
    #[error("the shares add up to {0}, more than 1")]
    OverOne(f64),
    #[error(
        "the shares add up to {0}, not 1, and no other tokens are left to take the rest (list every family so that the shares add up to 1)"
    )]
    NotOne(f64),
    #[error("family {family:?}: share {share} against its {tokens} calibration tokens needs counts too large to hold")]
    TooSkewed { family: String, share: f64, tokens: u64 },
    #[error("{0:?}: expected FAMILY=SHARE, e.g. law=0.7")]
    NotAPair(String),
    #[error("{item:?}: {share:?} is not a number")]
    NotANumber { item: String, share: String },
    #[error("family {0:?} given twice")]
    Twice(String),
}

/// Parses `FAMILY=SHARE` items (`plan --family-share`), each family once. The
/// shares themselves are checked against the statistics by
/// [`Statistics::with_family_shares`].
pub fn parse_family_shares<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<BTreeMap<String, f64>, MixError> {
    let mut out = BTreeMap::new();
    for item in items {
        let (family, share) = item.split_once('=').ok_or_else(|| MixError::NotAPair(item.to_string()))?;
        let share: f64 = share
            .trim()
            .parse()
            .map_err(|_| MixError::NotANumber { item: item.to_string(), share: share.to_string() })?;
        if out.insert(family.trim().to_string(), share).is_some() {
            return Err(MixError::Twice(family.trim().to_string()));
        }
    }
    Ok(out)
}

/// How far above the largest exactly representable count a multiplied count may not go.
const MAX_COUNT: f64 = (1u64 << 53) as f64;

impl Statistics {
    /// These statistics re-weighted so that each family in `shares` holds its share of
    /// the tokens (see the module documentation for the rule).
    pub fn with_family_shares(&self, shares: &BTreeMap<String, f64>) -> Result<Statistics, MixError> {
        let families = self.families();
        for (f, &s) in shares {
            if !families.contains(f) {
                let known = if families.is_empty() {
                    "none: the statistics carry no family labels".to_string()
                } else {
                    families.join(", ")
                };
                return Err(MixError::UnknownFamily { family: f.clone(), known });
            }
            if !(0.0..=1.0).contains(&s) {
                return Err(MixError::BadShare { family: f.clone(), share: s });
            }
        }
        let listed: f64 = shares.values().sum();
        if listed > 1.0 + 1e-9 {
            return Err(MixError::OverOne(listed));
        }
        // Current tokens per family (`None`: without a family).
        let tokens = self.family_tokens();
        let rest_tokens: u64 =
            tokens.iter().filter(|(f, _)| f.as_ref().is_none_or(|f| !shares.contains_key(f))).map(|(_, n)| n).sum();
        let total = self.tokens().max(1) as f64;
        let rest = (1.0 - listed).max(0.0);
        if rest > 1e-9 && rest_tokens == 0 {
            return Err(MixError::NotOne(listed));
        }
        // The target share of every group of tokens, then its multiplier.
        let target = |f: &Option<String>, n: u64| -> f64 {
            match f.as_ref().and_then(|f| shares.get(f)) {
                Some(&s) => s,
                None if rest_tokens == 0 => 0.0,
                None => rest * n as f64 / rest_tokens as f64,
            }
        };
        let raw: BTreeMap<Option<String>, f64> = tokens
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(f, &n)| (f.clone(), target(f, n) / (n as f64 / total)))
            .filter(|(_, w)| *w > 0.0)
            .collect();
        let smallest = raw.values().copied().fold(f64::INFINITY, f64::min);
        if !smallest.is_finite() {
            // Only families without tokens were given a share.
            return Err(MixError::NotOne(listed));
        }
        let weight: BTreeMap<Option<String>, f64> = raw.into_iter().map(|(f, w)| (f, w / smallest)).collect();
        let largest = weight.values().copied().fold(0.0, f64::max);
        let scale =
            |counts: &[u64], w: f64| -> Vec<u64> { counts.iter().map(|&c| (c as f64 * w).round() as u64).collect() };

        let mut out = self.clone();
        out.groups.clear();
        for (key, g) in &self.groups {
            let Some(&w) = weight.get(&key.family) else { continue };
            let biggest = g.load.iter().chain(&g.coact).chain(&g.transitions).copied().max().unwrap_or(0).max(g.tokens);
            if biggest as f64 * w > MAX_COUNT {
                let family = key.family.clone().unwrap_or_else(|| "(none)".into());
                let share = key.family.as_ref().and_then(|f| shares.get(f)).copied().unwrap_or(rest);
                return Err(MixError::TooSkewed { family, share, tokens: g.tokens });
            }
            let mut scaled = g.clone();
            scaled.tokens = (g.tokens as f64 * w).round() as u64;
            scaled.load = scale(&g.load, w);
            scaled.coact = scale(&g.coact, w);
            scaled.transitions = scale(&g.transitions, w);
            out.groups.insert(key.clone(), scaled);
        }
        out.requests.retain(|_, r| weight.contains_key(&r.family));
        out.vectors = out.requests.values().map(|r| r.by_phase.len()).sum();
        out.sample = subsample(&self.sample, |f| weight.get(f).map_or(0.0, |w| w / largest));
        Ok(out)
    }
}

/// Of each family's sampled tokens, the fraction `keep(family)` with the smallest hashes.
fn subsample(sample: &TokenSample, keep: impl Fn(&Option<String>) -> f64) -> TokenSample {
    let mut by_family: BTreeMap<&Option<String>, Vec<&SampledToken>> = BTreeMap::new();
    for t in sample.tokens() {
        by_family.entry(&t.family).or_default().push(t);
    }
    let mut kept = Vec::new();
    for (f, toks) in by_family {
        // Tokens are in hash order already; the first ones are a uniform subsample.
        let n = (toks.len() as f64 * keep(f)).round() as usize;
        kept.extend(toks.into_iter().take(n).cloned());
    }
    TokenSample::from_tokens(sample.capacity(), kept)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::stats::{GroupKey, ProfileOptions};
    use crate::trace::{ModelShape, Phase, TokenBatch, TokenRef};

    /// Two families: `a` with 30 tokens picking experts 0 and 1, `b` with 10 picking 2
    /// and 3, and 20 tokens without a family picking 0 and 3 (one layer, top-2).
    fn stats() -> Statistics {
        let shape = ModelShape::new(1, 4, 2).unwrap();
        let mut batch = TokenBatch::new(shape);
        for (family, n, picks) in [(Some("a"), 30, [0u16, 1]), (Some("b"), 10, [2, 3]), (None, 20, [0, 3])] {
            for i in 0..n {
                let request = format!("{}-{i}", family.unwrap_or("none"));
                batch
                    .push(TokenRef {
                        request: &request,
                        family,
                        phase: Some(Phase::Prefill),
                        position: 0,
                        experts: &picks,
                        gate_weights: None,
                    })
                    .unwrap();
            }
        }
        let mut s = Statistics::new(shape, ProfileOptions::default());
        s.add_batch(&batch).unwrap();
        s
    }

    fn shares(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(f, s)| (f.to_string(), *s)).collect()
    }

    fn share_of(s: &Statistics, family: Option<&str>) -> f64 {
        let t = s.family_tokens();
        t.get(&family.map(str::to_string)).copied().unwrap_or(0) as f64 / s.tokens() as f64
    }

    #[test]
    fn listed_families_get_their_shares_and_the_rest_splits_the_remainder() {
        let s = stats().with_family_shares(&shares(&[("b", 0.6)])).unwrap();
        assert!((share_of(&s, Some("b")) - 0.6).abs() < 1e-9);
        // `a` (30 tokens) and the unlabelled tokens (20) split 0.4 as 3 : 2.
        assert!((share_of(&s, Some("a")) - 0.24).abs() < 1e-9);
        assert!((share_of(&s, None) - 0.16).abs() < 1e-9);
        // Loads follow their family's multiplier: expert 2 is b's alone.
        let load = s.pooled(|_| true).load;
        assert_eq!(load[2], s.family_tokens()[&Some("b".to_string())]);
        // The sample follows the mix as well (its tokens are all 60 before).
        let sampled = |f: Option<&str>| s.token_sample().tokens().iter().filter(|t| t.family.as_deref() == f).count();
        assert_eq!(sampled(Some("b")), 10);
        assert_eq!(sampled(Some("a")), 4);
        assert_eq!(sampled(None), 3);
    }

    #[test]
    fn a_family_with_share_zero_is_gone() {
        let s = stats().with_family_shares(&shares(&[("a", 0.0), ("b", 0.5)])).unwrap();
        assert_eq!(s.families(), vec!["b".to_string()]);
        assert!(s.requests().values().all(|r| r.family.as_deref() != Some("a")));
        assert!(s.token_sample().tokens().iter().all(|t| t.family.as_deref() != Some("a")));
        assert_eq!(s.pooled(|_| true).load[1], 0);
    }

    #[test]
    fn the_current_mix_changes_nothing() {
        let s = stats();
        let same = s.with_family_shares(&shares(&[("a", 0.5), ("b", 1.0 / 6.0)])).unwrap();
        assert_eq!(same, s);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any valid mix over every family gives each family its share, to within the
        /// rounding of one token per multiplier step, and scales each family's loads
        /// by the same multiplier as its tokens (each count rounded once; 1e-9 for ties
        /// that floating point puts a hair off).
        #[test]
        fn every_family_gets_its_share(
            sizes in proptest::collection::vec(1usize..40, 2..5),
            raw in proptest::collection::vec(0u32..10, 5),
        ) {
            let shape = ModelShape::new(1, 4, 2).unwrap();
            let families: Vec<String> = (0..sizes.len()).map(|f| format!("f{f}")).collect();
            let mut batch = TokenBatch::new(shape);
            for (f, &n) in sizes.iter().enumerate() {
                for i in 0..n {
                    let request = format!("{f}-{i}");
                    let picks = [f as u16 % 4, (f as u16 + 1 + i as u16 % 3) % 4];
                    let family = Some(families[f].as_str());
                    let t = TokenRef { request: &request, family, phase: None, position: 0, experts: &picks,
                        gate_weights: None };
                    batch.push(t).unwrap();
                }
            }
            let mut st = Statistics::new(shape, ProfileOptions::default());
            st.add_batch(&batch).unwrap();
            let weights = &raw[..sizes.len()];
            let sum: u32 = weights.iter().sum();
            prop_assume!(sum > 0);
            let wanted: BTreeMap<String, f64> =
                families.iter().zip(weights).map(|(f, &w)| (f.clone(), w as f64 / sum as f64)).collect();
            let mixed = st.with_family_shares(&wanted).unwrap();
            let total = mixed.tokens() as f64;
            for (f, &share) in &wanted {
                let key = GroupKey { family: Some(f.clone()), phase: None };
                let Some(g) = mixed.groups().get(&key) else {
                    prop_assert_eq!(share, 0.0);
                    continue;
                };
                prop_assert!((g.tokens as f64 / total - share).abs() <= 1.0 / total + 1e-12);
                let before = &st.groups()[&key];
                let w = g.tokens as f64 / before.tokens as f64;
                for (&a, &b) in g.load.iter().zip(&before.load) {
                    let slack = 0.5 + b as f64 * 0.5 / before.tokens as f64 + 1e-9;
                    prop_assert!((a as f64 - b as f64 * w).abs() <= slack, "load {b} -> {a}, multiplier {w}");
                }
            }
        }
    }

    #[test]
    fn bad_mixes_are_refused() {
        let s = stats();
        assert!(matches!(s.with_family_shares(&shares(&[("c", 0.5)])), Err(MixError::UnknownFamily { .. })));
        assert!(matches!(s.with_family_shares(&shares(&[("a", 1.5)])), Err(MixError::BadShare { .. })));
        assert!(matches!(s.with_family_shares(&shares(&[("a", f64::NAN)])), Err(MixError::BadShare { .. })));
        assert!(matches!(s.with_family_shares(&shares(&[("a", 0.7), ("b", 0.7)])), Err(MixError::OverOne(_))));
        let labelled = s.with_family_shares(&shares(&[("a", 0.5), ("b", 0.5)])).unwrap();
        assert!(labelled.with_family_shares(&shares(&[("a", 0.5)])).is_ok());
        assert!(matches!(labelled.with_family_shares(&shares(&[("a", 0.2), ("b", 0.2)])), Err(MixError::NotOne(_))));
        let only_a = labelled.with_family_shares(&shares(&[("b", 0.0), ("a", 1.0)])).unwrap();
        assert!(matches!(only_a.with_family_shares(&shares(&[("a", 0.0)])), Err(MixError::NotOne(_))));
    }
}
