//! The panic policy of every p2pfs binary: a panic is logged (version and
//! backtrace, through `tracing`) and then aborts the process, so a panicked
//! task or thread can never leave a half-alive daemon or mount behind.
//!
//! This is what `panic = "abort"` in the release profile did; doing it in
//! a hook instead keeps the test harness (which needs unwinding) and the
//! binaries on one build of every dependency.

/// Installs the hook: log `panic: …` at ERROR with the binary's version
/// (`version`, e.g. `env!("CARGO_PKG_VERSION")`) and a backtrace, then
/// `std::process::abort()`. Call it once, after the log subscriber is set
/// up.
pub fn abort_on_panic(version: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(
            version,
            backtrace = %std::backtrace::Backtrace::force_capture(),
            "panic: {info}"
        );
        std::process::abort();
    }));
}
