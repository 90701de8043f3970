//! Simulator throughput in wall-clock time and per CPU-second, on the criterion
//! bench's input (DeepSeek-V3 shape: 58 layers, 256 experts, top-8; 64 GPUs in 8
//! nodes; linear placement, 4 slots per GPU). The CPU-time figure (user + system time
//! of this process, read from /proc/self/stat, so Linux only) is robust to other
//! programs sharing the machine; wall-clock throughput on an idle machine is at most
//! that figure times the number of cores.
//! Run: cargo run --release -p moeplace-core --example simulate_throughput [-- dispatcher]

use std::time::Instant;

use moeplace_core::cluster::Cluster;
use moeplace_core::dispatch::by_name;
use moeplace_core::placement::Placement;
use moeplace_core::simulate::{benchmark_trace, simulate, HomePolicy};
use moeplace_core::trace::ModelShape;

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "primary".into());
    let d = by_name(&name, 0).expect("dispatcher name: primary, random or nearest");
    let shape = ModelShape::new(58, 256, 8).unwrap();
    let tokens = 50_000;
    let trace = benchmark_trace(shape, tokens, 500, 1);
    let cluster = Cluster::new(8, 64, 4).unwrap();
    let row: Vec<i64> = (0..256).collect();
    let placement = Placement::new(256, 64, 4, vec![row; 58]).unwrap();
    let run = || simulate(&trace, &placement, &cluster, d.as_ref(), &HomePolicy::RoundRobin).unwrap();
    run();
    let reps = 20;
    let (c0, t0) = (cpu_seconds(), Instant::now());
    for _ in 0..reps {
        std::hint::black_box(run());
    }
    let (cpu, wall) = (cpu_seconds() - c0, t0.elapsed().as_secs_f64());
    let work = (reps * tokens * shape.layers) as f64;
    println!(
        "dispatcher {name}: {:.1} M token-layers/s wall-clock ({} threads), {:.1} M token-layers per CPU-second",
        work / wall / 1e6,
        rayon::current_num_threads(),
        work / cpu / 1e6
    );
}
