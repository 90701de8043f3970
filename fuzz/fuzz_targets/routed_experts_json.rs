//! SGLang HTTP responses with `meta_info.routed_experts` (base64 of int32
//! [tokens, hidden layers, k]), one JSON object per line, read to the end with and
//! without `--top-k`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::routed_experts::SglangResponsesReader;
use moeplace_formats::ReadOptions;

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("responses.jsonl", data);
    let opts = ReadOptions { batch_tokens: 64, ..ReadOptions::default() };
    moeplace_fuzz::drain(SglangResponsesReader::open(&path, &opts), &path);
    let opts = ReadOptions { experts: Some(16), top_k: Some(4), ..opts };
    moeplace_fuzz::drain(SglangResponsesReader::open(&path, &opts), &path);
});
