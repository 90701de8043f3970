//! Defects the fuzz targets (fuzz/, docs/RELIABILITY.md "Fuzzing") found, each with
//! a minimised input generated here: the reader must give one error naming the file,
//! never a panic.

use std::path::Path;

use moeplace_core::trace::{ModelShape, TokenBatch, TokenRef};
use moeplace_formats::parquet::{ParquetReader, ParquetWriter};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter};

/// Reads a trace to its end; the first error as text.
fn read_parquet(path: &Path) -> Result<usize, String> {
    let reader = ParquetReader::open(path, 8).map_err(|e| e.to_string())?;
    let mut tokens = 0;
    for batch in reader {
        tokens += batch.map_err(|e| e.to_string())?.len();
    }
    Ok(tokens)
}

/// Writes a small valid Parquet trace with moeplace's writer.
fn parquet_trace(path: &Path) {
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

/// `bytes` (a Parquet file) with its footer rewritten by `edit`.
fn with_footer(path: &Path, edit: impl FnOnce(ParquetMetaData) -> ParquetMetaData) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let meta = ParquetMetaDataReader::new().parse_and_finish(&std::fs::File::open(path).unwrap()).unwrap();
    let footer_len = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap()) as usize;
    let mut out = bytes[..bytes.len() - 8 - footer_len].to_vec();
    let meta = edit(meta);
    ParquetMetaDataWriter::new(&mut out, &meta).finish().unwrap();
    out
}

/// A column chunk whose footer gives a negative data page offset: the footer check
/// itself called the parquet crate's `byte_range`, which asserts and panicked
/// ("column start and length should not be negative") before the check could refuse
/// the file.
#[test]
fn a_negative_column_chunk_offset_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    parquet_trace(&good);
    assert_eq!(read_parquet(&good), Ok(6));
    for (name, offset, dictionary) in [("data.parquet", -8, None), ("dict.parquet", 4, Some(-3))] {
        let bad = with_footer(&good, |meta| {
            let rgs = meta
                .row_groups()
                .iter()
                .map(|rg| {
                    let mut cols = rg.columns().to_vec();
                    cols[0] = cols[0]
                        .clone()
                        .into_builder()
                        .set_data_page_offset(offset)
                        .set_dictionary_page_offset(dictionary)
                        .build()
                        .unwrap();
                    rg.clone().into_builder().set_column_metadata(cols).build().unwrap()
                })
                .collect();
            meta.into_builder().set_row_groups(rgs).build()
        });
        let path = dir.path().join(name);
        std::fs::write(&path, bad).unwrap();
        let err = read_parquet(&path).unwrap_err();
        assert!(err.contains(name) && err.contains("outside the file") && err.contains("corrupted footer"), "{err}");
    }
}
