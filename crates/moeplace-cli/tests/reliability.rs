//! Regression tests of docs/RELIABILITY.md: each defect found by the mutation
//! campaign, with a minimised input generated here. Every failure is exit status 1
//! and one message naming the file, never a panic or an abort, and nothing is lost.

mod common;

use std::path::{Path, PathBuf};

use common::moeplace;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs moeplace, expects exit 1 without a panic, returns stderr.
fn fails(args: &[&str]) -> String {
    let out = moeplace(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "moeplace {args:?}: expected exit 1, stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Defect 1: a trace of a few bytes declaring a huge expert count, or many families
/// of a large one, is refused before its tables are allocated.
#[test]
fn declared_shapes_beyond_the_memory_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let one = write(
        dir.path(),
        "wide.jsonl",
        "{\"format\":\"moeplace-trace\",\"version\":1,\"layers\":1,\"experts\":32768,\"top_k\":1}\n\
         {\"request\":\"r\",\"position\":0,\"experts\":[[7]]}\n",
    );
    let err = fails(&["profile", s(&one)]);
    assert!(err.contains("wide.jsonl") && err.contains("limit of 8 GiB"), "{err}");
    let mut text = "{\"format\":\"moeplace-trace\",\"version\":1,\"layers\":1,\"experts\":16384,\"top_k\":1}\n".to_string();
    for f in 0..3 {
        text += &format!("{{\"request\":\"r{f}\",\"family\":\"f{f}\",\"position\":0,\"experts\":[[1]]}}\n");
    }
    let fams = write(dir.path(), "families.jsonl", &text);
    let err = fails(&["profile", s(&fams)]);
    assert!(err.contains("families.jsonl") && err.contains("limit of 8 GiB"), "{err}");
}

/// Defect 1: a small statistics file with many requests of a long model asks for
/// request vectors beyond the limit.
#[test]
fn statistics_files_beyond_the_memory_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (l, e) = (16384, 64);
    let requests: Vec<String> = (0..2100)
        .map(|i| format!("{{\"id\":\"r{i}\",\"family\":null,\"phases\":[{{\"phase\":null,\"tokens\":0,\"counts\":[]}}]}}"))
        .collect();
    let text = format!(
        "{{\"format\":\"moeplace-stats\",\"version\":1,\"layers\":{l},\"experts\":{e},\"top_k\":1,\"pairs\":false,\
         \"request_vectors\":true,\"groups\":[],\"requests\":[{}]}}\n",
        requests.join(",")
    );
    let p = write(dir.path(), "stats.json", &text);
    let out = dir.path().join("sum.json");
    let err = fails(&["merge", s(&p), s(&p), "-o", s(&out)]);
    assert!(err.contains("stats.json") && err.contains("limit of 8 GiB"), "{err}");
}
