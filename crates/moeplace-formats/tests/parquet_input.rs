//! Parquet traces from other writers: the list form of `experts` (version 1 files and
//! other tools) reads like the byte form, and bad files give one clear error naming
//! the file and the row or column, never a panic.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int64Array, RecordBatch, StringArray, UInt16Array,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use moeplace_core::trace::{ModelShape, Phase, TokenBatch, TokenRef};
use moeplace_formats::parquet::{ParquetReader, ParquetWriter};
use parquet::arrow::ArrowWriter;
use parquet::basic::{BrotliLevel, Compression, GzipLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

const LAYERS: usize = 2;
const K: usize = 2;

/// Writes a file with `experts` as a fixed-size list of u16 (`width` per row) under
/// the column name `experts_name`, one row per entry of `ids`.
fn write_list_file(path: &Path, experts_name: &str, width: usize, ids: &[Vec<u16>], version: &str) {
    let rows = ids.len();
    let item = Arc::new(Field::new("item", DataType::UInt16, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("request", DataType::Utf8, false),
        Field::new("family", DataType::Utf8, true),
        Field::new("phase", DataType::Utf8, true),
        Field::new("position", DataType::UInt32, false),
        Field::new(experts_name, DataType::FixedSizeList(item.clone(), width as i32), false),
    ]));
    let flat: Vec<u16> = ids.iter().flatten().copied().collect();
    let experts = FixedSizeListArray::try_new(item, width as i32, Arc::new(UInt16Array::from(flat)), None).unwrap();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("r{}", i / 3)))),
        Arc::new(StringArray::from_iter_values((0..rows).map(|_| "law"))),
        Arc::new(StringArray::from_iter_values((0..rows).map(|i| if i % 3 == 0 { "prefill" } else { "decode" }))),
        Arc::new(UInt32Array::from_iter_values((0..rows as u32).map(|i| i % 3))),
        Arc::new(experts),
    ];
    write_columns(path, schema, cols, version, Compression::SNAPPY);
}

/// Writes one record batch with the trace metadata of a 2-layer, 4-expert, top-2
/// model (file format `version`).
fn write_columns(path: &Path, schema: Arc<Schema>, cols: Vec<ArrayRef>, version: &str, codec: Compression) {
    let kv = [
        ("moeplace.format", "moeplace-trace"),
        ("moeplace.version", version),
        ("moeplace.layers", "2"),
        ("moeplace.experts", "4"),
        ("moeplace.top_k", "2"),
    ]
    .map(|(k, v)| KeyValue::new(k.to_string(), v.to_string()));
    let props = WriterProperties::builder().set_key_value_metadata(Some(kv.to_vec())).set_compression(codec).build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema.clone(), Some(props)).unwrap();
    w.write(&RecordBatch::try_new(schema, cols).unwrap()).unwrap();
    w.close().unwrap();
}

/// A good file with one more string column named `name` (a misspelt optional
/// column, or a second column of a name already there).
fn write_with_extra_column(path: &Path, name: &str) {
    let item = Arc::new(Field::new("item", DataType::UInt16, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("request", DataType::Utf8, false),
        Field::new("family", DataType::Utf8, true),
        Field::new("position", DataType::UInt32, false),
        Field::new("experts", DataType::FixedSizeList(item.clone(), 4), false),
        Field::new(name, DataType::Utf8, true),
    ]));
    let flat: Vec<u16> = good_ids(3).into_iter().flatten().collect();
    let experts = FixedSizeListArray::try_new(item, 4, Arc::new(UInt16Array::from(flat)), None).unwrap();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["r0", "r0", "r1"])),
        Arc::new(StringArray::from(vec!["law", "law", "code"])),
        Arc::new(UInt32Array::from(vec![0, 1, 0])),
        Arc::new(experts),
        Arc::new(StringArray::from(vec!["law", "law", "code"])),
    ];
    write_columns(path, schema, cols, "2", Compression::SNAPPY);
}

