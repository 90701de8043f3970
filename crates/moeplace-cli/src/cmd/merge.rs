//! `moeplace merge`: add statistics files up.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use moeplace_formats::stats_file::{self, Encoding};

/// Add statistics files (from `moeplace profile -o`) into one. Statistics are sums,
/// so merging the statistics of shards equals profiling all shards at once, byte for
/// byte. A request id names one request across the files: its counts add up, and
/// an id with a different family in two files is refused. Two `synth` runs name
/// their requests alike (req-0, req-1, ...) unless given their own
/// `--request-prefix`.
///
/// Inputs are read one at a time: memory holds the running sum and one input,
/// however many files there are. Inputs may be binary or JSON; the output is JSON
/// for a `.json` name and binary otherwise (or as --format says).
///
/// Example:
///   moeplace merge shard0.bin shard1.bin -o all.bin
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Statistics files to add up.
    #[arg(required = true, value_name = "STATS")]
    inputs: Vec<PathBuf>,
    /// Where to write the sum (`-`: JSON on standard output).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// Encoding of the output whatever its name: binary or json.
    #[arg(long, alias = "output-format", value_name = "FORMAT", value_parser = crate::output::parse_stats_encoding)]
    format: Option<Encoding>,
}

pub fn run(args: Args) -> Result<()> {
    let inputs: Vec<&std::path::Path> = args.inputs.iter().map(|p| p.as_path()).collect();
    crate::output::check_output_of(&args.output, &inputs)?;
    crate::output::refuse_repeated_inputs(&args.inputs)?;
    let start = Instant::now();
    let mut acc = read_whole(&args.inputs[0])?;
    for p in &args.inputs[1..] {
        // Read inside the loop so that each input is dropped before the next.
        let s = read_whole(p)?;
        acc.merge(&s).with_context(|| format!("adding {}", p.display()))?;
    }
    let read = start.elapsed().as_secs_f64();
    let encoding = args.format.unwrap_or_else(|| Encoding::for_path(&args.output));
    let start = Instant::now();
    stats_file::write_as(&args.output, &acc, encoding)?;
    // The times let scripts/bench-stats-file.sh measure reading and writing alone.
    eprintln!(
        "merged {} files: {} tokens -> {} (read and added in {read:.3} s, written in {:.3} s)",
        args.inputs.len(),
        acc.tokens(),
        args.output.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A whole statistics file, with a progress bar when it is large.
fn read_whole(path: &std::path::Path) -> Result<moeplace_core::stats::Statistics> {
    Ok(crate::input::read_stats_file(path, moeplace_core::stats::Parts::ALL)?.0)
}
