//! Replay simulator throughput on a DeepSeek-V3-shaped trace (58 MoE layers, 256
//! experts, top-8) with 64 GPUs in 8 nodes, 4 slots per GPU, linear placement.
//! Throughput is reported in token-layers (criterion's "elements").
//! Run: cargo bench -p moeplace-core --bench simulate

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moeplace_core::cluster::Cluster;
use moeplace_core::dispatch::by_name;
use moeplace_core::placement::Placement;
use moeplace_core::simulate::{benchmark_trace, simulate, HomePolicy};
use moeplace_core::trace::ModelShape;

fn bench(c: &mut Criterion) {
    let shape = ModelShape::new(58, 256, 8).unwrap();
    let tokens = 50_000;
    let trace = benchmark_trace(shape, tokens, 500, 1);
    let cluster = Cluster::new(8, 64, 4).unwrap();
    let row: Vec<i64> = (0..256).collect();
    let placement = Placement::new(256, 64, 4, vec![row; 58]).unwrap();
    let mut g = c.benchmark_group("simulate");
    g.throughput(Throughput::Elements((tokens * shape.layers) as u64));
    g.sample_size(10);
    for name in ["primary", "nearest"] {
        let d = by_name(name, 0).unwrap();
        g.bench_function(format!("v3-shape-64gpu-{name}"), |b| {
            b.iter(|| simulate(&trace, &placement, &cluster, d.as_ref(), &HomePolicy::RoundRobin).unwrap())
        });
    }
    // With 64 redundant slots (5 per GPU): a copy of every fourth expert on a GPU 16 away, so
    // `nearest` really chooses.
    let cluster5 = Cluster::new(8, 64, 5).unwrap();
    let lists: Vec<Vec<usize>> = (0..64)
        .map(|gpu| {
            let mut l: Vec<usize> = (gpu * 4..gpu * 4 + 4).collect();
            l.push(((gpu + 16) % 64) * 4);
            l
        })
        .collect();
    let replicated = Placement::from_gpu_lists(256, &vec![lists; 58]).unwrap();
    let d = by_name("nearest", 0).unwrap();
    g.bench_function("v3-shape-64gpu-5slots-nearest", |b| {
        b.iter(|| simulate(&trace, &replicated, &cluster5, d.as_ref(), &HomePolicy::RoundRobin).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
