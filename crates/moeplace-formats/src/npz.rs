//! NumPy traces: an `.npz` archive of per-token arrays, or a lone `.npy` holding
//! `topk_ids`.
//!
//! Arrays (see docs/FORMATS.md):
//! - `topk_ids` [tokens, layers, k], any integer dtype (required);
//! - `num_experts`: a scalar (0-d or 1-element) integer array; else the expert count
//!   must be given (`--experts`): it is never guessed from the largest id;
//! - `request_ids` [tokens] integers (request `r<id>`; default: one request);
//! - `families` [tokens] integers (family `f<code>`; the .npy format as read here
//!   has no text arrays, so families are codes), negative = none;
//! - `request_names`, `family_names`: optional uint8 arrays holding a UTF-8 JSON
//!   list of names; code c then names entry c (in NumPy:
//!   `np.frombuffer(json.dumps(names).encode(), np.uint8)`);
//! - `phases` [tokens] integers: 0 prefill, 1 decode, negative = none;
//! - `positions` [tokens] integers (default: index within the request);
//! - `gate_weights` [tokens, layers, k] float32 or float64.
//!
//! Other arrays are refused.
//!
//! NumPy archives are not streamable: the arrays are loaded whole, then handed out
//! in batches. Convert large traces to Parquet for bounded memory.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use moeplace_core::trace::{expert_id, ModelShape, Phase, TokenBatch, TokenRef};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{NpzReader, ReadNpyExt};

use crate::detect::TraceReader;
use crate::error::{FormatError, Location};

/// Reads an integer array of any integer dtype as i64: `$e` is tried with the type
/// alias `$t` set to each integer type in turn.
macro_rules! read_any_int {
    (|$t:ident| $e:expr) => {{
        let mut last = String::new();
        let mut out: Option<ArrayD<i64>> = None;
        read_any_int!(@try out last $t $e; i64 i32 u16 u8 i16 u32 i8 u64);
        out.ok_or(last)
    }};
    (@try $out:ident $last:ident $t:ident $e:expr; $($ty:ty)*) => {
        $(
            if $out.is_none() {
                #[allow(non_camel_case_types)]
                type $t = $ty;
                let r: Result<ArrayD<$t>, _> = $e;
                match r {
                    Ok(a) => $out = Some(a.mapv(|x| x as i64)),
                    Err(e) => $last = e.to_string(),
                }
            }
        )*
    };
}

/// The arrays of a NumPy trace; any other is refused.
const ARRAYS: [&str; 9] = [
    "topk_ids",
    "num_experts",
    "request_ids",
    "families",
    "request_names",
    "family_names",
    "phases",
    "positions",
    "gate_weights",
];

struct Arrays {
    topk: ArrayD<i64>,
    experts: Option<usize>,
    requests: Option<Vec<i64>>,
    families: Option<Vec<i64>>,
    phases: Option<Vec<i64>>,
    positions: Option<Vec<i64>>,
    weights: Option<Vec<f32>>,
    request_names: Option<Vec<String>>,
    family_names: Option<Vec<String>>,
}

/// What a `.npy` header announces: the offset of its data and the bytes of data
/// (shape product x item size); `None` when this cannot tell (the npy reader then
/// says what is wrong).
fn npy_announced(head: &[u8]) -> Option<(u128, u128)> {
    if head.get(..6)? != b"\x93NUMPY" {
        return None;
    }
    let (len, start): (usize, usize) = match head.get(6)? {
        1 => (u16::from_le_bytes(head.get(8..10)?.try_into().ok()?) as usize, 10),
        _ => (u32::from_le_bytes(head.get(8..12)?.try_into().ok()?) as usize, 12),
    };
    let text = std::str::from_utf8(head.get(start..start.checked_add(len)?)?).ok()?;
    let descr = text.split("'descr':").nth(1)?.trim_start().strip_prefix('\'')?.split('\'').next()?;
    let item: u128 = descr.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().ok()?;
    let dims = text.split("'shape':").nth(1)?.trim_start().strip_prefix('(')?.split(')').next()?;
    let mut n: u128 = 1;
    for d in dims.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        n = n.checked_mul(d.parse().ok()?)?;
    }
    Some(((start + len) as u128, n.checked_mul(item)?))
}

