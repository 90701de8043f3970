//! `synth --prefill-len` / `--decode-len` strings (`N`, `MIN..MAX`,
//! `lognormal:MEDIAN:SIGMA`): a length that parses prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_core::synth::LengthDist;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = LengthDist::parse(text) {
        let _ = d.mean();
        let again = LengthDist::parse(&d.to_string()).expect("a parsed length prints as a valid one");
        assert_eq!(again, d, "a length does not print back to itself");
    }
});
