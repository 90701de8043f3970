//! vLLM routed experts `.npy` (uint8/uint16 [tokens, hidden layers, k]), read to the
//! end with and without `--experts`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::routed_experts;
use moeplace_formats::ReadOptions;

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("routed_experts.npy", data);
    let opts = ReadOptions { batch_tokens: 64, ..ReadOptions::default() };
    moeplace_fuzz::drain(routed_experts::open_vllm_npy(&path, &opts), &path);
    let opts = ReadOptions { experts: Some(16), ..opts };
    moeplace_fuzz::drain(routed_experts::open_vllm_npy(&path, &opts), &path);
});
