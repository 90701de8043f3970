//! Family-mix strings: `synth --families` and `--shift` (`parse_families`,
//! `without:FAMILY`, then the synthetic model's validation of the mix), and
//! `plan --family-share` values, one a line (`parse_family_shares`, then the
//! re-weighting of small statistics with families `law`, `code` and unlabelled
//! tokens).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use moeplace_core::stats::{parse_family_shares, ProfileOptions, Statistics, StatisticsBuilder};
use moeplace_core::synth::{parse_families, SynthConfig};
use moeplace_core::trace::{ModelShape, TokenBatch, TokenRef};

fn statistics() -> &'static Statistics {
    static STATS: OnceLock<Statistics> = OnceLock::new();
    STATS.get_or_init(|| {
        let shape = ModelShape::new(2, 8, 2).expect("a valid shape");
        let mut batch = TokenBatch::new(shape);
        for t in 0..40u16 {
            let (request, family) = match t % 5 {
                0 | 1 | 2 => ("r-law", Some("law")),
                3 => ("r-code", Some("code")),
                _ => ("r-none", None),
            };
            let experts = [t % 8, (t + 1) % 8, (t * 3) % 8, (t * 3 + 1) % 8];
            let token =
                TokenRef { request, family, phase: None, position: t as u32, experts: &experts, gate_weights: None };
            batch.push(token).expect("a token of the shape");
        }
        let mut builder = StatisticsBuilder::new(shape, ProfileOptions::default());
        builder.add_batch(&batch).expect("a batch of the shape");
        builder.finish()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let demo = SynthConfig::small_demo();
    match text.strip_prefix("without:") {
        Some(family) => {
            let _ = demo.without_family(family.trim());
        }
        None => {
            if let Ok(mix) = parse_families(text) {
                let _ = demo.with_families(mix);
            }
        }
    }
    if let Ok(shares) = parse_family_shares(text.lines()) {
        let _ = statistics().with_family_shares(&shares);
    }
});
