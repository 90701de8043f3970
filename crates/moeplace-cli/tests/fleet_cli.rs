//! Clusters with more GPUs than experts (as EP320 for DeepSeek-V3's 256 experts) are
//! planned by every kind of placer and evaluated against the baseline, whose figures
//! are checked by hand on a tiny case; plans from statistics files read only what
//! their placer needs and are the same as from the whole file.

mod common;

use std::path::Path;

use common::moeplace_ok;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn sixteen_experts_on_twenty_four_gpus_are_planned_and_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let (t, stats) = (dir.path().join("t.parquet"), dir.path().join("s.bin"));
    let synth = ["synth", "--layers", "3", "--experts", "16", "--top-k", "2", "--requests", "48", "--seed", "4"];
    moeplace_ok(&[&synth[..], &[s(&t)]].concat());
    moeplace_ok(&["profile", s(&t), "-o", s(&stats)]);
    let mut args = vec!["eval".to_string(), "--trace".into(), s(&t).into(), "--json".into()];
    let placers = ["linear", "eplb", "balance", "coact", "tacg"];
    for placer in placers {
        let plan = dir.path().join(format!("{placer}.json"));
        let cluster = ["--gpus", "24", "--nodes", "3", "--slots-per-gpu", "1"];
        moeplace_ok(&[&["plan", "--placer", placer, "--stats", s(&stats), "-o", s(&plan)][..], &cluster[..]].concat());
        args.extend(["--plan".into(), s(&plan).into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let v: serde_json::Value = serde_json::from_str(&moeplace_ok(&args)).unwrap();
    assert_eq!(v["baselines"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["baselines"][0]["gpus"], 24, "{v}");
    let plans = v["plans"].as_array().unwrap();
    assert_eq!(plans.len(), placers.len());
    for p in plans {
        assert!(p["remote_gpus"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["cut_remote_gpus"].as_f64().is_some(), "{p}");
    }
}

#[test]
fn the_baseline_with_more_gpus_than_experts_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.jsonl");
    // 2 experts on 3 GPUs (3 nodes): expert 0 on GPU 0, expert 1 on GPU 1, GPU 2 holds
    // an unserved copy of expert 1. Homes round-robin: r0 -> 0, r1 -> 1, r2 -> 2.
    let lines = [
        r#"{"format":"moeplace-trace","version":1,"layers":1,"experts":2,"top_k":1}"#,
        r#"{"request":"r0","position":0,"experts":[[1]]}"#,
        r#"{"request":"r1","position":0,"experts":[[1]]}"#,
        r#"{"request":"r2","position":0,"experts":[[0]]}"#,
        r#"{"request":"r2","position":1,"experts":[[1]]}"#,
    ];
    std::fs::write(&t, lines.join("\n") + "\n").unwrap();
    let plan = dir.path().join("p.json");
    let cluster = ["--gpus", "3", "--nodes", "3", "--slots-per-gpu", "1"];
    moeplace_ok(&[&["plan", "--placer", "linear", "--trace", s(&t), "-o", s(&plan)][..], &cluster[..]].concat());
    let v: serde_json::Value =
        serde_json::from_str(&moeplace_ok(&["eval", "--trace", s(&t), "--plan", s(&plan), "--json"])).unwrap();
    let b = &v["baselines"][0];
    // Remote: r0's pick (GPU 1), r2's two picks (GPU 0, and GPU 1's primary copy).
    assert_eq!(b["remote_gpus"].as_f64().unwrap(), 0.75, "{b}");
    assert_eq!(b["remote_nodes"].as_f64().unwrap(), 0.75, "{b}");
    // Loads [1, 3, 0]: max/mean 3 / (4/3), Jain 16 / (3 x 10).
    assert!((b["max_over_mean"].as_f64().unwrap() - 2.25).abs() < 1e-9, "{b}");
    assert!((b["jain"].as_f64().unwrap() - 16.0 / 30.0).abs() < 1e-9, "{b}");
}

#[test]
fn plans_from_statistics_read_in_part_equal_plans_from_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let (t, stats) = (dir.path().join("t.parquet"), dir.path().join("s.bin"));
    let synth = ["synth", "--layers", "3", "--experts", "16", "--top-k", "2", "--requests", "32", "--seed", "6"];
    moeplace_ok(&[&synth[..], &[s(&t)]].concat());
    moeplace_ok(&["profile", s(&t), "-o", s(&stats)]);
    let cluster = ["--gpus", "8", "--nodes", "2", "--slots-per-gpu", "3"];
    for placer in ["linear", "eplb", "balance", "coact", "tacg", "grace"] {
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        // From the statistics file (read in part) and from the trace (profiled whole).
        moeplace_ok(&[&["plan", "--placer", placer, "--stats", s(&stats), "-o", s(&a)][..], &cluster[..]].concat());
        let fixed = ["plan", "--placer", placer, "--trace", s(&t), "--no-tune", "-o", s(&b)];
        moeplace_ok(&[&fixed[..], &cluster[..]].concat());
        let slots = |p: &Path| {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            v["physical_to_logical_map"].clone()
        };
        assert_eq!(slots(&a), slots(&b), "{placer}");
        assert!(!slots(&a).is_null(), "{placer}");
    }
}
