//! The binary statistics file, the default of `moeplace profile -o` (docs/FORMATS.md,
//! "Statistics file"): the same counts as the JSON statistics file, a few percent of
//! its size, written and read at memory speed.
//!
//! ```text
//! MAGIC                      0x89 "moeplace-stats" "\r\n" 0x1a "\n"
//! u32 little-endian          length of the header
//! header                     JSON: format, version, shape, groups, sections, ...
//! section 0, section 1, ...  zstd frames, in the header's order, nothing after
//! ```
//!
//! Each section holds one table of counts as unsigned LEB128 varints, either every
//! cell (`dense`) or only the cells that are not zero (`sparse`: their count, the gaps
//! between their indices, then their values), or at a fixed width (`u8`, `u16`, ...),
//! whichever is smallest before compression; each is compressed on its own and carries a CRC-32 of its stored
//! bytes. Readers ignore header fields and sections they do not know, unless the
//! header lists them under `requires`: an addition whose absence would change what
//! the counts mean goes there (or bumps the version).

use std::collections::BTreeMap;
use std::path::Path;

use moeplace_core::model::{LayerMap, LayerSource};
use moeplace_core::stats::{
    pair_count, GroupKey, GroupStats, Parts, RequestActivation, SampledToken, Statistics, TokenSample,
};
use moeplace_core::trace::{ModelShape, Phase};
use rayon::prelude::*;

use crate::error::FormatError;
use crate::stats_file::{FORMAT_NAME, MAX_PAIR_CELLS};

/// First bytes of a binary statistics file. The non-ASCII first byte keeps it from
/// being taken for text, the line ends catch newline translation, and the name lets
/// a look at the head tell what the file is.
pub const MAGIC: &[u8] = b"\x89moeplace-stats\r\n\x1a\n";

/// Version of the binary layout (the JSON file has its own). Version 2 added the
/// `predicted` pair tables and the token sample as gaps (`sample_pick_gaps`); this
/// build still reads version 1.
pub const VERSION: u64 = 2;

/// The oldest binary version this build reads.
const OLDEST_VERSION: u64 = 1;

/// zstd level: level 1 compresses these varint tables within a few percent of level
/// 3 in half the time (docs/FORMATS.md).
const LEVEL: i32 = 1;

/// Header fields and sections this build understands, for `requires`.
const KNOWN_FEATURES: &[&str] = &[];

