//! Output files appear whole or not at all: write to a temporary file in the same
//! folder, flush, then rename over the target.
//!
//! A target that is a symbolic link is written through: the temporary file goes
//! next to the file the link points to, which is replaced, and the link stays. A
//! target that is not a regular file (a folder, a FIFO, a device, a socket) is
//! refused: renaming over it would replace it. Temporary files are registered so that
//! a signal handler can remove them ([`remove_temporary_files`]); one left by a
//! process that was killed outright is removed by the next write to the same target.
//!
//! The target `-` is standard output: written as it comes, with nothing to rename.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::FormatError;

/// Temporary files being written by this process.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every temporary file this process is writing; for a signal handler that
/// then ends the process (the targets stay as they were).
pub fn remove_temporary_files() {
    // try_lock: a handler thread must not wait on a writer that holds the lock
    // while the process is being ended; the list is then taken as it is.
    // The lock is only held for a push or a retain: a few tries suffice.
    let mut list = Vec::new();
    for _ in 0..100 {
        match LIVE.try_lock() {
            Ok(mut l) => list = std::mem::take(&mut *l),
            Err(std::sync::TryLockError::Poisoned(e)) => list = std::mem::take(&mut *e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        }
        break;
    }
    for p in list {
        let _ = std::fs::remove_file(p);
    }
}

/// Follows symbolic links (up to 40, as the kernel does) to the path that is
/// really written; a dangling link gives the path it points to.
fn resolve(target: &Path) -> Result<PathBuf, FormatError> {
    let mut path = target.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&path).map_err(|e| FormatError::io(target, e))?;
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                path = if to.is_absolute() { to } else { dir.join(to) };
            }
            _ => return Ok(path),
        }
    }
    Err(FormatError::file(target, "too many levels of symbolic links"))
}

/// Whether `target` names standard output (`-o -`).
pub fn is_stdout(target: &Path) -> bool {
    target.as_os_str() == "-"
}

/// The file really written for `target` (symbolic links followed), after checking
/// that it is a regular file or absent, and its folder.
pub fn real_target(target: &Path) -> Result<PathBuf, FormatError> {
    let real = resolve(target)?;
    if let Ok(m) = std::fs::metadata(&real) {
        let kind = file_kind(&m.file_type());
        if let Some(kind) = kind {
            let via = if real != target { format!(" (the link points to {})", real.display()) } else { String::new() };
            let hint = if kind == "a folder" { "give the output a file name" } else { "outputs are regular files" };
            return Err(FormatError::file(target, format!("is {kind}{via}; {hint}")));
        }
    }
    let dir = folder(&real);
    if !dir.is_dir() {
        let what = if dir.exists() { "is not a folder" } else { "does not exist" };
        return Err(FormatError::file(target, format!("its folder {} {what}", dir.display())));
    }
    Ok(real)
}

/// What a non-regular file is, in words; `None` for a regular file.
fn file_kind(t: &std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a folder");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if t.is_char_device() || t.is_block_device() {
            return Some("a device");
        }
        if t.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

