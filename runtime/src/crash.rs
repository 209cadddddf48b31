//! Whether the runtime is dropping a crashed actor's mailbox: what an unanswered reply
//! (and a call's figures) then report is a panic, not a stop. Its own module, because the
//! reply, the figures and the supervisor all read it and none of them may import another.

use std::cell::Cell;

thread_local! {
    /// Set while the runtime drops the mailbox of an actor that panicked.
    static CRASH_DROP: Cell<bool> = const { Cell::new(false) };
}

/// Whether the runtime is dropping a crashed actor's mailbox now.
pub(crate) fn dropping_crash() -> bool {
    CRASH_DROP.with(|c| c.get())
}

/// Runs `f` (dropping a crashed actor's state) so that unanswered replies report a panic.
/// The flag is reset even if `f` unwinds.
pub(crate) fn dropping_crashed<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CRASH_DROP.with(|c| c.set(false));
        }
    }
    CRASH_DROP.with(|c| c.set(true));
    let _reset = Reset;
    f()
}
