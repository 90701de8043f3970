//! Statistics files as `profile` writes them, JSON encoding (`stats_file::from_json`),
//! and any bytes through the reader that tells the encodings apart
//! (`stats_file::from_bytes`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use moeplace_formats::stats_file;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("stats.json");
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = stats_file::from_json(path, text) {
            moeplace_fuzz::check_error(&e, path);
        }
    }
    if let Err(e) = stats_file::from_bytes(path, data) {
        moeplace_fuzz::check_error(&e, path);
    }
});