fn folder(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn temp_name(real: &Path, pid: u32) -> Result<PathBuf, FormatError> {
    let name = real.file_name().ok_or_else(|| FormatError::file(real, "not a file name"))?;
    Ok(folder(real).join(format!(".{}.tmp{pid}", name.to_string_lossy())))
}

/// Checks, before any work, that `target` can be written: a regular file or absent,
/// in a folder where a file can be created (a temporary file is created and removed).
pub fn check_writable(target: &Path) -> Result<(), FormatError> {
    if is_stdout(target) {
        return Ok(());
    }
    let real = real_target(target)?;
    let probe = temp_name(&real, std::process::id())?;
    File::create(&probe).map_err(|e| FormatError::file(target, format!("cannot write in its folder: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Removes `.NAME.tmpPID` files next to `real` whose process is gone (a run that was
/// killed outright, which no handler sees).
fn remove_stale(real: &Path) {
    let Some(name) = real.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let prefix = format!(".{name}.tmp");
    let Ok(entries) = std::fs::read_dir(folder(real)) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(target_os = "linux")]
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Without /proc the owner cannot be told: keep the file.
#[cfg(not(target_os = "linux"))]
fn process_alive(_pid: u32) -> bool {
    true
}

/// A file being written; [`AtomicFile::commit`] renames it into place. Dropped
/// without commit, the temporary file is removed and the target is untouched.
/// For `-` the writer is standard output and `temp` is empty.
pub struct AtomicFile {
    target: PathBuf,
    /// The file replaced on commit: `target` with symbolic links followed.
    real: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(target: &Path) -> Result<AtomicFile, FormatError> {
        if is_stdout(target) {
            let out = stdout_file().map_err(|e| FormatError::io(target, e))?;
            return Ok(AtomicFile {
                target: target.to_path_buf(),
                real: PathBuf::new(),
                temp: PathBuf::new(),
                writer: Some(BufWriter::with_capacity(1 << 20, out)),
            });
        }
        let real = real_target(target)?;
        remove_stale(&real);
        let temp = temp_name(&real, std::process::id())?;
        // Registered before it exists, so a signal between the two cannot leave it.
        live().push(temp.clone());
        let file = match File::create(&temp) {
            Ok(f) => f,
            Err(e) => {
                forget(&temp);
                return Err(FormatError::io(target, e));
            }
        };
        Ok(AtomicFile {
            target: target.to_path_buf(),
            real,
            temp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
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
        if self.temp.as_os_str().is_empty() {
            // Standard output: a pipe cannot be synced, only flushed.
            return w.into_inner().map(drop).map_err(|e| FormatError::io(&self.target, e.into_error()));
        }
        let done = w
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::rename(&self.temp, &self.real));
        forget(&self.temp);
        if let Err(e) = done {
            // The writer is taken, so Drop no longer removes the temporary file
            // (e.g. when the target is a folder and the rename fails).
            let _ = std::fs::remove_file(&self.temp);
            return Err(FormatError::io(&self.target, e));
        }
        Ok(())
    }
}

fn forget(temp: &Path) {
    live().retain(|p| p != temp);
}

/// Standard output as a file of its own (a duplicate of descriptor 1), so that
/// every writer takes one type.
#[cfg(unix)]
fn stdout_file() -> std::io::Result<File> {
    use std::os::fd::AsFd;
    Ok(File::from(std::io::stdout().as_fd().try_clone_to_owned()?))
}

#[cfg(not(unix))]
fn stdout_file() -> std::io::Result<File> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "writing to standard output (-) needs Unix; give a file"))
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() && !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
            forget(&self.temp);
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
        assert!(e.contains("out") && e.contains("is a folder"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("out")], "only the folder remains");
    }

    #[cfg(unix)]
    #[test]
    fn symbolic_links_are_written_through_and_fifos_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        write_bytes(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays");
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        let dangling = dir.path().join("dangling.json");
        std::os::unix::fs::symlink("made.json", &dangling).unwrap();
        write_bytes(&dangling, b"x").unwrap();
        assert_eq!(std::fs::read(dir.path().join("made.json")).unwrap(), b"x");

        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = write_bytes(&fifo, b"x").unwrap_err().to_string();
        assert!(e.contains("fifo") && e.contains("FIFO"), "{e}");
        let t = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        use std::os::unix::fs::FileTypeExt;
        assert!(t.is_fifo(), "the FIFO is still there");
        let e = write_bytes(Path::new("/dev/null"), b"x").unwrap_err().to_string();
        assert!(e.contains("/dev/null") && e.contains("a device"), "{e}");
    }

    #[test]
    fn a_stale_temporary_file_of_a_dead_process_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.json");
        // PIDs stop far below this.
        let stale = dir.path().join(".out.json.tmp4000000000");
        std::fs::write(&stale, b"half").unwrap();
        let other = dir.path().join(".other.json.tmp4000000000");
        std::fs::write(&other, b"not ours").unwrap();
        write_bytes(&target, b"x").unwrap();
        assert!(!stale.exists());
        assert!(other.exists(), "only the target's temporary files are touched");
    }

    #[test]
    fn a_read_only_folder_is_found_by_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_writable(&dir.path().join("no/such/out.json")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        check_writable(&dir.path().join("out.json")).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the probe is removed");
    }
}
