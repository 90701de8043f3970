//! `moeplace placers` lists every placer with its parameters and defaults, one placer
//! on request, and names the known placers when asked for an unknown one.

mod common;

use common::{moeplace, moeplace_ok};

#[test]
fn placers_lists_every_placer_and_its_parameters() {
    let all = moeplace_ok(&["placers"]);
    for p in moeplace_core::placers::registry() {
        assert!(all.contains(&format!("\n{}: ", p.name())) || all.starts_with(&format!("{}: ", p.name())), "{all}");
        for d in p.params() {
            assert!(all.contains(&format!("--param {}={}", d.name, d.default)), "{} {}: {all}", p.name(), d.name);
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
