//! Choosing and opening a trace reader: from `--format` when given, else from the
//! path (a folder of `<family>/expert_weights_<layer>.txt` is an ESFT log; `.parquet`
//! is Parquet; `.npz`/`.npy` NumPy; `.jsonl`/`.json` is the project's JSONL unless
//! its first line declares the `simllm-preplay-trace-v2` schema of SGLang traces).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use moeplace_core::model::LayerMap;
use moeplace_core::trace::{ModelShape, TokenBatch};

use crate::error::FormatError;
use crate::read_ahead::ReadAhead;
use crate::{engine_counts, esft, jsonl, npz, parquet, routed_experts, sglang, sglang_dump, trtllm_raw};

/// The trace formats moeplace reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceFormat {
    Jsonl,
    Parquet,
    Npz,
    Esft,
    Sglang,
    /// SGLang expert-distribution recorder dumps (`.pt`, per_token mode).
    SglangDump,
    /// SGLang HTTP responses with `meta_info.routed_experts`.
    SglangRouted,
    /// vLLM's routed experts `.npy` (uint8/uint16 [tokens, hidden layers, k]).
    VllmRouted,
    /// TensorRT-LLM raw expert statistics (`rank<r>_raw.safetensors`).
    TrtllmRaw,
}

impl TraceFormat {
    pub const NAMES: &'static [&'static str] =
        &["jsonl", "parquet", "npz", "esft", "sglang", "sglang-dump", "sglang-routed", "vllm-routed", "trtllm-raw"];

    pub fn parse(s: &str) -> Option<TraceFormat> {
        Some(match s.to_ascii_lowercase().as_str() {
            "jsonl" => TraceFormat::Jsonl,
            "parquet" => TraceFormat::Parquet,
            "npz" | "npy" => TraceFormat::Npz,
            "esft" => TraceFormat::Esft,
            "sglang" => TraceFormat::Sglang,
            "sglang-dump" => TraceFormat::SglangDump,
            "sglang-routed" => TraceFormat::SglangRouted,
            "vllm-routed" => TraceFormat::VllmRouted,
            "trtllm-raw" => TraceFormat::TrtllmRaw,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TraceFormat::Jsonl => "jsonl",
            TraceFormat::Parquet => "parquet",
            TraceFormat::Npz => "npz",
            TraceFormat::Esft => "esft",
            TraceFormat::Sglang => "sglang",
            TraceFormat::SglangDump => "sglang-dump",
            TraceFormat::SglangRouted => "sglang-routed",
            TraceFormat::VllmRouted => "vllm-routed",
            TraceFormat::TrtllmRaw => "trtllm-raw",
        }
    }

    /// Guesses the format of `path`.
    pub fn detect(path: &Path) -> Result<TraceFormat, FormatError> {
        let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
        if meta.is_dir() {
            if esft::is_esft_dir(path) {
                return Ok(TraceFormat::Esft);
            }
            if trtllm_raw::is_trtllm_raw_dir(path) {
                return Ok(TraceFormat::TrtllmRaw);
            }
            if engine_counts::is_trtllm_dir(path) {
                return Err(FormatError::file(
                    path,
                    "TensorRT-LLM statistics without rank<r>_raw.safetensors files hold counts, not tokens: \
                     profile or plan from them (--stats)",
                ));
            }
            if sglang_dump::is_dump_dir(path) {
                return Ok(TraceFormat::SglangDump);
            }
            return Err(FormatError::file(
                path,
                "is a folder but not an ESFT log (expected <family>/expert_weights_<layer>.txt files), TensorRT-LLM \
                 statistics or SGLang recorder dumps; use --format",
            ));
        }
        let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "parquet" | "pq" => Ok(TraceFormat::Parquet),
            "npy" if routed_experts::is_vllm_routed_npy(path) => Ok(TraceFormat::VllmRouted),
            "npz" | "npy" => Ok(TraceFormat::Npz),
            "pt" | "pth" => Ok(TraceFormat::SglangDump),
            "jsonl" | "json" | "ndjson" => {
                let f = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
                let mut first = String::new();
                let mut r = BufReader::new(f).take(1 << 20);
                r.read_line(&mut first).map_err(|e| FormatError::line(path, 1, e.to_string()))?;
                if first.contains("simllm-preplay-trace") {
                    Ok(TraceFormat::Sglang)
                } else if routed_experts::is_sglang_responses(&first) {
                    Ok(TraceFormat::SglangRouted)
                } else if first.contains("\"eplb_load_stats\"") {
                    Err(FormatError::file(
                        path,
                        "vLLM eplb_load_stats records hold loads, not tokens: profile or plan from them (--stats)",
                    ))
                } else {
                    Ok(TraceFormat::Jsonl)
                }
            }
            _ => Err(FormatError::file(
                path,
                format!("cannot tell the trace format from the name; use --format ({})", TraceFormat::NAMES.join("|")),
            )),
        }
    }
}

