//! Panics inside a dependency's decoder, turned into errors.
//!
//! The Parquet and Arrow crates panic on some corrupted files (docs/RELIABILITY.md
//! lists the inputs and messages) instead of returning an error. Readers call the
//! decoder through [`contain`], on whichever thread decodes (the read-ahead thread
//! too), so such a file gives the same clear error naming it as any other bad input.
//! The default panic message is silenced for contained panics only: a panic in
//! moeplace's own code still prints and aborts the command.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

thread_local! {
    /// Depth of [`contain`] calls on this thread.
    static CONTAINING: Cell<u32> = const { Cell::new(0) };
}

static HOOK: Once = Once::new();
static CONTAINED: AtomicU64 = AtomicU64::new(0);

/// Panics contained so far in this process (tests use it to find panicking inputs).
pub fn contained_panics() -> u64 {
    CONTAINED.load(Ordering::Relaxed)
}

/// Runs `f`; a panic inside becomes `Err` with its message.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CONTAINING.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
    CONTAINING.with(|c| c.set(c.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(c.get() - 1));
    r.map_err(|p| {
        CONTAINED.fetch_add(1, Ordering::Relaxed);
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        // One line: the message is shown after the file name.
        msg.lines().next().unwrap_or("").to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_normal_results_pass() {
        assert_eq!(contain(|| 3), Ok(3));
        let before = contained_panics();
        let e = contain(|| -> u32 { panic!("Decoder for dict should have been set") }).unwrap_err();
        assert_eq!(e, "Decoder for dict should have been set");
        assert_eq!(contained_panics(), before + 1);
        let e = std::thread::spawn(|| contain(|| -> u32 { panic!("on {} thread", "another") }))
            .join()
            .expect("contained on its own thread");
        assert_eq!(e.unwrap_err(), "on another thread");
    }
}
