//! Parquet traces: one row per token, read and written in record batches so memory
//! stays bounded.
//!
//! Columns (see docs/FORMATS.md):
//! - `request`: Utf8, not null (dictionary-encoded by the writer);
//! - `family`: Utf8, nullable;
//! - `phase`: Utf8 (`prefill`/`decode`), nullable;
//! - `position`: UInt32, not null;
//! - `experts`: FixedSizeBinary[layers * k * w], not null: a token's top-k ids of
//!   layer 0, then layer 1, ..., one byte each (w = 1) when the model has at most 256
//!   experts, else two bytes little-endian (w = 2). Raw bytes without dictionary:
//!   decoding is a copy, several times faster than a list column (whose repetition
//!   levels cost more to decode than the ids). In NumPy:
//!   `np.frombuffer(b, np.uint8).reshape(layers, k)`;
//! - `gate_weights` (optional column): FixedSizeList<Float32>[layers * k].
//!
//! The model shape sits in the file's key-value metadata: `moeplace.format` =
//! `moeplace-trace`, `moeplace.version` = 2, `moeplace.layers`, `moeplace.experts`,
//! `moeplace.top_k`. On read, `experts` may also be a fixed-size list of any integer
//! type (version 1 files, and traces written by other tools that follow the columns),
//! and `position` any integer type (cast).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::HashMap;

use arrow::array::{
    Array, ArrayRef, FixedSizeBinaryArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray, UInt16Array,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use moeplace_core::trace::{BatchColumns, ModelShape, Phase, ShapeError, TokenBatch};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::atomic::AtomicFile;
use crate::contain::contain;
use crate::detect::TraceReader;
use crate::error::{FormatError, Location};

const KEY_FORMAT: &str = "moeplace.format";
const KEY_VERSION: &str = "moeplace.version";
const KEY_LAYERS: &str = "moeplace.layers";
const KEY_EXPERTS: &str = "moeplace.experts";
const KEY_TOP_K: &str = "moeplace.top_k";

/// Bytes per expert id in the `experts` column.
fn id_width(shape: ModelShape) -> usize {
    if shape.experts <= 256 {
        1
    } else {
        2
    }
}

/// The shape of a trace without moeplace's metadata: experts and top-k as given, the
/// layers from the width of the `experts` column (ids of width 1 or 2 bytes in the
/// byte form, one per list item in the list form).
fn shape_from_columns(
    path: &Path,
    schema: &Schema,
    opts: &crate::detect::ReadOptions,
) -> Result<ModelShape, FormatError> {
    let (Some(experts), Some(top_k)) = (opts.experts, opts.top_k) else {
        return Err(FormatError::file(
            path,
            "no moeplace metadata (moeplace.layers, moeplace.experts, moeplace.top_k): give --experts and --top-k \
             to read the documented columns alone (docs/FORMATS.md)",
        ));
    };
    let column = || Location::Part("column experts".into());
    let field = schema
        .field_with_name("experts")
        .map_err(|_| FormatError::new(path, column(), "missing: a trace needs its expert ids"))?;
    let ids_per_row = match field.data_type() {
        DataType::FixedSizeBinary(n) => {
            let w = if experts <= 256 { 1 } else { 2 };
            if !(*n as usize).is_multiple_of(w) {
                return Err(FormatError::new(
                    path,
                    column(),
                    format!("{n} bytes per row is not a whole number of {w}-byte ids"),
                ));
            }
            *n as usize / w
        }
        DataType::FixedSizeList(_, n) => *n as usize,
        other => {
            return Err(FormatError::new(
                path,
                column(),
                format!("{other} cannot hold expert ids; expected fixed-size binary or a fixed-size list"),
            ))
        }
    };
    if top_k == 0 || ids_per_row == 0 || !ids_per_row.is_multiple_of(top_k) {
        return Err(FormatError::new(
            path,
            column(),
            format!("{ids_per_row} ids per row is not a whole number of layers of top-{top_k}"),
        ));
    }
    ModelShape::new(ids_per_row / top_k, experts, top_k).map_err(|e| FormatError::file(path, e.to_string()))
}

/// The columns of a Parquet trace; any other is refused.
const COLUMNS: [&str; 6] = ["request", "family", "phase", "position", "experts", "gate_weights"];

fn schema(shape: ModelShape, weights: bool) -> Arc<Schema> {
    let n = (shape.layers * shape.top_k) as i32;
    let mut fields = vec![
        Field::new("request", DataType::Utf8, false),
        Field::new("family", DataType::Utf8, true),
        Field::new("phase", DataType::Utf8, true),
        Field::new("position", DataType::UInt32, false),
        Field::new("experts", DataType::FixedSizeBinary(n * id_width(shape) as i32), false),
    ];
    if weights {
        fields.push(Field::new(
            "gate_weights",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), n),
            false,
        ));
    }
    // Also in the Arrow schema: readers that take it over the file's key-value
    // metadata (pyarrow) then see the shape, and a rewritten table keeps it.
    Arc::new(Schema::new(fields).with_metadata(metadata(shape).into_iter().collect()))
}

