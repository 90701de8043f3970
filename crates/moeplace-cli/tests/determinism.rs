//! Same inputs, same bytes, whatever the thread count: every file moeplace writes
//! (synthetic and converted traces, statistics in both encodings, plans of every
//! placer, exports, reports) is byte-identical under 1 and 2 worker threads.

mod common;

use std::path::Path;
use std::process::Command;

/// Runs moeplace with `threads` worker threads, failing the test on error.
fn run(threads: &str, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_moeplace"))
        .args(args)
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "moeplace {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Every output of the pipeline, written under `dir` with `threads` threads.
fn outputs(dir: &Path, threads: &str) -> Vec<(String, Vec<u8>)> {
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let synth = ["--layers", "4", "--experts", "16", "--top-k", "2", "--requests", "40", "--seed", "3"];
    run(threads, &[&["synth"], &synth[..], &["-o", &p("t.parquet")]].concat());
    run(threads, &["convert", &p("t.parquet"), "-o", &p("t.jsonl")]);
    run(threads, &["convert", &p("t.parquet"), "-o", &p("t.npz")]);
    run(threads, &["profile", &p("t.parquet"), "-o", &p("s.stats")]);
    run(threads, &["profile", &p("t.jsonl"), "-o", &p("s.json")]);
    run(threads, &["merge", &p("s.stats"), &p("s.json"), "-o", &p("m.stats")]);
    let mut files = vec!["t.parquet", "t.jsonl", "t.npz", "s.stats", "s.json", "m.stats"];
    let placers = ["linear", "round-robin", "eplb", "balance", "coact", "cluster-homes", "tacg", "tacg+gesr", "grace"];
    let plans: Vec<String> = placers.iter().map(|placer| format!("plan-{placer}.json")).collect();
    for (placer, plan) in placers.iter().zip(&plans) {
        run(
            threads,
            &[
                "plan",
                "--placer",
                placer,
                "--stats",
                &p("s.stats"),
                "--gpus",
                "8",
                "--nodes",
                "2",
                "--slots-per-gpu",
                "3",
                "-o",
                &p(plan),
            ],
        );
        files.push(plan);
    }
    run(threads, &["export", &p("plan-tacg+gesr.json"), "--to", "sglang", "-o", &p("plan.sglang.json")]);
    run(threads, &["eval", "--trace", &p("t.parquet"), "--plan", &p("plan-tacg+gesr.json"), "-o", &p("r.html")]);
    files.extend(["plan.sglang.json", "r.html"]);
    files.iter().map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap())).collect()
}

#[test]
fn every_output_is_the_same_under_one_and_two_threads() {
    // One folder for both runs: outputs may name their inputs' paths.
    let dir = tempfile::tempdir().unwrap();
    let one = outputs(dir.path(), "1");
    let two = outputs(dir.path(), "2");
    for ((name, x), (_, y)) in one.iter().zip(&two) {
        assert!(x == y, "{name} differs between 1 and 2 threads");
    }
}
