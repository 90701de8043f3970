//! TensorRT-LLM raw expert statistics: a generated folder whose
//! `rank0_raw.safetensors` holds the input beside a fixed `meta_info.json`, read as a
//! trace to the end (`trtllm_raw::open`, and `open_trace` by detection).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::{open_trace, trtllm_raw, ReadOptions};

fuzz_target!(|data: &[u8]| {
    let dir = moeplace_fuzz::fresh_dir("trtllm-raw");
    moeplace_fuzz::put(&dir.join("meta_info.json"), br#"{"num_experts": 16, "num_experts_per_token": 4}"#);
    moeplace_fuzz::put(&dir.join("rank0_raw.safetensors"), data);
    let opts = ReadOptions { batch_tokens: 64, ..ReadOptions::default() };
    moeplace_fuzz::drain(trtllm_raw::open(&dir, &opts), &dir);
    moeplace_fuzz::drain_boxed(open_trace(&dir, &opts), &dir);
});