/// The trace metadata of a file of `shape`.
fn metadata(shape: ModelShape) -> Vec<(String, String)> {
    [
        (KEY_FORMAT, "moeplace-trace".to_string()),
        (KEY_VERSION, "2".to_string()),
        (KEY_LAYERS, shape.layers.to_string()),
        (KEY_EXPERTS, shape.experts.to_string()),
        (KEY_TOP_K, shape.top_k.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Streams a Parquet trace.
pub struct ParquetReader {
    path: PathBuf,
    inner: ParquetRecordBatchReader,
    shape: ModelShape,
    rows_done: u64,
    rows_total: u64,
    done: bool,
}

impl ParquetReader {
    pub fn open(path: &Path, batch_tokens: usize) -> Result<ParquetReader, FormatError> {
        Self::open_with(path, &crate::detect::ReadOptions { batch_tokens, ..Default::default() })
    }

    /// Opens a trace; a file without moeplace's metadata (written by another tool
    /// with the documented columns alone) takes its shape from `opts` (`experts`,
    /// `top_k`; the layers follow from the width of `experts`).
    pub fn open_with(path: &Path, opts: &crate::detect::ReadOptions) -> Result<ParquetReader, FormatError> {
        let batch_tokens = opts.batch_tokens;
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
            return Err(FormatError::file(path, "empty file: expected a Parquet trace"));
        }
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let builder = contain(|| ParquetRecordBatchReaderBuilder::try_new(file))
            .map_err(|p| corrupted(path, &p))?
            .map_err(|e| FormatError::file(path, format!("not a readable Parquet file: {e}")))?;
        check_chunks(path, builder.metadata(), file_len)?;
        let meta = builder.metadata().file_metadata();
        let kv = meta.key_value_metadata().cloned().unwrap_or_default();
        let arrow_schema = builder.schema().clone();
        // The file's key-value metadata, else the Arrow schema's (tools that rewrite
        // a table may keep one of the two).
        let get = |k: &str| {
            kv.iter()
                .find(|x| x.key == k)
                .and_then(|x| x.value.clone())
                .or_else(|| arrow_schema.metadata().get(k).cloned())
        };
        let part =
            |k: &str| FormatError::new(path, Location::Part(format!("metadata {k}")), "missing or not an integer");
        let shape = if get(KEY_FORMAT).is_none() && kv.iter().all(|x| !x.key.starts_with("moeplace.")) {
            shape_from_columns(path, &arrow_schema, opts)?
        } else {
            if get(KEY_FORMAT).as_deref() != Some("moeplace-trace") {
                return Err(FormatError::file(
                    path,
                    "no moeplace trace metadata (key moeplace.format = moeplace-trace); see docs/FORMATS.md",
                ));
            }
            if !matches!(get(KEY_VERSION).as_deref(), Some("1" | "2")) {
                return Err(FormatError::file(
                    path,
                    format!("trace version {:?} is not supported (this build reads 1 and 2)", get(KEY_VERSION)),
                ));
            }
            let num = |k: &str| get(k).and_then(|v| v.parse::<usize>().ok()).ok_or_else(|| part(k));
            ModelShape::new(num(KEY_LAYERS)?, num(KEY_EXPERTS)?, num(KEY_TOP_K)?)
                .map_err(|e| FormatError::file(path, e.to_string()))?
        };
        let rows_total = meta.num_rows().max(0) as u64;
        // As JSONL refuses unknown fields: a misspelt optional column (`famliy`) would
        // otherwise be dropped silently, and of two columns of one name only the first
        // would be read.
        let names: Vec<&str> = arrow_schema.fields().iter().map(|f| f.name().as_str()).collect();
        for (i, name) in names.iter().enumerate() {
            let column = || Location::Part(format!("column {name}"));
            if !COLUMNS.contains(name) {
                return Err(FormatError::new(
                    path,
                    column(),
                    format!("unknown column (a Parquet trace holds: {})", COLUMNS.join(", ")),
                ));
            }
            if names[..i].contains(name) {
                return Err(FormatError::new(path, column(), "appears twice"));
            }
        }
        for col in ["request", "position", "experts"] {
            if arrow_schema.field_with_name(col).is_err() {
                let have: Vec<&str> = arrow_schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(FormatError::new(
                    path,
                    Location::Part(format!("column {col}")),
                    format!("missing (columns are: {})", have.join(", ")),
                ));
            }
        }
        let inner = contain(|| builder.with_batch_size(batch_tokens.max(1)).build())
            .map_err(|p| corrupted(path, &p))?
            .map_err(|e| FormatError::file(path, format!("cannot read: {e}")))?;
        Ok(ParquetReader { path: path.to_path_buf(), inner, shape, rows_done: 0, rows_total, done: false })
    }

    fn column_err(&self, col: &str, msg: impl Into<String>) -> FormatError {
        FormatError::new(&self.path, Location::Part(format!("column {col}")), msg)
    }

    fn strings(&self, rb: &RecordBatch, col: &str) -> Result<Option<StringArray>, FormatError> {
        let Some(a) = rb.column_by_name(col) else { return Ok(None) };
        let a = arrow::compute::cast(a, &DataType::Utf8).map_err(|e| self.column_err(col, format!("not text: {e}")))?;
        Ok(Some(a.as_any().downcast_ref::<StringArray>().expect("cast to Utf8").clone()))
    }

    fn list_values(
        &self,
        rb: &RecordBatch,
        col: &str,
        item: DataType,
    ) -> Result<Option<(ArrayRef, usize)>, FormatError> {
        let Some(a) = rb.column_by_name(col) else { return Ok(None) };
        let list = a.as_any().downcast_ref::<FixedSizeListArray>().ok_or_else(|| {
            self.column_err(col, format!("must be a fixed-size list of {item}, found {}", a.data_type()))
        })?;
        if list.null_count() > 0 {
            let row = (0..list.len()).find(|&i| list.is_null(i)).unwrap_or(0) as u64;
            return Err(FormatError::row(&self.path, self.rows_done + row, format!("`{col}` is null")));
        }
        let width = list.value_length().max(1) as usize;
        let src = list.values();
        // A cast from floats to integers would truncate (1.7 -> 1) without a word.
        if item.is_integer() && !src.data_type().is_integer() {
            return Err(self.column_err(col, format!("items must be integers, found {}", src.data_type())));
        }
        if let Some(i) = (0..src.len()).find(|&i| src.is_null(i)) {
            let row = self.rows_done + (i / width) as u64;
            return Err(FormatError::row(&self.path, row, format!("item {} of `{col}` is null", i % width)));
        }
        let values =
            arrow::compute::cast(src, &item).map_err(|e| self.column_err(col, format!("items are not {item}: {e}")))?;
        // The cast turns values that do not fit (negative or too large) into nulls.
        if let Some(i) = (0..values.len()).find(|&i| values.is_null(i)) {
            let shown = arrow::util::display::array_value_to_string(src, i).unwrap_or_default();
            let row = self.rows_done + (i / width) as u64;
            let what = if col == "experts" { "expert id" } else { "value" };
            return Err(FormatError::row(
                &self.path,
                row,
                format!("{what} {shown} in `{col}` is out of range (negative or does not fit {item})"),
            ));
        }
        Ok(Some((values, list.value_length() as usize)))
    }

    /// The `experts` column as compact ids, token after token.
    fn expert_ids(&self, rb: &RecordBatch) -> Result<Vec<u16>, FormatError> {
        let shape = self.shape;
        let n = shape.layers * shape.top_k;
        let col = rb.column_by_name("experts").expect("checked at open");
        if let Some(bytes) = col.as_any().downcast_ref::<FixedSizeBinaryArray>() {
            if bytes.null_count() > 0 {
                let row = (0..bytes.len()).find(|&i| bytes.is_null(i)).unwrap_or(0) as u64;
                return Err(FormatError::row(&self.path, self.rows_done + row, "`experts` is null"));
            }
            let data = bytes.value_data();
            return match bytes.value_length() as usize {
                w if w == n => Ok(data.iter().map(|&b| b as u16).collect()),
                w if w == 2 * n => Ok(data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()),
                w => Err(self.column_err(
                    "experts",
                    format!(
                        "values of {w} bytes; the metadata says {} layers x top-{} = {n} ids of 1 or 2 bytes",
                        shape.layers, shape.top_k
                    ),
                )),
            };
        }
        // Casting checks range: an id that does not fit u16 fails here, one >= E later.
        let (experts, width) = self.list_values(rb, "experts", DataType::UInt16)?.expect("checked at open");
        if width != n {
            return Err(self.column_err(
                "experts",
                format!("lists of {width} ids; the metadata says {} layers x top-{} = {n}", shape.layers, shape.top_k),
            ));
        }
        let experts = experts.as_any().downcast_ref::<UInt16Array>().expect("cast");
        if experts.null_count() > 0 {
            let i = (0..experts.len()).find(|&i| experts.is_null(i)).unwrap_or(0);
            return Err(FormatError::row(&self.path, self.rows_done + (i / n) as u64, "an expert id is null"));
        }
        Ok(experts.values().to_vec())
    }

    fn convert(&self, rb: &RecordBatch) -> Result<TokenBatch, FormatError> {
        let shape = self.shape;
        let n = shape.layers * shape.top_k;
        let rows = rb.num_rows();
        let request = self.strings(rb, "request")?.expect("checked at open");
        let family = self.strings(rb, "family")?;
        let phase = self.strings(rb, "phase")?;
        let position_src = rb.column_by_name("position").expect("checked");
        if !position_src.data_type().is_integer() {
            return Err(self.column_err("position", format!("must be integers, found {}", position_src.data_type())));
        }
        let position = arrow::compute::cast(position_src, &DataType::UInt32)
            .map_err(|e| self.column_err("position", format!("not a non-negative integer: {e}")))?;
        let position = position.as_any().downcast_ref::<UInt32Array>().expect("cast");
        if let Some(i) = (0..rows).find(|&i| request.is_null(i) || position_src.is_null(i)) {
            return Err(FormatError::row(
                &self.path,
                self.rows_done + i as u64,
                "`request` and `position` may not be null",
            ));
        }
        // The cast turns positions that do not fit u32 into nulls.
        if let Some(i) = (0..rows).find(|&i| position.is_null(i)) {
            let shown = arrow::util::display::array_value_to_string(position_src, i).unwrap_or_default();
            return Err(FormatError::row(
                &self.path,
                self.rows_done + i as u64,
                format!("position {shown} is not a non-negative 32-bit integer"),
            ));
        }
        let experts = self.expert_ids(rb)?;
        let gate_weights = match self.list_values(rb, "gate_weights", DataType::Float32)? {
            Some((w, width)) if width == n => {
                Some(w.as_any().downcast_ref::<Float32Array>().expect("cast").values().to_vec())
            }
            Some((_, width)) => return Err(self.column_err("gate_weights", format!("lists of {width}, expected {n}"))),
            None => None,
        };
        let mut names = Interner::default();
        let request_ids = (0..rows).map(|i| names.index(request.value(i))).collect();
        let request_names = names.into_names();
        let mut names = Interner::default();
        let family_ids =
            (0..rows).map(|i| family.as_ref().filter(|f| !f.is_null(i)).map(|f| names.index(f.value(i)))).collect();
        let family_names = names.into_names();
        let phases = match &phase {
            None => vec![None; rows],
            Some(p) => (0..rows)
                .map(|i| {
                    if p.is_null(i) {
                        return Ok(None);
                    }
                    Phase::parse(p.value(i)).map(Some).ok_or_else(|| {
                        FormatError::row(
                            &self.path,
                            self.rows_done + i as u64,
                            format!("phase {:?} is neither prefill nor decode", p.value(i)),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let columns = BatchColumns {
            request_names,
            family_names,
            request: request_ids,
            family: family_ids,
            phase: phases,
            position: position.values().to_vec(),
            experts,
            gate_weights,
        };
        TokenBatch::from_columns(shape, columns).map_err(|e| match e {
            ShapeError::InToken { token, error } => {
                FormatError::row(&self.path, self.rows_done + token as u64, error.to_string())
            }
            e => FormatError::row(&self.path, self.rows_done, e.to_string()),
        })
    }
}

/// The error of a file whose decoding panicked inside the Parquet/Arrow crates.
fn corrupted(path: &Path, panic: &str) -> FormatError {
    FormatError::file(path, format!("corrupted Parquet data (the decoder failed: {panic})"))
}

/// Most bytes one column chunk may hold once decompressed. Chunks of moeplace's
/// writer (64 Ki rows) stay below 100 MB even for the largest models; a corrupted
/// footer can declare any size.
pub const MAX_CHUNK_BYTES: i64 = 4 << 30;

/// Checks what the footer declares before anything is decoded: every column chunk
/// inside the file, its sizes non-negative and below [`MAX_CHUNK_BYTES`], the row
/// counts non-negative. A corrupted footer could otherwise make the decoder allocate
/// gigabytes or panic.
fn check_chunks(
    path: &Path,
    meta: &parquet::file::metadata::ParquetMetaData,
    file_len: u64,
) -> Result<(), FormatError> {
    let len = file_len as i64;
    for (g, rg) in meta.row_groups().iter().enumerate() {
        if rg.num_rows() < 0 {
            return Err(FormatError::file(path, format!("row group {g} declares {} rows", rg.num_rows())));
        }
        for c in rg.columns() {
            // Computed here: `byte_range()` asserts what a corrupted footer breaks.
            let start = c.dictionary_page_offset().unwrap_or_else(|| c.data_page_offset());
            let size = c.compressed_size();
            let bad = |what: String| {
                FormatError::file(path, format!("row group {g}, column {}: {what} (corrupted footer)", c.column_path()))
            };
            if start < 0 || size < 0 || start.saturating_add(size) > len {
                return Err(bad(format!(
                    "bytes {start}..{} lie outside the file of {len} bytes",
                    start.saturating_add(size)
                )));
            }
            if c.compressed_size() < 0 || c.uncompressed_size() < 0 || c.uncompressed_size() > MAX_CHUNK_BYTES {
                return Err(bad(format!(
                    "declares {} bytes ({} compressed); at most {MAX_CHUNK_BYTES} are read",
                    c.uncompressed_size(),
                    c.compressed_size()
                )));
            }
            if c.num_values() < 0 {
                return Err(bad(format!("declares {} values", c.num_values())));
            }
        }
    }
    Ok(())
}

/// Names to indices for one batch; consecutive rows mostly repeat a name, so the
/// last one is checked before the map.
#[derive(Default)]
struct Interner {
    names: Vec<String>,
    index: HashMap<String, u32>,
    last: Option<u32>,
}

impl Interner {
    fn index(&mut self, name: &str) -> u32 {
        if let Some(i) = self.last.filter(|&i| self.names[i as usize] == name) {
            return i;
        }
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.names.push(name.to_string());
                self.index.insert(name.to_string(), self.names.len() as u32 - 1);
                self.names.len() as u32 - 1
            }
        };
        self.last = Some(i);
        i
    }

    fn into_names(self) -> Vec<String> {
        self.names
    }
}

impl Iterator for ParquetReader {
    type Item = Result<TokenBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = match contain(|| self.inner.next()) {
            Ok(next) => next,
            Err(p) => {
                self.done = true;
                let e = corrupted(&self.path, &p);
                return Some(Err(FormatError::row(&self.path, self.rows_done, e.message)));
            }
        };
        match next {
            None => {
                self.done = true;
                None
            }
            Some(Err(e)) => {
                self.done = true;
                Some(Err(FormatError::row(&self.path, self.rows_done, format!("cannot decode: {e}"))))
            }
            Some(Ok(rb)) => {
                let r = self.convert(&rb);
                self.rows_done += rb.num_rows() as u64;
                if r.is_err() {
                    self.done = true;
                }
                Some(r)
            }
        }
    }
}

impl TraceReader for ParquetReader {
    fn shape(&self) -> ModelShape {
        self.shape
    }

    fn progress(&self) -> (u64, u64) {
        (self.rows_done, self.rows_total)
    }
    fn progress_unit(&self) -> crate::ProgressUnit {
        crate::ProgressUnit::Tokens
    }
}

/// Writes a Parquet trace; the file appears only when [`ParquetWriter::finish`]
/// succeeds. Gate weights are written when the first batch has them (then every
/// batch must).
pub struct ParquetWriter {
    file_path: PathBuf,
    writer: Option<ArrowWriter<AtomicFileWrite>>,
    atomic: Option<AtomicFile>,
    shape: ModelShape,
    weights: Option<bool>,
}

/// `ArrowWriter` needs an owned `Write`; this forwards to the atomic file's writer
/// through a shared handle.
struct AtomicFileWrite(Arc<std::sync::Mutex<Option<AtomicFile>>>);

impl std::io::Write for AtomicFileWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").as_mut().expect("open").writer().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().expect("not poisoned").as_mut().expect("open").writer().flush()
    }
}

impl ParquetWriter {
    pub fn create(path: &Path, shape: ModelShape) -> Result<ParquetWriter, FormatError> {
        let atomic = AtomicFile::create(path)?;
        Ok(ParquetWriter { file_path: path.to_path_buf(), writer: None, atomic: Some(atomic), shape, weights: None })
    }

    fn props(&self) -> WriterProperties {
        let kv = metadata(self.shape).into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_key_value_metadata(Some(kv))
            .set_max_row_group_row_count(Some(64 * 1024))
            .set_column_dictionary_enabled("experts".into(), false)
            .build()
    }

    pub fn write_batch(&mut self, batch: &TokenBatch) -> Result<(), FormatError> {
        let err = |m: String| FormatError::file(&self.file_path, m);
        if batch.shape() != self.shape {
            return Err(err(format!("batch shape {} differs from the file's {}", batch.shape(), self.shape)));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let has_w = batch.gate_weights().is_some();
        let weights = *self.weights.get_or_insert(has_w);
        if weights && !has_w {
            return Err(err("a batch without gate weights after batches with them".into()));
        }
        if self.writer.is_none() {
            let shared = Arc::new(std::sync::Mutex::new(self.atomic.take()));
            let w = ArrowWriter::try_new(AtomicFileWrite(shared), schema(self.shape, weights), Some(self.props()))
                .map_err(|e| err(e.to_string()))?;
            self.writer = Some(w);
        }
        let n = (self.shape.layers * self.shape.top_k) as i32;
        let names = batch.request_names();
        let fams = batch.family_names();
        let request: StringArray = batch.request_indices().iter().map(|&r| Some(names[r as usize].as_str())).collect();
        let family: StringArray = batch.family_indices().iter().map(|f| f.map(|f| fams[f as usize].as_str())).collect();
        let phase: StringArray = batch.phases().iter().map(|p| p.map(Phase::as_str)).collect();
        let position = UInt32Array::from(batch.positions().to_vec());
        let ids = batch.expert_ids();
        let bytes: Vec<u8> = if id_width(self.shape) == 1 {
            ids.iter().map(|&x| x as u8).collect()
        } else {
            ids.iter().flat_map(|&x| x.to_le_bytes()).collect()
        };
        let width = n * id_width(self.shape) as i32;
        let experts = FixedSizeBinaryArray::try_new(width, bytes.into(), None).map_err(|e| err(e.to_string()))?;
        let mut cols: Vec<ArrayRef> =
            vec![Arc::new(request), Arc::new(family), Arc::new(phase), Arc::new(position), Arc::new(experts)];
        if weights {
            let w = FixedSizeListArray::try_new(
                Arc::new(Field::new("item", DataType::Float32, false)),
                n,
                Arc::new(Float32Array::from(batch.gate_weights().expect("checked").to_vec())),
                None,
            )
            .map_err(|e| err(e.to_string()))?;
            cols.push(Arc::new(w));
        }
        let rb = RecordBatch::try_new(schema(self.shape, weights), cols).map_err(|e| err(e.to_string()))?;
        self.writer.as_mut().expect("created").write(&rb).map_err(|e| err(e.to_string()))
    }

    pub fn finish(mut self) -> Result<(), FormatError> {
        if self.writer.is_none() {
            // No tokens: still a valid file with the schema and shape.
            let shared = Arc::new(std::sync::Mutex::new(self.atomic.take()));
            let w = ArrowWriter::try_new(AtomicFileWrite(shared), schema(self.shape, false), Some(self.props()))
                .map_err(|e| FormatError::file(&self.file_path, e.to_string()))?;
            self.writer = Some(w);
        }
        let w = self.writer.take().expect("set above");
        let sink = w.into_inner().map_err(|e| FormatError::file(&self.file_path, e.to_string()))?;
        let atomic = sink.0.lock().expect("not poisoned").take().expect("open");
        atomic.commit()
    }
}
