//! Build script of the crates whose tests read `../shared/data` (the real traces
//! beside the repository). Where that folder is absent and `CI` is not set, it sets
//! `cfg(no_shared_data)`, under which those tests are marked ignored, so that the test
//! summary counts them ("N ignored") instead of passing them without running. With
//! `CI` set they always run, and fail when the data is missing.
//!
//! The folder is looked at when the build script runs: when it is present its
//! contents are watched; when absent nothing is (a missing watched path would rebuild
//! the crate on every run), so after adding the data, `cargo clean -p CRATE` or run the
//! ignored tests with `cargo test -- --include-ignored`.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_shared_data)");
    println!("cargo::rerun-if-env-changed=CI");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let data = Path::new(&manifest).join("../../../shared/data");
    if data.is_dir() {
        println!("cargo::rerun-if-changed={}", data.display());
    } else if std::env::var_os("CI").is_none() {
        println!("cargo::rustc-cfg=no_shared_data");
    }
}
