//! vLLM `eplb_load_stats` JSONL records, through `read_engine_recording` and the
//! reader itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::engine_counts;
use moeplace_formats::ReadOptions;

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("eplb_load_stats.jsonl", data);
    let opts = ReadOptions::default();
    if let Some(Err(e)) = engine_counts::read_engine_recording(&path, &opts) {
        moeplace_fuzz::check_error(&e, &path);
    }
    if let Err(e) = engine_counts::read_vllm_load_stats(&path, &opts) {
        moeplace_fuzz::check_error(&e, &path);
    }
});
