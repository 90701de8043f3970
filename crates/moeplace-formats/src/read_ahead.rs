//! Reading on a thread of its own: decoding the next batches overlaps with whatever
//! the caller does with the current one (counting statistics, mostly), so a profile
//! costs about max(read, count) instead of their sum.
//!
//! At most [`DEPTH`] decoded batches wait in the channel, so memory stays bounded.
//! The first error ends the stream, as with the wrapped reader.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use moeplace_core::model::LayerMap;
use moeplace_core::trace::{ModelShape, TokenBatch};

use crate::detect::TraceReader;
use crate::error::FormatError;

/// Decoded batches that may wait for the consumer.
const DEPTH: usize = 2;

/// A [`TraceReader`] whose batches are decoded ahead on a background thread.
pub struct ReadAhead {
    shape: ModelShape,
    layer_map: Option<LayerMap>,
    /// `None` once dropped (see `Drop`).
    batches: Option<Receiver<Result<TokenBatch, FormatError>>>,
    /// (done, total) of the wrapped reader, updated after each batch it yields.
    progress: Arc<(AtomicU64, AtomicU64)>,
    unit: crate::ProgressUnit,
    thread: Option<JoinHandle<()>>,
}

impl ReadAhead {
    pub fn new(mut inner: Box<dyn TraceReader>) -> ReadAhead {
        let shape = inner.shape();
        let layer_map = inner.layer_map();
        let unit = inner.progress_unit();
        let progress = Arc::new((AtomicU64::new(0), AtomicU64::new(inner.progress().1)));
        let (tx, rx) = sync_channel(DEPTH);
        let shared = Arc::clone(&progress);
        let thread = std::thread::Builder::new()
            .name("moeplace-read".into())
            .spawn(move || {
                while let Some(item) = inner.next() {
                    let (done, total) = inner.progress();
                    shared.0.store(done, Ordering::Relaxed);
                    shared.1.store(total, Ordering::Relaxed);
                    let stop = item.is_err();
                    // The consumer hung up: stop reading.
                    if tx.send(item).is_err() || stop {
                        break;
                    }
                }
            })
            .expect("spawning the reader thread");
        ReadAhead { shape, layer_map, batches: Some(rx), progress, unit, thread: Some(thread) }
    }
}

impl Iterator for ReadAhead {
    type Item = Result<TokenBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.batches.as_ref()?.recv() {
            Ok(item) => Some(item),
            Err(_) => {
                // The thread finished; a panic there is a bug worth surfacing.
                if let Some(t) = self.thread.take() {
                    if let Err(p) = t.join() {
                        std::panic::resume_unwind(p);
                    }
                }
                None
            }
        }
    }
}

/// Hanging up makes the thread stop at its next send; joining it means no reading
/// goes on behind the caller's back.
impl Drop for ReadAhead {
    fn drop(&mut self) {
        drop(self.batches.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TraceReader for ReadAhead {
    fn shape(&self) -> ModelShape {
        self.shape
    }

    fn layer_map(&self) -> Option<LayerMap> {
        self.layer_map.clone()
    }

    fn progress(&self) -> (u64, u64) {
        (self.progress.0.load(Ordering::Relaxed), self.progress.1.load(Ordering::Relaxed))
    }
    fn progress_unit(&self) -> crate::ProgressUnit {
        self.unit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moeplace_core::trace::{Phase, TokenRef};

    /// Yields `left` one-token batches, then an error if `fail`; counts its yields.
    struct Counted {
        shape: ModelShape,
        left: usize,
        fail: bool,
        yielded: Arc<AtomicU64>,
    }

    impl Iterator for Counted {
        type Item = Result<TokenBatch, FormatError>;
        fn next(&mut self) -> Option<Self::Item> {
            if self.left == 0 {
                return std::mem::take(&mut self.fail)
                    .then(|| Err(FormatError::file(std::path::Path::new("t"), "broken at the end")));
            }
            self.left -= 1;
            self.yielded.fetch_add(1, Ordering::Relaxed);
            let mut b = TokenBatch::new(self.shape);
            let token = TokenRef {
                request: "r",
                family: None,
                phase: Some(Phase::Decode),
                position: self.left as u32,
                experts: &[0],
                gate_weights: None,
            };
            b.push(token).unwrap();
            Some(Ok(b))
        }
    }

    impl TraceReader for Counted {
        fn shape(&self) -> ModelShape {
            self.shape
        }
    }

    #[test]
    fn same_batches_in_order_then_the_error() {
        let shape = ModelShape::new(1, 2, 1).unwrap();
        let r = ReadAhead::new(Box::new(Counted { shape, left: 5, fail: true, yielded: Default::default() }));
        let got: Vec<_> = r.collect();
        assert_eq!(got.len(), 6);
        let positions: Vec<u32> = got[..5].iter().map(|b| b.as_ref().unwrap().positions()[0]).collect();
        assert_eq!(positions, vec![4, 3, 2, 1, 0]);
        assert!(got[5].as_ref().unwrap_err().to_string().contains("broken at the end"));
    }

    #[test]
    fn dropping_early_stops_reading() {
        let shape = ModelShape::new(1, 2, 1).unwrap();
        let yielded = Arc::new(AtomicU64::new(0));
        let inner = Counted { shape, left: 1000, fail: false, yielded: Arc::clone(&yielded) };
        let mut r = ReadAhead::new(Box::new(inner));
        assert!(r.next().unwrap().is_ok());
        drop(r);
        // One taken, DEPTH queued, one blocked in send when the consumer hung up.
        assert!(yielded.load(Ordering::Relaxed) <= 2 + DEPTH as u64, "read {yielded:?} batches");
    }
}
