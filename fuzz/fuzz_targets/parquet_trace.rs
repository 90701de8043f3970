//! Parquet traces (`parquet::ParquetReader`), read to their end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeplace_formats::parquet::ParquetReader;

fuzz_target!(|data: &[u8]| {
    let path = moeplace_fuzz::file("trace.parquet", data);
    moeplace_fuzz::drain(ParquetReader::open(&path, 64), &path);
});
