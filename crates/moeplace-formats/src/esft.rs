//! DeepSeek ESFT expert logs: a folder of `<family>/expert_weights_<layer>.txt`
//! (layers numbered from 1; file 1 is MoE layer 0), or one family's folder.
//!
//! One line per sequence; line i of every layer file is the same sequence. A line is
//! the sequence's expert ids, tab-separated, k per token in token order, then two
//! tabs, then as many gate weights. The files record neither the expert count nor k:
//! they come from DeepSeek-V2-Lite (64 experts, top-6), the defaults here; other
//! models need `experts`/`top_k` in [`ReadOptions`].
//!
//! Each sequence becomes request `<family>/<line index from 0>`, family = folder
//! name, no phase (the logs are teacher-forced, prefill-like), position = token index.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use moeplace_core::trace::{expert_id, ModelShape, TokenBatch, TokenRef};

use crate::detect::{ReadOptions, TraceReader};
use crate::error::FormatError;

/// DeepSeek-V2-Lite, the model ESFT logs come from.
pub const DEFAULT_EXPERTS: usize = 64;
pub const DEFAULT_TOP_K: usize = 6;

/// Whether `dir` is an ESFT log: it holds `expert_weights_<n>.txt` files itself, or
/// family folders that do.
pub fn is_esft_dir(dir: &Path) -> bool {
    layer_files(dir).map(|f| !f.is_empty()).unwrap_or(false) || family_dirs(dir).map(|d| !d.is_empty()).unwrap_or(false)
}