fn good_ids(rows: usize) -> Vec<Vec<u16>> {
    (0..rows).map(|i| vec![(i % 4) as u16, ((i + 1) % 4) as u16, ((i + 2) % 4) as u16, ((i + 3) % 4) as u16]).collect()
}

fn read_all(path: &Path) -> Result<Vec<TokenBatch>, String> {
    let r = ParquetReader::open(path, 4).map_err(|e| e.to_string())?;
    r.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

#[test]
fn list_form_reads_like_the_byte_form() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.parquet");
    write_list_file(&list, "experts", LAYERS * K, &good_ids(10), "1");
    let from_list = read_all(&list).unwrap();
    // Rewrite with our writer (byte form) and read again.
    let bytes = dir.path().join("bytes.parquet");
    let mut w = ParquetWriter::create(&bytes, ModelShape::new(LAYERS, 4, K).unwrap()).unwrap();
    for b in &from_list {
        w.write_batch(b).unwrap();
    }
    w.finish().unwrap();
    let from_bytes = read_all(&bytes).unwrap();
    let tokens = |bs: &[TokenBatch]| -> Vec<(String, Option<Phase>, u32, Vec<u16>)> {
        bs.iter()
            .flat_map(|b| {
                b.tokens().map(|t: TokenRef| (t.request.to_string(), t.phase, t.position, t.experts.to_vec()))
            })
            .collect()
    };
    assert_eq!(tokens(&from_list).len(), 10);
    assert_eq!(tokens(&from_list), tokens(&from_bytes));
    assert_eq!(tokens(&from_list)[4], ("r1".to_string(), Some(Phase::Decode), 1, vec![0, 1, 2, 3]));
}

#[test]
fn bad_files_name_the_file_and_the_row_or_column() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut out_of_range = good_ids(9);
    out_of_range[6][3] = 4;
    let mut repeated = good_ids(9);
    repeated[5][1] = repeated[5][0];
    /// File name, how to make it, what the error must say.
    type Case = (&'static str, Box<dyn Fn(&Path)>, &'static str);
    let cases: Vec<Case> = vec![
        ("column.parquet", Box::new(|p| write_list_file(p, "expert_ids", 4, &good_ids(3), "2")), "unknown column"),
        ("famliy.parquet", Box::new(|p| write_with_extra_column(p, "famliy")), "column famliy: unknown column"),
        ("twice.parquet", Box::new(|p| write_with_extra_column(p, "family")), "column family: appears twice"),
        ("range.parquet", Box::new(move |p| write_list_file(p, "experts", 4, &out_of_range, "2")), "row 6"),
        ("repeat.parquet", Box::new(move |p| write_list_file(p, "experts", 4, &repeated, "2")), "row 5"),
        (
            "wrongk.parquet",
            Box::new(|p| write_list_file(p, "experts", 6, &vec![vec![0, 1, 2, 3, 0, 1]; 3], "2")),
            "top-2",
        ),
        ("version.parquet", Box::new(|p| write_list_file(p, "experts", 4, &good_ids(3), "9")), "version"),
        ("empty.parquet", Box::new(|p| std::fs::write(p, b"").unwrap()), "empty"),
        ("garbage.parquet", Box::new(|p| std::fs::write(p, b"not parquet at all\n").unwrap()), "Parquet"),
    ];
    for (name, make, what) in cases {
        let p = d.join(name);
        make(&p);
        let err = read_all(&p).expect_err(name);
        assert!(err.contains(name), "{name}: file not named in {err}");
        assert!(err.contains(what), "{name}: expected {what:?} in {err}");
    }
    // A truncated file (a valid one cut short) is refused, not half-read.
    let whole = d.join("whole.parquet");
    write_list_file(&whole, "experts", 4, &good_ids(50), "2");
    let bytes = std::fs::read(&whole).unwrap();
    let cut = d.join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = read_all(&cut).expect_err("truncated");
    assert!(err.contains("cut.parquet"), "{err}");
}

/// A Parquet trace (2 layers x top-2 of 4 experts) whose `experts` and optional
/// `gate_weights` columns are given as they are, `position` as Int64.
fn write_parquet(path: &Path, positions: Vec<i64>, experts: Int64Array, weights: Option<Float32Array>) {
    write_parquet_of(path, Arc::new(Int64Array::from(positions)), Arc::new(experts), weights);
}

