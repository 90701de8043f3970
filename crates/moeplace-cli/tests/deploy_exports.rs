//! Plans exported to every engine, checked against each engine's loading rules: row
//! count and order, key type, slot count = experts + redundant, every expert in every
//! row, equal slots per rank; and read back to the plan.

mod common;

use std::path::{Path, PathBuf};

use common::{moeplace, moeplace_ok};
use moeplace_core::model::{LayerSource, ModelDescription};
use moeplace_core::placement::Placement;
use moeplace_formats::export::{self, ExportFormat};
use moeplace_formats::plan_file::{self, Plan};
use serde_json::Value;

struct Case {
    model: &'static str,
    hidden: usize,
    dense: usize,
    experts: usize,
    gpus: usize,
    slots_per_gpu: usize,
}

const CASES: [Case; 2] = [
    Case { model: "deepseek-v3", hidden: 61, dense: 3, experts: 256, gpus: 8, slots_per_gpu: 34 },
    Case { model: "deepseek-v2-lite", hidden: 27, dense: 1, experts: 64, gpus: 4, slots_per_gpu: 18 },
];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn int_rows(v: &Value) -> Vec<Vec<i64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()).collect()
}

/// A row an engine loads: `slots` entries, every expert present, ids in range, and
/// each GPU's share the same size (checked by the caller's slot count).
fn assert_valid_row(row: &[i64], experts: usize, slots: usize, what: &str) {
    assert_eq!(row.len(), slots, "{what}: slot count");
    let mut seen = vec![false; experts];
    for &e in row {
        assert!((0..experts as i64).contains(&e), "{what}: expert {e} out of range");
        seen[e as usize] = true;
    }
    assert!(seen.iter().all(|&x| x), "{what}: an expert has no slot");
}

fn plan_rows(plan: &Plan) -> Vec<Vec<i64>> {
    plan.placement.phy2log().iter().map(|r| r.iter().map(|&x| i64::from(x)).collect()).collect()
}

/// Exports `plan_path` to every format and checks each against its engine's rules.
fn check_exports(dir: &Path, plan_path: &Path, case: &Case, extra: &[&str]) {
    let plan = plan_file::read(plan_path).unwrap();
    let moe = case.hidden - case.dense;
    let slots = case.gpus * case.slots_per_gpu;
    let redundant = slots - case.experts;
    assert_eq!(plan.placement.slots(), slots);
    let rows = plan_rows(&plan);
    let stem = plan_path.file_stem().unwrap().to_str().unwrap();
    for f in ExportFormat::ALL {
        let out = dir.join(format!("{stem}.{}.{}", f.name(), f.extension()));
        let mut args = vec!["export", s(plan_path), "--to", f.name(), "-o", s(&out)];
        args.extend_from_slice(extra);
        let flags = moeplace_ok(&args);
        // Read back, every export gives the plan.
        let back = export::read(&out, f, &plan.layers).unwrap();
        assert_eq!(back, rows, "{} {}", case.model, f.name());
        Placement::new(case.experts, case.gpus, case.slots_per_gpu, back).unwrap();
        match f {
            ExportFormat::Sglang => {
                let all = int_rows(&json(&out)["physical_to_logical_map"]);
                assert_eq!(all.len(), case.hidden, "SGLang reads one row per hidden layer");
                for (l, row) in all.iter().enumerate() {
                    assert_valid_row(row, case.experts, slots, &format!("sglang row {l}"));
                }
                assert_eq!(&all[case.dense..], &rows[..], "MoE rows are the plan's rows in order");
                assert!(flags.contains(&format!(
                    "--ep-size {} --ep-num-redundant-experts {redundant} --init-expert-location {}",
                    case.gpus,
                    out.display()
                )));
            }
            ExportFormat::Trtllm => {
                let text = std::fs::read_to_string(&out).unwrap();
                assert!(text.starts_with(&format!("num_slots: {slots}\n")));
                let keys: Vec<usize> = text
                    .lines()
                    .filter(|l| l.starts_with("  "))
                    .map(|l| l.trim().split(':').next().unwrap().parse().unwrap())
                    .collect();
                assert_eq!(keys, (case.dense..case.hidden).collect::<Vec<_>>(), "decoder-layer keys");
                assert!(flags.contains(&format!("load_balancer: {}", out.display())));
            }
            ExportFormat::Vllm => {
                let v = json(&out);
                assert_eq!(v["record_type"], "eplb_initial_mapping");
                assert_eq!(v["num_slots"].as_u64(), Some(slots as u64));
                assert_eq!(v["num_redundant_experts"].as_u64(), Some(redundant as u64));
                let map = v["initial_global_assignments"].as_object().unwrap();
                let mut keys: Vec<usize> = map.keys().map(|k| k.parse().unwrap()).collect();
                keys.sort();
                assert_eq!(keys, (0..moe).collect::<Vec<_>>(), "MoE-layer ordinal keys");
                for (k, r) in map {
                    let row: Vec<i64> = r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
                    assert_eq!(row, rows[k.parse::<usize>().unwrap()]);
                }
                assert!(flags.contains(&format!(
                    "--eplb-config '{{\"num_redundant_experts\": {redundant}, \"initial_mapping_path\": \"{}\"",
                    out.display()
                )));
            }
            ExportFormat::VllmMap => {
                let all = int_rows(&json(&out));
                assert_eq!(all, rows);
                assert!(flags.contains(&format!(
                    "--eplb-config '{{\"num_redundant_experts\": {redundant}, \"initial_expert_map_path\": \"{}\"}}'",
                    out.display()
                )));
            }
            ExportFormat::Eplb => {
                let v = json(&out);
                assert_eq!(int_rows(&v["phy2log"]), rows);
                assert_eq!(int_rows(&v["logcnt"]).len(), moe);
            }
        }
    }
}

