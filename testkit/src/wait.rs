//! Bounded waiting for tests, so that a broken test fails with a message
//! instead of hanging: [`wait_until`] (a blocking poll, for tests that
//! drive processes from plain threads), [`wait_until_async`] (the same
//! inside a tokio runtime) and [`within`] (a deadline on a future).
//!
//! Both polls check at once, then back off from [`FIRST_POLL`] to
//! [`MAX_POLL`] between checks: a condition that holds quickly is seen
//! within milliseconds, and one that is expensive to check (a
//! `fs-client status` process, a directory walk) is not checked more than
//! ten times a second.

use std::future::Future;
use std::time::{Duration, Instant};

/// The first pause between two checks of a condition.
pub const FIRST_POLL: Duration = Duration::from_millis(10);

/// The longest pause between two checks of a condition; each pause doubles
/// the one before up to this.
pub const MAX_POLL: Duration = Duration::from_millis(100);

/// The pause after `pause`.
fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(MAX_POLL)
}

/// Checks `cond` until it holds or `timeout` passes, blocking the thread
/// between checks (see the module doc for the pauses). The condition is
/// always checked at least once, and once more at or after the deadline.
///
/// Returns how long it took until `cond` held, or `None` on timeout: the
/// caller fails with its own message, usually with the last state it saw
/// (`.expect("…")` when there is nothing to add).
///
/// Do not call it on a tokio runtime thread (it would block the runtime):
/// use [`wait_until_async`] there.
pub fn wait_until(mut cond: impl FnMut() -> bool, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut pause = FIRST_POLL;
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return None;
        }
        std::thread::sleep(pause.min(timeout - elapsed));
        pause = next_pause(pause);
    }
}

/// Like [`wait_until`] for async code: awaits `cond()` until it yields
/// `true` or `timeout` passes, sleeping on the tokio timer between checks.
/// A synchronous check is written `|| async { check() }`.
///
/// Returns how long it took, or `None` on timeout. A single `cond()` that
/// never finishes is not cut short: wrap the whole test in [`within`].
///
/// Panics if not called within a tokio runtime (tokio's timer needs one).
pub async fn wait_until_async<F, Fut>(mut cond: F, timeout: Duration) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let mut pause = FIRST_POLL;
    loop {
        if cond().await {
            return Some(start.elapsed());
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return None;
        }
        tokio::time::sleep(pause.min(timeout - elapsed)).await;
        pause = next_pause(pause);
    }
}

/// Runs `fut` with a deadline of `timeout` and returns its output.
///
/// Panics with "`what` did not finish within `timeout`" if it is not done
/// by then (the future is dropped). Panics if not called within a tokio
/// runtime.
pub async fn within<F: Future>(timeout: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(timeout, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {timeout:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_once_the_condition_holds_and_none_after_the_timeout() {
        let mut n = 0;
        let took = wait_until(
            || {
                n += 1;
                n == 3
            },
            Duration::from_secs(5),
        );
        assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "took {took:?}");
        assert_eq!(n, 3);
        let start = Instant::now();
        assert_eq!(wait_until(|| false, Duration::from_millis(150)), None);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(2), "waited {waited:?}");
    }

    #[tokio::test]
    async fn wait_until_async_returns_once_the_condition_holds_and_none_after_the_timeout() {
        let mut n = 0;
        let took = wait_until_async(
            || {
                n += 1;
                let done = n == 3;
                async move { done }
            },
            Duration::from_secs(5),
        )
        .await;
        assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "took {took:?}");
        assert_eq!(n, 3);
        assert_eq!(wait_until_async(|| async { false }, Duration::from_millis(150)).await, None);
    }

    #[tokio::test]
    async fn within_returns_the_output_in_time_and_panics_naming_what_after() {
        assert_eq!(within(Duration::from_secs(5), "a ready future", async { 7 }).await, 7);
        let late = tokio::spawn(within(
            Duration::from_millis(50),
            "a sleep",
            tokio::time::sleep(Duration::from_secs(60)),
        ));
        let err = late.await.expect_err("the late future panics");
        let msg = err.into_panic();
        let msg = msg.downcast_ref::<String>().map(String::as_str).unwrap_or_default();
        assert!(msg.contains("a sleep did not finish within"), "panic message: {msg}");
    }
}