/// Refuses an array whose header announces more data than there is: the npy reader
/// allocates what the header says before reading, so a cut or corrupt file would
/// otherwise abort on memory or fail with a misleading dtype message.
fn check_announced(path: &Path, name: &str, head: &[u8], available: u64) -> Result<(), FormatError> {
    match npy_announced(head) {
        Some((offset, data)) if offset + data > u128::from(available) => Err(FormatError::new(
            path,
            Location::Part(format!("array {name}")),
            format!(
                "truncated or corrupt: its header announces {data} bytes of data, there are {}",
                u128::from(available).saturating_sub(offset)
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks every entry of an `.npz` archive before it is read: stored (not
/// compressed) and holding the data its header announces.
fn check_npz_entries(path: &Path) -> Result<(), FormatError> {
    use std::io::Read;
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| FormatError::file(path, format!("not a NumPy .npz archive: {e}")))?;
    // The zip reader keeps one entry per name (the last): two arrays of one name
    // would be read as one, silently.
    if let Some(declared) = declared_entries(path)?.filter(|&n| n != zip.len()) {
        return Err(FormatError::file(
            path,
            format!("the archive holds {declared} entries under {} distinct names: an array appears twice", zip.len()),
        ));
    }
    for i in 0..zip.len() {
        // Raw: opening a compressed entry the plain way already fails, without naming it.
        let entry = zip.by_index_raw(i).map_err(|e| FormatError::file(path, e.to_string()))?;
        let name = entry.name().strip_suffix(".npy").unwrap_or(entry.name()).to_string();
        if entry.compression() != zip::CompressionMethod::Stored {
            return Err(FormatError::new(
                path,
                Location::Part(format!("array {name}")),
                "compressed archives (np.savez_compressed) are not supported; save with np.savez",
            ));
        }
        let size = entry.size();
        let mut head = Vec::new();
        entry.take(1 << 17).read_to_end(&mut head).map_err(|e| FormatError::io(path, e))?;
        check_announced(path, &name, &head, size)?;
    }
    Ok(())
}

/// The entry count of a zip file's end-of-central-directory record, or `None` where
/// it cannot tell (a zip64 archive stores the count elsewhere).
fn declared_entries(path: &Path) -> Result<Option<usize>, FormatError> {
    use std::io::{Read, Seek, SeekFrom};
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    let mut file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    // The record (22 bytes) ends the file, followed by a comment of at most 65,535.
    let tail_len = len.min(22 + 65_535);
    let mut tail = vec![0u8; tail_len as usize];
    file.seek(SeekFrom::Start(len - tail_len))
        .and_then(|_| file.read_exact(&mut tail))
        .map_err(|e| FormatError::io(path, e))?;
    let Some(at) = (0..tail.len().saturating_sub(21)).rev().find(|&i| tail[i..i + 4] == EOCD) else {
        return Ok(None);
    };
    let total = u16::from_le_bytes([tail[at + 10], tail[at + 11]]);
    Ok((total != u16::MAX).then_some(total as usize))
}

fn load(path: &Path) -> Result<Arrays, FormatError> {
    let part = |name: &str, m: String| FormatError::new(path, Location::Part(format!("array {name}")), m);
    let is_npy = path.extension().map(|e| e.eq_ignore_ascii_case("npy")).unwrap_or(false);
    if std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?.len() == 0 {
        return Err(FormatError::file(path, "empty file: expected a NumPy array or archive"));
    }
    if is_npy {
        let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
        check_announced(path, "topk_ids", &bytes, bytes.len() as u64)?;
        let topk = read_any_int!(|T| ArrayD::<T>::read_npy(&bytes[..]))
            .map_err(|e| part("topk_ids", format!("not an integer array: {e}")))?;
        return Ok(Arrays {
            topk,
            experts: None,
            requests: None,
            families: None,
            phases: None,
            positions: None,
            weights: None,
            request_names: None,
            family_names: None,
        });
    }
    check_npz_entries(path)?;
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut npz =
        NpzReader::new(file).map_err(|e| FormatError::file(path, format!("not a NumPy .npz archive: {e}")))?;
    let names = npz.names().map_err(|e| FormatError::file(path, e.to_string()))?;
    if !names.iter().any(|n| n == "topk_ids") {
        return Err(part("topk_ids", format!("missing (arrays are: {})", names.join(", "))));
    }
    // As JSONL refuses unknown fields: a misspelt optional array would otherwise be
    // dropped silently (e.g. `gate_weight`: a trace without gate weights).
    if let Some(other) = names.iter().find(|n| !ARRAYS.contains(&n.as_str())) {
        return Err(part(other, format!("unknown array (a NumPy trace holds: {})", ARRAYS.join(", "))));
    }
    // Of two arrays of one name only one would be read.
    if let Some((_, twice)) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
        return Err(part(twice, "appears twice in the archive".into()));
    }
    let mut ints = |name: &str| -> Result<Option<ArrayD<i64>>, FormatError> {
        if !names.iter().any(|n| n == name) {
            return Ok(None);
        }
        let r = read_any_int!(|T| npz.by_name::<ndarray::OwnedRepr<T>, IxDyn>(name));
        r.map(Some).map_err(|e| part(name, format!("not an integer array: {e}")))
    };
    let topk = ints("topk_ids")?.expect("checked");
    let experts = match ints("num_experts")? {
        None => None,
        Some(a) if a.len() == 1 => {
            let v = *a.iter().next().expect("one element");
            Some(usize::try_from(v).map_err(|_| part("num_experts", format!("{v} is not a count")))?)
        }
        Some(_) => return Err(part("num_experts", "must hold one number".into())),
    };
    let flat = |a: Option<ArrayD<i64>>| a.map(|a| a.iter().copied().collect::<Vec<i64>>());
    let requests = flat(ints("request_ids")?);
    let families = flat(ints("families")?);
    let phases = flat(ints("phases")?);
    let positions = flat(ints("positions")?);
    let weights = if names.iter().any(|n| n == "gate_weights") {
        let w = npz
            .by_name::<_, IxDyn>("gate_weights")
            .map(|a: ArrayD<f32>| a)
            .or_else(|_| npz.by_name::<_, IxDyn>("gate_weights").map(|a: ArrayD<f64>| a.mapv(|x| x as f32)))
            .map_err(|e| part("gate_weights", format!("not a float array: {e}")))?;
        if w.shape() != topk.shape() {
            return Err(part(
                "gate_weights",
                format!("shape {:?} differs from topk_ids {:?}", w.shape(), topk.shape()),
            ));
        }
        Some(w.iter().copied().collect())
    } else {
        None
    };
    let mut names_of = |name: &str| -> Result<Option<Vec<String>>, FormatError> {
        if !names.iter().any(|n| n == name) {
            return Ok(None);
        }
        let bytes: ArrayD<u8> = npz.by_name(name).map_err(|e| part(name, format!("not a uint8 array: {e}")))?;
        let bytes: Vec<u8> = bytes.iter().copied().collect();
        serde_json::from_slice(&bytes).map(Some).map_err(|e| part(name, format!("not UTF-8 JSON list of names: {e}")))
    };
    let request_names = names_of("request_names")?;
    let family_names = names_of("family_names")?;
    Ok(Arrays { topk, experts, requests, families, phases, positions, weights, request_names, family_names })
}

/// Hands out a loaded NumPy trace in batches.
pub struct NumpyReader {
    path: PathBuf,
    shape: ModelShape,
    a: Arrays,
    ids: Vec<i64>,
    next: usize,
    tokens: usize,
    batch_tokens: usize,
    position_in_request: HashMap<i64, u32>,
}

impl NumpyReader {
    pub fn open(path: &Path, experts: Option<usize>, batch_tokens: usize) -> Result<NumpyReader, FormatError> {
        let mut a = load(path)?;
        let part = |name: &str, m: String| FormatError::new(path, Location::Part(format!("array {name}")), m);
        if a.topk.ndim() != 3 {
            return Err(part("topk_ids", format!("shape {:?}; expected [tokens, layers, k]", a.topk.shape())));
        }
        let (tokens, layers, k) = (a.topk.shape()[0], a.topk.shape()[1], a.topk.shape()[2]);
        if tokens == 0 {
            return Err(part("topk_ids", "holds no tokens".into()));
        }
        let e = match (a.experts, experts) {
            (Some(x), Some(y)) if x != y => {
                return Err(part("num_experts", format!("says {x}, but --experts says {y}")));
            }
            (Some(x), _) | (None, Some(x)) => x,
            (None, None) => {
                return Err(FormatError::file(
                    path,
                    "the expert count is unknown: add a `num_experts` array or pass --experts",
                ))
            }
        };
        let shape = ModelShape::new(layers, e, k).map_err(|err| FormatError::file(path, err.to_string()))?;
        for (name, v) in [
            ("request_ids", &a.requests),
            ("families", &a.families),
            ("phases", &a.phases),
            ("positions", &a.positions),
        ] {
            if let Some(v) = v {
                if v.len() != tokens {
                    return Err(part(name, format!("{} entries for {tokens} tokens", v.len())));
                }
            }
        }
        let ids = std::mem::replace(&mut a.topk, ArrayD::zeros(IxDyn(&[0]))).iter().copied().collect();
        Ok(NumpyReader {
            path: path.to_path_buf(),
            shape,
            a,
            ids,
            next: 0,
            tokens,
            batch_tokens: batch_tokens.max(1),
            position_in_request: HashMap::new(),
        })
    }

    fn token(&mut self, t: usize, batch: &mut TokenBatch) -> Result<(), FormatError> {
        let n = self.shape.picks_per_token();
        let row = |m: String| FormatError::row(&self.path, t as u64, m);
        let mut experts = Vec::with_capacity(n);
        for (i, &x) in self.ids[t * n..(t + 1) * n].iter().enumerate() {
            experts.push(expert_id(x, i / self.shape.top_k, self.shape.experts).map_err(|e| row(e.to_string()))?);
        }
        let req = self.a.requests.as_ref().map(|r| r[t]).unwrap_or(0);
        let family = match self.a.families.as_ref().map(|f| f[t]).filter(|&f| f >= 0) {
            None => None,
            Some(f) => Some(match &self.a.family_names {
                Some(names) => {
                    names.get(f as usize).cloned().ok_or_else(|| row(format!("family code {f} has no name")))?
                }
                None => format!("f{f}"),
            }),
        };
        let request = match &self.a.request_names {
            Some(names) => usize::try_from(req)
                .ok()
                .and_then(|i| names.get(i).cloned())
                .ok_or_else(|| row(format!("request code {req} has no name")))?,
            None => format!("r{req}"),
        };
        let phase = match self.a.phases.as_ref().map(|p| p[t]) {
            None => None,
            Some(x) if x < 0 => None,
            Some(0) => Some(Phase::Prefill),
            Some(1) => Some(Phase::Decode),
            Some(x) => return Err(row(format!("phase code {x} is not 0 (prefill), 1 (decode) or negative (none)"))),
        };
        let counter = self.position_in_request.entry(req).or_insert(0);
        let position = match self.a.positions.as_ref().map(|p| p[t]) {
            Some(p) => u32::try_from(p).map_err(|_| row(format!("position {p} is not a non-negative integer")))?,
            None => *counter,
        };
        *counter += 1;
        let w = self.a.weights.as_ref().map(|w| &w[t * n..(t + 1) * n]);
        batch
            .push(TokenRef {
                request: &request,
                family: family.as_deref(),
                phase,
                position,
                experts: &experts,
                gate_weights: w,
            })
            .map_err(|e| row(e.to_string()))
    }
}

impl Iterator for NumpyReader {
    type Item = Result<TokenBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.tokens {
            return None;
        }
        let end = (self.next + self.batch_tokens).min(self.tokens);
        let mut batch = TokenBatch::with_capacity(self.shape, end - self.next);
        for t in self.next..end {
            if let Err(e) = self.token(t, &mut batch) {
                self.next = self.tokens;
                return Some(Err(e));
            }
        }
        self.next = end;
        Some(Ok(batch))
    }
}

impl TraceReader for NumpyReader {
    fn shape(&self) -> ModelShape {
        self.shape
    }

    fn progress(&self) -> (u64, u64) {
        (self.next as u64, self.tokens as u64)
    }
    fn progress_unit(&self) -> crate::ProgressUnit {
        crate::ProgressUnit::Tokens
    }
}

/// Adds `array` to the archive as `NAME.npy`, stored (numpy reads archives it did not
/// compress faster, and the reader maps stored entries); zip64 when the entry may
/// pass 4 GiB.
fn add_array<A: ndarray_npy::WritableElement, W: std::io::Write + std::io::Seek>(
    zip: &mut zip::ZipWriter<W>,
    name: &str,
    array: &ArrayD<A>,
) -> Result<(), String> {
    use ndarray_npy::WriteNpyExt;
    let bytes = array.len() as u64 * std::mem::size_of::<A>() as u64;
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(bytes >= u32::MAX as u64 - (1 << 20));
    zip.start_file(format!("{name}.npy"), options).map_err(|e| format!("array {name}: {e}"))?;
    array.write_npy(zip).map_err(|e| format!("array {name}: {e}"))
}

/// A writer that keeps its first I/O error and then accepts everything unwritten
/// (keeping the position it would have): the zip writer's own clean-up on drop then
/// has nothing to fail on (it would print a second, raw message), and the error is
/// reported once.
struct Latched<'a, W> {
    inner: &'a mut W,
    error: Option<std::io::Error>,
    /// Position and length as the zip writer sees them.
    pos: u64,
    len: u64,
}

impl<'a, W> Latched<'a, W> {
    fn new(inner: &'a mut W) -> Self {
        Latched { inner, error: None, pos: 0, len: 0 }
    }

    fn moved(&mut self, pos: u64) -> u64 {
        self.pos = pos;
        self.len = self.len.max(pos);
        pos
    }
}

impl<W: std::io::Write> std::io::Write for Latched<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.error.is_some() {
            self.moved(self.pos + buf.len() as u64);
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Ok(n) => {
                self.moved(self.pos + n as u64);
                Ok(n)
            }
            Err(e) => {
                let shown = std::io::Error::new(e.kind(), e.to_string());
                self.error = Some(e);
                Err(shown)
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.error.is_some() {
            return Ok(());
        }
        self.inner.flush()
    }
}

impl<W: std::io::Seek> std::io::Seek for Latched<'_, W> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        use std::io::SeekFrom;
        if self.error.is_none() {
            let pos = self.inner.seek(to)?;
            return Ok(self.moved(pos));
        }
        let pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
            SeekFrom::End(d) => self.len.saturating_add_signed(d),
        };
        Ok(self.moved(pos))
    }
}

