//! `moeplace-lab experiment requests` on a small synthetic workload: every table is
//! printed, a missing data folder is said plainly, and the output repeats for a seed.

mod common;

use common::lab as moeplace;

#[test]
fn experiment_requests_prints_every_table_on_small_synthetic_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-data-here");
    let args = [
        "experiment",
        "requests",
        "--data",
        missing.to_str().unwrap(),
        "--synth-requests",
        "160",
        "--prefill-len",
        "8..16",
        "--decode-len",
        "8..24",
        "--workers",
        "4",
        "--family-boost",
        "40",
        "--family-experts",
        "0.2",
    ];
    let out = moeplace(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found") && text.contains("ESFT and SGLang experiments were not run"), "{err}");
    for needle in [
        "Prefill-to-cluster classification",
        "| size-balanced | 4 |",
        "| plain | 4 |",
        "| cluster-homes | cluster-homes |",
        "| linear | round-robin |",
        "| round-robin |",
        "| random |",
        "| jsq |",
        "| eldr(tau=0.1) |",
        "| eldr(tau=0) |",
        "| eldr(tau=1) |",
        "plain k-means) |",
        "128 calibration, 32 held out",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert_eq!(moeplace(&args).stdout, text.as_bytes(), "same seed, same tables");
}
