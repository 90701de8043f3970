//! Output paths, checked before the work whose result they receive.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The trace a command writes: `-o FILE`, or `-o -` for JSONL on standard output.
#[derive(clap::Args)]
pub struct TraceOutput {
    /// The trace to write: .jsonl, .parquet or .npz (or --to); `-` writes JSONL to
    /// standard output.
    #[arg(short, long, value_name = "OUT", required_unless_present = "output_file", conflicts_with = "output_file")]
    output: Option<PathBuf>,
    /// The same as --output, as a last argument (scripts written before --output).
    #[arg(value_name = "OUT", hide = true)]
    output_file: Option<PathBuf>,
}

impl TraceOutput {
    pub fn path(&self) -> &Path {
        self.output.as_deref().or(self.output_file.as_deref()).expect("clap requires one")
    }
}

/// Prints a command's own summary or table: on standard output, unless the command's
/// output file `out` is standard output (`-o -`), which must carry that file alone;
/// then on standard error.
pub fn print_summary(out: Option<&Path>, text: &str) -> Result<()> {
    if out.is_some_and(moeplace_formats::atomic::is_stdout) {
        eprint!("{text}");
        Ok(())
    } else {
        crate::input::print_stdout(text)
    }
}

/// Refuses an output path that cannot be written: its folder missing or read-only
/// (a temporary file is created there and removed), or the path a folder, a FIFO or
/// a device. Outputs are written last (to a temporary name, then renamed), so
/// without this a whole replay or profile would run before the write fails.
pub fn check_output(path: &Path) -> Result<()> {
    moeplace_formats::atomic::check_writable(path)?;
    Ok(())
}

/// [`check_output`], and refuses an output that is one of `inputs` (the same path,
/// or another name of the same file): writing it would destroy the input.
pub fn check_output_of(path: &Path, inputs: &[&Path]) -> Result<()> {
    check_output(path)?;
    for input in inputs {
        if same_file(path, input) {
            bail!("{}: is also an input ({}); write the output elsewhere", path.display(), input.display());
        }
    }
    Ok(())
}

/// Parses `--format`/`--output-format` of a statistics output: binary or json.
pub fn parse_stats_encoding(s: &str) -> Result<moeplace_formats::stats_file::Encoding, String> {
    use moeplace_formats::stats_file::Encoding;
    Encoding::parse(s)
        .ok_or_else(|| format!("unknown statistics format {s:?}; expected one of {}", Encoding::NAMES.join(", ")))
}

/// Refuses an input given twice (the same path, or one file through links): its
/// counts would silently be added twice.
pub fn refuse_repeated_inputs(inputs: &[std::path::PathBuf]) -> Result<()> {
    refuse_repeated(inputs, "its counts would be added twice")
}

/// Refuses a file given twice among `inputs` (by its path or through links), saying
/// what repeating it would do (`consequence`).
pub fn refuse_repeated(inputs: &[std::path::PathBuf], consequence: &str) -> Result<()> {
    for (i, a) in inputs.iter().enumerate() {
        if let Some(b) = inputs[..i].iter().find(|b| same_file(a, b)) {
            anyhow::bail!(
                "{} is given twice (as {} and {}); {consequence}: give each input once",
                a.display(),
                b.display(),
                a.display()
            );
        }
    }
    Ok(())
}

/// Whether two paths name one file (after links), or the same path when the output
/// does not exist yet.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y || same_inode(&x, &y),
        _ => false,
    }
}

#[cfg(unix)]
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_inode(_a: &Path, _b: &Path) -> bool {
    false
}
