//! The statistics file of `moeplace profile -o`: every count of [`Statistics`]
//! exactly, in a canonical order, so that profiling shards and merging gives a
//! byte-identical file to profiling everything at once.
//!
//! Two encodings of the same content: binary ([`crate::stats_binary`], the default,
//! compact and fast) and versioned JSON (for looking inside; chosen by a `.json`
//! name). Readers tell them apart by their first bytes.
//!
//! The JSON encoding:
//!
//! ```text
//! {"format":"moeplace-stats","version":1,"layers":L,"experts":E,"top_k":k,
//!  "pairs":true,"request_vectors":true,
//!  "groups":[{"family":"law"|null,"phase":"prefill"|"decode"|null,"tokens":n,
//!             "load":[[E counts] x L],
//!             "coact":[[layer,a,b,count],...],          // a < b, nonzero only
//!             "transitions":[[layer,a,b,count],...]}],  // a at layer, b at layer+1
//!  "requests":[{"id":"r0","family":"law"|null,
//!               "phases":[{"phase":..,"tokens":n,"counts":[[layer,expert,count],...]}]}],
//!  "token_sample":{"capacity":n,                       // absent: no sample
//!                  "tokens":[{"hash":h,"family":..,"phase":..,"picks":[L*k ids]},...]},
//!  "hidden_layers":H,"moe_layers":[L decoder-layer ids],  // optional, together
//!  "layer_source":"input"|"model"|"default"}             // optional
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use moeplace_core::model::{LayerMap, LayerSource};
use moeplace_core::stats::{
    memory, pair_count, GroupKey, GroupStats, RequestActivation, SampledToken, Statistics, TokenSample,
};
use moeplace_core::trace::{ModelShape, Phase};

use crate::atomic;
use crate::error::FormatError;

