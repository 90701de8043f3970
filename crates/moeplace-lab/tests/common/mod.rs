//! Helpers shared by the lab's tests: locating ../shared/data and running the binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The shared real-data folder, or `None` (with a message) when it is absent outside
/// CI. Under CI (`CI` set) its absence fails the test.
pub fn shared_data() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"));
    if p.is_dir() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but the shared data folder {} is missing", p.display());
    }
    eprintln!("skipping: shared data folder {} not found (set CI to make this an error)", p.display());
    None
}

pub fn lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moeplace-lab")).args(args).output().expect("the binary runs")
}

/// Runs the lab binary and returns stdout, failing the test with stderr on error.
pub fn lab_ok(args: &[&str]) -> String {
    let out = lab(args);
    assert!(out.status.success(), "moeplace-lab {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}