/// Writes a trace as `.npz` (request ids and families as codes in order of first
/// appearance; see the module documentation). Whole-trace: NumPy archives are
/// written at once.
pub fn write_npz(path: &Path, shape: ModelShape, batches: &[TokenBatch]) -> Result<(), FormatError> {
    let tokens: usize = batches.iter().map(TokenBatch::len).sum();
    let n = shape.picks_per_token();
    let mut topk = Vec::with_capacity(tokens * n);
    let (mut req, mut fam, mut phase, mut pos) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut weights: Option<Vec<f32>> = Some(Vec::new());
    let mut req_codes: HashMap<String, i64> = HashMap::new();
    let mut fam_codes: HashMap<String, i64> = HashMap::new();
    for b in batches {
        for t in b.tokens() {
            topk.extend_from_slice(t.experts);
            let rc = req_codes.len() as i64;
            req.push(*req_codes.entry(t.request.to_string()).or_insert(rc));
            let fc = fam_codes.len() as i64;
            fam.push(t.family.map(|f| *fam_codes.entry(f.to_string()).or_insert(fc)).unwrap_or(-1));
            phase.push(match t.phase {
                None => -1i64,
                Some(Phase::Prefill) => 0,
                Some(Phase::Decode) => 1,
            });
            pos.push(t.position as i64);
            match (&mut weights, t.gate_weights) {
                (Some(w), Some(x)) => w.extend_from_slice(x),
                _ => weights = None,
            }
        }
    }
    let names_array = |codes: &HashMap<String, i64>| {
        let mut v: Vec<(&String, &i64)> = codes.iter().collect();
        v.sort_by_key(|(_, &c)| c);
        let list: Vec<&String> = v.into_iter().map(|(n, _)| n).collect();
        let bytes = serde_json::to_vec(&list).expect("names serialise");
        let len = bytes.len();
        ArrayD::from_shape_vec(IxDyn(&[len]), bytes).expect("sizes match")
    };
    let int = |v: Vec<i64>| ArrayD::from_shape_vec(IxDyn(&[tokens]), v).expect("sizes match");
    let mut file = crate::atomic::AtomicFile::create(path)?;
    let mut sink = Latched::new(file.writer());
    let written = (|| -> Result<(), String> {
        let mut zip = zip::ZipWriter::new(&mut sink);
        let ids = ArrayD::from_shape_vec(IxDyn(&[tokens, shape.layers, shape.top_k]), topk).expect("sizes match");
        add_array(&mut zip, "topk_ids", &ids)?;
        add_array(&mut zip, "num_experts", &ArrayD::from_elem(IxDyn(&[]), shape.experts as i64))?;
        add_array(&mut zip, "request_ids", &int(req))?;
        add_array(&mut zip, "families", &int(fam))?;
        add_array(&mut zip, "phases", &int(phase))?;
        add_array(&mut zip, "positions", &int(pos))?;
        add_array(&mut zip, "request_names", &names_array(&req_codes))?;
        add_array(&mut zip, "family_names", &names_array(&fam_codes))?;
        if let Some(wv) = weights.filter(|w| w.len() == tokens * n) {
            let a = ArrayD::from_shape_vec(IxDyn(&[tokens, shape.layers, shape.top_k]), wv).expect("sizes match");
            add_array(&mut zip, "gate_weights", &a)?;
        }
        zip.finish().map(drop).map_err(|e| e.to_string())
    })();
    // The I/O error is the cause (a full disk, say); what the zip or npy writer
    // made of it only repeats it.
    if let Some(e) = sink.error.take() {
        return Err(FormatError::io(path, e));
    }
    written.map_err(|e| FormatError::file(path, e))?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Seek, SeekFrom, Write};

    /// A file that fills up after `room` bytes, as a full disk does.
    struct Full {
        data: Cursor<Vec<u8>>,
        room: u64,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.data.position() + buf.len() as u64 > self.room {
                return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device"));
            }
            self.data.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Seek for Full {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            self.data.seek(to)
        }
    }

    /// A full disk gave two messages, one a raw dump printed by the zip writer's
    /// clean-up on drop (which could also trip its own assertions): the first I/O
    /// error is kept, and the clean-up then runs on nothing.
    #[test]
    fn a_full_disk_is_one_error_and_the_clean_up_runs_on_nothing() {
        for room in [10, 200, 5000] {
            let mut file = Full { data: Cursor::new(Vec::new()), room };
            let mut sink = Latched::new(&mut file);
            let written = (|| -> Result<(), String> {
                let mut zip = zip::ZipWriter::new(&mut sink);
                add_array(&mut zip, "topk_ids", &ArrayD::<u16>::zeros(IxDyn(&[1000, 2, 2])))?;
                add_array(&mut zip, "positions", &ArrayD::<i64>::zeros(IxDyn(&[1000])))?;
                zip.finish().map(drop).map_err(|e| e.to_string())
            })();
            assert!(written.is_err(), "room {room}");
            let e = sink.error.take().expect("the I/O error is kept");
            assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
        }
    }
}
