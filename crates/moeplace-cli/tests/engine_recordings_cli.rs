//! The engines' own recordings through the command line: profile, plan and convert
//! read them by path (../shared/data/engines; see its README).

mod common;

use common::{moeplace, moeplace_ok, shared_data};
use serde_json::Value;

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = moeplace(args);
    assert_eq!(out.status.code(), Some(1), "moeplace {args:?} should fail with status 1");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn profile_of_routed_experts_responses_gives_requests_and_phases() {
    let Some(data) = shared_data() else { return };
    let p = data.join("engines/sglang/responses_routed_experts.jsonl");
    let tmp = tempfile::tempdir().unwrap();
    let stats = tmp.path().join("stats.json");
    let out = moeplace_ok(&["profile", s(&p), "--experts", "16", "--top-k", "4", "--json", "-o", s(&stats)]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["layers"].as_u64(), v["experts"].as_u64(), v["top_k"].as_u64()), (Some(4), Some(16), Some(4)));
    assert_eq!(v["tokens"], 40);
    assert_eq!(v["requests"], 2);
    assert_eq!(v["phases"]["prefill"], 16);
    assert_eq!(v["phases"]["decode"], 24);
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let ids: Vec<&str> = file["requests"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["req-0", "req-1"]);
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn every_engine_recording_profiles_by_path() {
    let Some(data) = shared_data() else { return };
    let e = data.join("engines");
    let cases: [(&str, &[&str], u64); 7] = [
        ("sglang/stat_mode.pt", &["--top-k", "4"], 3 * 64),
        ("sglang/per_pass_mode_rank0.pt", &["--top-k", "4"], 3 * 64),
        ("sglang/per_token_mode_rank0.pt", &[], 12),
        ("vllm/routed_experts.npy", &["--experts", "16"], 40),
        ("vllm/eplb_load_stats.jsonl", &["--top-k", "4"], 0),
        // TensorRT-LLM statistics record top-k: no flag needed.
        ("trtllm/stats_no_load_balancer", &[], 2 * 3 * 32),
        ("trtllm/stats_no_load_balancer", &["--format", "trtllm-raw"], 2 * 3 * 32),
    ];
    for (path, extra, tokens) in cases {
        let p = e.join(path);
        let mut args = vec!["profile", s(&p), "--json"];
        args.extend_from_slice(extra);
        let v: Value = serde_json::from_str(&moeplace_ok(&args)).unwrap();
        assert_eq!(
            (v["layers"].as_u64(), v["experts"].as_u64(), v["top_k"].as_u64()),
            (Some(4), Some(16), Some(4)),
            "{path}"
        );
        if tokens > 0 {
            assert_eq!(v["tokens"].as_u64(), Some(tokens), "{path}");
        }
    }
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn load_balancer_statistics_need_slot_assignments() {
    let Some(data) = shared_data() else { return };
    let dir = data.join("engines/trtllm/stats_with_load_balancer");
    let err = fails(&["profile", s(&dir), "--experts", "16"]);
    assert!(err.contains("stats_with_load_balancer") && err.contains("--slot-assignments"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let yaml = tmp.path().join("lb.yaml");
    let row: Vec<String> = (0..20).map(|s| (s % 16).to_string()).collect();
    let text: String = (1..=4).map(|l| format!("  {l}: [{}]\n", row.join(", "))).collect();
    std::fs::write(&yaml, format!("num_slots: 20\ninitial_global_assignments:\n{text}")).unwrap();
    let v: Value =
        serde_json::from_str(&moeplace_ok(&["profile", s(&dir), "--slot-assignments", s(&yaml), "--json"])).unwrap();
    assert_eq!(v["experts"], 16);
    // A row for a layer the statistics do not have is not enough.
    std::fs::write(&yaml, format!("initial_global_assignments:\n  1: [{}]\n", row.join(", "))).unwrap();
    let err = fails(&["profile", s(&dir), "--slot-assignments", s(&yaml)]);
    assert!(err.contains("lb.yaml") && err.contains("decoder layer 2"), "{err}");
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn plans_and_conversions_from_engine_recordings() {
    let Some(data) = shared_data() else { return };
    let e = data.join("engines");
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan.json");
    let stat = e.join("sglang/stat_mode.pt");
    let cluster = ["--gpus", "4", "--nodes", "1", "--slots-per-gpu", "5"];
    let mut args = vec!["plan", "--placer", "eplb", "--stats", s(&stat), "--top-k", "4", "-o", s(&plan)];
    args.extend_from_slice(&cluster);
    moeplace_ok(&args);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    assert_eq!(
        (v["num_layers"].as_u64(), v["num_experts"].as_u64(), v["num_slots"].as_u64()),
        (Some(4), Some(16), Some(20))
    );
    let out = tmp.path().join("t.jsonl");
    moeplace_ok(&["convert", s(&e.join("sglang/per_token_mode_rank0.pt")), s(&out)]);
    let back: Value = serde_json::from_str(&moeplace_ok(&["profile", s(&out), "--json"])).unwrap();
    assert_eq!(back["tokens"], 12);
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn bad_engine_recordings_fail_with_one_clear_error() {
    let Some(data) = shared_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let stat = std::fs::read(data.join("engines/sglang/stat_mode.pt")).unwrap();
    let cut = tmp.path().join("cut.pt");
    std::fs::write(&cut, &stat[..stat.len() / 2]).unwrap();
    let err = fails(&["profile", s(&cut), "--top-k", "4"]);
    assert!(err.contains("cut.pt") && !err.contains("panicked"), "{err}");
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"meta_info\": {\"id\": \"a\", \"prompt_tokens\": 1, \"completion_tokens\": 1, \"routed_experts\": \"@@@\"}}\n").unwrap();
    let err = fails(&["profile", s(&bad), "--experts", "16", "--top-k", "4"]);
    assert!(err.contains("bad.jsonl:1") && err.contains("not base64"), "{err}");
}
