//! Statistics files, binary encoding (`stats_binary::from_bytes`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use moeplace_formats::stats_binary;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("stats.mps");
    if let Err(e) = stats_binary::from_bytes(path, data) {
        moeplace_fuzz::check_error(&e, path);
    }
});
