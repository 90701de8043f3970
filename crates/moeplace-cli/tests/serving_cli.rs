//! A plan says how it is served, `eval` serves it so (or as told), a trace splits by
//! request, `eval` warns when it replays a plan's own calibration input, and clusters
//! with more GPUs than experts are planned and evaluated.

mod common;

use std::path::{Path, PathBuf};

use common::{moeplace, moeplace_ok};

/// A small multi-family synthetic trace (fixed seed) in `dir`.
fn trace(dir: &Path, experts: usize) -> PathBuf {
    let t = dir.join("trace.jsonl");
    let e = experts.to_string();
    moeplace_ok(&[
        "synth",
        "--layers",
        "3",
        "--experts",
        &e,
        "--top-k",
        "2",
        "--requests",
        "48",
        "--prefill-len",
        "8..24",
        "--decode-len",
        "8..24",
        "--seed",
        "3",
        t.to_str().unwrap(),
    ]);
    t
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr_of(args: &[&str]) -> (bool, String, String) {
    let out = moeplace(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plans_are_served_as_they_say_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let t = trace(dir.path(), 16);
    let (calib, held) = (dir.path().join("calib.jsonl"), dir.path().join("held.jsonl"));
    let args = ["split", s(&t), "--holdout", "0.25", "--seed", "5", "--calibration", s(&calib), "--held-out", s(&held)];
    moeplace_ok(&args);
    let plan = dir.path().join("p.json");
    let cluster = ["--gpus", "8", "--nodes", "2", "--slots-per-gpu", "3"];
    moeplace_ok(&[&["plan", "--placer", "tacg+gesr", "--trace", s(&calib), "-o", s(&plan)][..], &cluster[..]].concat());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    assert_eq!(v["serving"]["dispatcher"], "gesr", "{v}");
    assert_eq!(v["serving"]["homes"], "family", "{v}");

    let (ok, out, err) = stderr_of(&["eval", "--trace", s(&held), "--plan", s(&plan)]);
    assert!(ok, "{err}");
    // Served as the plan says (tuning may have chosen the dispatcher's parameters).
    let params = v["serving"]["parameters"]
        .as_object()
        .map(|m| m.iter().map(|(k, x)| format!(" {k}={}", x.as_str().unwrap_or_default())).collect::<String>());
    let label = format!("p (tacg+gesr): served with gesr{}, homes family", params.unwrap_or_default());
    assert!(out.contains(&label), "{label}\n{out}");
    assert!(!err.contains("calibrated on this very trace"), "{err}");
    assert!(!err.contains("has no GPUs for"), "{err}");

    // Requests of a family the plan has no GPUs for are homed round-robin, said so.
    let family = v["family_gpus"].as_object().unwrap().keys().next().unwrap().clone();
    let renamed = dir.path().join("renamed.jsonl");
    let text = std::fs::read_to_string(&held).unwrap();
    let from = format!("\"family\":\"{family}\"");
    assert!(text.contains(&from), "{family} in {}", &text[..text.len().min(400)]);
    std::fs::write(&renamed, text.replace(&from, "\"family\":\"unseen\"")).unwrap();
    let (ok, _, err) = stderr_of(&["eval", "--trace", s(&renamed), "--plan", s(&plan)]);
    assert!(ok && err.contains("has no GPUs for family unseen of this trace"), "{err}");

    let args = ["eval", "--trace", s(&held), "--plan", s(&plan), "--dispatcher-param", "theta=1.5", "--json"];
    let v: serde_json::Value = serde_json::from_str(&moeplace_ok(&args)).unwrap();
    assert_eq!(v["plans"][0]["serving"]["parameters"]["theta"], "1.5", "{v}");
    let args = ["eval", "--trace", s(&held), "--plan", s(&plan), "--dispatcher", "nearest", "--homes", "rr"];
    assert!(moeplace_ok(&args).contains("served with nearest, homes rr"));

    // The gesr flags are gone; a parameter the dispatcher does not take is refused.
    let (ok, _, err) = stderr_of(&["eval", "--trace", s(&held), "--plan", s(&plan), "--gesr-theta", "1"]);
    assert!(!ok && err.contains("--gesr-theta"), "{err}");
    let args =
        ["eval", "--trace", s(&held), "--plan", s(&plan), "--dispatcher", "nearest", "--dispatcher-param", "theta=1"];
    let (ok, _, err) = stderr_of(&args);
    assert!(!ok && err.contains("dispatcher nearest has no parameter \"theta\""), "{err}");

    // A plan from before plans named their serving: the default, said so.
    let text = std::fs::read_to_string(&plan).unwrap();
    let start = text.find("  \"serving\"").unwrap();
    let end = start + text[start..].find("  },\n").unwrap() + 5;
    let old = dir.path().join("old.json");
    std::fs::write(&old, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let (ok, out, err) = stderr_of(&["eval", "--trace", s(&held), "--plan", s(&old)]);
    assert!(ok, "{err}");
    assert!(err.contains("does not say how it is served"), "{err}");
    assert!(out.contains("served with nearest, homes rr"), "{out}");

    // Replaying the calibration input itself is warned about.
    let (ok, _, err) = stderr_of(&["eval", "--trace", s(&calib), "--plan", s(&plan)]);
    assert!(ok && err.contains("calibrated on this very trace"), "{err}");
}

#[test]
fn split_is_by_request_seeded_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let t = trace(dir.path(), 16);
    let names = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["request"].as_str().map(str::to_string))
            .collect();
        v.dedup();
        v
    };
    let run = |seed: &str, tag: &str| {
        let (a, b) = (dir.path().join(format!("a{tag}.jsonl")), dir.path().join(format!("b{tag}.jsonl")));
        moeplace_ok(&[
            "split",
            s(&t),
            "--holdout",
            "0.25",
            "--seed",
            seed,
            "--calibration",
            s(&a),
            "--held-out",
            s(&b),
        ]);
        (names(&a), names(&b))
    };
    let (a, b) = run("1", "1");
    assert!(!a.is_empty() && !b.is_empty());
    assert!(b.iter().all(|r| !a.contains(r)), "a request on both sides");
    assert_eq!(run("1", "2"), (a.clone(), b.clone()));
    assert_ne!(run("2", "3").1, b);
    let (ok, _, err) =
        stderr_of(&["split", s(&t), "--holdout", "1.5", "--calibration", "x.jsonl", "--held-out", "y.jsonl"]);
    assert!(!ok && err.contains("1.5"), "{err}");
}

#[test]
fn more_gpus_than_experts_are_planned_and_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let t = trace(dir.path(), 8);
    let mut plans = Vec::new();
    for placer in ["linear", "eplb", "balance"] {
        let plan = dir.path().join(format!("{placer}.json"));
        let args =
            ["plan", "--placer", placer, "--trace", s(&t), "--gpus", "12", "--nodes", "3", "--slots-per-gpu", "1"];
        moeplace_ok(&[&args[..], &["-o", s(&plan)]].concat());
        plans.push(plan);
    }
    let mut args = vec!["eval", "--trace", s(&t), "--json"];
    for p in &plans {
        args.extend(["--plan", s(p)]);
    }
    let v: serde_json::Value = serde_json::from_str(&moeplace_ok(&args)).unwrap();
    assert_eq!(v["baselines"][0]["gpus"], 12, "{v}");
    assert_eq!(v["plans"].as_array().unwrap().len(), 3);
    // The baseline holds each expert once: GPUs beyond the experts' own serve nothing.
    let remote = v["baselines"][0]["remote_gpus"].as_f64().unwrap();
    assert!(remote > 0.0 && remote <= 2.0, "{remote}");
}
