//! SGLang `logical_count` JSON (the expert-distribution dump EPLB rebalances from),
//! through `read_engine_recording` as `profile` and `plan --stats` call it, and
//! through its reader directly when detection does not take it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::engine_counts;
use moeplace_formats::ReadOptions;

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("logical_count.json", data);
    match engine_counts::read_engine_recording(&path, &ReadOptions::default()) {
        Some(Err(e)) => moeplace_fuzz::check_error(&e, &path),
        Some(Ok(_)) => {}
        None => {
            if let Err(e) = engine_counts::read_sglang_logical_count(&path) {
                moeplace_fuzz::check_error(&e, &path);
            }
        }
    }
});