/// `(layer number, path)` of the `expert_weights_<n>.txt` files in `dir`, sorted.
fn layer_files(dir: &Path) -> std::io::Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_prefix("expert_weights_").and_then(|s| s.strip_suffix(".txt")) {
            if let Ok(n) = n.parse::<usize>() {
                out.push((n, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Family folders under `dir` (those holding layer files), sorted by name.
fn family_dirs(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // `Path::is_dir` follows symlinks: data sets are often folders of linked families.
        if entry.path().is_dir() && !layer_files(&entry.path())?.is_empty() {
            out.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

struct Family {
    name: String,
    files: Vec<(PathBuf, BufReader<File>)>,
}

/// Streams an ESFT log family by family, sequence by sequence.
pub struct EsftReader {
    shape: ModelShape,
    families: Vec<(String, PathBuf)>,
    next_family: usize,
    current: Option<Family>,
    seq: u64,
    batch_tokens: usize,
    bytes_read: u64,
    total_bytes: u64,
    done: bool,
    line: String,
}

impl EsftReader {
    pub fn open(path: &Path, opts: &ReadOptions) -> Result<EsftReader, FormatError> {
        let io = |e| FormatError::io(path, e);
        let own = layer_files(path).map_err(io)?;
        let families = if !own.is_empty() {
            let name = path
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "default".to_string());
            vec![(name, path.to_path_buf())]
        } else {
            family_dirs(path).map_err(io)?
        };
        if families.is_empty() {
            return Err(FormatError::file(path, "no expert_weights_<layer>.txt files found (ESFT log expected)"));
        }
        let mut layers = None;
        let mut total_bytes = 0;
        for (name, dir) in &families {
            let files = layer_files(dir).map_err(|e| FormatError::io(dir, e))?;
            for (i, (n, p)) in files.iter().enumerate() {
                if *n != i + 1 {
                    return Err(FormatError::file(p, format!("layer files of family {name} must be numbered 1..{} without gaps; expected expert_weights_{}.txt", files.len(), i + 1)));
                }
                total_bytes += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            }
            match layers {
                None => layers = Some(files.len()),
                Some(l) if l != files.len() => {
                    return Err(FormatError::file(
                        dir,
                        format!("family {name} has {} layer files, an earlier family has {l}", files.len()),
                    ))
                }
                _ => {}
            }
        }
        let shape = ModelShape::new(
            layers.expect("at least one family"),
            opts.experts.unwrap_or(DEFAULT_EXPERTS),
            opts.top_k.unwrap_or(DEFAULT_TOP_K),
        )
        .map_err(|e| FormatError::file(path, e.to_string()))?;
        Ok(EsftReader {
            shape,
            families,
            next_family: 0,
            current: None,
            seq: 0,
            batch_tokens: opts.batch_tokens.max(1),
            bytes_read: 0,
            total_bytes,
            done: false,
            line: String::new(),
        })
    }

    fn open_family(&mut self) -> Result<bool, FormatError> {
        if self.next_family >= self.families.len() {
            return Ok(false);
        }
        let (name, dir) = self.families[self.next_family].clone();
        self.next_family += 1;
        let mut files = Vec::new();
        for (_, p) in layer_files(&dir).map_err(|e| FormatError::io(&dir, e))? {
            let f = File::open(&p).map_err(|e| FormatError::io(&p, e))?;
            files.push((p, BufReader::with_capacity(1 << 18, f)));
        }
        self.current = Some(Family { name, files });
        self.seq = 0;
        Ok(true)
    }

    /// Reads the next sequence of the current family into `batch`; false at its end.
    fn read_sequence(&mut self, batch: &mut TokenBatch) -> Result<bool, FormatError> {
        let shape = self.shape;
        let (k, l_count) = (shape.top_k, shape.layers);
        let fam = self.current.as_mut().expect("a family is open");
        let line_no = self.seq + 1;
        let mut per_layer_ids: Vec<Vec<u16>> = Vec::with_capacity(l_count);
        let mut per_layer_w: Vec<Option<Vec<f32>>> = Vec::with_capacity(l_count);
        let mut ended = 0;
        let (mut first_ended, mut first_going) = (None, None);
        for (layer, (path, reader)) in fam.files.iter_mut().enumerate() {
            self.line.clear();
            let n = reader.read_line(&mut self.line).map_err(|e| FormatError::line(path, line_no, e.to_string()))?;
            self.bytes_read += n as u64;
            if n == 0 {
                ended += 1;
                first_ended.get_or_insert(layer);
            } else {
                first_going.get_or_insert(layer);
            }
            // One file ended where another goes on: reported below, before any
            // comparison of this line across files could blame the wrong file.
            if first_ended.is_some() && first_going.is_some() {
                break;
            }
            if n == 0 {
                continue;
            }
            // Every line of a layer file ends with a newline; a prefix of a line is often
            // itself a valid line (a weight or an id cut short), so one without is refused.
            if !self.line.ends_with('\n') {
                return Err(FormatError::line(
                    path,
                    line_no,
                    "truncated: the last line has no line end (a file cut off while copying or writing? if the file is \
                     whole, end it with a newline)",
                ));
            }
            let text = self.line.trim_end_matches(['\n', '\r']);
            let (ids_text, w_text) = match text.split_once("\t\t") {
                Some((a, b)) => (a, Some(b)),
                None => (text, None),
            };
            let mut ids = Vec::new();
            for (i, tok) in ids_text.split('\t').enumerate() {
                let id: i64 = tok.trim().parse().map_err(|_| {
                    FormatError::line(path, line_no, format!("field {} is {tok:?}, not an expert id", i + 1))
                })?;
                ids.push(
                    expert_id(id, layer, shape.experts).map_err(|e| FormatError::line(path, line_no, e.to_string()))?,
                );
            }
            if ids.len() % k != 0 {
                return Err(FormatError::line(
                    path,
                    line_no,
                    format!("{} expert ids is not a whole number of tokens of top-{k}", ids.len()),
                ));
            }
            let weights = match w_text {
                None => None,
                Some(w) => {
                    let mut ws = Vec::with_capacity(ids.len());
                    for (i, tok) in w.split('\t').enumerate() {
                        let x: f32 = tok.trim().parse().map_err(|_| {
                            FormatError::line(path, line_no, format!("gate weight {} is {tok:?}, not a number", i + 1))
                        })?;
                        ws.push(x);
                    }
                    if ws.len() != ids.len() {
                        return Err(FormatError::line(
                            path,
                            line_no,
                            format!("{} gate weights for {} expert ids", ws.len(), ids.len()),
                        ));
                    }
                    Some(ws)
                }
            };
            if let Some(first) = per_layer_ids.first() {
                if first.len() != ids.len() {
                    return Err(FormatError::line(
                        path,
                        line_no,
                        format!(
                            "{} tokens, but the same sequence has {} tokens in layer 1's file",
                            ids.len() / k,
                            first.len() / k
                        ),
                    ));
                }
            }
            per_layer_ids.push(ids);
            per_layer_w.push(weights);
        }
        if ended == l_count {
            if self.seq == 0 {
                return Err(FormatError::file(
                    &fam.files[0].0,
                    format!("family {}: the layer files are empty", fam.name),
                ));
            }
            return Ok(false);
        }
        if let (Some(short), Some(going)) = (first_ended, first_going) {
            // Name the file that ended, and one that goes on.
            return Err(FormatError::line(
                &fam.files[short].0,
                line_no,
                format!(
                    "this layer file ends before line {line_no} but {} has it: layer files of family {} have \
                     different numbers of lines",
                    fam.files[going].0.display(),
                    fam.name
                ),
            ));
        }
        let tokens = per_layer_ids[0].len() / k;
        let all_w = per_layer_w.iter().all(Option::is_some);
        let request = format!("{}/{}", fam.name, self.seq);
        let mut ids = vec![0u16; l_count * k];
        let mut ws = vec![0f32; l_count * k];
        for t in 0..tokens {
            for layer in 0..l_count {
                ids[layer * k..(layer + 1) * k].copy_from_slice(&per_layer_ids[layer][t * k..(t + 1) * k]);
                if all_w {
                    let w = per_layer_w[layer].as_ref().expect("all present");
                    ws[layer * k..(layer + 1) * k].copy_from_slice(&w[t * k..(t + 1) * k]);
                }
            }
            batch
                .push(TokenRef {
                    request: &request,
                    family: Some(&fam.name),
                    phase: None,
                    position: t as u32,
                    experts: &ids,
                    gate_weights: all_w.then_some(&ws[..]),
                })
                .map_err(|e| {
                    // Name the file of the layer at fault (file i + 1 is MoE layer i).
                    let file = &fam.files[e.layer().unwrap_or(0).min(l_count - 1)].0;
                    FormatError::line(file, line_no, e.to_string())
                })?;
        }
        self.seq += 1;
        Ok(true)
    }
}

impl Iterator for EsftReader {
    type Item = Result<TokenBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut batch = TokenBatch::new(self.shape);
        while batch.len() < self.batch_tokens {
            if self.current.is_none() {
                match self.open_family() {
                    Ok(true) => {}
                    Ok(false) => {
                        self.done = true;
                        break;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            match self.read_sequence(&mut batch) {
                Ok(true) => {}
                Ok(false) => self.current = None,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        if batch.is_empty() {
            None
        } else {
            Some(Ok(batch))
        }
    }
}

impl TraceReader for EsftReader {
    fn shape(&self) -> ModelShape {
        self.shape
    }

    fn progress(&self) -> (u64, u64) {
        (self.bytes_read, self.total_bytes)
    }
}
