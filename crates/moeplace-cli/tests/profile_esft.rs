//! `moeplace profile` on the real ESFT logs: token counts, shape, and the merge law
//! through the command line (byte-identical statistics files).

mod common;

use common::{moeplace_ok, shared_data};

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn profile_reports_the_esft_token_counts_and_shape() {
    let Some(data) = shared_data() else { return };
    let esft = data.join("esft-deepseek-v2-lite");
    let out = moeplace_ok(&["profile", esft.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"], 21055);
    assert_eq!(v["families"]["intent"], 4888);
    assert_eq!(v["families"]["law"], 4879);
    assert_eq!(v["families"]["summary"], 5877);
    assert_eq!(v["families"]["translation"], 5411);
    assert_eq!(v["layers"], 26);
    assert_eq!(v["experts"], 64);
    assert_eq!(v["top_k"], 6);
    let layers = v["per_layer"].as_array().unwrap();
    assert_eq!(layers.len(), 26);
    for l in layers {
        let js = l["js_divergence"].as_f64().unwrap();
        assert!(js > 0.0 && js < 2.0, "four families: JS in (0, log2 4)");
        assert!(l["max_over_mean"].as_f64().unwrap() >= 1.0);
    }
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn profiling_families_one_by_one_and_merging_is_byte_identical() {
    let Some(data) = shared_data() else { return };
    let esft = data.join("esft-deepseek-v2-lite");
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.json");
    moeplace_ok(&["profile", esft.to_str().unwrap(), "-o", all.to_str().unwrap()]);
    let mut parts = Vec::new();
    for fam in ["intent", "law", "summary", "translation"] {
        let p = dir.path().join(format!("{fam}.json"));
        moeplace_ok(&["profile", esft.join(fam).to_str().unwrap(), "-o", p.to_str().unwrap()]);
        parts.push(p);
    }
    let merged = dir.path().join("merged.json");
    let mut args = vec!["merge".to_string()];
    // Merge in a shuffled order: addition does not care.
    for i in [2, 0, 3, 1] {
        args.push(parts[i].to_str().unwrap().to_string());
    }
    args.extend(["-o".to_string(), merged.to_str().unwrap().to_string()]);
    moeplace_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let a = std::fs::read(&all).unwrap();
    let b = std::fs::read(&merged).unwrap();
    assert!(a == b, "merged statistics differ from profiling everything at once");
}
