//! moeplace-formats: the file formats at the edge of moeplace.
//!
//! Trace readers stream [`TokenBatch`](moeplace_core::trace::TokenBatch)es of bounded
//! size whatever the file size; every error names the file and the line or row.
//! - [`detect`]: choose a trace format from a path (extension, folder layout, header).
//! - [`engine_counts`]: SGLang `logical_count` and TensorRT-LLM expert statistics.
//! - [`jsonl`]: the project's own JSONL trace format (reader and writer).
//! - [`esft`]: DeepSeek ESFT expert logs (`<family>/expert_weights_<layer>.txt`).
//! - [`npz`]: NumPy `.npz`/`.npy` traces.
//! - [`model_config`]: a model's Hugging Face `config.json` as a model description.
//! - [`parquet`]: Parquet traces (reader and writer).
//! - [`sglang`]: SGLang-recorded traces (`simllm-preplay-trace-v2`).
//! - [`stats_file`]: the versioned statistics file of `moeplace profile`, binary
//!   ([`stats_binary`]) or JSON.
//! - [`atomic`]: write-then-rename output files.
//! - [`contain`]: panics inside a dependency's decoder, turned into errors.
//! - [`cluster_file`]: cluster TOML files.
//! - [`plan_file`]: the versioned plan file.
//! - [`read_ahead`]: decoding trace batches on a thread of their own.
//! - [`export`]: plans in serving engines' formats, and readers for them.
//! - [`report_html`]: the self-contained HTML report of `eval --report`.
//! - [`writer`]: writing a trace in any writable format, chosen by name or extension.
//!
//! The schemas are documented in docs/FORMATS.md.

pub mod atomic;
pub mod cluster_file;
pub mod contain;
pub mod detect;
pub mod engine_counts;
pub mod engine_layers;
pub mod error;
pub mod esft;
pub mod export;
pub mod jsonl;
pub mod model_config;
pub mod npz;
pub mod one_family;
pub mod parquet;
pub mod plan_file;
pub mod read_ahead;
pub mod report_html;
pub mod routed_experts;
pub mod sglang;
pub mod sglang_dump;
pub mod stats_binary;
pub mod stats_file;
pub mod torch_pt;
pub mod trtllm_raw;
pub mod writer;

pub use detect::{open_trace, ProgressUnit, ReadOptions, TraceFormat, TraceReader};
pub use error::FormatError;
