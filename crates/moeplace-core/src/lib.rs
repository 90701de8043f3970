//! moeplace-core: the domain of moeplace, with no file formats and no command line.
//!
//! - [`trace`]: the trace model (tokens x MoE layers x top-k expert ids) in batches.
//! - [`model`]: which decoder layers of a model are its MoE layers ([`model::LayerMap`]).
//! - [`stats`]: statistics that are sums, so shards merge exactly.
//! - [`report`]: the characterization report computed from statistics.
//! - [`gpu_load`]: expected GPU loads of a placement, balancedness figures and lower bounds.
//! - [`cluster`]: nodes, GPUs, slots and links.
//! - [`placement`]: the slot -> expert map and its invariants (checked in one place).
//! - [`partition`]: exact-capacity graph partitioning (greedy start, pair swaps, nodes then GPUs).
//! - [`refine`]: token-level refinement of a placement on sampled token paths (swaps that cut remote GPUs and nodes).
//! - [`placers`]: algorithms statistics + cluster -> placement, one per file.
//! - [`synth`]: synthetic multi-task routing workloads at any model scale, and fitting them to real statistics.
//! - [`dispatch`]: serving-time replica choice per token pick, one per file.
//! - [`simulate`]: the replay simulator and the metrics of docs/DESIGN.md.
//! - [`tune`]: a placer's and its serving's parameters chosen by cross-validation over the calibration requests.
//! - [`requests`]: request-side locality: prefill signatures, balanced K-means, ELDR decode routing, the decode simulator, cluster homes.

pub mod cluster;
pub mod dispatch;
pub mod gpu_load;
pub mod model;
pub mod params;
pub mod partition;
pub mod placement;
pub mod placers;
pub mod protocol;
pub mod refine;
pub mod report;
pub mod requests;
pub mod serving;
pub mod simulate;
pub mod stats;
pub mod synth;
pub mod trace;
pub mod tune;
