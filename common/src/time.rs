//! Wall-clock timestamps as they travel between processes and are stored.
//!
//! A [`Timestamp`] is valid when its nanoseconds are below 10⁹ and its
//! seconds lie in [[`MIN_SECS`], [`MAX_SECS`]], the range ext4 stores
//! (1901-12-13T20:45:52Z to 2446-05-10T22:38:55Z). dirsvc refuses any other
//! time a caller sends ([`Timestamp::validate`]), and readers convert with
//! [`Timestamp::to_system_time`], which refuses one instead of panicking,
//! so a bad time in a message or a record is an error for that request
//! only.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Earliest valid second: ext4's `s_time_min`, −2³¹
/// (1901-12-13T20:45:52Z).
pub const MIN_SECS: i64 = -(1 << 31);

/// Latest valid second: ext4's `s_time_max` with extra timestamp bits,
/// 2³⁴ − 1 − 2³¹ (2446-05-10T22:38:55Z).
pub const MAX_SECS: i64 = (1 << 34) - 1 - (1 << 31);

/// Nanoseconds in one second; valid nanoseconds are below it.
pub const NANOS_PER_SEC: u32 = 1_000_000_000;

/// A point in wall-clock time: seconds and nanoseconds since the Unix epoch
/// (negative seconds are before 1970). Used for atime, mtime, ctime and
/// heartbeats; the FUSE adapter converts to and from [`SystemTime`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z, in [[`MIN_SECS`],
    /// [`MAX_SECS`]] when valid.
    pub secs: i64,
    /// Nanoseconds within the second, 0..1_000_000_000 when valid.
    pub nanos: u32,
}

/// UTC calendar fields of `secs` since the Unix epoch: (year, month 1–12,
/// day 1–31, hour, minute, second). Proleptic Gregorian, from Howard
/// Hinnant's `civil_from_days`; any `i64` input gives a result.
pub fn utc_fields(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Checks that this is a time p2pfs stores: nanoseconds below 10⁹ and
    /// seconds in [[`MIN_SECS`], [`MAX_SECS`]].
    ///
    /// Errors: [`Error::InvalidTimestamp`] naming both fields.
    pub fn validate(&self) -> Result<(), Error> {
        if self.nanos < NANOS_PER_SEC && (MIN_SECS..=MAX_SECS).contains(&self.secs) {
            Ok(())
        } else {
            Err(Error::InvalidTimestamp { secs: self.secs, nanos: self.nanos })
        }
    }

    /// The same time as a [`SystemTime`], for a valid timestamp. Never
    /// panics, whatever the fields hold.
    ///
    /// Errors: [`Error::InvalidTimestamp`] as [`Timestamp::validate`].
    pub fn to_system_time(self) -> Result<SystemTime, Error> {
        self.validate()?;
        let whole = Duration::from_secs(self.secs.unsigned_abs());
        let t = if self.secs >= 0 { UNIX_EPOCH.checked_add(whole) } else { UNIX_EPOCH.checked_sub(whole) };
        t.and_then(|t| t.checked_add(Duration::from_nanos(u64::from(self.nanos))))
            .ok_or(Error::InvalidTimestamp { secs: self.secs, nanos: self.nanos })
    }

    /// This time moved into the valid range: seconds clamped to
    /// [[`MIN_SECS`], [`MAX_SECS`]] (the nanoseconds of a clamped time
    /// become 0 at the low end and 999,999,999 at the high end), an invalid
    /// nanosecond count cut to 999,999,999. What ext4 does with a time it
    /// cannot store (`utimensat` far in the past or future).
    pub fn clamped(self) -> Timestamp {
        if self.secs < MIN_SECS {
            Timestamp { secs: MIN_SECS, nanos: 0 }
        } else if self.secs > MAX_SECS {
            Timestamp { secs: MAX_SECS, nanos: NANOS_PER_SEC - 1 }
        } else {
            Timestamp { secs: self.secs, nanos: self.nanos.min(NANOS_PER_SEC - 1) }
        }
    }
}

impl From<SystemTime> for Timestamp {
    /// Exact within ±2⁶³ seconds of the epoch; saturates beyond (such a time
    /// is not valid anyway, see [`Timestamp::validate`]).
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => {
                Timestamp { secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() }
            }
            Err(e) => {
                let d = e.duration();
                let secs = i64::try_from(d.as_secs()).map_or(i64::MIN, |s| -s);
                if d.subsec_nanos() == 0 {
                    Timestamp { secs, nanos: 0 }
                } else {
                    Timestamp { secs: secs.saturating_sub(1), nanos: NANOS_PER_SEC - d.subsec_nanos() }
                }
            }
        }
    }
}

impl TryFrom<Timestamp> for SystemTime {
    type Error = Error;

    /// As [`Timestamp::to_system_time`].
    fn try_from(t: Timestamp) -> Result<Self, Error> {
        t.to_system_time()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_before_and_after_epoch() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            UNIX_EPOCH - Duration::new(5, 250),
            UNIX_EPOCH - Duration::from_secs(86_400),
        ] {
            assert_eq!(Timestamp::from(t).to_system_time().unwrap(), t);
        }
    }

    #[test]
    fn the_valid_range_is_what_ext4_stores() {
        for ok in [
            Timestamp { secs: 0, nanos: 0 },
            Timestamp { secs: MIN_SECS, nanos: 0 },
            Timestamp { secs: MAX_SECS, nanos: NANOS_PER_SEC - 1 },
            Timestamp { secs: -1, nanos: 999_999_999 },
        ] {
            assert!(ok.validate().is_ok(), "{ok:?}");
            assert_eq!(Timestamp::from(ok.to_system_time().unwrap()), ok);
        }
        // 2446-05-10T22:38:55Z, as ext4 documents its upper limit.
        assert_eq!(MAX_SECS, 15_032_385_535);
        assert_eq!(MIN_SECS, -2_147_483_648);
    }

    #[test]
    fn invalid_times_are_errors_not_panics() {
        for bad in [
            Timestamp { secs: 0, nanos: NANOS_PER_SEC },
            Timestamp { secs: 0, nanos: u32::MAX },
            Timestamp { secs: MAX_SECS + 1, nanos: 0 },
            Timestamp { secs: MIN_SECS - 1, nanos: 0 },
            Timestamp { secs: i64::MAX, nanos: u32::MAX },
            Timestamp { secs: i64::MIN, nanos: 0 },
        ] {
            assert!(matches!(bad.validate(), Err(Error::InvalidTimestamp { .. })), "{bad:?}");
            assert!(SystemTime::try_from(bad).is_err(), "{bad:?}");
            assert!(bad.clamped().validate().is_ok(), "{bad:?}");
        }
        assert_eq!(
            Timestamp { secs: i64::MAX, nanos: 5 }.clamped(),
            Timestamp { secs: MAX_SECS, nanos: 999_999_999 }
        );
        assert_eq!(
            Timestamp { secs: 7, nanos: u32::MAX }.clamped(),
            Timestamp { secs: 7, nanos: 999_999_999 }
        );
    }

    #[test]
    fn conversion_from_extreme_system_times_saturates() {
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        assert!(Timestamp::from(far).validate().is_err());
        assert_eq!(Timestamp::from(far).clamped().secs, MAX_SECS);
        if let Some(past) = UNIX_EPOCH.checked_sub(Duration::new(i64::MAX as u64, 5)) {
            assert!(Timestamp::from(past).validate().is_err());
        }
    }
}
