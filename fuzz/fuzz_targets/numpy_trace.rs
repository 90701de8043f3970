//! NumPy traces (`npz::NumpyReader`): a zip archive is read as `.npz`, anything else
//! as a single `.npy` array; read to the end, with and without `--experts`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::npz::NumpyReader;

fuzz_target!(|data: &[u8]| {
    let name = if data.starts_with(b"PK") { "trace.npz" } else { "trace.npy" };
    let path = moeplace_fuzz::file(name, data);
    moeplace_fuzz::drain(NumpyReader::open(&path, None, 64), &path);
    moeplace_fuzz::drain(NumpyReader::open(&path, Some(16), 64), &path);
});
