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
        let w = self.writer.take().expect("commit once");
        let done = w
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::rename(&self.temp, &self.target));
        if let Err(e) = done {
            // The writer is taken, so Drop no longer removes the temporary file
            // (e.g. when the target is a folder and the rename fails).
            let _ = std::fs::remove_file(&self.temp);
            return Err(FormatError::io(&self.target, e));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_rename_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        std::fs::create_dir(&target).unwrap();
        let e = write_bytes(&target, b"x").unwrap_err().to_string();
        assert!(e.contains("out"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("out")], "only the folder remains");
    }
}
