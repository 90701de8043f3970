//! `--param key=value` strings (one a line): `Params::parse`, then every placer's
//! and dispatcher's reading of its declared parameters through the typed getters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_core::dispatch;
use moeplace_core::placers::{registry, Params};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(params) = Params::parse(text.lines()) else { return };
    for placer in registry() {
        let _ = params.allow_only(placer.as_ref());
        let _ = params.for_placer(placer.as_ref()).check_values(&placer.params());
    }
    for d in dispatch::registry(0) {
        let _ = params.only(&d.params()).check_values(&d.params());
    }
});