pub const FORMAT_NAME: &str = "moeplace-stats";
pub const VERSION: u64 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    format: String,
    version: u64,
    layers: usize,
    experts: usize,
    top_k: usize,
    pairs: bool,
    request_vectors: bool,
    groups: Vec<GroupRepr>,
    requests: Vec<RequestRepr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_sample: Option<SampleRepr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hidden_layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    moe_layers: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer_source: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleRepr {
    capacity: usize,
    tokens: Vec<SampledRepr>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SampledRepr {
    hash: u64,
    family: Option<String>,
    phase: Option<Phase>,
    picks: Vec<u16>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupRepr {
    family: Option<String>,
    phase: Option<Phase>,
    tokens: u64,
    load: Vec<Vec<u64>>,
    coact: Vec<[u64; 4]>,
    transitions: Vec<[u64; 4]>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestRepr {
    id: String,
    family: Option<String>,
    phases: Vec<PhaseRepr>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseRepr {
    phase: Option<Phase>,
    tokens: u64,
    counts: Vec<[u64; 3]>,
}

/// Serialises statistics to the canonical JSON text.
pub fn to_json(stats: &Statistics) -> String {
    let shape = stats.shape();
    let (l, e) = (shape.layers, shape.experts);
    let pc = pair_count(e);
    let groups = stats
        .groups()
        .iter()
        .map(|(k, g)| {
            let mut coact = Vec::new();
            let mut transitions = Vec::new();
            if stats.has_pairs() {
                for layer in 0..l {
                    let block = &g.coact[layer * pc..(layer + 1) * pc];
                    let mut i = 0;
                    for a in 0..e {
                        for b in a + 1..e {
                            if block[i] > 0 {
                                coact.push([layer as u64, a as u64, b as u64, block[i]]);
                            }
                            i += 1;
                        }
                    }
                }
                for layer in 0..l.saturating_sub(1) {
                    let block = &g.transitions[layer * e * e..(layer + 1) * e * e];
                    for (i, &c) in block.iter().enumerate() {
                        if c > 0 {
                            transitions.push([layer as u64, (i / e) as u64, (i % e) as u64, c]);
                        }
                    }
                }
            }
            GroupRepr {
                family: k.family.clone(),
                phase: k.phase,
                tokens: g.tokens,
                load: g.load.chunks(e).map(<[u64]>::to_vec).collect(),
                coact,
                transitions,
            }
        })
        .collect();
    let requests = stats
        .requests()
        .iter()
        .map(|(id, r)| RequestRepr {
            id: id.clone(),
            family: r.family.clone(),
            phases: r
                .by_phase
                .iter()
                .map(|(p, v)| PhaseRepr {
                    phase: *p,
                    tokens: r.tokens.get(p).copied().unwrap_or(0),
                    counts: v
                        .iter()
                        .enumerate()
                        .filter(|(_, &c)| c > 0)
                        .map(|(i, &c)| [(i / e) as u64, (i % e) as u64, c as u64])
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let repr = FileRepr {
        format: FORMAT_NAME.into(),
        version: VERSION,
        layers: l,
        experts: e,
        top_k: shape.top_k,
        pairs: stats.has_pairs(),
        request_vectors: stats.has_request_vectors(),
        groups,
        requests,
        token_sample: (stats.token_sample().capacity() > 0).then(|| SampleRepr {
            capacity: stats.token_sample().capacity(),
            tokens: stats
                .token_sample()
                .tokens()
                .iter()
                .map(|t| SampledRepr { hash: t.hash, family: t.family.clone(), phase: t.phase, picks: t.picks.clone() })
                .collect(),
        }),
        hidden_layers: stats.layer_map().map(|m| m.hidden_layers()),
        moe_layers: stats.layer_map().map(|m| m.moe_layers().to_vec()),
        layer_source: stats.layer_map().map(|m| crate::plan_file::layer_source_name(m.source()).to_string()),
    };
    let mut s = serde_json::to_string(&repr).expect("statistics serialise");
    s.push('\n');
    s
}

/// How a statistics file is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Compact binary ([`crate::stats_binary`]).
    Binary,
    /// Versioned JSON text.
    Json,
}

impl Encoding {
    pub const NAMES: &'static [&'static str] = &["binary", "json"];

    pub fn parse(s: &str) -> Option<Encoding> {
        match s {
            "binary" => Some(Encoding::Binary),
            "json" => Some(Encoding::Json),
            _ => None,
        }
    }

    /// The encoding an output name asks for: JSON for a `.json` name and for standard
    /// output (`-`, read by people and pipes), binary for any other.
    pub fn for_path(path: &Path) -> Encoding {
        if crate::atomic::is_stdout(path) {
            return Encoding::Json;
        }
        match path.extension() {
            Some(x) if x.eq_ignore_ascii_case("json") => Encoding::Json,
            _ => Encoding::Binary,
        }
    }
}

/// The file's bytes in `encoding`.
pub fn to_bytes(stats: &Statistics, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Binary => crate::stats_binary::to_bytes(stats),
        Encoding::Json => to_json(stats).into_bytes(),
    }
}

/// Writes statistics atomically, encoded as the name asks ([`Encoding::for_path`]).
pub fn write(path: &Path, stats: &Statistics) -> Result<(), FormatError> {
    write_as(path, stats, Encoding::for_path(path))
}

/// Writes statistics atomically in `encoding`.
pub fn write_as(path: &Path, stats: &Statistics, encoding: Encoding) -> Result<(), FormatError> {
    if stats.is_partial() {
        return Err(FormatError::file(
            path,
            "statistics read in part (for one placer) are not written; read them whole",
        ));
    }
    atomic::write_bytes(path, &to_bytes(stats, encoding))
}

/// Reads a statistics file (either encoding), checking every count against the
/// declared shape.
pub fn read(path: &Path) -> Result<Statistics, FormatError> {
    read_with_digest(path).map(|(stats, _)| stats)
}

/// Reads a statistics file and the digest of its bytes (a plan's `input_digest`),
/// reading the file once.
pub fn read_with_digest(path: &Path) -> Result<(Statistics, String), FormatError> {
    read_parts_with_digest_progress(path, moeplace_core::stats::Parts::ALL, &mut |_, _| {})
}

/// [`read_with_digest`] decoding only `parts` of a binary file (a placer's needs;
/// JSON files are read whole). The digest is of the whole file's bytes.
pub fn read_parts_with_digest(
    path: &Path,
    parts: moeplace_core::stats::Parts,
) -> Result<(Statistics, String), FormatError> {
    read_parts_with_digest_progress(path, parts, &mut |_, _| {})
}

/// Bytes read between two calls of a progress callback: large enough that the calls
/// cost nothing, small enough that a bar over a file of some gigabytes moves.
const PROGRESS_CHUNK: usize = 8 << 20;

/// A file's bytes, read in chunks, calling `progress(bytes read, file size)` after
/// each (a caller's progress bar; the file size is the one at opening).
pub fn read_bytes_progress(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Vec<u8>, FormatError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let total = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    loop {
        let n =
            (&mut file).take(PROGRESS_CHUNK as u64).read_to_end(&mut bytes).map_err(|e| FormatError::io(path, e))?;
        progress(bytes.len() as u64, total.max(bytes.len() as u64));
        if n == 0 {
            break;
        }
    }
    Ok(bytes)
}

/// [`read_parts_with_digest`] telling `progress(bytes read, file size)` as the file's
/// bytes come in; decoding follows the last call.
pub fn read_parts_with_digest_progress(
    path: &Path,
    parts: moeplace_core::stats::Parts,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Statistics, String), FormatError> {
    let bytes = read_bytes_progress(path, progress)?;
    let digest = crate::plan_file::digest(&bytes);
    if crate::stats_binary::is_binary(&bytes) {
        return Ok((crate::stats_binary::from_bytes_parts(path, &bytes, parts)?, digest));
    }
    Ok((from_bytes(path, &bytes)?, digest))
}

/// Parses a statistics file's bytes, binary or JSON; `path` is only used in messages.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Statistics, FormatError> {
    // The magic's first byte is not text: a file starting with it is binary, or a
    // damaged or truncated binary file, which the binary reader names as such.
    if bytes.first() == Some(&crate::stats_binary::MAGIC[0]) {
        return crate::stats_binary::from_bytes(path, bytes);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        FormatError::file(path, format!("not a moeplace statistics file: neither binary nor UTF-8 JSON ({e})"))
    })?;
    from_json(path, text)
}

/// Whether the first bytes of a file are those of a statistics file (binary magic,
/// or JSON naming the format early, as this writer does).
pub fn is_statistics_head(head: &[u8]) -> bool {
    crate::stats_binary::is_binary(head) || String::from_utf8_lossy(head).contains(FORMAT_NAME)
}

/// Whether `path` is a statistics file (a look at its first bytes).
pub fn is_statistics_file(path: &Path) -> bool {
    use std::io::Read;
    if path.is_dir() {
        return false;
    }
    let mut head = [0u8; 64];
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    is_statistics_head(&head[..n])
}

/// Most cells of a dense pair table (layers x experts^2) a statistics file may ask
/// for: 2^30 (8 GiB of counts); DeepSeek-V3 needs 58 x 256^2, about 3.8 million.
pub const MAX_PAIR_CELLS: usize = 1 << 30;

/// Parses statistics text; `path` is only used in messages.
pub fn from_json(path: &Path, text: &str) -> Result<Statistics, FormatError> {
    if text.trim().is_empty() {
        return Err(FormatError::file(path, "empty file: expected a moeplace statistics file"));
    }
    let repr: FileRepr = serde_json::from_str(text)
        .map_err(|e| FormatError::line(path, e.line() as u64, format!("not a moeplace statistics file: {e}")))?;
    if repr.format != FORMAT_NAME {
        return Err(FormatError::file(path, format!("format is {:?}, expected {FORMAT_NAME:?}", repr.format)));
    }
    if repr.version != VERSION {
        return Err(FormatError::file(
            path,
            format!("statistics version {} is not supported (this build reads {VERSION})", repr.version),
        ));
    }
    let shape =
        ModelShape::new(repr.layers, repr.experts, repr.top_k).map_err(|e| FormatError::file(path, e.to_string()))?;
    let (l, e) = (shape.layers, shape.experts);
    let bad = |what: String| FormatError::file(path, what);
    // Pair tables are dense (layers x experts^2 per group) while the file lists only
    // the counts that are not zero: a small file could otherwise ask for any memory.
    if repr.pairs && l.saturating_mul(e).saturating_mul(e) > MAX_PAIR_CELLS {
        return Err(bad(format!(
            "pair counts of {l} layers x {e} experts need {l} x {e}^2 cells, more than the {MAX_PAIR_CELLS} \
             this build holds"
        )));
    }
    // Every group and request vector is dense once read: the whole of them must fit
    // the memory limit before the first is allocated.
    let vectors = repr.requests.iter().map(|r| r.phases.len()).sum();
    memory::check(shape, repr.groups.len(), memory::group_bytes(shape, repr.pairs), vectors)
        .map_err(|e| FormatError::file(path, e.to_string()))?;
    let mut groups = BTreeMap::new();
    for (gi, g) in repr.groups.into_iter().enumerate() {
        if g.load.len() != l || g.load.iter().any(|r| r.len() != e) {
            return Err(bad(format!("group {gi}: `load` must be {l} lists of {e} counts")));
        }
        let mut gs = GroupStats {
            tokens: g.tokens,
            load: g.load.concat(),
            coact: if repr.pairs { vec![0; l * pair_count(e)] } else { Vec::new() },
            transitions: if repr.pairs { vec![0; l * e * e] } else { Vec::new() },
        };
        if !repr.pairs && (!g.coact.is_empty() || !g.transitions.is_empty()) {
            return Err(bad(format!("group {gi}: pair counts present although `pairs` is false")));
        }
        for [layer, a, b, c] in g.coact {
            let (layer, a, b) = (layer as usize, a as usize, b as usize);
            if layer >= l || a >= b || b >= e {
                return Err(bad(format!(
                    "group {gi}: co-activation entry [{layer},{a},{b}] is out of range or not a < b"
                )));
            }
            let slot = &mut gs.coact[layer * pair_count(e) + moeplace_core::stats::pair_index(a, b, e)];
            if *slot != 0 {
                return Err(bad(format!("group {gi}: co-activation entry [{layer},{a},{b}] appears twice")));
            }
            *slot = c;
        }
        for [layer, a, b, c] in g.transitions {
            let (layer, a, b) = (layer as usize, a as usize, b as usize);
            if layer.saturating_add(1) >= l || a >= e || b >= e {
                return Err(bad(format!("group {gi}: transition entry [{layer},{a},{b}] is out of range")));
            }
            let slot = &mut gs.transitions[layer * e * e + a * e + b];
            if *slot != 0 {
                return Err(bad(format!("group {gi}: transition entry [{layer},{a},{b}] appears twice")));
            }
            *slot = c;
        }
        let key = GroupKey { family: g.family, phase: g.phase };
        if groups.insert(key.clone(), gs).is_some() {
            return Err(bad(format!("group {key:?} appears twice")));
        }
    }
    let mut requests = BTreeMap::new();
    for r in repr.requests {
        let mut act = RequestActivation { family: r.family, ..Default::default() };
        for p in r.phases {
            let mut v = vec![0u32; l * e];
            for [layer, x, c] in p.counts {
                if layer as usize >= l || x as usize >= e || c > u32::MAX as u64 {
                    return Err(bad(format!("request {:?}: count entry [{layer},{x},{c}] is out of range", r.id)));
                }
                let slot = &mut v[layer as usize * e + x as usize];
                if *slot != 0 {
                    return Err(bad(format!("request {:?}: count entry [{layer},{x}] appears twice", r.id)));
                }
                *slot = c as u32;
            }
            // A repeated entry would overwrite the first one's counts.
            if act.by_phase.insert(p.phase, v).is_some() {
                return Err(bad(format!("request {:?}: phase {:?} appears twice", r.id, p.phase)));
            }
            act.tokens.insert(p.phase, p.tokens);
        }
        if requests.insert(r.id.clone(), act).is_some() {
            return Err(bad(format!("request {:?} appears twice", r.id)));
        }
    }
    let stats = Statistics::from_parts(shape, repr.pairs, repr.request_vectors, groups, requests)
        .map_err(|e| FormatError::file(path, e.to_string()))?;
    // Profiling refuses a trace without tokens; statistics without any would plan
    // from nothing.
    if stats.groups().values().all(|g| g.tokens == 0) {
        return Err(FormatError::file(path, "the statistics hold no tokens"));
    }
    let layer_map = match (repr.hidden_layers, repr.moe_layers, repr.layer_source.as_deref()) {
        (None, None, None) => None,
        (Some(h), Some(ids), src) => {
            let source = match src {
                None => LayerSource::Recorded,
                Some(s) => crate::plan_file::parse_layer_source(s).ok_or_else(|| {
                    FormatError::file(path, format!("layer_source {s:?} is not input, model or default"))
                })?,
            };
            Some(LayerMap::new(h, ids, source).map_err(|e| FormatError::file(path, format!("moe_layers: {e}")))?)
        }
        _ => return Err(FormatError::file(path, "hidden_layers and moe_layers must be given together")),
    };
    let stats = stats.with_layer_map(layer_map).map_err(|e| FormatError::file(path, format!("moe_layers: {e}")))?;
    let Some(sample) = repr.token_sample else { return Ok(stats) };
    let tokens = sample
        .tokens
        .into_iter()
        .map(|t| SampledToken { hash: t.hash, family: t.family, phase: t.phase, picks: t.picks })
        .collect();
    stats
        .with_sample(TokenSample::from_tokens(sample.capacity, tokens))
        .map_err(|e| FormatError::file(path, format!("token_sample: {e}")))
}
