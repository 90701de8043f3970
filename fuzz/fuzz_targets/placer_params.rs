//! `--param key=value` strings (one a line): `Params::parse`, then every placer's
//! own reading of its parameters through the typed getters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_core::placers::{registry, Params};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(params) = Params::parse(text.lines()) else { return };
    for placer in registry() {
        let _ = params.allow_only(placer.as_ref());
        let own = params.for_placer(placer.as_ref());
        for key in own.0.keys() {
            let _ = own.f64(key, 0.0);
            let _ = own.non_negative(key, 0.0);
            let _ = own.usize(key, 0);
            let _ = own.bool(key, false);
        }
    }
});