/// How to read a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadOptions {
    /// Force a format instead of detecting it.
    pub format: Option<TraceFormat>,
    /// Tokens per batch (memory bound of streaming readers).
    pub batch_tokens: usize,
    /// Experts per layer, for formats that do not record it (ESFT, NPZ).
    pub experts: Option<usize>,
    /// Top-k, for formats that do not record it (ESFT).
    pub top_k: Option<usize>,
    /// The model's layers (hidden-layer count, MoE decoder layers), from a model
    /// description: engine recordings with one row per hidden layer drop the dense rows
    /// by it, and are refused when their rows contradict it.
    pub layer_map: Option<LayerMap>,
    /// TensorRT-LLM statistics taken with the MoE load balancer on count physical
    /// slots: its YAML (`initial_global_assignments`, slot -> expert per decoder layer)
    /// maps them back to experts.
    pub slot_assignments: Option<std::path::PathBuf>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            format: None,
            batch_tokens: 8192,
            experts: None,
            top_k: None,
            layer_map: None,
            slot_assignments: None,
        }
    }
}

/// A streaming trace reader: the model shape, then batches until the end.
pub trait TraceReader: Iterator<Item = Result<TokenBatch, FormatError>> + Send {
    fn shape(&self) -> ModelShape;
    /// The decoder-layer index of each MoE layer, when the file records it (engine
    /// recordings do); `None` when the file cannot tell.
    fn layer_map(&self) -> Option<LayerMap> {
        None
    }
    /// Done so far and total, for progress bars (approximate), in the unit
    /// [`TraceReader::progress_unit`] says.
    fn progress(&self) -> (u64, u64) {
        (0, 0)
    }
    /// What [`TraceReader::progress`] counts: bytes of the file, or tokens for
    /// readers that know their token count before reading.
    fn progress_unit(&self) -> ProgressUnit {
        ProgressUnit::Bytes
    }
}

/// The unit of a reader's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressUnit {
    Bytes,
    Tokens,
}

/// Opens `path` with the format chosen by `opts` or detected from the path. The
/// batches are decoded ahead on a thread of their own (see [`crate::read_ahead`]).
pub fn open_trace(path: &Path, opts: &ReadOptions) -> Result<Box<dyn TraceReader>, FormatError> {
    let format = match opts.format {
        Some(f) => f,
        None => TraceFormat::detect(path)?,
    };
    let reader: Box<dyn TraceReader> = match format {
        TraceFormat::Jsonl => Box::new(jsonl::JsonlReader::open(path, opts.batch_tokens)?),
        TraceFormat::Esft => Box::new(esft::EsftReader::open(path, opts)?),
        TraceFormat::Npz => Box::new(npz::NumpyReader::open(path, opts.experts, opts.batch_tokens)?),
        TraceFormat::Parquet => Box::new(parquet::ParquetReader::open_with(path, opts)?),
        TraceFormat::Sglang => Box::new(sglang::SglangReader::open(path, opts.batch_tokens)?),
        TraceFormat::SglangDump => Box::new(sglang_dump::open_trace(path, opts)?),
        TraceFormat::SglangRouted => Box::new(routed_experts::SglangResponsesReader::open(path, opts)?),
        TraceFormat::VllmRouted => Box::new(routed_experts::open_vllm_npy(path, opts)?),
        TraceFormat::TrtllmRaw => Box::new(trtllm_raw::open(path, opts)?),
    };
    // Formats that record the shape ignore these options; a different value means
    // the user expects another model than the file holds.
    let shape = reader.shape();
    for (flag, given, recorded) in [("--experts", opts.experts, shape.experts), ("--top-k", opts.top_k, shape.top_k)] {
        if let Some(given) = given.filter(|&g| g != recorded) {
            return Err(FormatError::file(
                path,
                format!("the trace records {recorded} for {flag} but {given} was given; drop {flag} or fix it"),
            ));
        }
    }
    Ok(Box::new(ReadAhead::new(Box::new(crate::one_family::OneFamilyPerRequest::new(reader, path)))))
}
