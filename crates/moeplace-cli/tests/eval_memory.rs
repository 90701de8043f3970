//! `eval` holds one window of the trace, not the trace: replaying three times as many
//! tokens (both longer than one window) must not take more memory.

mod common;
use common::moeplace_ok;
use std::io::Read;
use std::process::{Command, Stdio};

/// Runs the binary and returns its standard output and its peak resident size in
/// MiB (`wait4` reports the child's own peak).
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its peak
fn run_with_peak(args: &[&str]) -> (String, f64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_moeplace"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary runs");
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the child is ours and not yet waited for; wait4 fills the structs given.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "moeplace {args:?} failed");
    (out, usage.ru_maxrss as f64 / 1024.0)
}

#[cfg(target_os = "linux")]
#[test]
fn eval_memory_does_not_grow_with_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (small, big, plan) =
        (dir.path().join("small.parquet"), dir.path().join("big.parquet"), dir.path().join("p.json"));
    // DeepSeek-V2-Lite's shape: 26 MoE layers x top-6, about 0.3 KB per token in memory.
    for (path, tokens) in [(&small, "300000"), (&big, "900000")] {
        moeplace_ok(&["synth", "--model", "deepseek-v2-lite", "--tokens", tokens, "--seed", "3", "-o", &s(path)]);
    }
    moeplace_ok(&[
        "plan",
        "--placer",
        "linear",
        "--trace",
        &s(&small),
        "--model",
        "deepseek-v2-lite",
        "--gpus",
        "8",
        "--nodes",
        "2",
        "-o",
        &s(&plan),
    ]);
    let eval = |trace: &std::path::Path| {
        let (out, peak) = run_with_peak(&["eval", "--trace", &s(trace), "--plan", &s(&plan), "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (v["tokens"].as_u64().unwrap(), peak)
    };
    let (t_small, m_small) = eval(&small);
    let (t_big, m_big) = eval(&big);
    eprintln!("eval peak: {m_small:.0} MiB at 300k tokens, {m_big:.0} MiB at 900k");
    assert_eq!((t_small, t_big), (300_000, 900_000));
    // Held whole, the 600,000 more tokens would add about 180 MB, twice that while
    // families are interleaved; held a window at a time, only what is kept per request.
    assert!(m_big - m_small < 60.0, "eval peaked at {m_small:.0} MiB on 300k tokens and {m_big:.0} MiB on 900k");

    // Profiling with its statistics written: without per-request vectors (which
    // grow with the requests, as the input does) the statistics have a fixed size.
    let profile = |trace: &std::path::Path| {
        let out = dir.path().join("s.stats");
        run_with_peak(&["profile", &s(trace), "--no-request-vectors", "--json", "-o", &s(&out)]).1
    };
    let (p_small, p_big) = (profile(&small), profile(&big));
    eprintln!("profile -o peak: {p_small:.0} MiB at 300k tokens, {p_big:.0} MiB at 900k");
    assert!(p_big - p_small < 60.0, "profile -o peaked at {p_small:.0} MiB on 300k tokens and {p_big:.0} MiB on 900k");
}
