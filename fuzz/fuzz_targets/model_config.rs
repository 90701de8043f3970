//! Hugging Face `config.json` files given to `--model` (`model_config::read`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::model_config;

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("config.json", data);
    if let Err(e) = model_config::read(&path) {
        moeplace_fuzz::check_error(&e, &path);
    }
});
