//! Output paths, checked before the work whose result they receive.

use std::path::Path;

use anyhow::{bail, Result};

/// Refuses an output path whose folder does not exist or that is a folder itself.
/// Outputs are written last (to a temporary name, then renamed), so without this a
/// whole replay or profile would run before the write fails.
pub fn check_output(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        let what = if dir.exists() { "is not a folder" } else { "does not exist" };
        bail!("{}: its folder {} {what}", path.display(), dir.display());
    }
    if path.is_dir() {
        bail!("{}: is a folder; give the output a file name", path.display());
    }
    Ok(())
}

/// Parses `--format`/`--output-format` of a statistics output: binary or json.
pub fn parse_stats_encoding(s: &str) -> Result<moeplace_formats::stats_file::Encoding, String> {
    use moeplace_formats::stats_file::Encoding;
    Encoding::parse(s)
        .ok_or_else(|| format!("unknown statistics format {s:?}; expected one of {}", Encoding::NAMES.join(", ")))
}