/// Longest header a reader accepts: it lists groups and sections only (requests and
/// the token sample are sections), so it stays small whatever the trace.
const MAX_HEADER: usize = 64 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    format: String,
    encoding: String,
    version: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    requires: Vec<String>,
    layers: usize,
    experts: usize,
    top_k: usize,
    pairs: bool,
    request_vectors: bool,
    groups: Vec<GroupHeader>,
    /// Activation vectors (request, phase) in the `request_counts` section.
    request_vectors_stored: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_sample: Option<SampleHeader>,
    /// The layer map, as in the JSON file (optional, together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hidden_layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    moe_layers: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer_source: Option<String>,
    sections: Vec<Section>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct GroupHeader {
    family: Option<String>,
    phase: Option<Phase>,
    tokens: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SampleHeader {
    capacity: usize,
    tokens: usize,
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Section {
    name: String,
    /// `dense`, `sparse`, `u8`..`u64` (counts) or `json`.
    encoding: String,
    /// Cells of the table (counts), 0 for `json`.
    cells: u64,
    /// Bytes after decompression.
    raw_bytes: u64,
    /// Bytes in the file.
    stored_bytes: u64,
    /// CRC-32 (IEEE) of the stored bytes.
    crc32: u32,
}

/// The request index: ids, families, and per phase the tokens; the vectors follow in
/// this order in `request_counts`.
#[derive(serde::Serialize, serde::Deserialize)]
struct RequestEntry {
    id: String,
    family: Option<String>,
    phases: Vec<(Option<Phase>, u64)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SampledEntry {
    hash: u64,
    family: Option<String>,
    phase: Option<Phase>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads one varint at `*pos`; `None` when the bytes end first or it overflows 64 bits.
#[inline]
fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Bytes before compression of a table's `dense`, `sparse` and fixed-width
/// encodings.
struct Sizes {
    cells: usize,
    dense: usize,
    sparse: usize,
    nonzero: u64,
    /// Bytes per cell of the fixed-width encoding.
    width: usize,
}

fn sizes<T: Copy + Into<u64>>(parts: &[&[T]]) -> Sizes {
    let cells: usize = parts.iter().map(|p| p.len()).sum();
    let (mut dense, mut sparse, mut nonzero, mut last, mut max) = (0usize, 0usize, 0u64, None::<usize>, 0u64);
    let mut i = 0;
    for p in parts {
        for &v in p.iter() {
            let v: u64 = v.into();
            dense += varint_len(v);
            max = max.max(v);
            if v != 0 {
                let gap = last.map_or(i, |l| i - l - 1);
                sparse += varint_len(gap as u64) + varint_len(v);
                nonzero += 1;
                last = Some(i);
            }
            i += 1;
        }
    }
    sparse += varint_len(nonzero);
    let width = (64 - max.leading_zeros() as usize).div_ceil(8).max(1);
    Sizes { cells, dense, sparse, nonzero, width }
}

/// A table of counts as the concatenation of `parts`, encoded dense, sparse or at a
/// fixed width, whichever is smallest. Returns (encoding, cells, bytes).
fn encode_counts<T: Copy + Into<u64> + Sync>(parts: &[&[T]]) -> (&'static str, u64, Vec<u8>) {
    let Sizes { cells, dense, sparse, nonzero, width } = sizes(parts);
    // Fixed width pays when values are spread over their range (expert ids of the
    // token sample): a varint spends a bit of each byte on its length.
    if cells * width < dense.min(sparse) {
        let mut out = Vec::with_capacity(cells * width);
        for p in parts {
            p.iter().for_each(|&v| out.extend_from_slice(&v.into().to_le_bytes()[..width]));
        }
        return (FIXED[width - 1], cells as u64, out);
    }
    if dense <= sparse {
        let mut out = Vec::with_capacity(dense);
        for p in parts {
            p.iter().for_each(|&v| put_varint(&mut out, v.into()));
        }
        ("dense", cells as u64, out)
    } else {
        let mut gaps = Vec::with_capacity(sparse);
        let mut values = Vec::new();
        put_varint(&mut gaps, nonzero);
        let (mut i, mut last) = (0usize, None::<usize>);
        for p in parts {
            for &v in p.iter() {
                let v: u64 = v.into();
                if v != 0 {
                    put_varint(&mut gaps, last.map_or(i, |l| i - l - 1) as u64);
                    put_varint(&mut values, v);
                    last = Some(i);
                }
                i += 1;
            }
        }
        gaps.extend_from_slice(&values);
        ("sparse", cells as u64, gaps)
    }
}

/// Scale of the predictions: `predicted` keeps 16 x the expected count as an integer,
/// so that the classes below separate expectations under 1.
const PREDICTION_SCALE: f64 = 16.0;

/// What the `predicted` encoding of a pair table derives from the group's loads and
/// tokens (both stored before it): each cell's expected count, and the order in
/// which the cells are stored: by class of expected count, in cell order within a class.
///
/// Why: a pair count is close to what the two experts' loads predict if tokens chose
/// them independently, and its spread grows with that expectation. Stored by
/// increasing expectation, cells of one zstd block have similar magnitudes, so the
/// block's entropy coder fits them; storing the difference to the expectation
/// removes what the loads already say.
struct Prediction {
    expected: Vec<u64>,
    class: Vec<u8>,
}

impl Prediction {
    /// From every cell's scaled expectation. The arithmetic is f64 multiplications
    /// and truncations only, which IEEE 754 makes the same on every platform, so
    /// writer and reader derive the same prediction.
    fn from_scaled(mut scaled: Vec<u64>) -> Prediction {
        // Classes: the scaled value below 8, else its top three bits (an exponent
        // and two bits of mantissa): at most 256 classes.
        let class = |x: u64| -> usize {
            if x < 8 {
                x as usize
            } else {
                let shift = 61 - x.leading_zeros() as usize;
                (shift + 2) * 4 + ((x >> shift) & 3) as usize
            }
        };
        let class = scaled.iter().map(|&x| class(x) as u8).collect();
        // Rounded to the nearest count.
        scaled.iter_mut().for_each(|x| *x = (*x >> 4) + ((*x >> 3) & 1));
        Prediction { expected: scaled, class }
    }

    /// Transitions `[(L-1) x E x E]`: load of a at layer l times load of b at layer
    /// l + 1, over the tokens (every token adds k x k transitions).
    fn transitions(load: &[u64], tokens: u64, l: usize, e: usize) -> Prediction {
        let s = if tokens == 0 { 0.0 } else { PREDICTION_SCALE / tokens as f64 };
        let mut x = Vec::with_capacity(l.saturating_sub(1) * e * e);
        for layer in 0..l.saturating_sub(1) {
            let next = &load[(layer + 1) * e..(layer + 2) * e];
            for &la in &load[layer * e..(layer + 1) * e] {
                let ra = la as f64 * s;
                x.extend(next.iter().map(|&lb| (ra * lb as f64) as u64));
            }
        }
        Prediction::from_scaled(x)
    }

    /// Co-activation `[L x E(E-1)/2]`: the two loads over the tokens, times (k-1)/k
    /// (a token's k picks are distinct).
    fn coact(load: &[u64], tokens: u64, l: usize, e: usize, k: usize) -> Prediction {
        let s = if tokens == 0 || k < 2 { 0.0 } else { PREDICTION_SCALE * (k - 1) as f64 / (k as f64 * tokens as f64) };
        let mut x = Vec::with_capacity(l * pair_count(e));
        for layer in 0..l {
            let row = &load[layer * e..(layer + 1) * e];
            for (a, &la) in row.iter().enumerate() {
                let ra = la as f64 * s;
                x.extend(row[a + 1..].iter().map(|&lb| (ra * lb as f64) as u64));
            }
        }
        Prediction::from_scaled(x)
    }
}

/// A pair table, `predicted` (the zigzag varints of each cell's difference to its
/// expectation, in the prediction's order) unless it is mostly zeros, which `sparse`
/// stores better.
fn encode_pairs(values: &[u64], prediction: impl FnOnce() -> Prediction) -> (&'static str, u64, Vec<u8>) {
    let z = sizes(&[values]);
    if z.sparse < z.dense.min(z.cells * z.width) {
        return encode_counts(&[values]);
    }
    let p = prediction();
    // One stream per class, filled in cell order (memory is read in order), then
    // the streams one after another: the same bytes as visiting the cells by class.
    let mut streams = vec![Vec::new(); 256];
    for ((&v, &e), &c) in values.iter().zip(&p.expected).zip(&p.class) {
        let d = v.wrapping_sub(e) as i64;
        put_varint(&mut streams[c as usize], ((d << 1) ^ (d >> 63)) as u64);
    }
    ("predicted", values.len() as u64, streams.concat())
}

/// Decodes a `predicted` pair table into `out` (all of it is written).
fn decode_predicted(buf: &[u8], p: &Prediction, out: &mut [u64]) -> Result<(), String> {
    if p.class.len() != out.len() {
        return Err(format!("{} cells predicted for a table of {}", p.class.len(), out.len()));
    }
    // Where each class's stream starts: its cells' varints end in a byte below 0x80.
    let mut count = [0usize; 256];
    p.class.iter().for_each(|&c| count[c as usize] += 1);
    let (mut cursor, mut pos) = ([0usize; 256], 0usize);
    for c in 0..256 {
        cursor[c] = pos;
        let mut left = count[c];
        while left > 0 {
            let b = *buf.get(pos).ok_or_else(|| "the counts end early".to_string())?;
            pos += 1;
            left -= usize::from(b < 0x80);
        }
    }
    if pos != buf.len() {
        return Err(format!("{} bytes after the last count", buf.len() - pos));
    }
    for ((o, &e), &c) in out.iter_mut().zip(&p.expected).zip(&p.class) {
        let z = get_varint(buf, &mut cursor[c as usize]).ok_or_else(|| "a count overflows 64 bits".to_string())?;
        let d = ((z >> 1) as i64 ^ -((z & 1) as i64)) as u64;
        *o = e.wrapping_add(d);
    }
    Ok(())
}

/// Fixed-width little-endian encodings, by width in bytes.
const FIXED: [&str; 8] = ["u8", "u16", "u24", "u32", "u40", "u48", "u56", "u64"];

/// Decodes a counts section, calling `put(index, value)` for every cell that is not
/// zero, in increasing index order.
fn decode_counts(
    encoding: &str,
    cells: u64,
    buf: &[u8],
    mut put: impl FnMut(usize, u64) -> Result<(), String>,
) -> Result<(), String> {
    let cells = usize::try_from(cells).map_err(|_| "too many cells".to_string())?;
    let mut pos = 0;
    let truncated = || "the counts end early".to_string();
    match encoding {
        "dense" => {
            for i in 0..cells {
                let v = get_varint(buf, &mut pos).ok_or_else(truncated)?;
                if v != 0 {
                    put(i, v)?;
                }
            }
        }
        fixed if FIXED.contains(&fixed) => {
            let width = FIXED.iter().position(|&f| f == fixed).expect("listed") + 1;
            if cells.checked_mul(width) != Some(buf.len()) {
                return Err(format!("{} bytes for {cells} cells of {width} bytes", buf.len()));
            }
            for (i, c) in buf.chunks_exact(width).enumerate() {
                let mut b = [0u8; 8];
                b[..width].copy_from_slice(c);
                let v = u64::from_le_bytes(b);
                if v != 0 {
                    put(i, v)?;
                }
            }
            pos = buf.len();
        }
        "sparse" => {
            let n = get_varint(buf, &mut pos).ok_or_else(truncated)?;
            if n > cells as u64 {
                return Err(format!("{n} counts listed in a table of {cells} cells"));
            }
            // Gaps first, then values: find where the values start.
            let mut vpos = pos;
            for _ in 0..n {
                get_varint(buf, &mut vpos).ok_or_else(truncated)?;
            }
            let mut next = 0usize;
            for _ in 0..n {
                let gap = get_varint(buf, &mut pos).expect("read above");
                let v = get_varint(buf, &mut vpos).ok_or_else(truncated)?;
                let i = usize::try_from(gap).ok().and_then(|g| next.checked_add(g)).filter(|&i| i < cells);
                let Some(i) = i else { return Err(format!("a count's index lies beyond the {cells} cells")) };
                if v == 0 {
                    return Err(format!("cell {i} is listed with a zero count"));
                }
                put(i, v)?;
                next = i + 1;
            }
            pos = vpos;
        }
        other => return Err(format!("unknown encoding {other:?}")),
    }
    if pos != buf.len() {
        return Err(format!("{} bytes after the last count", buf.len() - pos));
    }
    Ok(())
}

struct Encoded {
    name: String,
    encoding: &'static str,
    cells: u64,
    raw_bytes: u64,
    stored: Vec<u8>,
}

fn compress(name: String, encoding: &'static str, cells: u64, raw: Vec<u8>) -> Encoded {
    let stored = zstd::bulk::compress(&raw, LEVEL).expect("compressing to memory does not fail");
    Encoded { name, encoding, cells, raw_bytes: raw.len() as u64, stored }
}

/// One section to write: built and compressed on the worker threads.
type SectionJob<'a> = Box<dyn Fn() -> Encoded + Send + Sync + 'a>;

/// The binary file's bytes. Deterministic: the same statistics give the same bytes.
pub fn to_bytes(stats: &Statistics) -> Vec<u8> {
    let shape = stats.shape();
    let (l, e, k) = (shape.layers, shape.experts, shape.top_k);
    // Declared before the jobs, which borrow them.
    let vectors: Vec<&[u32]> = stats.requests().values().flat_map(|r| r.by_phase.values().map(Vec::as_slice)).collect();
    let mut jobs: Vec<SectionJob> = Vec::new();
    for (i, g) in stats.groups().values().enumerate() {
        jobs.push(Box::new(move || {
            let (enc, cells, raw) = encode_counts(&[&g.load[..]]);
            compress(format!("group.{i}.load"), enc, cells, raw)
        }));
        if stats.has_pairs() {
            jobs.push(Box::new(move || {
                let (enc, cells, raw) = encode_pairs(&g.coact, || Prediction::coact(&g.load, g.tokens, l, e, k));
                compress(format!("group.{i}.coact"), enc, cells, raw)
            }));
            // The last layer's block has no next layer and is always zero: not stored.
            jobs.push(Box::new(move || {
                let stored = &g.transitions[..l.saturating_sub(1) * e * e];
                let (enc, cells, raw) = encode_pairs(stored, || Prediction::transitions(&g.load, g.tokens, l, e));
                compress(format!("group.{i}.transitions"), enc, cells, raw)
            }));
        }
    }
    let n_vectors = vectors.len() as u64;
    let vectors = &vectors;
    jobs.push(Box::new(move || {
        let index: Vec<RequestEntry> = stats
            .requests()
            .iter()
            .map(|(id, r)| RequestEntry {
                id: id.clone(),
                family: r.family.clone(),
                phases: r.by_phase.keys().map(|p| (*p, r.tokens.get(p).copied().unwrap_or(0))).collect(),
            })
            .collect();
        let raw = serde_json::to_vec(&index).expect("request index serialises");
        compress("requests".into(), "json", 0, raw)
    }));
    jobs.push(Box::new(move || {
        let (enc, cells, raw) = encode_counts(vectors);
        compress("request_counts".into(), enc, cells, raw)
    }));
    let sample = stats.token_sample();
    if sample.capacity() > 0 {
        jobs.push(Box::new(move || {
            let index: Vec<SampledEntry> = sample
                .tokens()
                .iter()
                .map(|t| SampledEntry { hash: t.hash, family: t.family.clone(), phase: t.phase })
                .collect();
            let raw = serde_json::to_vec(&index).expect("sample index serialises");
            compress("sample_tokens".into(), "json", 0, raw)
        }));
        jobs.push(Box::new(move || {
            // Each layer's picks are a set kept in increasing order: the first id,
            // then the gaps to the next (a fifth fewer bits than the ids once
            // compressed).
            let mut gaps = Vec::with_capacity(sample.tokens().len() * l * k);
            for t in sample.tokens() {
                for layer in t.picks.chunks(k.max(1)) {
                    let mut prev = 0;
                    for &x in layer {
                        gaps.push(x.wrapping_sub(prev));
                        prev = x;
                    }
                }
            }
            let (enc, cells, raw) = encode_counts(&[&gaps[..]]);
            compress("sample_pick_gaps".into(), enc, cells, raw)
        }));
    }
    let sections: Vec<Encoded> = jobs.par_iter().map(|job| job()).collect();
    let header = Header {
        format: FORMAT_NAME.into(),
        encoding: "binary".into(),
        version: VERSION,
        requires: Vec::new(),
        layers: l,
        experts: e,
        top_k: shape.top_k,
        pairs: stats.has_pairs(),
        request_vectors: stats.has_request_vectors(),
        groups: stats
            .groups()
            .iter()
            .map(|(k, g)| GroupHeader { family: k.family.clone(), phase: k.phase, tokens: g.tokens })
            .collect(),
        request_vectors_stored: n_vectors,
        token_sample: (sample.capacity() > 0)
            .then(|| SampleHeader { capacity: sample.capacity(), tokens: sample.tokens().len() }),
        hidden_layers: stats.layer_map().map(|m| m.hidden_layers()),
        moe_layers: stats.layer_map().map(|m| m.moe_layers().to_vec()),
        layer_source: stats.layer_map().map(|m| crate::plan_file::layer_source_name(m.source()).to_string()),
        sections: sections
            .iter()
            .map(|s| Section {
                name: s.name.clone(),
                encoding: s.encoding.into(),
                cells: s.cells,
                raw_bytes: s.raw_bytes,
                stored_bytes: s.stored.len() as u64,
                crc32: crc32fast::hash(&s.stored),
            })
            .collect(),
    };
    let header = serde_json::to_vec(&header).expect("header serialises");
    let total = MAGIC.len() + 4 + header.len() + sections.iter().map(|s| s.stored.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for s in &sections {
        out.extend_from_slice(&s.stored);
    }
    out
}

/// The file's sections by name, checked against their CRC and decompressed on use.
struct Sections<'a> {
    path: &'a Path,
    by_name: BTreeMap<&'a str, (&'a Section, &'a [u8])>,
}

impl<'a> Sections<'a> {
    /// The decompressed bytes of section `name`, after checking it is there, has the
    /// expected encoding (`json` or counts) and cells, and is intact.
    fn get(&self, name: &str, counts: bool, cells: u64) -> Result<(&'a Section, Vec<u8>), FormatError> {
        let bad = |what: String| FormatError::new(self.path, crate::error::Location::Part(name.into()), what);
        let &(s, stored) = self.by_name.get(name).ok_or_else(|| bad("section missing".into()))?;
        let is_counts = s.encoding != "json";
        if is_counts != counts {
            return Err(bad(format!(
                "encoding {:?} where {} was expected",
                s.encoding,
                if counts { "counts" } else { "json" }
            )));
        }
        if counts && s.cells != cells {
            return Err(bad(format!("{} cells, expected {cells}", s.cells)));
        }
        if crc32fast::hash(stored) != s.crc32 {
            return Err(bad("checksum mismatch: the file is damaged".into()));
        }
        // A varint takes at most 10 bytes and a sparse cell two of them: a header
        // cannot ask for more memory than its cells justify.
        let limit = if counts { cells.saturating_mul(20).saturating_add(10) } else { MAX_HEADER as u64 * 4 };
        if s.raw_bytes > limit {
            return Err(bad(format!("{} bytes uncompressed is more than {cells} cells can take", s.raw_bytes)));
        }
        let raw =
            zstd::bulk::decompress(stored, s.raw_bytes as usize).map_err(|e| bad(format!("cannot decompress: {e}")))?;
        if raw.len() as u64 != s.raw_bytes {
            return Err(bad(format!("{} bytes uncompressed, the header says {}", raw.len(), s.raw_bytes)));
        }
        Ok((s, raw))
    }

    /// A counts section decoded into `out` (all zero on entry).
    fn counts<T: TryFrom<u64> + Copy>(&self, name: &str, out: &mut [T]) -> Result<(), FormatError> {
        let (s, raw) = self.get(name, true, out.len() as u64)?;
        decode_counts(&s.encoding, s.cells, &raw, |i, v| {
            out[i] = T::try_from(v).map_err(|_| format!("count {v} at cell {i} is too large"))?;
            Ok(())
        })
        .map_err(|e| FormatError::new(self.path, crate::error::Location::Part(name.into()), e))
    }

    /// A pair table decoded into `out` (all zero on entry); `prediction` is asked
    /// for only when the table is `predicted`.
    fn pairs(&self, name: &str, out: &mut [u64], prediction: impl FnOnce() -> Prediction) -> Result<(), FormatError> {
        let (s, raw) = self.get(name, true, out.len() as u64)?;
        let at = |e: String| FormatError::new(self.path, crate::error::Location::Part(name.into()), e);
        if s.encoding == "predicted" {
            return decode_predicted(&raw, &prediction(), out).map_err(at);
        }
        decode_counts(&s.encoding, s.cells, &raw, |i, v| {
            out[i] = v;
            Ok(())
        })
        .map_err(at)
    }

    /// The `request_counts` section decoded into `vectors` (each `per` cells, zero).
    fn request_counts(&self, vectors: &mut [Vec<u32>], per: usize) -> Result<(), FormatError> {
        let name = "request_counts";
        let (s, raw) = self.get(name, true, (vectors.len() * per) as u64)?;
        decode_counts(&s.encoding, s.cells, &raw, |i, v| {
            vectors[i / per][i % per] = u32::try_from(v).map_err(|_| format!("count {v} at cell {i} is too large"))?;
            Ok(())
        })
        .map_err(|e| FormatError::new(self.path, crate::error::Location::Part(name.into()), e))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, FormatError> {
        let (_, raw) = self.get(name, false, 0)?;
        serde_json::from_slice(&raw)
            .map_err(|e| FormatError::new(self.path, crate::error::Location::Part(name.into()), e.to_string()))
    }
}

/// Whether `bytes` start like a binary statistics file.
pub fn is_binary(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Parses a binary statistics file; `path` is only used in messages.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Statistics, FormatError> {
    from_bytes_parts(path, bytes, Parts::ALL)
}

/// [`from_bytes`] decoding only the sections of `parts` (a placer's needs): skipped
/// sections are neither checked against their CRC nor decompressed, which is most of
/// the work and memory for large models.
pub fn from_bytes_parts(path: &Path, bytes: &[u8], parts: Parts) -> Result<Statistics, FormatError> {
    let bad = |what: String| FormatError::file(path, what);
    if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
        return Err(bad("the file ends inside its header: it is truncated".into()));
    }
    if !is_binary(bytes) {
        return Err(bad("not a binary moeplace statistics file (its first bytes differ)".into()));
    }
    let rest = &bytes[MAGIC.len()..];
    let len = rest.get(..4).ok_or_else(|| bad("the file ends inside its header".into()))?;
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    if len > MAX_HEADER || rest.len() < 4 + len {
        return Err(bad("the file ends inside its header".into()));
    }
    let header: Header =
        serde_json::from_slice(&rest[4..4 + len]).map_err(|e| bad(format!("header is not valid: {e}")))?;
    if header.format != FORMAT_NAME || header.encoding != "binary" {
        return Err(bad(format!(
            "format is {:?} ({:?}), expected {FORMAT_NAME:?} (\"binary\")",
            header.format, header.encoding
        )));
    }
    if !(OLDEST_VERSION..=VERSION).contains(&header.version) {
        return Err(bad(format!(
            "binary statistics version {} is not supported (this build reads versions {OLDEST_VERSION} to \
             {VERSION}); a newer moeplace wrote it",
            header.version
        )));
    }
    if let Some(r) = header.requires.iter().find(|r| !KNOWN_FEATURES.contains(&r.as_str())) {
        return Err(bad(format!("the file needs {r:?}, which this build does not know; a newer moeplace wrote it")));
    }
    let shape = ModelShape::new(header.layers, header.experts, header.top_k).map_err(|e| bad(e.to_string()))?;
    let (l, e, k) = (shape.layers, shape.experts, shape.top_k);
    if header.pairs && l.saturating_mul(e).saturating_mul(e) > MAX_PAIR_CELLS {
        return Err(bad(format!(
            "pair counts of {l} layers x {e} experts need {l} x {e}^2 cells, more than the {MAX_PAIR_CELLS} \
             this build holds"
        )));
    }
    let mut by_name = BTreeMap::new();
    let mut pos = MAGIC.len() + 4 + len;
    for s in &header.sections {
        let end = usize::try_from(s.stored_bytes).ok().and_then(|n| pos.checked_add(n)).filter(|&e| e <= bytes.len());
        let Some(end) = end else {
            return Err(bad(format!("the file ends inside section {:?}: it is truncated", s.name)));
        };
        if by_name.insert(s.name.as_str(), (s, &bytes[pos..end])).is_some() {
            return Err(bad(format!("section {:?} appears twice", s.name)));
        }
        pos = end;
    }
    if pos != bytes.len() {
        return Err(bad(format!("{} bytes after the last section", bytes.len() - pos)));
    }
    let sections = Sections { path, by_name };
    let pairs = header.pairs && parts.pairs;
    let transitions = pairs && parts.transitions;
    let groups: Vec<(GroupKey, GroupStats)> = header
        .groups
        .par_iter()
        .enumerate()
        .map(|(i, g)| {
            let mut gs = GroupStats {
                tokens: g.tokens,
                load: vec![0; l * e],
                coact: if pairs { vec![0; l * pair_count(e)] } else { Vec::new() },
                transitions: if transitions { vec![0; l * e * e] } else { Vec::new() },
            };
            sections.counts(&format!("group.{i}.load"), &mut gs.load)?;
            if pairs {
                let (load, tokens) = (&gs.load, gs.tokens);
                sections
                    .pairs(&format!("group.{i}.coact"), &mut gs.coact, || Prediction::coact(load, tokens, l, e, k))?;
            }
            if transitions {
                let (load, tokens) = (&gs.load, gs.tokens);
                let stored = l.saturating_sub(1) * e * e;
                sections.pairs(&format!("group.{i}.transitions"), &mut gs.transitions[..stored], || {
                    Prediction::transitions(load, tokens, l, e)
                })?;
            }
            Ok((GroupKey { family: g.family.clone(), phase: g.phase }, gs))
        })
        .collect::<Result<_, FormatError>>()?;
    let mut group_map = BTreeMap::new();
    for (key, gs) in groups {
        if group_map.insert(key.clone(), gs).is_some() {
            return Err(bad(format!("group {key:?} appears twice")));
        }
    }
    let read_vectors = parts.request_vectors;
    let index: Vec<RequestEntry> = if read_vectors { sections.json("requests")? } else { Vec::new() };
    let n_vectors: usize = index.iter().map(|r| r.phases.len()).sum();
    if read_vectors && n_vectors as u64 != header.request_vectors_stored {
        return Err(bad(format!(
            "the request index lists {n_vectors} activation vectors, the header {}",
            header.request_vectors_stored
        )));
    }
    n_vectors.checked_mul(l * e).ok_or_else(|| bad("too many request vectors".into()))?;
    let mut vectors: Vec<Vec<u32>> = (0..n_vectors).map(|_| vec![0u32; l * e]).collect();
    if read_vectors {
        sections.request_counts(&mut vectors, l * e)?;
    }
    let mut requests = BTreeMap::new();
    let mut vectors = vectors.into_iter();
    for r in index {
        let mut act = RequestActivation { family: r.family, ..Default::default() };
        for (phase, tokens) in r.phases {
            let v = vectors.next().expect("counted above");
            if act.by_phase.insert(phase, v).is_some() {
                return Err(bad(format!("request {:?}: phase {phase:?} appears twice", r.id)));
            }
            act.tokens.insert(phase, tokens);
        }
        if requests.insert(r.id.clone(), act).is_some() {
            return Err(bad(format!("request {:?} appears twice", r.id)));
        }
    }
    let stats = Statistics::from_some_parts(shape, header.pairs, header.request_vectors, group_map, requests, parts)
        .map_err(|e| bad(e.to_string()))?;
    if stats.groups().values().all(|g| g.tokens == 0) {
        return Err(bad("the statistics hold no tokens".into()));
    }
    let layer_map = match (header.hidden_layers, header.moe_layers, header.layer_source.as_deref()) {
        (None, None, None) => None,
        (Some(h), Some(ids), src) => {
            let source = match src {
                None => LayerSource::Recorded,
                Some(s) => crate::plan_file::parse_layer_source(s)
                    .ok_or_else(|| bad(format!("layer_source {s:?} is not input, model or default")))?,
            };
            Some(LayerMap::new(h, ids, source).map_err(|e| bad(format!("moe_layers: {e}")))?)
        }
        _ => return Err(bad("hidden_layers and moe_layers must be given together".into())),
    };
    let stats = stats.with_layer_map(layer_map).map_err(|e| bad(format!("moe_layers: {e}")))?;
    let Some(sample) = header.token_sample else { return Ok(stats) };
    if !parts.token_sample {
        return Ok(stats.into_partial());
    }
    let entries: Vec<SampledEntry> = sections.json("sample_tokens")?;
    if entries.len() != sample.tokens {
        return Err(bad(format!("the token sample lists {} tokens, the header {}", entries.len(), sample.tokens)));
    }
    let per = l * k;
    let mut picks = vec![0u16; entries.len() * per];
    if header.version == 1 {
        sections.counts("sample_picks", &mut picks)?;
    } else {
        sections.counts("sample_pick_gaps", &mut picks)?;
        // Wrapping, as written: ids out of range are refused below with the token.
        for layer in picks.chunks_mut(k) {
            for j in 1..layer.len() {
                layer[j] = layer[j - 1].wrapping_add(layer[j]);
            }
        }
    }
    let tokens = entries
        .into_iter()
        .zip(picks.chunks_exact(per))
        .map(|(t, p)| SampledToken { hash: t.hash, family: t.family, phase: t.phase, picks: p.to_vec() })
        .collect();
    stats.with_sample(TokenSample::from_tokens(sample.capacity, tokens)).map_err(|e| bad(format!("token_sample: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            let mut pos = 0;
            assert_eq!(get_varint(&b, &mut pos), Some(v));
            assert_eq!(pos, b.len());
        }
        // Eleven bytes, or a tenth byte above 1, overflow 64 bits.
        assert_eq!(get_varint(&[0xff; 10], &mut 0), None);
        assert_eq!(get_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], &mut 0), None);
    }

    fn round_trip(values: &[u64]) -> &'static str {
        let (enc, cells, raw) = encode_counts(&[values]);
        let mut back = vec![0u64; cells as usize];
        decode_counts(enc, cells, &raw, |i, v| {
            back[i] = v;
            Ok(())
        })
        .unwrap();
        assert_eq!(back, values);
        enc
    }

    #[test]
    fn counts_round_trip_dense_and_sparse() {
        assert_eq!(round_trip(&[3, 1, 4, 1, 5, 9, 2, 6]), "dense");
        let mut sparse = vec![0u64; 1000];
        sparse[0] = 7;
        sparse[500] = 1 << 40;
        sparse[999] = 1;
        assert_eq!(round_trip(&sparse), "sparse");
        assert_eq!(round_trip(&[0; 10]), "sparse");
        assert_eq!(round_trip(&[200, 255, 130, 129, 140, 0, 250]), "u8");
        assert_eq!(round_trip(&[40000, 65535, 33000, 50000]), "u16");
        round_trip(&[]);
    }

    #[test]
    fn sparse_indices_past_the_end_are_refused() {
        // Two counts with gaps 5 and 5: cell 5, then cell 11 of 8.
        let raw = [2, 5, 5, 1, 1];
        let e = decode_counts("sparse", 8, &raw, |_, _| Ok(())).unwrap_err();
        assert!(e.contains("beyond the 8 cells"), "{e}");
        let e = decode_counts("dense", 3, &[1, 2], |_, _| Ok(())).unwrap_err();
        assert!(e.contains("end early"), "{e}");
        let e = decode_counts("dense", 1, &[1, 2], |_, _| Ok(())).unwrap_err();
        assert!(e.contains("after the last count"), "{e}");
    }

    /// Loads and co-activation counts of `tokens` tokens of 2 layers x 6 experts,
    /// top-3, from a fixed pseudo-random choice.
    fn dense_coact(tokens: u64) -> (Vec<u64>, Vec<u64>) {
        let (e, k) = (6usize, 3usize);
        let mut load = vec![0u64; 2 * e];
        let mut pairs = vec![0u64; 2 * pair_count(e)];
        let mut x = 12345u64;
        for _ in 0..tokens {
            for layer in 0..2 {
                let mut picks = Vec::new();
                while picks.len() < k {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    // Skewed: low experts chosen more often.
                    let p = ((x >> 33) % 21) as usize;
                    let expert = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 5][p];
                    if !picks.contains(&expert) {
                        picks.push(expert);
                    }
                }
                picks.sort();
                for (i, &a) in picks.iter().enumerate() {
                    load[layer * e + a] += 1;
                    for &b in &picks[i + 1..] {
                        pairs[layer * pair_count(e) + moeplace_core::stats::pair_index(a, b, e)] += 1;
                    }
                }
            }
        }
        (load, pairs)
    }

    #[test]
    fn dense_pair_tables_are_stored_against_their_prediction_and_read_back() {
        let tokens = 500;
        let (load, pairs) = dense_coact(tokens);
        let predict = || Prediction::coact(&load, tokens, 2, 6, 3);
        let (enc, cells, raw) = encode_pairs(&pairs, predict);
        assert_eq!((enc, cells), ("predicted", pairs.len() as u64));
        let mut back = vec![u64::MAX; pairs.len()];
        decode_predicted(&raw, &predict(), &mut back).unwrap();
        assert_eq!(back, pairs);
        // Close predictions make small differences: fewer bytes than plain varints.
        let plain: usize = pairs.iter().map(|&v| varint_len(v)).sum();
        assert!(raw.len() < plain, "{} bytes against {plain}", raw.len());
        // Mostly zeros: stored sparse, whatever the prediction.
        let mut zeros = vec![0u64; 200];
        zeros[7] = 3;
        assert_eq!(encode_pairs(&zeros, || unreachable!("sparse needs no prediction")).0, "sparse");
    }

    #[test]
    fn damaged_predicted_tables_are_refused() {
        let tokens = 200;
        let (load, pairs) = dense_coact(tokens);
        let p = Prediction::coact(&load, tokens, 2, 6, 3);
        let (_, _, raw) = encode_pairs(&pairs, || Prediction::coact(&load, tokens, 2, 6, 3));
        let mut out = vec![0u64; pairs.len()];
        let e = decode_predicted(&raw[..raw.len() - 1], &p, &mut out).unwrap_err();
        assert!(e.contains("end early"), "{e}");
        let mut longer = raw.clone();
        longer.push(0);
        let e = decode_predicted(&longer, &p, &mut out).unwrap_err();
        assert!(e.contains("1 bytes after the last count"), "{e}");
        let e = decode_predicted(&raw, &p, &mut out[1..]).unwrap_err();
        assert!(e.contains("predicted for a table of"), "{e}");
        // A varint of eleven continuation bytes overflows 64 bits.
        let mut over = vec![0xffu8; 10];
        over.push(0x02);
        let one = Prediction::from_scaled(vec![0]);
        let e = decode_predicted(&over, &one, &mut [0u64]).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
    }
}
