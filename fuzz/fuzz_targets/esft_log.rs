//! DeepSeek ESFT logs (`esft::EsftReader`): a generated log folder with one family
//! whose two layer files both hold the input, read to the end; then the same folder
//! through format detection (`open_trace`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::esft::EsftReader;
use moeplace_formats::{open_trace, ReadOptions};

fuzz_target!(|data: &[u8]| {
    let dir = moeplace_fuzz::fresh_dir("esft");
    moeplace_fuzz::put(&dir.join("family").join("expert_weights_1.txt"), data);
    // Line i of every layer is the same sequence: a second layer exercises the
    // checks across files.
    moeplace_fuzz::put(&dir.join("family").join("expert_weights_2.txt"), data);
    let opts = ReadOptions { batch_tokens: 64, ..ReadOptions::default() };
    moeplace_fuzz::drain(EsftReader::open(&dir, &opts), &dir);
    moeplace_fuzz::drain_boxed(open_trace(&dir, &opts), &dir);
});
