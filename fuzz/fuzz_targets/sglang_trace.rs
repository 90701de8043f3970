//! SGLang/simllm traces (`simllm-preplay-trace-v2`, `sglang::SglangReader`), read to
//! their end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::sglang::SglangReader;

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("routing-trace.jsonl", data);
    moeplace_fuzz::drain(SglangReader::open(&path, 64), &path);
});
