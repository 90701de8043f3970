//! The product never depends on the lab: the `moeplace` binary's manifest names no
//! moeplace-lab, nor does any product crate's.

use std::path::Path;

#[test]
fn product_crates_do_not_depend_on_the_lab() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["moeplace-cli", "moeplace-core", "moeplace-formats", "moeplace-py"] {
        let manifest = crates.join(krate).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let deps: toml::Table = toml::from_str(&text).unwrap();
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            if let Some(t) = deps.get(section).and_then(|v| v.as_table()) {
                assert!(!t.contains_key("moeplace-lab"), "{} lists moeplace-lab in [{section}]", manifest.display());
            }
        }
    }
    let main = std::fs::read_to_string(crates.join("moeplace-cli/src/main.rs")).unwrap();
    assert!(!main.contains("moeplace_lab"), "the CLI imports the lab");
}
