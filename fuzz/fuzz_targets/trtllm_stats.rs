//! TensorRT-LLM expert statistics: a generated folder whose `rank0.safetensors` holds
//! the input beside a fixed `meta_info.json`, through `read_engine_recording` and
//! `read_trtllm_counts`. An input starting with `{` is `meta_info.json` instead,
//! beside a fixed well-formed rank file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::engine_counts;
use moeplace_formats::ReadOptions;

fuzz_target!(|data: &[u8]| {
    let dir = moeplace_fuzz::fresh_dir("trtllm-stats");
    if data.starts_with(b"{") {
        moeplace_fuzz::put(&dir.join("meta_info.json"), data);
        moeplace_fuzz::put(&dir.join("rank0.safetensors"), &moeplace_fuzz::safetensors_i64("0_1", &[3, 1, 0, 4]));
    } else {
        moeplace_fuzz::put(&dir.join("meta_info.json"), br#"{"num_experts": 4, "num_experts_per_token": 2}"#);
        moeplace_fuzz::put(&dir.join("rank0.safetensors"), data);
    }
    let opts = ReadOptions::default();
    if let Some(Err(e)) = engine_counts::read_engine_recording(&dir, &opts) {
        moeplace_fuzz::check_error(&e, &dir);
    }
    if let Err(e) = engine_counts::read_trtllm_counts(&dir, &opts) {
        moeplace_fuzz::check_error(&e, &dir);
    }
});
