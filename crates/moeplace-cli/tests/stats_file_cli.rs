//! Statistics files through the command line: binary by default, JSON for a `.json`
//! name or on request, merges byte-identical to profiling everything at once in
//! either encoding, and plans naming their input by the digest of its bytes.

mod common;

use std::path::{Path, PathBuf};

use common::{moeplace, moeplace_ok};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Three small traces with requests of their own.
fn traces(dir: &Path) -> Vec<PathBuf> {
    (0..3)
        .map(|i| {
            let p = dir.join(format!("t{i}.parquet"));
            moeplace_ok(&[
                "synth",
                "--layers",
                "4",
                "--experts",
                "16",
                "--top-k",
                "2",
                "--requests",
                "10",
                "--prefill-len",
                "4..30",
                "--decode-len",
                "2..12",
                "--seed",
                &format!("{}", i + 1),
                "--request-prefix",
                &format!("t{i}-"),
                s(&p),
            ]);
            p
        })
        .collect()
}

#[test]
fn merging_binary_shards_is_byte_identical_to_profiling_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = traces(d);
    let all_bin = d.join("all.stats");
    let all_json = d.join("all.json");
    let ts: Vec<&str> = t.iter().map(|p| s(p)).collect();
    moeplace_ok(&[&["profile"], &ts[..], &["-o", s(&all_bin)]].concat());
    moeplace_ok(&[&["profile"], &ts[..], &["-o", s(&all_json)]].concat());
    let bin = std::fs::read(&all_bin).unwrap();
    let json = std::fs::read(&all_json).unwrap();
    assert!(bin.starts_with(moeplace_formats::stats_binary::MAGIC), "binary unless the name ends in .json");
    assert!(json.starts_with(b"{\"format\":\"moeplace-stats\""));
    assert!(bin.len() < json.len());

    // Shards in both encodings, merged in another order.
    let mut parts = Vec::new();
    for (i, p) in t.iter().enumerate() {
        let out = d.join(if i == 1 { format!("p{i}.json") } else { format!("p{i}.bin") });
        moeplace_ok(&["profile", s(p), "-o", s(&out)]);
        parts.push(out);
    }
    let order = [s(&parts[2]), s(&parts[0]), s(&parts[1])];
    let merged = d.join("merged.bin");
    moeplace_ok(&[&["merge"], &order[..], &["-o", s(&merged)]].concat());
    assert!(std::fs::read(&merged).unwrap() == bin, "merged binary statistics differ from profiling everything");
    let merged_json = d.join("merged.json");
    moeplace_ok(&[&["merge"], &order[..], &["-o", s(&merged_json)]].concat());
    assert!(std::fs::read(&merged_json).unwrap() == json, "merged JSON statistics differ");
    // --format overrides the name.
    let forced = d.join("forced.out");
    moeplace_ok(&[&["merge"], &order[..], &["-o", s(&forced), "--format", "json"]].concat());
    assert!(std::fs::read(&forced).unwrap() == json);
    let forced = d.join("forced.json");
    moeplace_ok(&["profile", ts[0], ts[1], ts[2], "-o", s(&forced), "--output-format", "binary"]);
    assert!(std::fs::read(&forced).unwrap() == bin);
    let out = moeplace(&["merge", ts[0], "-o", s(&d.join("x.bin")), "--format", "yaml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of binary, json"));
}

/// A plan's `input_digest`.
fn digest_of(plan: &Path) -> String {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(plan).unwrap()).unwrap();
    v["provenance"]["input_digest"].as_str().unwrap().to_string()
}

#[test]
fn plans_name_their_input_by_its_bytes_and_stay_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = traces(d);
    let mut plans = Vec::new();
    for name in ["all.stats", "all.json"] {
        let stats = d.join(name);
        moeplace_ok(&["profile", s(&t[0]), "-o", s(&stats)]);
        let bytes = std::fs::read(&stats).unwrap();
        for run in 0..2 {
            let plan = d.join(format!("{name}.{run}.plan.json"));
            moeplace_ok(&[
                "plan",
                "--placer",
                "tacg",
                "--stats",
                s(&stats),
                "--gpus",
                "4",
                "--nodes",
                "2",
                "--slots-per-gpu",
                "5",
                "-o",
                s(&plan),
            ]);
            assert_eq!(digest_of(&plan), moeplace_formats::plan_file::digest(&bytes));
            plans.push(std::fs::read(&plan).unwrap());
        }
    }
    assert!(plans[0] == plans[1] && plans[2] == plans[3], "the same input gives the same plan bytes");
    let placement = |p: &[u8]| {
        let mut v: serde_json::Value = serde_json::from_slice(p).unwrap();
        v["provenance"]["input_digest"] = serde_json::Value::Null;
        v
    };
    assert_eq!(placement(&plans[0]), placement(&plans[2]), "binary and JSON statistics plan alike");
    let from_trace = d.join("trace.plan.json");
    moeplace_ok(&[
        "plan",
        "--placer",
        "linear",
        "--trace",
        s(&t[0]),
        "--gpus",
        "4",
        "--nodes",
        "2",
        "-o",
        s(&from_trace),
    ]);
    assert_eq!(digest_of(&from_trace), moeplace_formats::plan_file::digest(&std::fs::read(&t[0]).unwrap()));
}

/// A statistics file of format version 1 (written by moeplace before version 2 existed,
/// from the trace of the `synth` command below) still reads, as the statistics a
/// profile of that trace gives today.
#[test]
fn a_version_1_statistics_file_still_reads() {
    let v1 = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/stats-version-1.bin"));
    let head = std::fs::read(v1).unwrap();
    assert!(String::from_utf8_lossy(&head[..200]).contains("\"version\":1,"), "the fixture is version 1");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    moeplace_ok(&[
        "synth",
        "--layers",
        "3",
        "--experts",
        "8",
        "--top-k",
        "2",
        "--families",
        "code=1,math=1",
        "--requests",
        "4",
        "--prefill-len",
        "20",
        "--decode-len",
        "10",
        "--seed",
        "3",
        "-o",
        s(&trace),
    ]);
    let (from_v1, profiled, v2) = (dir.path().join("v1.json"), dir.path().join("p.json"), dir.path().join("v2.bin"));
    moeplace_ok(&["merge", s(v1), "-o", s(&from_v1)]);
    moeplace_ok(&["profile", s(&trace), "-o", s(&profiled)]);
    assert_eq!(std::fs::read(&from_v1).unwrap(), std::fs::read(&profiled).unwrap());
    // Today's writer writes version 2, and it reads back to the same statistics.
    moeplace_ok(&["profile", s(&trace), "-o", s(&v2)]);
    let bytes = std::fs::read(&v2).unwrap();
    assert!(String::from_utf8_lossy(&bytes[..200]).contains("\"version\":2,"));
    let back = dir.path().join("v2.json");
    moeplace_ok(&["merge", s(&v2), "-o", s(&back)]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&profiled).unwrap());
}
