//! The project's JSONL trace (`jsonl::JsonlReader`), read to its end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::jsonl::JsonlReader;

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("trace.jsonl", data);
    moeplace_fuzz::drain(JsonlReader::open(&path, 64), &path);
});
