//! `moeplace-lab experiment`: the evaluations of the project's notes, each one command
//! that prints the markdown tables the notes quote. One subcommand per experiment,
//! one module each: `requests` (docs/REQUESTS.md), `tacg` (docs/TACG.md), `grace`
//! (docs/GRACE.md), `tune` (docs/TUNING.md); `common` holds the pieces they share.

use anyhow::Result;

mod common;
mod grace;
mod requests;
mod tacg;
mod tune;

use grace::GraceArgs;
use requests::RequestsArgs;
use tacg::TacgArgs;
use tune::TuneArgs;

/// Run one of the project's experiments and print its tables (markdown). The notes
/// in docs/ quote these tables and name the command.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Request-side locality (docs/METHODS.md, "Activation-pattern micro-batching" and
    /// "ELDR decode routing"), docs/REQUESTS.md.
    ///
    /// For each input: an 80/20 calibration/test split of its requests, then
    /// (1) `cluster-homes`: prefill-to-cluster classification accuracy of the held-out
    /// requests (size-balanced and plain K-means) and the all-to-all data and remote
    /// nodes of the held-out stream with cluster-homes homes against round-robin homes
    /// on the same placement (16 GPUs in 4 nodes by default; no redundant slots, then
    /// one per GPU); (2) decode routing: ELDR against round-robin, random and
    /// join-shortest-queue on --workers decode workers in the decode simulator
    /// (active experts per layer per step, median and p99 time per output token,
    /// worker load), and an ablation of tau (0, 0.1, 1) and of plain K-means.
    ///
    /// Inputs: the ESFT DeepSeek-V2-Lite logs in DATA/esft-deepseek-v2-lite (no phases:
    /// the first quarter of each sequence is taken as prefill, the rest as decode), the
    /// SGLang trace DATA/sglang-granite/routing-trace.jsonl (recorded phases), and a
    /// synthetic multi-domain workload from the `synth` generator (recorded phases,
    /// prefill-decode correlation set by the generator's decode drift).
    ///
    /// Example: moeplace experiment requests --data ../shared/data
    Requests(RequestsArgs),
    /// Task-aware co-activation grouping (docs/TACG.md): the ESFT DeepSeek-V2-Lite
    /// logs split per family into calibration requests (even ordinals within the
    /// family) and held-out requests (odd ordinals); plans from the calibration
    /// statistics, replayed on the held-out requests; 16 GPUs in 4 nodes.
    ///
    /// Tables: (1) linear, coact, eplb, balance, tacg, tacg+gesr at 4 and 5 slots per
    /// GPU with homes round-robin and by family; (2) ablations of tacg+gesr; (3)
    /// locality against balance (coact and tacg+gesr under dispatchers from nearest to
    /// gesr with no tolerance, compared at equal Jain); (4) balance on unseen requests
    /// (the default plan on its own calibration requests and on held-out ones; then
    /// at a wide gesr tolerance with and without gesr's free first, and the plans
    /// `--tune` chose); (5)
    /// distribution shift (one family at 70% of the held-out tokens, one family absent;
    /// plans from the even mix, one served with free first); (6) the
    /// same shifts re-planned for the shifted mix (`plan --family-share`); (7)
    /// re-planned with fewer moves (`plan --previous`, `stay`); (8) calibration budget
    /// (tokens per family).
    /// Cuts are against the baseline of docs/DESIGN.md (linear, no replicas, primary copy,
    /// homes round-robin) on the same held-out stream.
    Tacg(TacgArgs),
    /// GRACE-MoE (docs/GRACE.md): grace against linear, eplb, balance, coact and
    /// tacg+gesr with flat and hierarchical communication, on the held-out ESFT
    /// DeepSeek-V2-Lite requests (calibration = even request ordinals within each
    /// family, held out = odd) and on synthetic DeepSeek-V3 traffic (calibration
    /// stream seed 1, held-out stream seed 2), for 2 nodes x 4 GPUs (a100-eth links,
    /// 25 Gb/s between nodes) and 8 nodes x 8 GPUs (h100 links).
    ///
    /// Tables: (1) per cluster and workload, every placer's cross-node sends per
    /// token-layer, inter- and intra-node bytes, remote GPUs, per-GPU load spread
    /// (standard deviation over mean, Jain), estimated all-to-all time, and cuts
    /// against linear with flat and with hierarchical communication; (2) the ablation
    /// ladder (hierarchical communication, + grouping, + fixed replicas, + dynamic
    /// replication, + topology-aware routing); (3) the targets of the GRACE-MoE issue
    /// on held-out ESFT, 2 nodes x 4 GPUs, reached or not.
    ///
    /// Example: moeplace experiment grace --data ../shared/data/esft-deepseek-v2-lite
    Grace(GraceArgs),
    /// Plans that tune themselves (docs/TUNING.md): the ESFT DeepSeek-V2-Lite
    /// requests split by request with seeds 1..=N (half of each family's requests
    /// held out); on each split balance, coact and tacg+gesr with their defaults,
    /// coact and tacg+gesr tuned as `plan` tunes them (cross-validation over the
    /// calibration requests), and tacg+gesr tuned with `--min-jain 0.98`, replayed on the held-out requests as each plan says;
    /// 16 GPUs in 4 nodes, 5 slots per GPU. Mean and spread over the splits, and the
    /// setting each split chose with its expected and measured remote-node cut.
    ///
    /// Example: moeplace-lab experiment tune --data ../shared/data/esft-deepseek-v2-lite
    Tune(TuneArgs),
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Requests(a) => requests::requests(a),
        What::Tacg(a) => tacg::tacg(a),
        What::Grace(a) => grace::grace(a),
        What::Tune(a) => tune::tune(a),
    }
}
