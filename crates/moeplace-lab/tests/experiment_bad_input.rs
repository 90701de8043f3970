//! The lab's experiments and benchmarks refuse bad numbers with the flag named, before any work.

mod common;

use common::lab as moeplace;

#[test]
fn experiment_requests_refuses_zero_gpus_and_bad_numbers() {
    // --gpus 0 once reached a division by zero after the synthetic workload was built;
    // a NaN --tau or a zero --target-batch ran and printed figures.
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent");
    for (flag, value) in [("--gpus", "0"), ("--tau", "nan"), ("--target-batch", "0")] {
        let out = moeplace(&[
            "experiment",
            "requests",
            "--data",
            absent.to_str().unwrap(),
            "--synth-requests",
            "40",
            flag,
            value,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}: {err}");
        assert!(err.contains(flag) && !err.contains("panicked"), "{flag} {value}: {err}");
    }
}

#[test]
fn bench_refuses_zero_counts_that_make_empty_tables() {
    // --decisions 0 printed "inf" microseconds; --step-tokens 0 a per-step table of
    // perfect balance on no load.
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent");
    for (args, flag) in [
        (vec!["bench", "requests", "--requests", "10", "--decisions", "0"], "--decisions"),
        (vec!["bench", "balance", "--data", absent.to_str().unwrap(), "--step-tokens", "0"], "--step-tokens"),
    ] {
        let out = moeplace(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(flag) && !err.contains("panicked"), "{args:?}: {err}");
    }
}
