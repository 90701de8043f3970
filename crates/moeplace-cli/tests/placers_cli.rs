//! `moeplace placers` lists every placer with its parameters, defaults and presets,
//! one placer on request, and names the known placers when asked for an unknown one;
//! docs/PARAMETERS.md is its Markdown output, so a documented default that differs
//! from the code's fails here. `plan --preset` sets placer and serving parameters.

mod common;

use common::{moeplace, moeplace_ok};

#[test]
fn placers_lists_every_placer_and_its_parameters() {
    let all = moeplace_ok(&["placers"]);
    for p in moeplace_core::placers::registry() {
        assert!(all.contains(&format!("\n{}: ", p.name())) || all.starts_with(&format!("{}: ", p.name())), "{all}");
        for d in p.params() {
            assert!(
                all.contains(&format!("--param {}={}", d.name, d.default_text())),
                "{} {}: {all}",
                p.name(),
                d.name
            );
        }
    }
    assert!(all.contains("Dispatchers") && all.contains("gesr"), "{all}");

    let one = moeplace_ok(&["placers", "tacg+gesr"]);
    assert!(one.starts_with("tacg+gesr: ") && one.contains("--param robust=0"), "{one}");
    assert!(!one.contains("linear:") && !one.contains("Dispatchers"), "{one}");

    let out = moeplace(&["placers", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown placer \"nope\"") && err.contains("tacg+gesr"), "{err}");
}

/// docs/PARAMETERS.md is what `moeplace placers --markdown` prints today: regenerate it
/// with `moeplace placers --markdown > docs/PARAMETERS.md` after changing a declaration.
#[test]
fn the_parameters_page_is_generated_from_the_declarations() {
    let page = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/PARAMETERS.md");
    let written = std::fs::read_to_string(&page).expect("docs/PARAMETERS.md");
    let generated = moeplace_ok(&["placers", "--markdown"]);
    assert!(
        written == generated,
        "docs/PARAMETERS.md differs from the code's declarations: run `moeplace placers --markdown > \
         docs/PARAMETERS.md`"
    );
    for p in moeplace_core::placers::registry() {
        let start = generated.find(&format!("\n## `{}`\n", p.name())).expect("a section per placer");
        let section = generated[start + 1..].split("\n## ").next().unwrap();
        for d in p.params() {
            let cell = format!("| `{}` |", d.name);
            let line = section.lines().find(|l| l.starts_with(&cell)).expect("a row per parameter");
            assert!(line.contains(&format!("`{}`", d.default_text())), "{line}");
        }
        for preset in p.presets() {
            assert!(section.contains(&format!("| `{}` |", preset.name)), "{}", preset.name);
        }
    }
}

#[test]
fn a_preset_sets_placer_and_serving_parameters_and_given_ones_win() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("t.jsonl");
    let synth = ["synth", "--layers", "3", "--experts", "16", "--top-k", "2", "--families", "a=1,b=1"];
    let t_s = t.to_str().unwrap();
    moeplace_ok(&[&synth[..], &["--requests", "16", "--seed", "1", "-o", t_s]].concat());
    let cluster = ["--gpus", "8", "--nodes", "2", "--slots-per-gpu", "3", "--no-tune"];
    let plan = |extra: &[&str]| -> serde_json::Value {
        let out = d.path().join("p.json");
        let o = out.to_str().unwrap();
        moeplace_ok(&[&["plan", "--placer", "tacg+gesr", "--trace", t_s, "-o", o][..], &cluster[..], extra].concat());
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
    };
    let p = plan(&["--preset", "min-remote-nodes"]);
    assert_eq!(p["provenance"]["parameters"]["alpha"], "0", "{p}");
    assert_eq!(p["provenance"]["parameters"]["locality"], "0.25", "{p}");
    assert_eq!(p["serving"]["dispatcher"], "gesr", "{p}");
    assert_eq!(p["serving"]["parameters"]["theta"], "1.5", "{p}");
    assert_eq!(p["serving"]["parameters"]["free_first"], "true", "{p}");
    let p = plan(&["--preset", "min-remote-nodes", "--param", "alpha=0.25"]);
    assert_eq!(p["provenance"]["parameters"]["alpha"], "0.25", "{p}");

    let out = moeplace(
        &[&["plan", "--placer", "tacg+gesr", "--trace", t_s, "-o", "-", "--preset", "fast"][..], &cluster[..]].concat(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no preset \"fast\"") && err.contains("min-remote-nodes, shift-robust"), "{err}");
}
