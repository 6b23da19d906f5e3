//! Exponential backoff shared by the workers that talk to dirsvc.

use std::time::Duration;

/// First retry delay after a failure.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// Exponential backoff: [`MIN_BACKOFF`], doubling up to a cap.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    /// A backoff whose delays never exceed `cap` (nor drop below
    /// [`MIN_BACKOFF`]).
    pub(crate) fn new(cap: Duration) -> Self {
        let cap = cap.max(MIN_BACKOFF);
        Backoff { next: MIN_BACKOFF, cap }
    }

    /// Back to the shortest delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = MIN_BACKOFF;
    }

    /// The delay to wait now; doubles the following one.
    pub(crate) fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(300));
        let steps: Vec<_> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.step().as_millis(), 50);
    }

    #[test]
    fn a_cap_below_the_minimum_is_raised_to_it() {
        let mut b = Backoff::new(Duration::from_millis(1));
        assert_eq!(b.step(), MIN_BACKOFF);
        assert_eq!(b.step(), MIN_BACKOFF);
    }
}
