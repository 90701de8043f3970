//! `moeplace demo`, the README's first command: it plans with every placer on the
//! built-in workload, prints the side-by-side table and writes the HTML report.

mod common;

use common::moeplace_ok;

#[test]
fn demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("demo.html");
    let out = moeplace_ok(&["demo", "--report", report.to_str().unwrap()]);
    let header = out.lines().find(|l| l.starts_with("metric")).unwrap_or_default();
    for placer in ["linear", "eplb", "balance", "coact", "tacg", "tacg+gesr", "grace"] {
        assert!(header.split_whitespace().any(|w| w == placer), "{placer} missing:\n{out}");
    }
    assert!(out.contains("Jain (load)"), "{out}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("<html") && html.contains("tacg+gesr"), "report incomplete");
}

#[test]
fn demo_says_how_each_plan_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("demo.html");
    let out = moeplace_ok(&["demo", "--report", report.to_str().unwrap()]);
    assert!(out.contains("tacg+gesr (tacg+gesr): served with gesr, homes family"), "{out}");
    assert!(out.contains("grace (grace): served with grace, homes rr"), "{out}");
    assert!(out.contains("eplb (eplb): served with nearest, homes rr"), "{out}");
}

#[test]
fn demo_with_too_few_slots_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("demo.html");
    let out = common::moeplace(&["demo", "--gpus", "8", "--slots-per-gpu", "2", "--report", report.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("16 slots per layer cannot hold the workload's 32 experts"), "{err}");
    assert!(!err.contains("workload:"), "work started: {err}");
    assert!(!report.exists());
}

#[test]
fn demo_with_more_slots_per_gpu_than_experts_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("demo.html");
    let out = common::moeplace(&["demo", "--gpus", "4", "--slots-per-gpu", "33", "--report", report.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--slots-per-gpu 33 is more than the workload's 32 experts"), "{err}");
    assert!(!err.contains("workload:"), "work started: {err}");
    assert!(!report.exists());
}