fn synth_trace(dir: &Path, model: &str) -> PathBuf {
    let trace = dir.join(format!("{model}.jsonl"));
    moeplace_ok(&["synth", "--model", model, "--tokens", "300", "--seed", "3", s(&trace)]);
    trace
}

#[test]
fn plans_from_traces_export_with_the_models_layers() {
    let dir = tempfile::tempdir().unwrap();
    for case in &CASES {
        let trace = synth_trace(dir.path(), case.model);
        let plan_path = dir.path().join(format!("{}.plan.json", case.model));
        let (g, spg) = (case.gpus.to_string(), case.slots_per_gpu.to_string());
        moeplace_ok(&[
            "plan",
            "--placer",
            "eplb",
            "--trace",
            s(&trace),
            "--model",
            case.model,
            "--gpus",
            &g,
            "--nodes",
            "1",
            "--slots-per-gpu",
            &spg,
            "-o",
            s(&plan_path),
        ]);
        let plan = plan_file::read(&plan_path).unwrap();
        assert_eq!(plan.layers.hidden_layers(), case.hidden);
        assert_eq!(plan.layers.moe_layers(), (case.dense..case.hidden).collect::<Vec<_>>());
        assert_eq!(plan.layers.source(), LayerSource::Model);
        let text = std::fs::read_to_string(&plan_path).unwrap();
        assert!(text.contains("\"layer_source\": \"model\""), "{text}");
        check_exports(dir.path(), &plan_path, case, &[]);

        // The same trace planned without a model: the plan says its numbering is the
        // default, and export takes the model's layers.
        let bare = dir.path().join(format!("{}.bare.json", case.model));
        moeplace_ok(&[
            "plan",
            "--placer",
            "eplb",
            "--trace",
            s(&trace),
            "--gpus",
            &g,
            "--nodes",
            "1",
            "--slots-per-gpu",
            &spg,
            "-o",
            s(&bare),
        ]);
        let bare_plan = plan_file::read(&bare).unwrap();
        assert_eq!(bare_plan.layers.source(), LayerSource::Assumed);
        assert!(std::fs::read_to_string(&bare).unwrap().contains("\"layer_source\": \"default\""));
        let out = dir.path().join("bare.sglang.json");
        moeplace_ok(&["export", s(&bare), "--to", "sglang", "--model", case.model, "-o", s(&out)]);
        assert_eq!(int_rows(&json(&out)["physical_to_logical_map"]).len(), case.hidden);
    }
}

