//! `plan` tunes a placer's parameters and its serving by cross-validation over the
//! calibration requests: the chosen setting keeps Jain on every fold, the plan
//! records it and its held-out figures, results depend only on the seed, and a floor
//! nothing reaches gives the most balanced setting with a note.

mod common;

use std::path::Path;
use std::process::Command;

use common::{moeplace, moeplace_ok, shared_data};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const CLUSTER: [&str; 6] = ["--gpus", "8", "--nodes", "2", "--slots-per-gpu", "3"];

/// A synthetic trace with four task families.
fn trace(dir: &Path) -> std::path::PathBuf {
    let t = dir.join("t.jsonl");
    let synth = ["synth", "--layers", "4", "--experts", "16", "--top-k", "2", "--families", "a=1,b=1,c=1,d=1"];
    let more = ["--requests", "48", "--prefill-len", "20..40", "--decode-len", "10", "--seed", "3", "-o", s(&t)];
    moeplace_ok(&[&synth[..], &more[..]].concat());
    t
}

/// Plans with `extra` flags and `threads` rayon threads; returns the plan's text
/// and stderr.
fn plan(t: &Path, out: &Path, extra: &[&str], threads: &str) -> (String, String) {
    let args = [&["plan", "--placer", "tacg+gesr", "--trace", s(t), "-o", s(out)][..], &CLUSTER[..], extra].concat();
    let o =
        Command::new(env!("CARGO_BIN_EXE_moeplace")).args(&args).env("RAYON_NUM_THREADS", threads).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "plan {args:?} failed: {err}");
    (std::fs::read_to_string(out).unwrap(), err)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

fn note(v: &serde_json::Value, key: &str) -> f64 {
    v["notes"][key].as_f64().unwrap_or_else(|| panic!("no note {key} in {}", v["notes"]))
}

#[test]
fn tuning_keeps_jain_on_every_fold_and_records_its_choice() {
    let dir = tempfile::tempdir().unwrap();
    let t = trace(dir.path());
    let (text, err) = plan(&t, &dir.path().join("p.json"), &["--min-jain", "0.98"], "2");
    let v = json(&text);
    assert_eq!(note(&v, "tune_jain_held"), 1.0, "{err}");
    assert!(note(&v, "tune_jain_min") >= 0.98, "{err}");
    assert_eq!(note(&v, "tune_min_jain"), 0.98);
    assert_eq!(note(&v, "tune_folds"), 4.0);
    assert!(note(&v, "tune_settings") > 1.0);
    let (lo, mean, hi) = (
        note(&v, "tune_cut_remote_nodes_min"),
        note(&v, "tune_cut_remote_nodes_mean"),
        note(&v, "tune_cut_remote_nodes_max"),
    );
    assert!(lo <= mean && mean <= hi, "{lo} {mean} {hi}");
    // The chosen parameters are the plan's; its serving names the chosen gesr settings.
    for k in ["alpha", "locality", "robust"] {
        assert!(v["provenance"]["parameters"][k].is_string(), "{}", v["provenance"]);
    }
    assert_eq!(v["serving"]["dispatcher"], "gesr");
    assert!(v["serving"]["parameters"]["theta"].is_string(), "{}", v["serving"]);
    assert!(err.contains("tuned by 4-fold cross-validation"), "{err}");
    assert!(err.contains("chosen: ") && err.contains("expected on requests the plan has not seen"), "{err}");
    assert!(!err.contains("no setting keeps"), "{err}");

    // A parameter given is kept fixed.
    let (text, _) = plan(&t, &dir.path().join("q.json"), &["--param", "alpha=0.5"], "2");
    assert_eq!(json(&text)["provenance"]["parameters"]["alpha"], "0.5");

    // Another objective is recorded under its own name.
    let (text, _) = plan(&t, &dir.path().join("r.json"), &["--objective", "remote-gpus"], "2");
    assert!(note(&json(&text), "tune_cut_remote_gpus_mean").is_finite());

    // --no-tune plans with the defaults and records no tuning.
    let (text, err) = plan(&t, &dir.path().join("n.json"), &["--no-tune"], "2");
    let v = json(&text);
    assert!(v["notes"].as_object().unwrap().keys().all(|k| !k.starts_with("tune_")), "{}", v["notes"]);
    assert!(!err.contains("tuned by"), "{err}");
}

#[test]
fn tuning_is_deterministic_for_a_seed_and_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let t = trace(dir.path());
    let (one, _) = plan(&t, &dir.path().join("a.json"), &["--seed", "7"], "1");
    let (two, _) = plan(&t, &dir.path().join("b.json"), &["--seed", "7"], "2");
    assert_eq!(one, two, "plans differ between 1 and 2 threads");
    // Another seed draws other folds: other held-out figures.
    let (other, _) = plan(&t, &dir.path().join("c.json"), &["--seed", "8"], "2");
    let (a, b) = (json(&one), json(&other));
    assert_ne!(note(&a, "tune_cut_remote_nodes_mean"), note(&b, "tune_cut_remote_nodes_mean"));
}

