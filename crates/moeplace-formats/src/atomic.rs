//! Output files appear whole or not at all: write to a temporary file in the same
//! folder, flush, then rename over the target.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::FormatError;

/// A file being written; [`AtomicFile::commit`] renames it into place. Dropped
/// without commit, the temporary file is removed and the target is untouched.
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(target: &Path) -> Result<AtomicFile, FormatError> {
        let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = target.file_name().ok_or_else(|| FormatError::file(target, "not a file name"))?;
        let temp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
        let file = File::create(&temp).map_err(|e| FormatError::io(target, e))?;
        Ok(AtomicFile { target: target.to_path_buf(), temp, writer: Some(BufWriter::with_capacity(1 << 20, file)) })
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("not committed yet")
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<(), FormatError> {
        let mut w = self.writer.take().expect("commit once");
        w.flush().map_err(|e| FormatError::io(&self.target, e))?;
        let f = w.into_inner().map_err(|e| FormatError::io(&self.target, e.into_error()))?;
        f.sync_all().map_err(|e| FormatError::io(&self.target, e))?;
        std::fs::rename(&self.temp, &self.target).map_err(|e| FormatError::io(&self.target, e))?;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `target` atomically.
pub fn write_bytes(target: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    let mut f = AtomicFile::create(target)?;
    f.writer().write_all(bytes).map_err(|e| FormatError::io(target, e))?;
    f.commit()
}
