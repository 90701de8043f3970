//! Speed of the statistics kernel (docs/PERFORMANCE.md): DeepSeek-V3-shaped tokens
//! (58 MoE layers, 256 experts, top-8) already in memory, counted into load,
//! co-activation and transition statistics per (family, phase, layer). Reading a
//! file comes on top (see `moeplace-lab bench profile`); this isolates the counting.
//!
//! Run: `cargo bench -p moeplace-core --bench statistics`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moeplace_core::stats::{ProfileOptions, StatisticsBuilder};
use moeplace_core::synth::{generate, SynthConfig};

/// Two lengths: the difference of their times is the cost per token without the
/// fixed cost of allocating and draining the tables (about 60 MB per family and
/// phase for this shape).
fn deepseek_v3(c: &mut Criterion) {
    let mut g = c.benchmark_group("statistics");
    g.sample_size(10);
    for tokens in [25_000u64, 100_000] {
        deepseek_v3_tokens(&mut g, tokens);
    }
    g.finish();
}

fn deepseek_v3_tokens(g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>, tokens: u64) {
    let mut config = SynthConfig::preset("deepseek-v3").expect("a preset");
    config.tokens = Some(tokens);
    let batches: Vec<_> = generate(&config, 1).expect("valid config").collect();
    let shape = config.shape;
    g.throughput(Throughput::Elements(tokens * shape.layers as u64));
    g.bench_function(format!("deepseek-v3 {}k tokens (elements: token-layers)", tokens / 1000), |b| {
        b.iter(|| {
            let mut s = StatisticsBuilder::new(shape, ProfileOptions { request_vectors: false, ..Default::default() });
            for batch in &batches {
                s.add_batch(batch).expect("same shape");
            }
            s.finish()
        })
    });
}

criterion_group!(benches, deepseek_v3);
criterion_main!(benches);
