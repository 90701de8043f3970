//! Error messages of every command on bad inputs: one `error:` prefix, and no part of
//! the message said twice in a row (a path or a reader's prefix added again by a
//! caller's context, as in "bad trace: bad trace: ..."); and plans given twice to
//! `eval` refused.

mod common;

use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small synthetic trace in `d`.
fn small_trace(d: &Path) -> PathBuf {
    let trace = d.join("t.jsonl");
    common::moeplace_ok(&[
        "synth",
        "--layers",
        "2",
        "--experts",
        "8",
        "--top-k",
        "2",
        "--tokens",
        "400",
        "-o",
        s(&trace),
    ]);
    trace
}

/// The stderr of a run that must fail.
fn fails(args: &[&str]) -> String {
    let out = common::moeplace(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "moeplace {args:?} succeeded: {err}");
    err
}

/// The first repeated part of an error line: a `: `-separated part equal to the next
/// one, or the next one being the same prefix with more after a colon ("t.jsonl:
/// t.jsonl:4: ...").
fn repeated_part(line: &str) -> Option<String> {
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    parts
        .windows(2)
        .find(|w| !w[0].is_empty() && (w[0] == w[1] || w[1].starts_with(&format!("{}:", w[0]))))
        .map(|w| w[0].to_string())
}

#[test]
fn the_detector_finds_doubled_prefixes() {
    assert_eq!(repeated_part("error: error: boom").as_deref(), Some("error"));
    assert_eq!(repeated_part("error: bad trace: bad trace: x").as_deref(), Some("bad trace"));
    assert_eq!(repeated_part("error: t.jsonl: t.jsonl:4: x").as_deref(), Some("t.jsonl"));
    assert_eq!(repeated_part("error: t.jsonl:4: expert 9 is out of range"), None);
}

#[test]
fn bad_inputs_give_one_prefix_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let trace = small_trace(d);
    let garbage = d.join("garbage.jsonl");
    std::fs::write(&garbage, "{\"request\": \"a\", \"experts\": [[1, 2], [3]]}\nnot json\n").unwrap();
    let bad_stats = d.join("bad.stats");
    std::fs::write(&bad_stats, [0xffu8, 1, 2, 3]).unwrap();
    let bad_plan = d.join("bad.json");
    std::fs::write(&bad_plan, "{\"format\": \"moeplace-plan\", \"version\": 2}").unwrap();
    let missing = d.join("missing.jsonl");
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    let o = |name: &str| out.join(name).to_string_lossy().into_owned();
    let (o_stats, o_plan, o_trace, o_a, o_b) = (o("s.json"), o("p.json"), o("c.parquet"), o("a.jsonl"), o("b.jsonl"));
    let cluster = ["--gpus", "4", "--nodes", "1", "--slots-per-gpu", "2"];
    let plan = |input: &[&str]| -> Vec<String> {
        let mut v: Vec<&str> = vec!["plan", "--placer", "linear"];
        v.extend_from_slice(input);
        v.extend_from_slice(&cluster);
        v.extend_from_slice(&["-o", o_plan.as_str()]);
        v.iter().map(|x| x.to_string()).collect()
    };
    let runs: Vec<Vec<String>> = vec![
        vec!["profile".into(), s(&missing).into()],
        vec!["profile".into(), s(&garbage).into(), "-o".into(), o_stats.clone()],
        vec!["profile".into(), s(&bad_stats).into()],
        vec!["convert".into(), s(&garbage).into(), "-o".into(), o_trace.clone()],
        plan(&["--trace", s(&garbage)]),
        plan(&["--trace", s(&missing)]),
        plan(&["--stats", s(&bad_stats)]),
        plan(&["--trace", s(&trace), "--family-share", "nope"]),
        vec!["plan".into(), "--placer".into(), "nosuch".into(), "--trace".into(), s(&trace).into()],
        vec!["eval".into(), "--trace".into(), s(&trace).into(), "--plan".into(), s(&bad_plan).into()],
        vec!["eval".into(), "--trace".into(), s(&garbage).into(), "--plan".into(), s(&bad_plan).into()],
        vec![
            "eval".into(),
            "--trace".into(),
            s(&trace).into(),
            "--plan".into(),
            s(&bad_plan).into(),
            "--dispatcher-param".into(),
            "nope".into(),
        ],
        vec!["export".into(), s(&bad_plan).into(), "--to".into(), "sglang".into(), "-o".into(), o("x.json")],
        vec!["merge".into(), s(&bad_stats).into(), s(&trace).into(), "-o".into(), o_stats.clone()],
        vec![
            "split".into(),
            s(&garbage).into(),
            "--holdout".into(),
            "0.5".into(),
            "--calibration".into(),
            o_a,
            "--held-out".into(),
            o_b,
        ],
        vec![
            "synth".into(),
            "--fit".into(),
            s(&bad_stats).into(),
            "--tokens".into(),
            "10".into(),
            "-o".into(),
            o("y.jsonl"),
        ],
        vec!["placers".into(), "nosuch".into()],
    ];
    for args in &runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails(&args);
        assert_eq!(err.matches("error:").count(), 1, "moeplace {args:?}: {err}");
        for line in err.lines() {
            assert_eq!(repeated_part(line), None, "moeplace {args:?}: {err}");
        }
    }
}

#[cfg(unix)]
#[test]
fn a_plan_given_twice_to_eval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let trace = small_trace(d);
    let plan = d.join("p.json");
    common::moeplace_ok(&[
        "plan",
        "--placer",
        "linear",
        "--trace",
        s(&trace),
        "--gpus",
        "4",
        "--nodes",
        "1",
        "--slots-per-gpu",
        "2",
        "-o",
        s(&plan),
    ]);
    let link = d.join("again.json");
    std::os::unix::fs::symlink(&plan, &link).unwrap();
    for other in [&plan, &link] {
        let err = fails(&["eval", "--trace", s(&trace), "--plan", s(&plan), "--plan", s(other)]);
        assert!(err.contains("is given twice") && err.contains("replayed twice"), "{err}");
    }
    // Two different plans are fine.
    let other = d.join("q.json");
    std::fs::copy(&plan, &other).unwrap();
    let out = common::moeplace(&["eval", "--trace", s(&trace), "--plan", s(&plan), "--plan", s(&other)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
