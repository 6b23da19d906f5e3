//! A token bucket that limits the bytes per second of background copies.
//!
//! The classic token bucket (tokens accrue at `rate` up to a burst), in
//! the "debt" form: a caller takes its bytes at once, possibly driving the
//! balance negative, and then sleeps until the balance would be back at
//! zero. The average rate over any window longer than the burst stays at
//! or below `rate`, whatever the sizes asked for (a single request larger
//! than the burst is allowed; it just waits longer), and concurrent callers
//! queue behind each other's debt. No lock is held while sleeping.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How many seconds of `rate` the bucket holds when full.
const BURST_SECS: f64 = 0.25;

/// A byte-rate limiter shared by concurrent tasks.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    /// Bytes per second; 0 = unlimited.
    rate: f64,
    /// Largest balance in bytes.
    burst: f64,
    /// (balance in bytes, when it was computed).
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket refilling at `bytes_per_sec` (0 = no limit).
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec as f64;
        let burst = rate * BURST_SECS;
        TokenBucket { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Takes `bytes` from the bucket and waits as long as the rate
    /// requires.
    pub(crate) async fn acquire(&self, bytes: u64) {
        if self.rate <= 0.0 {
            return;
        }
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let refill = now.duration_since(st.1).as_secs_f64() * self.rate;
            st.0 = (st.0 + refill).min(self.burst) - bytes as f64;
            st.1 = now;
            if st.0 < 0.0 {
                Duration::from_secs_f64(-st.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_average_rate_stays_at_the_limit() {
        // 10 kB/s with a 2.5 kB burst: 10 × 1 kB takes (10 − 2.5) / 10 s.
        let b = TokenBucket::new(10_000);
        let start = std::time::Instant::now();
        for _ in 0..10 {
            b.acquire(1000).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((0.7..2.0).contains(&took), "took {took} s");
    }

    #[tokio::test]
    async fn concurrent_callers_share_the_rate_and_zero_means_unlimited() {
        let b = std::sync::Arc::new(TokenBucket::new(20_000));
        let start = std::time::Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    for _ in 0..5 {
                        b.acquire(1000).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // 20 kB at 20 kB/s with a 5 kB burst: 0.75 s.
        let took = start.elapsed().as_secs_f64();
        assert!((0.7..2.0).contains(&took), "took {took} s");
        let free = TokenBucket::new(0);
        let start = std::time::Instant::now();
        free.acquire(u64::MAX).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