#[test]
fn a_floor_nothing_reaches_gives_the_most_balanced_setting_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let t = trace(dir.path());
    let (held, _) = plan(&t, &dir.path().join("a.json"), &["--min-jain", "0.9"], "2");
    let (text, err) = plan(&t, &dir.path().join("b.json"), &["--min-jain", "1"], "2");
    let v = json(&text);
    assert_eq!(note(&v, "tune_jain_held"), 0.0);
    assert!(err.contains("note: no setting keeps Jain >= 1 on every fold; chose the most balanced one"), "{err}");
    // Same folds (same seed): the most balanced setting's least Jain is at least the
    // least Jain of the setting chosen for its cut.
    assert!(note(&v, "tune_jain_min") >= note(&json(&held), "tune_jain_min"), "{err}");
}

#[test]
fn bad_tuning_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = trace(dir.path());
    let p = dir.path().join("p.json");
    let run = |extra: &[&str]| {
        let args =
            [&["plan", "--placer", "tacg+gesr", "--trace", s(&t), "-o", s(&p)][..], &CLUSTER[..], extra].concat();
        let o = moeplace(&args);
        assert_eq!(o.status.code(), Some(1), "{extra:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = run(&["--objective", "latency"]);
    assert!(err.contains("--objective \"latency\"") && err.contains("remote-nodes, remote-gpus"), "{err}");
    let err = run(&["--min-jain", "1.5"]);
    assert!(err.contains("--min-jain 1.5"), "{err}");
    let err = run(&["--folds", "1"]);
    assert!(err.contains("--folds 1"), "{err}");
    assert!(!p.exists(), "a plan was written");
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn tuning_on_the_esft_logs_reports_held_out_figures() {
    let Some(data) = shared_data() else { return };
    let esft = data.join("esft-deepseek-v2-lite");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.json");
    let args = ["plan", "--placer", "tacg+gesr", "--trace", s(&esft), "--gpus", "16", "--nodes", "4"];
    let o = moeplace(&[&args[..], &["--slots-per-gpu", "5", "-o", s(&out)]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v = json(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(note(&v, "tune_folds"), 4.0);
    let (lo, mean, hi) = (
        note(&v, "tune_cut_remote_nodes_min"),
        note(&v, "tune_cut_remote_nodes_mean"),
        note(&v, "tune_cut_remote_nodes_max"),
    );
    assert!(lo <= mean && mean <= hi, "{err}");
    // Tuned plans cut remote nodes against the baseline on held-out folds.
    assert!(lo > 0.0, "{err}");
    let jain = note(&v, "tune_jain_min");
    assert!(jain > 0.0 && jain <= 1.0, "{err}");
    if note(&v, "tune_jain_held") == 1.0 {
        assert!(jain >= 0.99, "{err}");
    } else {
        assert!(err.contains("no setting keeps"), "{err}");
    }
    assert!(err.contains("expected on requests the plan has not seen (mean, min..max over 4 folds)"), "{err}");
    // Every family keeps its GPUs in the tuned plan.
    assert_eq!(v["family_gpus"].as_object().unwrap().len(), 4);
}

#[test]
fn the_report_plots_every_setting_tried_and_marks_the_chosen_one() {
    let dir = tempfile::tempdir().unwrap();
    let t = trace(dir.path());
    let p = dir.path().join("tuned.json");
    let (text, _) = plan(&t, &p, &[], "2");
    let v = json(&text);
    let tuning = &v["tuning"];
    let candidates = tuning["candidates"].as_array().unwrap_or_else(|| panic!("no tuning block: {text}"));
    assert_eq!(candidates.len() as f64, note(&v, "tune_settings"));
    assert_eq!(tuning["folds"], 4);
    assert_eq!(tuning["min_jain"], 0.99);
    assert_eq!(tuning["objective"], "remote-nodes");
    let chosen = &candidates[tuning["chosen"].as_u64().unwrap() as usize];
    // The chosen candidate is the plan's own setting, with the figures the notes give.
    assert_eq!(chosen["parameters"], v["provenance"]["parameters"]);
    assert_eq!(chosen["serving"], v["serving"]);
    assert_eq!(chosen["cut"]["mean"].as_f64().unwrap(), note(&v, "tune_cut_remote_nodes_mean"));
    assert_eq!(chosen["jain"]["min"].as_f64().unwrap(), note(&v, "tune_jain_min"));

    let untuned = dir.path().join("defaults.json");
    let (text, _) = plan(&t, &untuned, &["--no-tune"], "2");
    assert!(json(&text).get("tuning").is_none(), "{text}");

    let report = dir.path().join("r.html");
    moeplace_ok(&["eval", "--trace", s(&t), "--plan", s(&untuned), "--plan", s(&p), "--report", s(&report)]);
    let html = std::fs::read_to_string(&report).unwrap();
    // The tuned plan is the page's third (after the baseline and `defaults`).
    assert!(html.contains("id=\"tuning-2\"") && !html.contains("id=\"tuning-1\""), "tuning plot missing");
    // A point per setting and one ring on the chosen one, with the floor drawn.
    assert_eq!(html.matches("<circle").count(), candidates.len() + 1);
    assert_eq!(html.matches("class=\"chosen\"").count(), 1);
    assert!(html.contains("class=\"floor\"") && html.contains("Jain floor 0.99"));
    let label = chosen["label"].as_str().unwrap().replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    assert!(html.contains(&format!("Chosen: {label}.")), "chosen setting not named");
}
