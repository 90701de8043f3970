//! Speed of the synthetic workload generator (docs/SYNTH.md): one million
//! DeepSeek-V3-shaped tokens (58 MoE layers, 256 experts, top-8), generated as a
//! stream of batches. Target: the generator plus a Parquet writer under 10 s on two
//! cores, so the generator alone must stay well below that.
//!
//! Run: `cargo bench -p moeplace-core --bench synth`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moeplace_core::synth::{generate, SynthConfig};

fn deepseek_v3_million(c: &mut Criterion) {
    let mut config = SynthConfig::preset("deepseek-v3").expect("a preset");
    config.tokens = Some(1_000_000);
    let mut g = c.benchmark_group("synth");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1_000_000));
    g.bench_function("deepseek-v3 1M tokens", |b| {
        b.iter(|| {
            let mut tokens = 0usize;
            for batch in generate(&config, 1).expect("valid config") {
                tokens += batch.len();
            }
            assert_eq!(tokens, 1_000_000);
        })
    });
    g.finish();
}

fn small_demo(c: &mut Criterion) {
    let config = SynthConfig::small_demo();
    c.bench_function("synth small_demo", |b| b.iter(|| generate(&config, 1).expect("valid").count()));
}

criterion_group!(benches, deepseek_v3_million, small_demo);
criterion_main!(benches);
