//! Panics inside the parquet and arrow-ipc crates (59.3.2), each reached by one
//! changed byte of a small valid trace written by moeplace's writer (six tokens, two
//! layers, four experts, top-2: 1,918 bytes). Each case first shows that the parquet
//! crate itself panics when the file is read with its own API, then that moeplace's
//! reader gives one error naming the file instead. docs/RELIABILITY.md
//! "Dependency panics" describes each for an upstream report.
//!
//! If a case stops panicking in the parquet crate (fixed upstream, or the writer's
//! bytes moved after an upgrade), the first assertion fails: update the table and
//! the docs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use moeplace_core::trace::{ModelShape, TokenBatch, TokenRef};
use moeplace_formats::parquet::{ParquetReader, ParquetWriter};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// (byte offset, new value, the panic message's start).
const CASES: [(usize, u8, &str); 11] = [
    // parquet arrow/array_reader/byte_array.rs:391 (a page header of `request`).
    (12, 0x00, "attempt to divide by zero"),
    // parquet arrow/array_reader/fixed_len_byte_array.rs:481 (a page of `experts`).
    (506, 0x00, "attempt to divide by zero"),
    // parquet column/reader/decoder.rs:213.
    (783, 0xa6, "Decoder for dict should have been set"),
    // arrow-ipc convert.rs:198, :514, :332, :417: bytes of the footer's ARROW:schema
    // entry (the Arrow schema as base64 of an IPC message).
    (1116, 0x42, "called `Option::unwrap()` on a `None` value"),
    (1484, 0x66, "not implemented: Type NONE not supported"),
    (1572, 0x43, "Int type with bit width of 0 and signed of false not supported"),
    (1719, 0x51, "expect a list to have one child"),
    // parquet arrow/decoder/dictionary_index.rs:46.
    (29, 0x00, "index out of bounds: the len is 0 but the index is 0"),
    // arrow-buffer util/bit_chunk_iterator.rs:224.
    (85, 0xff, "offset + len out of bounds"),
    // parquet arrow/array_reader/fixed_len_byte_array.rs:489: the PLAIN data page of
    // `experts` declares PLAIN_DICTIONARY, and the column has no dictionary page.
    (203, 0x04, "called `Option::unwrap()` on a `None` value"),
    // parquet encodings/decoding/byte_stream_split_decoder.rs:61: an RLE_DICTIONARY
    // data page declares BYTE_STREAM_SPLIT.
    (179, 0x12, "index out of bounds"),
];

fn valid_trace(path: &Path) {
    let shape = ModelShape::new(2, 4, 2).unwrap();
    let mut batch = TokenBatch::new(shape);
    for t in 0..6u16 {
        let experts = [t % 4, (t + 1) % 4, (t + 2) % 4, (t + 3) % 4];
        let token = TokenRef {
            request: "r0",
            family: None,
            phase: None,
            position: t as u32,
            experts: &experts,
            gate_weights: None,
        };
        batch.push(token).unwrap();
    }
    let mut w = ParquetWriter::create(path, shape).unwrap();
    w.write_batch(&batch).unwrap();
    w.finish().unwrap();
}

/// Reads the file to its end with the parquet crate alone; the panic message if any.
fn parquet_crate_panic(path: &Path) -> Option<String> {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let Ok(builder) = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()) else {
            return;
        };
        let Ok(reader) = builder.with_batch_size(8).build() else { return };
        for batch in reader {
            if batch.is_err() {
                return;
            }
        }
    }));
    r.err().map(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    })
}

fn moeplace_read(path: &Path) -> Result<usize, String> {
    let reader = ParquetReader::open(path, 8).map_err(|e| e.to_string())?;
    let mut tokens = 0;
    for batch in reader {
        tokens += batch.map_err(|e| e.to_string())?.len();
    }
    Ok(tokens)
}

#[test]
fn each_dependency_panic_is_one_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    valid_trace(&good);
    let bytes = std::fs::read(&good).unwrap();
    assert_eq!(bytes.len(), 1918, "the writer's bytes changed: the offsets below no longer apply");
    assert_eq!(parquet_crate_panic(&good), None);
    assert_eq!(moeplace_read(&good), Ok(6));
    for (i, (offset, value, message)) in CASES.into_iter().enumerate() {
        let mut bad = bytes.clone();
        bad[offset] = value;
        let name = format!("case{i}-byte{offset}.parquet");
        let path = dir.path().join(&name);
        std::fs::write(&path, &bad).unwrap();
        let panic = parquet_crate_panic(&path);
        assert!(
            panic.as_deref().is_some_and(|p| p.starts_with(message)),
            "byte {offset} = {value:#x}: expected the parquet crate to panic with {message:?}, got {panic:?}"
        );
        let result = catch_unwind(AssertUnwindSafe(|| moeplace_read(&path)));
        let err = result.expect("no panic escapes moeplace's reader").unwrap_err();
        assert!(err.contains(&name), "{err}");
        assert!(err.contains("corrupted"), "{err}");
        println!("byte {offset}: {err}");
    }
}
