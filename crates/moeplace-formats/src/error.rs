//! The one error type of the formats layer: what went wrong, in which file, where.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a file an error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The whole file.
    File,
    /// A 1-based line of a text file.
    Line(u64),
    /// A 0-based row of a table (Parquet, NPZ).
    Row(u64),
    /// A named part (an array, a column, a key).
    Part(String),
}

/// An input or output error, naming the file and the line, row or part.
#[derive(Debug)]
pub struct FormatError {
    pub path: PathBuf,
    pub location: Location,
    pub message: String,
}

impl FormatError {
    pub fn new(path: &Path, location: Location, message: impl Into<String>) -> Self {
        FormatError { path: path.to_path_buf(), location, message: message.into() }
    }

    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self::new(path, Location::File, message)
    }

    pub fn line(path: &Path, line: u64, message: impl Into<String>) -> Self {
        Self::new(path, Location::Line(line), message)
    }

    pub fn row(path: &Path, row: u64, message: impl Into<String>) -> Self {
        Self::new(path, Location::Row(row), message)
    }

    pub fn io(path: &Path, e: std::io::Error) -> Self {
        Self::file(path, e.to_string())
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::File => write!(f, "{}: {}", self.path.display(), self.message),
            Location::Line(n) => write!(f, "{}:{}: {}", self.path.display(), n, self.message),
            Location::Row(n) => write!(f, "{}: row {}: {}", self.path.display(), n, self.message),
            Location::Part(p) => write!(f, "{}: {}: {}", self.path.display(), p, self.message),
        }
    }
}

impl std::error::Error for FormatError {}
