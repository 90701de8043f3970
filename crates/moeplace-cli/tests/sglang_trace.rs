//! The SGLang-recorded trace reads with its phases and the report carries a
//! prefill/decode correlation.

mod common;

use common::{moeplace, moeplace_ok, shared_data};

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn sglang_trace_reads_with_phases_and_correlation() {
    let Some(data) = shared_data() else { return };
    let trace = data.join("sglang-granite/routing-trace.jsonl");
    let v: serde_json::Value =
        serde_json::from_str(&moeplace_ok(&["profile", trace.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(v["tokens"], 216);
    assert_eq!(v["phases"]["prefill"], 64);
    assert_eq!(v["phases"]["decode"], 152);
    assert_eq!(v["requests"], 8);
    assert_eq!((v["layers"].as_u64(), v["experts"].as_u64(), v["top_k"].as_u64()), (Some(24), Some(32), Some(8)));
    let c = v["mean"]["prefill_decode_correlation"].as_f64().expect("a correlation with both phases");
    assert!(c > -1.0 && c < 1.0);
    let text = moeplace_ok(&["profile", trace.to_str().unwrap()]);
    assert!(text.contains("prefill-decode corr."), "{text}");
}

#[test]
#[cfg_attr(no_shared_data, ignore = "needs ../shared/data beside the repository")]
fn sglang_trace_cut_before_its_footer_is_refused() {
    // The recorded trace ends with a footer; cut at a row boundary before it, the
    // trace read as a complete one with fewer tokens.
    let Some(data) = shared_data() else { return };
    let text = std::fs::read_to_string(data.join("sglang-granite/routing-trace.jsonl")).unwrap();
    assert!(text.lines().last().unwrap().contains(r#""row_type":"footer""#));
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    let out = moeplace(&["profile", cut.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cut.jsonl") && err.contains("truncated: no footer"), "{err}");
}
