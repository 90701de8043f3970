//! Reading whole traces and printing tables, for the lab's commands.

use std::path::Path;

use anyhow::{bail, Result};
use moeplace_core::trace::Trace;
use moeplace_formats::{open_trace, ReadOptions};

/// Tokens per batch while streaming, as the product reads traces.
pub const BATCH_TOKENS: usize = 32768;

/// Reads a whole trace (format guessed from the path) into memory.
pub fn read_trace(path: &Path) -> Result<Trace> {
    let mut reader = open_trace(path, &ReadOptions { batch_tokens: BATCH_TOKENS, ..Default::default() })?;
    let mut trace = Trace::new(reader.shape());
    for batch in reader.by_ref() {
        trace.batches.push(batch?);
    }
    if trace.tokens() == 0 {
        bail!("{}: the trace holds no tokens", path.display());
    }
    Ok(trace)
}

/// Prints to stdout; a closed pipe (`moeplace-lab ... | head`) ends quietly.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
