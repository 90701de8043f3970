use super::*;
use crate::report::ProfileReport;
use crate::stats::{ProfileOptions, Statistics};

fn profile(batches: &[TokenBatch]) -> Statistics {
    let mut s = Statistics::new(batches[0].shape(), ProfileOptions::default());
    for b in batches {
        s.add_batch(b).unwrap();
    }
    s
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    let c = SynthConfig::small_demo();
    let a = generate_all(&c, 1).unwrap();
    let b = generate_all(&c, 1).unwrap();
    let d = generate_all(&c, 2).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, d);
    let tokens: usize = a.iter().map(TokenBatch::len).sum();
    assert!((2000..10_000).contains(&tokens), "small demo has {tokens} tokens");
    // Batches hold whole requests: no request name in two batches.
    let mut seen = std::collections::HashSet::new();
    for b in &a {
        for r in b.request_names() {
            assert!(seen.insert(r.clone()), "request {r} split across batches");
        }
    }
}

#[test]
fn output_does_not_depend_on_threads() {
    let c = SynthConfig::small_demo();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let a = one.install(|| generate_all(&c, 5).unwrap());
    let b = generate_all(&c, 5).unwrap();
    assert_eq!(a, b);
}

#[test]
fn exact_token_count_and_phases() {
    let mut c = SynthConfig::small_demo();
    c.tokens = Some(1234);
    let batches = generate_all(&c, 3).unwrap();
    assert_eq!(batches.iter().map(TokenBatch::len).sum::<usize>(), 1234);
    let b = &batches[0];
    // Every request: prefill positions first, then decode, positions counting up.
    let t0 = b.token(0);
    assert_eq!(t0.phase, Some(trace::Phase::Prefill));
    assert_eq!(t0.position, 0);
    assert!(b.phases().contains(&Some(trace::Phase::Decode)));
}

use crate::trace;

#[test]
fn bad_parameters_give_clear_errors() {
    assert!(matches!(SynthConfig::for_shape(4, 0, 1), Err(SynthError::Shape(_))));
    let e = SynthConfig::for_shape(4, 8, 9).unwrap_err();
    assert!(e.to_string().contains("top-k 9"), "{e}");
    let e = SynthConfig::preset("gpt-9").unwrap_err();
    assert!(matches!(e, SynthError::UnknownPreset { .. }));
    assert!(e.to_string().contains("deepseek-v3"), "{e}");
    let c = SynthConfig::small_demo();
    let zero = vec![FamilyMix { name: "a".into(), weight: 0.0 }, FamilyMix { name: "b".into(), weight: 0.0 }];
    assert!(matches!(c.with_families(zero), Err(SynthError::WeightsNotPositive { .. })));
    let neg = vec![FamilyMix { name: "a".into(), weight: -1.0 }];
    assert!(matches!(c.with_families(neg), Err(SynthError::BadFamilyWeight { .. })));
    assert!(matches!(c.with_families(vec![]), Err(SynthError::NoFamilies)));
    assert!(matches!(parse_families("a=x"), Err(SynthError::BadMix(_))));
    assert!(matches!(c.without_family("nope"), Err(SynthError::UnknownFamily { .. })));
    let mut bad = c.clone();
    bad.knobs.cluster_affinity = 0.7;
    bad.knobs.layer_affinity = 0.5;
    assert!(matches!(generate(&bad, 0), Err(SynthError::BadKnob { name: "layer_affinity", .. })));
    assert!(LengthDist::parse("10..5").is_err());
    assert_eq!(LengthDist::parse("lognormal:128:0.5").unwrap(), LengthDist::LogNormal { median: 128.0, sigma: 0.5 });
    assert_eq!(LengthDist::parse("64..256").unwrap(), LengthDist::Uniform { min: 64, max: 256 });
}

