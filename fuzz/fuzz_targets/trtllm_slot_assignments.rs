//! TensorRT-LLM MoE load-balancer YAML (`initial_global_assignments`,
//! `--slot-assignments`): `read_slot_assignments`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::engine_counts;

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("moe_load_balancer.yaml", data);
    if let Err(e) = engine_counts::read_slot_assignments(&path) {
        moeplace_fuzz::check_error(&e, &path);
    }
});
