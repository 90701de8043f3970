//! `moeplace-lab experiment tacg` prints its tables, and its shift-robust rows keep
//! Jain at 0.98 or more under every shift; bad numbers are refused.

mod common;

use common::{lab as moeplace, lab_ok as moeplace_ok, shared_data};

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
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
    // remote nodes by more than a quarter under every shift (docs/TACG.md; node-aligned
    // family groups, which keep every group on whole nodes, gave up about two points
    // of the cut in the worst shift for balance under the others).
    let chosen = "tacg+gesr robust=0.25 locality=0.5";
    let (cut, jain) = (column(&replanned, 2, chosen, 5), column(&replanned, 2, chosen, 6));
    assert_eq!(cut.len(), 8, "{replanned}");
    assert!(cut.iter().all(|&c| c >= 25.0) && jain.iter().all(|&j| j >= 0.98), "cut {cut:?}, Jain {jain:?}");
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
    // nodes by more than a third on the held-out requests, the second at Jain >= 0.99
    // (docs/TACG.md).
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
    assert!(first_cut >= 35.0 && second_cut >= 35.0 && second_jain >= 0.99, "{unseen}");
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

#[test]
fn experiment_tacg_refuses_a_bad_theta_like_eval() {
    let dir = tempfile::tempdir().unwrap();
    for theta in ["--theta=-1", "--theta=nan"] {
        let out = moeplace(&["experiment", "tacg", theta, "--data", dir.path().to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("--theta") && err.contains("non-negative"), "{theta}: {err}");
    }
}