#[test]
fn every_preset_generates_valid_tokens() {
    for p in PRESETS {
        let mut c = SynthConfig::preset(p.name).unwrap();
        c.requests = 2;
        c.prefill_len = LengthDist::Fixed(20);
        c.decode_len = LengthDist::Fixed(5);
        let b = generate_all(&c, 0).unwrap();
        assert_eq!(b.iter().map(TokenBatch::len).sum::<usize>(), 50, "{}", p.name);
        assert_eq!(b[0].shape(), ModelShape::new(p.layers, p.experts, p.top_k).unwrap());
    }
    // top-k = experts still works (every expert picked).
    let mut c = SynthConfig::for_shape(2, 4, 4).unwrap();
    c.requests = 3;
    c.prefill_len = LengthDist::Fixed(10);
    c.decode_len = LengthDist::Fixed(0);
    assert_eq!(generate_all(&c, 0).unwrap()[0].len(), 30);
}

#[test]
fn demo_shows_the_structure() {
    let mut c = SynthConfig::small_demo();
    c.requests = 200;
    let s = profile(&generate_all(&c, 9).unwrap());
    let r = ProfileReport::from_statistics(&s);
    assert!(r.mean.max_over_mean > 1.5, "skew: {}", r.mean.max_over_mean);
    assert!(r.mean.js_divergence.unwrap() > 0.05, "family JS: {:?}", r.mean.js_divergence);
    let pd = r.mean.prefill_decode_correlation.unwrap();
    assert!(pd > 0.3 && pd < 0.95, "prefill-decode correlation {pd}");
    // Without structure the same figures collapse.
    let mut flat = c.clone();
    flat.knobs = Knobs {
        skew: 0.0,
        family_experts: 0.0,
        family_boost: 1.0,
        family_noise: 0.0,
        generic_experts: 0.0,
        generic_boost: 1.0,
        cluster_size: 1,
        cluster_affinity: 0.0,
        layer_successors: 1,
        layer_affinity: 0.0,
        request_variation: 0.0,
        decode_drift: 0.0,
    };
    let f = ProfileReport::from_statistics(&profile(&generate_all(&flat, 9).unwrap()));
    assert!(f.mean.max_over_mean < r.mean.max_over_mean);
    assert!(f.mean.js_divergence.unwrap() < 0.02, "flat family JS {:?}", f.mean.js_divergence);
    assert!(f.mean.top_pairs_share.unwrap() < r.mean.top_pairs_share.unwrap());
}

#[test]
fn shift_keeps_the_other_families_structure() {
    let c = SynthConfig::small_demo();
    let without = c.without_family("math").unwrap();
    let b = generate_all(&without, 1).unwrap();
    assert!(b.iter().all(|b| b.family_indices().iter().all(|f| b.family_names()[f.unwrap() as usize] != "math")));
    // Code's tables are the same with or without math in the mix.
    let m1 = model::Model::compile(&c).unwrap();
    let m2 = model::Model::compile(&without).unwrap();
    assert_eq!(m1.families[0].1, m2.families[0].1);
}

#[test]
fn fit_recovers_a_synthetic_workload() {
    let mut c = SynthConfig::small_demo();
    c.requests = 150;
    let real = profile(&generate_all(&c, 11).unwrap());
    let fitted = fit(&real).unwrap();
    assert_eq!(fitted.tokens, Some(real.tokens()));
    let synth = profile(&generate_all(&fitted, 12).unwrap());
    assert_eq!(synth.tokens(), real.tokens());
    for row in compare(&real, &synth).unwrap() {
        let rel = (row.synth_max_over_mean - row.real_max_over_mean).abs() / row.real_max_over_mean;
        assert!(rel < 0.25, "layer {} max/mean {row:?}", row.layer);
        assert!((row.synth_entropy_norm - row.real_entropy_norm).abs() < 0.03, "{row:?}");
    }
    // Retargeting keeps the knobs and drops the exact tables.
    let big = fitted.retarget(ModelShape::new(12, 64, 6).unwrap()).unwrap();
    assert!(big.active_profile().is_none());
    assert_eq!(generate_all(&big, 0).unwrap()[0].shape().experts, 64);
}