#[test]
fn export_refuses_a_plan_of_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let case = &CASES[1];
    let trace = synth_trace(dir.path(), case.model);
    let plan_path = dir.path().join("lite.json");
    moeplace_ok(&[
        "plan",
        "--placer",
        "round-robin",
        "--trace",
        s(&trace),
        "--model",
        case.model,
        "--gpus",
        "4",
        "--nodes",
        "1",
        "--slots-per-gpu",
        "18",
        "-o",
        s(&plan_path),
    ]);
    let out = dir.path().join("x.json");
    // Same expert count and layer count, other decoder layers.
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"num_hidden_layers": 28, "first_k_dense_replace": 2, "n_routed_experts": 64, "num_experts_per_tok": 6}"#,
    )
    .unwrap();
    let r = moeplace(&["export", s(&plan_path), "--to", "trtllm", "--model-config", s(&cfg), "-o", s(&out)]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("lite.json") && err.contains("decoder layers") && err.contains("plan again"), "{err}");
    assert!(!out.exists());
    let r = moeplace(&["export", s(&plan_path), "--to", "sglang", "--model", "deepseek-v3", "-o", s(&out)]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("64 experts per layer, model deepseek-v3 has 256"), "{err}");
    // A trace of another shape than the model is refused when planning.
    let r = moeplace(&[
        "plan",
        "--placer",
        "linear",
        "--trace",
        s(&trace),
        "--model",
        "deepseek-v3",
        "--gpus",
        "8",
        "--nodes",
        "1",
        "-o",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("lite.jsonl") || err.contains("deepseek-v2-lite.jsonl"), "{err}");
    assert!(err.contains("experts"), "{err}");
}

/// SGLang `logical_count` with one row per hidden layer (dense rows zero).
fn sglang_counts(path: &Path, m: &ModelDescription, steps: usize) -> Vec<Vec<Vec<u64>>> {
    let mut all = Vec::new();
    for step in 0..steps {
        let mut layers = Vec::new();
        for layer in 0..m.layers.hidden_layers() {
            let row: Vec<u64> = (0..m.experts)
                .map(|e| {
                    if m.layers.moe_ordinal(layer).is_some() {
                        ((e * 7 + layer * 13 + step * 5) % 23) as u64 + 1
                    } else {
                        0
                    }
                })
                .collect();
            layers.push(row);
        }
        all.push(layers);
    }
    std::fs::write(path, serde_json::json!({ "logical_count": all }).to_string()).unwrap();
    all
}

#[test]
fn plans_from_hidden_layer_counts_export_without_a_shift() {
    let dir = tempfile::tempdir().unwrap();
    for case in &CASES {
        let m = ModelDescription::builtin(case.model).unwrap();
        let hidden = dir.path().join(format!("{}.hidden.json", case.model));
        let all = sglang_counts(&hidden, &m, 2);
        // The same counts with the dense rows left out, one row per MoE layer.
        let moe_only: Vec<Vec<Vec<u64>>> = all.iter().map(|s| s[case.dense..].to_vec()).collect();
        let moe = dir.path().join(format!("{}.moe.json", case.model));
        std::fs::write(&moe, serde_json::json!({ "logical_count": moe_only }).to_string()).unwrap();
        let (g, spg) = (case.gpus.to_string(), case.slots_per_gpu.to_string());
        let plan = |input: &Path, out: &Path| {
            moeplace_ok(&[
                "plan",
                "--placer",
                "eplb",
                "--stats",
                s(input),
                "--model",
                case.model,
                "--gpus",
                &g,
                "--nodes",
                "1",
                "--slots-per-gpu",
                &spg,
                "-o",
                s(out),
            ]);
        };
        let (p_hidden, p_moe) = (dir.path().join("from-hidden.json"), dir.path().join("from-moe.json"));
        plan(&hidden, &p_hidden);
        plan(&moe, &p_moe);
        let (a, b) = (plan_file::read(&p_hidden).unwrap(), plan_file::read(&p_moe).unwrap());
        assert_eq!(a.placement.layers(), case.hidden - case.dense);
        assert_eq!(a.placement, b.placement, "dense rows dropped, MoE rows kept in order");
        assert_eq!(a.layers.moe_layers(), m.layers.moe_layers());
        let (va, vb) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        moeplace_ok(&["export", s(&p_hidden), "--to", "vllm", "-o", s(&va)]);
        moeplace_ok(&["export", s(&p_moe), "--to", "vllm", "-o", s(&vb)]);
        assert_eq!(std::fs::read(&va).unwrap(), std::fs::read(&vb).unwrap());
        check_exports(dir.path(), &p_hidden, case, &["--model", case.model]);
    }
}

