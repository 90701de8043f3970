//! `plan --placer tacg+gesr` on the ESFT logs writes `family_gpus` (every family, GPUs
//! covering the cluster once), the placement has the redundant copies, and `eval
//! --homes family --dispatcher gesr` serves requests by those groups (home load
//! differs from round-robin homes); `experiment tacg` prints its tables, and its
//! shift-robust rows keep Jain at 0.98 or more under every shift.

mod common;

use common::{moeplace_ok, shared_data};

#[test]
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
        let theta = format!("--gesr-theta={theta}");
        let args = ["eval", "--trace", esft_s, "--plan", plan_s, "--homes", homes, "--dispatcher", "gesr", &theta];
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
    let out =
        common::moeplace(&["eval", "--trace", esft_s, "--plan", plan_s, "--dispatcher", "gesr", "--gesr-theta=-1"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--gesr-theta"));
    // Free first (`--gesr-free-first`) sends the picks that leave a busy home-node copy
    // to nodes the tokens cross anyway: fewer remote nodes at the same tolerance.
    let free = {
        let args = ["eval", "--trace", esft_s, "--plan", plan_s, "--homes", "family", "--dispatcher", "gesr"];
        let out = moeplace_ok(&[&args[..], &["--gesr-theta=0.15", "--gesr-free-first", "--json"]].concat());
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["plans"][0].clone()
    };
    assert!(free["remote_nodes"].as_f64().unwrap() < fam["remote_nodes"].as_f64().unwrap());
    // It is a rule of gesr only.
    let out = common::moeplace(&["eval", "--trace", esft_s, "--plan", plan_s, "--gesr-free-first"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("add --dispatcher gesr"));
}

/// `plan --family-share` plans for another family mix: the groups follow the shares,
/// and a family with share 0 gets none.
#[test]
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
    let base = ["plan", "--placer", "tacg+gesr", "--trace", esft.to_str().unwrap(), "--gpus", "16", "--nodes", "4"];
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

#[test]
fn experiment_tacg_prints_tables() {
    let Some(data) = shared_data() else { return };
    let esft = data.join("esft-deepseek-v2-lite");
    let out = moeplace_ok(&["experiment", "tacg", "--data", esft.to_str().unwrap(), "--no-budget"]);
    for heading in
        ["### Held-out ESFT", "### Ablations", "### Distribution shift", "### Re-planned for the shifted mix"]
    {
        assert!(out.contains(heading), "{heading} missing:\n{out}");
    }
    let section = |heading: &str| out.split(heading).nth(1).unwrap().split("###").next().unwrap().to_string();
    let (shifted, replanned) = (section("### Distribution shift"), section("### Re-planned for the shifted mix"));
    assert!(out.contains("| tacg+gesr | 5 | family |"));
    assert_eq!(out.matches("| homes per request in the family's GPUs").count(), 2, "{out}");
    // A numeric column of the rows of `placer` (named in column `at`) of a table.
    let column = |table: &str, at: usize, placer: &str, column: usize| -> Vec<f64> {
        table
            .lines()
            .filter(|l| l.contains(" at 70% |") || l.contains(" absent |"))
            .filter(|l| l.split('|').nth(at).unwrap().trim() == placer)
            .map(|l| l.split('|').nth(column).unwrap().trim().trim_end_matches('x').parse().unwrap())
            .collect()
    };
    // The two shift-robust plans keep Jain >= 0.98 under all eight shifts (docs/TACG.md).
    for placer in ["tacg+gesr robust=0.75", "tacg+gesr robust=0.5 locality=0.25"] {
        let jain = column(&shifted, 3, placer, 6);
        assert_eq!(jain.len(), 8, "{out}");
        assert!(jain.iter().all(|&j| j >= 0.98), "{placer}: {jain:?}");
    }
    // Served with gesr's free first at the setting --tune chose on the calibration
    // shifts, the plan from the even mix keeps Jain >= 0.98 and cuts remote nodes by
    // 30% or more under every held-out shift, more than the plain-gesr setting in its
    // worst shift (the shift targets; docs/TACG.md).
    let free_first = "tacg+gesr robust=0.75 locality=0.75, theta=0.2 free first";
    let (cut, jain) = (column(&shifted, 3, free_first, 5), column(&shifted, 3, free_first, 6));
    assert_eq!(cut.len(), 8, "{shifted}");
    let plain_worst =
        column(&shifted, 3, "tacg+gesr robust=0.5 locality=0.25", 5).into_iter().fold(f64::INFINITY, f64::min);
    assert!(cut.iter().all(|&c| c >= 30.0 && c > plain_worst), "cut {cut:?}, plain worst {plain_worst}");
    assert!(jain.iter().all(|&j| j >= 0.98), "Jain {jain:?}");
    // Under every shift the shifted family's node is nearer its fair share of the load
    // with the shift-robust plan than with the default one (last column).
    let (default, robust) = (column(&shifted, 3, "tacg+gesr", 9), column(&shifted, 3, "tacg+gesr robust=0.75", 9));
    assert_eq!(default.len(), 8, "{out}");
    for (d, r) in default.iter().zip(&robust) {
        assert!((r - 1.0).abs() < (d - 1.0).abs(), "default {default:?}, robust {robust:?}");
    }
    // coact re-planned for each shift's family mix balances that shift better than
    // coact planned for the even calibration mix.
    let (even, replan) = (column(&shifted, 3, "coact", 6), column(&replanned, 2, "coact", 6));
    assert_eq!(replan.len(), 8, "{replanned}");
    assert!(even.iter().zip(&replan).all(|(e, r)| r > e), "even mix {even:?}, re-planned {replan:?}");
    // Re-planned with the setting --tune chose, tacg+gesr keeps Jain >= 0.98 and cuts
    // remote nodes by 30% or more under every shift (docs/TACG.md).
    let chosen = "tacg+gesr robust=0.25 locality=0.5";
    let (cut, jain) = (column(&replanned, 2, chosen, 5), column(&replanned, 2, chosen, 6));
    assert_eq!(cut.len(), 8, "{replanned}");
    assert!(cut.iter().all(|&c| c >= 30.0) && jain.iter().all(|&j| j >= 0.98), "cut {cut:?}, Jain {jain:?}");
    assert!(out.contains("Largest remote-node cut at Jain >= 0.98: intent at 70% "), "{out}");
    // Re-planned with the deployed plan given, more `stay` moves fewer slots.
    let fewer = section("### Re-planned with fewer moves");
    let moved: Vec<f64> = fewer
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| stay"))
        .map(|l| l.split('|').nth(2).unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(moved.len(), 6, "{fewer}");
    assert!(moved.windows(2).all(|w| w[1] < w[0]), "{moved:?}");
    // The default plan is less balanced on requests it has not seen than on its own
    // calibration requests. At a wide tolerance, free first keeps the default plan's
    // remote-node cut and balances far better than the plain rule; with the plan
    // settings --tune ranked first and second on calibration halves it cuts remote
    // nodes by 40% or more on the held-out requests (docs/TACG.md: the second keeps
    // Jain >= 0.99, the first falls just short).
    let unseen = section("### Balance on unseen requests");
    let figures = |label: &str| -> (f64, f64) {
        let line = unseen.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("{label}:\n{unseen}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        (cells[7].parse().unwrap(), cells[8].parse().unwrap())
    };
    let (_, in_sample) = figures("| default | nearest | calibration (in sample) |");
    let (_, held_out) = figures("| default | nearest | held out |");
    assert!(in_sample > held_out, "{unseen}");
    let (plain_cut, plain_jain) = figures("| default | gesr theta=1.5 | held out |");
    let (free_cut, free_jain) = figures("| default | gesr theta=1.5, free first | held out |");
    assert!(free_cut >= plain_cut && free_jain > plain_jain + 0.005, "{unseen}");
    let (first_cut, _) = figures("| locality=0.25 alpha=0 | gesr theta=1.5, free first | held out |");
    let (second_cut, second_jain) = figures("| locality=0.125 alpha=0 | gesr theta=1.5, free first | held out |");
    assert!(first_cut > second_cut && second_cut >= 40.0 && second_jain >= 0.99, "{unseen}");
    // At every operating point of coact (one per dispatcher) some tacg+gesr dispatcher
    // is at least as balanced and cuts remote nodes more (the issue's "beats coact on
    // remote nodes at equal or better Jain").
    let trade = section("### Locality against balance");
    let pairs: Vec<Vec<String>> = trade
        .split("At equal or better Jain")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| coact dispatcher"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    assert_eq!(pairs.len(), 9, "{trade}");
    for p in &pairs {
        let num = |i: usize| p[i].parse::<f64>().unwrap_or_else(|_| panic!("{p:?}"));
        assert!(num(5) > num(2) && num(6) >= num(3), "{p:?}");
    }
}

/// `plan` says what the token-level refinement did, and says so when the statistics
/// carry no token-path sample (so the steps were skipped) instead of staying silent.
#[test]
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