/// Same, with the `position` column and the `experts` items of any type.
fn write_parquet_of(path: &Path, positions: ArrayRef, experts: ArrayRef, weights: Option<Float32Array>) {
    let rows = positions.len();
    let item = Arc::new(Field::new("item", experts.data_type().clone(), true));
    let witem = Arc::new(Field::new("item", DataType::Float32, true));
    let mut fields = vec![
        Field::new("request", DataType::Utf8, false),
        Field::new("position", positions.data_type().clone(), false),
        Field::new("experts", DataType::FixedSizeList(item.clone(), 4), false),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values((0..rows).map(|_| "r0"))),
        positions,
        Arc::new(FixedSizeListArray::try_new(item, 4, experts, None).unwrap()),
    ];
    if let Some(w) = weights {
        fields.push(Field::new("gate_weights", DataType::FixedSizeList(witem.clone(), 4), false));
        cols.push(Arc::new(FixedSizeListArray::try_new(witem, 4, Arc::new(w), None).unwrap()));
    }
    write_columns(path, Arc::new(Schema::new(fields)), cols, "1", Compression::SNAPPY);
}

#[test]
fn parquet_negative_or_huge_values_are_named_not_called_null() {
    let dir = tempfile::tempdir().unwrap();
    let good = || vec![0, 1, 2, 3];
    let p = dir.path().join("neg.parquet");
    write_parquet(&p, vec![0, 1], Int64Array::from([good(), vec![0, 1, -1, 3]].concat()), None);
    let e = read_all(&p).unwrap_err();
    assert!(e.contains("neg.parquet: row 1") && e.contains("-1") && !e.contains("null"), "{e}");
    let p = dir.path().join("big.parquet");
    write_parquet(&p, vec![0, 1], Int64Array::from([good(), vec![0, 1, 70000, 3]].concat()), None);
    let e = read_all(&p).unwrap_err();
    assert!(e.contains("big.parquet: row 1") && e.contains("70000") && !e.contains("null"), "{e}");
    let p = dir.path().join("pos.parquet");
    write_parquet(&p, vec![0, -5], Int64Array::from([good(), good()].concat()), None);
    let e = read_all(&p).unwrap_err();
    assert!(e.contains("pos.parquet: row 1") && e.contains("-5") && !e.contains("null"), "{e}");
}

#[test]
fn parquet_null_gate_weight_is_refused_not_read_as_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.parquet");
    let w = Float32Array::from(vec![Some(0.5), Some(0.5), Some(0.5), Some(0.5), Some(0.5), None, Some(0.5), Some(0.5)]);
    write_parquet(&p, vec![0, 1], Int64Array::from(vec![0, 1, 2, 3, 0, 1, 2, 3]), Some(w));
    let e = read_all(&p).unwrap_err();
    assert!(e.contains("w.parquet: row 1") && e.contains("gate_weights"), "{e}");
}

#[test]
fn parquet_float_ids_or_positions_are_refused_not_truncated() {
    // Floats were cast to integers: expert id 1.7 read as 1, position 1.5 as 1.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fid.parquet");
    let ids = Float64Array::from(vec![0.0, 1.0, 2.0, 3.0, 0.0, 1.7, 2.0, 3.0]);
    write_parquet_of(&p, Arc::new(Int64Array::from(vec![0, 1])), Arc::new(ids), None);
    let e = read_all(&p).unwrap_err();
    assert!(e.contains("fid.parquet: column experts") && e.contains("integers"), "{e}");
    let p = dir.path().join("fpos.parquet");
    let ids = Int64Array::from(vec![0, 1, 2, 3, 0, 1, 2, 3]);
    write_parquet_of(&p, Arc::new(Float64Array::from(vec![0.0, 1.5])), Arc::new(ids), None);
    let e = read_all(&p).unwrap_err();
    assert!(e.contains("fpos.parquet: column position") && e.contains("integers"), "{e}");
}