#[test]
fn counts_in_a_dense_layer_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = ModelDescription::builtin("deepseek-v2-lite").unwrap();
    let path = dir.path().join("counts.json");
    let mut all = sglang_counts(&path, &m, 1);
    all[0][0][5] = 9;
    std::fs::write(&path, serde_json::json!({ "logical_count": all }).to_string()).unwrap();
    let out = dir.path().join("p.json");
    let r = moeplace(&[
        "plan",
        "--placer",
        "eplb",
        "--stats",
        s(&path),
        "--model",
        "deepseek-v2-lite",
        "--gpus",
        "4",
        "--nodes",
        "1",
        "-o",
        s(&out),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("counts.json") && err.contains("decoder layer 0 is dense"), "{err}");
    assert!(!out.exists());
}

#[test]
fn load_only_placers_need_no_top_k() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counts.json");
    std::fs::write(&path, r#"{"logical_count": [[[5, 1, 3, 2], [2, 2, 4, 1]]]}"#).unwrap();
    for placer in ["eplb", "balance"] {
        let out = dir.path().join(format!("{placer}.json"));
        moeplace_ok(&[
            "plan",
            "--placer",
            placer,
            "--stats",
            s(&path),
            "--gpus",
            "2",
            "--nodes",
            "1",
            "--slots-per-gpu",
            "3",
            "-o",
            s(&out),
        ]);
        assert_eq!(plan_file::read(&out).unwrap().placement.layers(), 2);
    }
    let r =
        moeplace(&["plan", "--placer", "linear", "--stats", s(&path), "--gpus", "2", "--nodes", "1", "-o", "x.json"]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("--top-k"));
}

#[test]
fn model_configs_give_the_shape_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"model_type": "qwen3_moe", "num_hidden_layers": 6, "decoder_sparse_step": 1, "mlp_only_layers": [0, 3],
            "num_experts": 8, "num_experts_per_tok": 2}"#,
    )
    .unwrap();
    let trace = dir.path().join("t.jsonl");
    moeplace_ok(&["synth", "--model-config", s(&cfg), "--tokens", "200", s(&trace)]);
    let stats = dir.path().join("stats.json");
    moeplace_ok(&["profile", s(&trace), "--model-config", s(&cfg), "-o", s(&stats)]);
    let v = json(&stats);
    assert_eq!(v["hidden_layers"].as_u64(), Some(6));
    assert_eq!(v["moe_layers"], serde_json::json!([1, 2, 4, 5]));
    let plan_path = dir.path().join("plan.json");
    moeplace_ok(&[
        "plan",
        "--placer",
        "linear",
        "--stats",
        s(&stats),
        "--gpus",
        "2",
        "--nodes",
        "1",
        "-o",
        s(&plan_path),
    ]);
    let plan = plan_file::read(&plan_path).unwrap();
    assert_eq!(plan.layers.moe_layers(), &[1, 2, 4, 5]);
    let out = dir.path().join("t.yaml");
    moeplace_ok(&["export", s(&plan_path), "--to", "trtllm", "-o", s(&out)]);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("\n  1: [") && text.contains("\n  5: [") && !text.contains("\n  3: ["), "{text}");

    let dense = dir.path().join("dense.json");
    std::fs::write(&dense, r#"{"num_hidden_layers": 32, "hidden_size": 4096}"#).unwrap();
    let r = moeplace(&["profile", s(&trace), "--model-config", s(&dense)]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("dense.json") && err.contains("not a Mixture-of-Experts config"), "{err}");
    let r = moeplace(&["profile", s(&trace), "--model", "gpt-9"]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("not a built-in model"));
}

#[cfg(unix)]
#[test]
fn esft_folders_of_symlinked_families() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    for fam in ["law", "math"] {
        let d = real.join(fam);
        std::fs::create_dir_all(&d).unwrap();
        for layer in 1..=2 {
            std::fs::write(d.join(format!("expert_weights_{layer}.txt")), "0\t1\t2\t3\t\t0.5\t0.5\t0.5\t0.5\n")
                .unwrap();
        }
    }
    let linked = dir.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    for fam in ["law", "math"] {
        std::os::unix::fs::symlink(real.join(fam), linked.join(fam)).unwrap();
    }
    let out = moeplace_ok(&["profile", s(&linked), "--experts", "4", "--top-k", "2", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"].as_u64(), Some(4), "{out}");
}
