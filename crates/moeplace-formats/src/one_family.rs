//! Every reader's batches pass through [`OneFamilyPerRequest`]: a request belongs to
//! one task family in every format (docs/FORMATS.md), and a file where it changes is
//! refused however it is used (profiled, converted, replayed), not only where the
//! statistics happen to notice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use moeplace_core::model::LayerMap;
use moeplace_core::trace::{ModelShape, TokenBatch};

use crate::detect::TraceReader;
use crate::error::FormatError;

/// A reader that refuses a request seen with two families (or with and without one).
pub struct OneFamilyPerRequest {
    inner: Box<dyn TraceReader>,
    path: PathBuf,
    family_of: HashMap<String, Option<String>>,
    failed: bool,
}

impl OneFamilyPerRequest {
    pub fn new(inner: Box<dyn TraceReader>, path: &Path) -> OneFamilyPerRequest {
        OneFamilyPerRequest { inner, path: path.to_path_buf(), family_of: HashMap::new(), failed: false }
    }

    fn check(&mut self, batch: &TokenBatch) -> Result<(), FormatError> {
        let mut last = None;
        for (&r, &f) in batch.request_indices().iter().zip(batch.family_indices()) {
            // Tokens of one request usually come together: look up on a change only.
            if last == Some((r, f)) {
                continue;
            }
            last = Some((r, f));
            let name = &batch.request_names()[r as usize];
            let family = f.map(|f| batch.family_names()[f as usize].as_str());
            match self.family_of.get(name) {
                None => {
                    self.family_of.insert(name.clone(), family.map(str::to_string));
                }
                Some(known) if known.as_deref() == family => {}
                Some(known) => {
                    let show = |f: Option<&str>| f.map_or("(none)".to_string(), |f| format!("{f:?}"));
                    return Err(FormatError::file(
                        &self.path,
                        format!(
                            "request {name:?} has tokens of family {} and of family {}; a request belongs to one family",
                            show(known.as_deref()),
                            show(family)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Iterator for OneFamilyPerRequest {
    type Item = Result<TokenBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.inner.next()?;
        let item = item.and_then(|b| self.check(&b).map(|()| b));
        self.failed = item.is_err();
        Some(item)
    }
}

impl TraceReader for OneFamilyPerRequest {
    fn shape(&self) -> ModelShape {
        self.inner.shape()
    }
    fn layer_map(&self) -> Option<LayerMap> {
        self.inner.layer_map()
    }
    fn progress(&self) -> (u64, u64) {
        self.inner.progress()
    }
    fn progress_unit(&self) -> crate::ProgressUnit {
        self.inner.progress_unit()
    }
}
