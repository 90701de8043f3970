//! `moeplace merge`: add statistics files up.

use std::path::PathBuf;

use anyhow::{Context, Result};
use moeplace_formats::stats_file;

/// Add statistics files (from `moeplace profile -o`) into one. Statistics are sums,
/// so merging the statistics of shards equals profiling all shards at once, byte for
/// byte. A request id names one request across the files: its counts add up, and
/// an id with a different family in two files is refused. Two `synth` runs name
/// their requests alike (req-0, req-1, ...) unless given their own
/// `--request-prefix`.
///
/// Example:
///   moeplace merge shard0.json shard1.json -o all.json
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Statistics files to add up.
    #[arg(required = true, value_name = "STATS")]
    inputs: Vec<PathBuf>,
    /// Where to write the sum.
    #[arg(short, long, value_name = "OUT.json")]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let inputs: Vec<&std::path::Path> = args.inputs.iter().map(|p| p.as_path()).collect();
    crate::output::check_output_of(&args.output, &inputs)?;
    let mut acc = stats_file::read(&args.inputs[0])?;
    for p in &args.inputs[1..] {
        let s = stats_file::read(p)?;
        acc.merge(&s).with_context(|| format!("adding {}", p.display()))?;
    }
    stats_file::write(&args.output, &acc)?;
    eprintln!("merged {} files: {} tokens -> {}", args.inputs.len(), acc.tokens(), args.output.display());
    Ok(())
}
