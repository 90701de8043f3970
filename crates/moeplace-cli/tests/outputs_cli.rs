//! Every command that writes a file takes `-o/--output`, and `-o -` writes to
//! standard output, which then carries the output alone (summaries go to standard
//! error), so that it can be piped or saved by the caller.

mod common;

use common::{moeplace, moeplace_ok};

fn synth_small(out: &str) -> String {
    moeplace_ok(&["synth", "--layers", "3", "--experts", "8", "--top-k", "2", "--requests", "6", "-o", out])
}

#[test]
fn traces_go_to_standard_output_as_jsonl_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.jsonl");
    synth_small(file.to_str().unwrap());
    let piped = synth_small("-");
    assert_eq!(piped.as_bytes(), std::fs::read(&file).unwrap(), "same bytes as the file");
    // A converted trace on standard output is the JSONL of the same tokens.
    let parquet = dir.path().join("t.parquet");
    moeplace_ok(&["convert", file.to_str().unwrap(), "-o", parquet.to_str().unwrap()]);
    let back = moeplace_ok(&["convert", parquet.to_str().unwrap(), "-o", "-"]);
    assert_eq!(back, piped);
    // The trailing file name of earlier releases still works.
    let old = dir.path().join("old.jsonl");
    moeplace_ok(&["convert", parquet.to_str().unwrap(), old.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&old).unwrap(), piped);
}

#[test]
fn an_npz_archive_is_never_written_to_standard_output() {
    let out = moeplace(&["synth", "--requests", "2", "--to", "npz", "-o", "-"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("npz") && err.contains("standard output"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn two_outputs_are_refused() {
    let out = moeplace(&["synth", "--requests", "2", "-o", "a.jsonl", "b.jsonl"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn statistics_plans_and_exports_go_to_standard_output() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    synth_small(trace.to_str().unwrap());
    let t = trace.to_str().unwrap();
    // Statistics: JSON on standard output, the report on standard error.
    let out = moeplace(&["profile", t, "-o", "-"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats_text = String::from_utf8(out.stdout).unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats_text).expect("statistics JSON alone");
    assert!(stats.is_object());
    let stats_path = dir.path().join("s.json");
    std::fs::write(&stats_path, &stats_text).unwrap();
    let s = stats_path.to_str().unwrap();
    // A plan: its JSON alone, the same as the file written from the same statistics.
    let plan_args = ["plan", "--stats", s, "--placer", "balance", "--gpus", "4", "--slots-per-gpu", "3"];
    let plan_path = dir.path().join("p.json");
    moeplace_ok(&[&plan_args[..], &["-o", plan_path.to_str().unwrap()]].concat());
    let piped = moeplace_ok(&[&plan_args[..], &["-o", "-"]].concat());
    assert_eq!(piped.as_bytes(), std::fs::read(&plan_path).unwrap());
    // An export.
    let p = plan_path.to_str().unwrap();
    let eplb = dir.path().join("p.eplb.json");
    moeplace_ok(&["export", p, "--to", "eplb", "-o", eplb.to_str().unwrap()]);
    assert_eq!(moeplace_ok(&["export", p, "--to", "eplb", "-o", "-"]).as_bytes(), std::fs::read(&eplb).unwrap());
    // A merge.
    let copy = dir.path().join("copy.stats");
    std::fs::copy(&stats_path, &copy).unwrap();
    let merged = moeplace_ok(&["merge", s, copy.to_str().unwrap(), "-o", "-"]);
    assert!(serde_json::from_str::<serde_json::Value>(&merged).is_ok(), "{merged}");
    // The report of eval: HTML alone on standard output, the table on standard error.
    let out = moeplace(&["eval", "--trace", t, "--plan", p, "-o", "-"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(html.trim_start().starts_with("<!DOCTYPE html") || html.trim_start().starts_with("<html"), "{html:.200}");
    assert!(err.contains("cut vs baseline"), "{err}");
}
