//! SGLang expert-distribution recorder dumps (torch `.pt`): counts in stat and
//! per_pass mode (`read_engine_recording`, `sglang_dump::read_counts`), tokens in
//! per_token mode (`sglang_dump::open_trace`, read to the end).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::{engine_counts, sglang_dump, ReadOptions};

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("dump_rank0.pt", data);
    let opts = ReadOptions { batch_tokens: 64, ..ReadOptions::default() };
    if let Some(Err(e)) = engine_counts::read_engine_recording(&path, &opts) {
        moeplace_fuzz::check_error(&e, &path);
    }
    if let Err(e) = sglang_dump::read_counts(&path, &opts) {
        moeplace_fuzz::check_error(&e, &path);
    }
    moeplace_fuzz::drain(sglang_dump::open_trace(&path, &opts), &path);
});
