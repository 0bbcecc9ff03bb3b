//! When a failed S3 request is tried again, and after how long: pure decisions.
//!
//! Throttling (503 SlowDown, 429) and server errors (500, 502, 504) are passing states of a
//! healthy store, as are connections that could not be made or were cut: each is tried again
//! with exponential backoff and full jitter (AWS's advice), a few times, inside one store call.
//! Anything else (a 4xx: wrong key, missing bucket, an upload id the store no longer knows)
//! is an answer, not a hiccup, and is returned at once.

use std::time::Duration;

/// Attempts per request, the first included.
pub const ATTEMPTS: u32 = 5;
/// The backoff before the second attempt; doubled for each later one.
const BASE: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
const CAP: Duration = Duration::from_secs(4);

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer with this status.
    Status(u16),
    /// No answer: the connection failed, was cut or timed out.
    NoAnswer,
}

/// Whether `outcome` is worth another attempt.
pub fn transient(outcome: Outcome) -> bool {
    match outcome {
        Outcome::Status(s) => matches!(s, 429 | 500 | 502 | 503 | 504),
        Outcome::NoAnswer => true,
    }
}

/// The wait before attempt `attempt + 1` (`attempt` counts from 1) after a transient outcome, or
/// `None` when no attempt is left. `random` is any uniformly random value (full jitter: the
/// wait is uniform in `[0, min(CAP, BASE * 2^(attempt-1)))`).
pub fn backoff(attempt: u32, random: u64) -> Option<Duration> {
    if attempt >= ATTEMPTS {
        return None;
    }
    let ceiling = BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(CAP);
    // `random / 2^64` of the ceiling.
    let nanos = (u128::from(random) * ceiling.as_nanos()) >> 64;
    Some(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_server_errors_and_lost_connections_are_transient() {
        for s in [429, 500, 502, 503, 504] {
            assert!(transient(Outcome::Status(s)), "{s}");
        }
        assert!(transient(Outcome::NoAnswer));
        for s in [200, 204, 301, 400, 403, 404, 409, 412, 416, 501] {
            assert!(!transient(Outcome::Status(s)), "{s}");
        }
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_full_jitter_and_ends() {
        // The largest random value gives (just under) the ceiling of each attempt.
        let top = |attempt| backoff(attempt, u64::MAX).unwrap();
        assert!(top(1) < Duration::from_millis(100));
        assert!(top(2) < Duration::from_millis(200) && top(2) > Duration::from_millis(100));
        assert!(top(4) < Duration::from_millis(800) && top(4) > Duration::from_millis(400));
        assert_eq!(
            backoff(1, 0),
            Some(Duration::ZERO),
            "full jitter reaches zero"
        );
        assert_eq!(backoff(ATTEMPTS, 7), None, "no attempt is left");
        // The cap holds however far the count goes (no overflow either).
        for attempt in 1..ATTEMPTS {
            assert!(backoff(attempt, u64::MAX).unwrap() < CAP);
        }
    }
}