/// Defect 11: files compressed with gzip, brotli or lz4 by other writers read like
/// uncompressed ones.
#[test]
fn every_common_codec_reads() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.parquet");
    write_list_file(&plain, "experts", LAYERS * K, &good_ids(20), "2");
    let want = read_all(&plain).unwrap();
    let ids = |bs: &[TokenBatch]| -> Vec<Vec<u16>> {
        bs.iter().flat_map(|b| b.tokens().map(|t: TokenRef| t.experts.to_vec())).collect()
    };
    let codecs = [
        ("gzip", Compression::GZIP(GzipLevel::default())),
        ("brotli", Compression::BROTLI(BrotliLevel::default())),
        ("lz4", Compression::LZ4),
        ("lz4raw", Compression::LZ4_RAW),
        ("zstd", Compression::ZSTD(Default::default())),
    ];
    for (name, codec) in codecs {
        let p = dir.path().join(format!("{name}.parquet"));
        let item = Arc::new(Field::new("item", DataType::UInt16, false));
        let schema = Arc::new(Schema::new(vec![
            Field::new("request", DataType::Utf8, false),
            Field::new("position", DataType::UInt32, false),
            Field::new("experts", DataType::FixedSizeList(item.clone(), (LAYERS * K) as i32), false),
        ]));
        let flat: Vec<u16> = good_ids(20).into_iter().flatten().collect();
        let experts =
            FixedSizeListArray::try_new(item, (LAYERS * K) as i32, Arc::new(UInt16Array::from(flat)), None).unwrap();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values((0..20).map(|i| format!("r{}", i / 3)))),
            Arc::new(UInt32Array::from_iter_values((0..20u32).map(|i| i % 3))),
            Arc::new(experts),
        ];
        write_columns(&p, schema, cols, "2", codec);
        let got = read_all(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ids(&got), ids(&want), "{name}");
    }
}

/// A Parquet trace written by another tool with the documented columns alone (no
/// moeplace metadata) reads with the shape given as options, and is refused,
/// naming what to give, without them.
#[test]
fn documented_columns_alone_read_with_the_shape_given() {
    use moeplace_formats::detect::{open_trace, ReadOptions};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("plain.parquet");
    let item = Arc::new(Field::new("item", DataType::UInt16, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("request", DataType::Utf8, false),
        Field::new("position", DataType::UInt32, false),
        Field::new("experts", DataType::FixedSizeList(item.clone(), 4), false),
    ]));
    let flat: Vec<u16> = good_ids(3).into_iter().flatten().collect();
    let experts = FixedSizeListArray::try_new(item, 4, Arc::new(UInt16Array::from(flat)), None).unwrap();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["r0", "r0", "r1"])),
        Arc::new(UInt32Array::from(vec![0, 1, 0])),
        Arc::new(experts),
    ];
    let mut w = ArrowWriter::try_new(std::fs::File::create(&p).unwrap(), schema.clone(), None).unwrap();
    w.write(&RecordBatch::try_new(schema, cols).unwrap()).unwrap();
    w.close().unwrap();
    let e = open_trace(&p, &ReadOptions::default()).err().expect("needs a shape").to_string();
    assert!(e.contains("plain.parquet") && e.contains("--experts") && e.contains("--top-k"), "{e}");
    let e = open_trace(&p, &ReadOptions { experts: Some(4), top_k: Some(3), ..Default::default() })
        .err()
        .expect("4 ids per row are not layers of top-3")
        .to_string();
    assert!(e.contains("top-3"), "{e}");
    let r = open_trace(&p, &ReadOptions { experts: Some(4), top_k: Some(2), ..Default::default() }).unwrap();
    assert_eq!(r.shape(), ModelShape::new(2, 4, 2).unwrap());
    let batches: Vec<TokenBatch> = r.collect::<Result<_, _>>().unwrap();
    let tokens: Vec<TokenRef<'_>> = batches.iter().flat_map(|b| b.tokens()).collect();
    assert_eq!(tokens.len(), 3);
    assert_eq!(tokens[2].experts, &[2, 3, 0, 1]);
}
