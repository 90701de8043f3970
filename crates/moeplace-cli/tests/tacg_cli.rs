//! `plan --placer tacg+gesr` on the ESFT logs writes `family_gpus` (every family, GPUs
//! covering the cluster once), the placement has the redundant copies, and `eval`
//! serves it as the plan says (gesr, homes by family: home load differs from
//! round-robin homes).

mod common;

use common::{moeplace_ok, shared_data};

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn tacg_gesr_plan_carries_family_gpus_and_eval_uses_them() {
    let Some(data) = shared_data() else { return };
    let esft = data.join("esft-deepseek-v2-lite");
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("tacg.json");
    let (esft_s, plan_s) = (esft.to_str().unwrap(), plan.to_str().unwrap());
    moeplace_ok(&[
        "plan",
        "--placer",
        "tacg+gesr",
        "--trace",
        esft_s,
        "--gpus",
        "16",
        "--nodes",
        "4",
        "--slots-per-gpu",
        "5",
        "--no-tune",
        "-o",
        plan_s,
    ]);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    let groups = v["family_gpus"].as_object().expect("family_gpus present");
    assert!(groups.values().all(|g| g.as_array().unwrap().len() == 4), "{groups:?}");
    let mut names: Vec<&str> = groups.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["intent", "law", "summary", "translation"]);
    let mut all: Vec<u64> =
        groups.values().flat_map(|g| g.as_array().unwrap().iter().map(|x| x.as_u64().unwrap())).collect();
    all.sort();
    assert_eq!(all, (0..16).collect::<Vec<u64>>());
    let rows = v["physical_to_logical_map"].as_array().unwrap();
    assert_eq!(rows.len(), 26);
    assert!(rows.iter().all(|r| r.as_array().unwrap().len() == 80));

    let eval = |homes: &str, theta: &str| {
        let theta = format!("theta={theta}");
        let args = ["eval", "--trace", esft_s, "--plan", plan_s, "--homes", homes, "--dispatcher-param", &theta];
        let out = moeplace_ok(&[&args[..], &["--json"]].concat());
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        j["plans"][0].clone()
    };
    let (fam, rr) = (eval("family", "0.15"), eval("rr", "0.15"));
    assert_ne!(fam["home_max_over_mean"], rr["home_max_over_mean"]);
    // Serving each family next to its experts sends fewer tokens across nodes.
    assert!(fam["remote_nodes"].as_f64().unwrap() < rr["remote_nodes"].as_f64().unwrap());
    // A wider load tolerance keeps more picks near home, at some cost in balance.
    let wide = eval("family", "1");
    assert!(wide["remote_nodes"].as_f64().unwrap() < fam["remote_nodes"].as_f64().unwrap());
    // The plan's own serving is gesr with homes by family.
    let own = {
        let out = moeplace_ok(&["eval", "--trace", esft_s, "--plan", plan_s, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["plans"][0].clone()
    };
    assert_eq!(own["serving"]["dispatcher"], "gesr");
    assert_eq!(own["remote_nodes"], fam["remote_nodes"]);
    let out = common::moeplace(&["eval", "--trace", esft_s, "--plan", plan_s, "--dispatcher-param", "theta=-1"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("theta=-1"));
    // Free first (`--dispatcher-param free_first=true`) sends the picks that leave a busy home-node copy
    // to nodes the tokens cross anyway: fewer remote nodes at the same tolerance.
    let free = {
        let args = ["eval", "--trace", esft_s, "--plan", plan_s, "--homes", "family", "--dispatcher", "gesr"];
        let out = moeplace_ok(&[&args[..], &["--dispatcher-param", "free_first=true", "--json"]].concat());
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["plans"][0].clone()
    };
    assert!(free["remote_nodes"].as_f64().unwrap() < fam["remote_nodes"].as_f64().unwrap());
    // It is a rule of gesr only.
    let args = ["eval", "--trace", esft_s, "--plan", plan_s, "--dispatcher", "nearest", "--dispatcher-param"];
    let out = common::moeplace(&[&args[..], &["free_first=true"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("dispatcher nearest has no parameter \"free_first\""), "{err}");
}

/// `plan --family-share` plans for another family mix: the groups follow the shares,
/// and a family with share 0 gets none.
#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn plan_for_another_family_mix() {
    let Some(data) = shared_data() else { return };
    let esft = data.join("esft-deepseek-v2-lite");
    let dir = tempfile::tempdir().unwrap();
    let groups = |shares: &[&str]| {
        let plan = dir.path().join("mix.json");
        let mut args = vec!["plan", "--placer", "tacg+gesr", "--trace", esft.to_str().unwrap(), "--gpus", "16"];
        args.extend(["--nodes", "4", "--slots-per-gpu", "5", "-o", plan.to_str().unwrap()]);
        for s in shares {
            args.extend(["--family-share", s]);
        }
        moeplace_ok(&args);
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
        let sizes: std::collections::BTreeMap<String, usize> = v["family_gpus"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(f, g)| (f.clone(), g.as_array().unwrap().len()))
            .collect();
        sizes
    };
    let law = groups(&["law=0.7", "intent=0.1", "summary=0.1", "translation=0.1"]);
    assert_eq!(law["law"], 11, "{law:?}");
    assert_eq!(law.values().sum::<usize>(), 16);
    let no_intent = groups(&["intent=0"]);
    assert!(!no_intent.contains_key("intent") && no_intent.len() == 3, "{no_intent:?}");
    assert_eq!(no_intent.values().sum::<usize>(), 16);

    // Re-planned with the deployed plan given, `stay` moves fewer slots.
    let deployed = dir.path().join("deployed.json");
    let esft_s = esft.to_str().unwrap();
    let base = ["plan", "--placer", "tacg+gesr", "--trace", esft_s, "--gpus", "16", "--nodes", "4", "--no-tune"];
    moeplace_ok(&[&base[..], &["--slots-per-gpu", "5", "-o", deployed.to_str().unwrap()]].concat());
    let moves = |stay: &str| -> usize {
        let out = dir.path().join(format!("stay-{stay}.json"));
        let stay = format!("stay={stay}");
        let args = ["--slots-per-gpu", "5", "--family-share", "law=0.7", "--param", &stay, "--previous"];
        let o = common::moeplace(
            &[&base[..], &args[..], &[deployed.to_str().unwrap(), "-o", out.to_str().unwrap()]].concat(),
        );
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        let tail = err.split(" slot moves from the previous plan").next().unwrap();
        tail.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no move count in {err}"))
    };
    let (fresh, kept) = (moves("0"), moves("1"));
    assert!(kept < fresh, "stay=1 moved {kept} slots, stay=0 {fresh}");
}

/// `plan` says what the token-level refinement did, and says so when the statistics
/// carry no token-path sample (so the steps were skipped) instead of staying silent.
#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn plan_reports_the_refinement_or_its_absence() {
    let Some(data) = shared_data() else { return };
    let esft = data.join("esft-deepseek-v2-lite");
    let dir = tempfile::tempdir().unwrap();
    let stderr_of_plan = |sample: &str| {
        let stats = dir.path().join(format!("stats-{sample}.json"));
        let plan = dir.path().join(format!("plan-{sample}.json"));
        let (esft_s, stats_s) = (esft.to_str().unwrap(), stats.to_str().unwrap());
        moeplace_ok(&["profile", esft_s, "--token-sample", sample, "-o", stats_s]);
        let out = common::moeplace(&[
            "plan",
            "--placer",
            "grace",
            "--stats",
            stats_s,
            "--gpus",
            "8",
            "--nodes",
            "2",
            "--slots-per-gpu",
            "10",
            "-o",
            plan.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    };
    let with = stderr_of_plan("4096");
    assert!(with.contains("token-level refinement:") && !with.contains("no token-path sample"), "{with}");
    let without = stderr_of_plan("0");
    assert!(without.contains("no token-path sample") && !without.contains("token-level refinement:"), "{without}");
}
