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
