//! `moeplace plan --placer eplb` on engine counts: the DeepSeek EPLB README example,
//! given as an SGLang `logical_count` file, gives the README's phy2log.

mod common;

use common::{moeplace, moeplace_ok, shared_data};

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn eplb_plan_from_sglang_logical_count_matches_the_readme() {
    let Some(data) = shared_data() else { return };
    let ex: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("eplb-readme-example.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let counts = dir.path().join("logical_count.json");
    std::fs::write(&counts, serde_json::json!({ "logical_count": ex["weight"] }).to_string()).unwrap();
    let plan = dir.path().join("plan.json");
    let n = |k: &str| ex[k].as_u64().unwrap().to_string();
    let slots = (ex["num_replicas"].as_u64().unwrap() / ex["num_gpus"].as_u64().unwrap()).to_string();
    let args = [
        "plan",
        "--placer",
        "eplb",
        "--stats",
        counts.to_str().unwrap(),
        "--top-k",
        "2",
        "--gpus",
        &n("num_gpus"),
        "--nodes",
        &n("num_nodes"),
        "--slots-per-gpu",
        &slots,
        "--groups",
        &n("num_groups"),
        "-o",
        plan.to_str().unwrap(),
    ];
    moeplace_ok(&args);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    assert_eq!(v["physical_to_logical_map"], ex["phy2log"], "plan: {v}");

    // --groups and --param groups together are refused with a clear message.
    let mut twice: Vec<&str> = args.to_vec();
    twice.extend(["--param", "groups=2"]);
    let out = moeplace(&twice);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--groups or --param groups"));
}

/// An SGLang dump with steps goes into `plan` with its steps: `balance` with
/// `per_step=true` uses them (and says so), and refuses a dump of one step.
#[test]
fn balance_per_step_from_an_sglang_dump_with_steps() {
    let dir = tempfile::tempdir().unwrap();
    let counts = dir.path().join("logical_count.json");
    // [steps][layers][experts]: two steps that peak on different experts.
    let steps = serde_json::json!([[[10, 1, 10, 1, 5, 5, 5, 5]], [[1, 10, 1, 10, 5, 5, 5, 5]]]);
    std::fs::write(&counts, serde_json::json!({ "logical_count": steps }).to_string()).unwrap();
    let plan = dir.path().join("plan.json");
    let args = |extra: &'static str| {
        vec![
            "plan".to_string(),
            "--placer".into(),
            "balance".into(),
            "--stats".into(),
            counts.to_str().unwrap().into(),
            "--top-k".into(),
            "2".into(),
            "--gpus".into(),
            "4".into(),
            "--slots-per-gpu".into(),
            "3".into(),
            "--param".into(),
            extra.into(),
            "-o".into(),
            plan.to_str().unwrap().into(),
        ]
    };
    let a = args("per_step=true");
    let out = moeplace(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("per step (2 steps)"), "{err}");
    assert!(plan.is_file());

    let one = dir.path().join("one.json");
    std::fs::write(&one, serde_json::json!({ "logical_count": [[10, 1, 10, 1, 5, 5, 5, 5]] }).to_string()).unwrap();
    let mut a = args("per_step=true");
    a[4] = one.to_str().unwrap().into();
    let out = moeplace(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("several steps"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `--slots S` when S does not divide by the GPUs: GPU g owns [g*S/G, (g+1)*S/G);
/// both balancers plan it, the plan file says `num_slots`, engines' exports refuse it.
#[test]
fn unequal_slot_counts_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let counts = dir.path().join("logical_count.json");
    std::fs::write(&counts, serde_json::json!({ "logical_count": [[40, 1, 10, 1, 5, 9, 5, 2]] }).to_string()).unwrap();
    for placer in ["eplb", "balance"] {
        let plan = dir.path().join(format!("{placer}.json"));
        let c = counts.to_str().unwrap();
        let p = plan.to_str().unwrap();
        moeplace_ok(&[
            "plan", "--placer", placer, "--stats", c, "--top-k", "2", "--gpus", "4", "--nodes", "2", "--slots", "10",
            "-o", p,
        ]);
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
        assert_eq!(v["num_slots"], 10, "{v}");
        assert!(v.get("slots_per_gpu").is_none(), "{v}");
        assert_eq!(v["physical_to_logical_map"][0].as_array().unwrap().len(), 10);
        let out = moeplace(&["export", p, "--to", "sglang", "-o", dir.path().join("s.json").to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("same number of slots on every GPU"));
    }
    let out = moeplace(&[
        "plan",
        "--placer",
        "eplb",
        "--stats",
        counts.to_str().unwrap(),
        "--top-k",
        "2",
        "--gpus",
        "4",
        "--slots",
        "10",
        "--slots-per-gpu",
        "3",
        "-o",
        dir.path().join("x.json").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
