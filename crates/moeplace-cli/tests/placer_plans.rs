//! Every registered placer's plan for one fixed small input is pinned: the digest of
//! its `physical_to_logical_map` and `family_gpus`. Moving or reshaping code must not
//! change any plan; a change of method that does updates the pin on purpose.

mod common;

use common::moeplace_ok;

/// FNV-1a 64-bit, written out here so the pin does not depend on the crate's own.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const PINNED: &[(&str, u64)] = &[
    ("linear", 0xf97e94d007a4e742),
    ("round-robin", 0x202e12acbf880bf5),
    ("eplb", 0x02d09914e6b61b7c),
    ("balance", 0xeee0844cb7e1a4bc),
    ("coact", 0x30907b8736c94dae),
    ("tacg", 0x1e44c6fa0aee2360),
    ("tacg+gesr", 0x7809404cad5e58f9),
    ("cluster-homes", 0x922b25fd675ca769),
    ("grace", 0xaac9c06a23ccc090),
];

#[test]
fn every_placers_plan_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.jsonl");
    let t_s = t.to_str().unwrap();
    let synth = ["synth", "--layers", "4", "--experts", "16", "--top-k", "2", "--requests", "64", "--seed", "11"];
    moeplace_ok(&[&synth[..], &["--prefill-len", "8..24", "--decode-len", "8..24", t_s]].concat());
    let names: Vec<String> = moeplace_ok(&["placers"])
        .lines()
        .filter(|l| !l.starts_with(' ') && l.contains(": "))
        .map(|l| l.split(": ").next().unwrap().to_string())
        .filter(|n| !n.starts_with("Dispatchers"))
        .collect();
    let mut got = Vec::new();
    for placer in &names {
        let plan = dir.path().join(format!("{}.json", placer.replace('+', "_")));
        let args = ["plan", "--placer", placer, "--trace", t_s, "--gpus", "8", "--nodes", "2", "--slots-per-gpu", "3"];
        moeplace_ok(&[&args[..], &["--seed", "0", "--no-tune", "-o", plan.to_str().unwrap()]].concat());
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
        let key = format!("{}|{}", v["physical_to_logical_map"], v["family_gpus"]);
        got.push((placer.clone(), fnv(key.as_bytes())));
    }
    let want: Vec<(String, u64)> = PINNED.iter().map(|(n, d)| (n.to_string(), *d)).collect();
    let show: Vec<String> = got.iter().map(|(n, d)| format!("    ({n:?}, 0x{d:016x}),")).collect();
    assert_eq!(got, want, "plans changed; now:\n{}", show.join("\n"));
}
