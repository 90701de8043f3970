//! Cluster TOML files (`cluster_file::read`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::cluster_file;

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("cluster.toml", data);
    if let Err(e) = cluster_file::read(&path) {
        moeplace_fuzz::check_error(&e, &path);
    }
});
