//! When to retry and how long to wait: exponential backoff with full jitter, reset whenever
//! the transfer makes progress, bounded by a count and a time without progress, honouring
//! the server's Retry-After.
//!
//! Written here rather than taken from a backoff crate because the budget must reset on
//! *progress* (bytes acknowledged), not on a successful call, and Retry-After must override
//! the computed delay; the crates available model neither.

use std::time::{Duration, Instant};

/// Limits and pacing of retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First backoff ceiling.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub max_delay: Duration,
    /// Give up after this many consecutive failures without progress.
    pub max_retries: u32,
    /// Give up once this long has passed without progress.
    pub max_time: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            max_retries: 20,
            max_time: Duration::from_secs(600),
        }
    }
}

/// Retry bookkeeping for one transfer.
#[derive(Debug)]
pub struct RetryState {
    policy: RetryPolicy,
    failures: u32,
    since: Instant,
    rng: u64,
    begun: bool,
}

impl RetryState {
    /// Fresh state at `now`.
    pub fn new(policy: RetryPolicy, now: Instant) -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Self::with_seed(policy, now, u64::from_le_bytes(seed))
    }

    /// Fresh state with a fixed random seed (tests).
    pub fn with_seed(policy: RetryPolicy, now: Instant, seed: u64) -> Self {
        Self {
            policy,
            failures: 0,
            since: now,
            rng: seed | 1,
            begun: false,
        }
    }

    /// The transfer moved forward: the budget starts again.
    pub fn progress(&mut self, now: Instant) {
        self.failures = 0;
        self.since = now;
        self.begun = true;
    }

    /// The transfer has begun: the server answered, or an earlier run left a record. From
    /// here on, an unreachable server is one restarting, and is waited for.
    pub fn begin(&mut self) {
        self.begun = true;
    }

    /// Whether [`RetryState::begin`] (or progress) happened.
    pub fn has_begun(&self) -> bool {
        self.begun
    }

    /// Consecutive failures without progress.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn random_unit(&mut self) -> f64 {
        // xorshift64*: plenty for jitter.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Records a failure at `now`; returns how long to wait before the next try, or `None`
    /// when the budget (count or time without progress) is spent.
    pub fn next_delay(&mut self, now: Instant, retry_after: Option<Duration>) -> Option<Duration> {
        self.failures += 1;
        let elapsed = now.saturating_duration_since(self.since);
        if self.failures > self.policy.max_retries || elapsed >= self.policy.max_time {
            return None;
        }
        let exp = self.failures.saturating_sub(1).min(30);
        let ceiling = self
            .policy
            .base
            .saturating_mul(1u32 << exp.min(20))
            .min(self.policy.max_delay);
        // Full jitter: anywhere in [0, ceiling), so many clients don't retry in step.
        let mut delay = ceiling.mul_f64(self.random_unit());
        if let Some(ra) = retry_after {
            delay = delay.max(ra.min(self.policy.max_delay.saturating_mul(4)));
        }
        // Never sleep past the time budget.
        Some(delay.min(self.policy.max_time.saturating_sub(elapsed)))
    }
}

/// Waits out a retryable failure, or ends the transfer: the one place where the decision to
/// retry is made, for uploads and downloads alike.
pub async fn wait_or_give_up(
    retry: &mut RetryState,
    err: crate::error::AttemptError,
    progress: &dyn crate::progress::ProgressSink,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), crate::error::ClientError> {
    use crate::error::{AttemptError, ClientError, ErrorKind};
    let (why, retry_after) = match err {
        AttemptError::Retry {
            why,
            retry_after,
            answered,
        } => {
            if answered {
                retry.begin();
            }
            (why, retry_after)
        }
        AttemptError::Fatal(e) => return Err(e),
        AttemptError::Unreachable(why) if !retry.has_begun() => {
            return Err(ClientError::new(ErrorKind::Unreachable, why));
        }
        AttemptError::Unreachable(why) => (why, None),
        AttemptError::Gone => {
            return Err(ClientError::new(
                ErrorKind::Refused,
                "the resource is gone on the server",
            ));
        }
        AttemptError::TooLarge { size } => (format!("server refused a {size}-byte request"), None),
    };
    let Some(delay) = retry.next_delay(Instant::now(), retry_after) else {
        return Err(ClientError::new(
            ErrorKind::Exhausted,
            format!(
                "giving up after {} failed attempts without progress (last: {why}); \
                 run the same command again to resume",
                retry.failures().saturating_sub(1)
            ),
        ));
    };
    progress.note(&format!("{why}; retrying in {:.1}s", delay.as_secs_f64()));
    tokio::select! {
        () = tokio::time::sleep(delay) => Ok(()),
        () = cancel.cancelled() => Err(ClientError::new(
            ErrorKind::Interrupted,
            "interrupted; run the same command again to resume",
        )),
    }
}

/// Parses Retry-After given in seconds (HTTP dates are rare here and treated as absent).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_retries: 5,
            max_time: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn unreachable_is_final_only_before_the_transfer_begins() {
        use crate::error::{AttemptError, ErrorKind};
        let cancel = tokio_util::sync::CancellationToken::new();
        let progress = crate::progress::NoProgress;
        let unreachable = || AttemptError::Unreachable("nothing listens on h:1".into());
        let mut r = RetryState::with_seed(policy(), Instant::now(), 7);
        let e = wait_or_give_up(&mut r, unreachable(), &progress, &cancel)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unreachable);
        assert_eq!(e.message, "nothing listens on h:1");
        r.begin();
        assert!(
            wait_or_give_up(&mut r, unreachable(), &progress, &cancel)
                .await
                .is_ok(),
            "retried once begun"
        );
        let mut r = RetryState::with_seed(policy(), Instant::now(), 7);
        r.progress(Instant::now());
        assert!(r.has_begun(), "progress means begun");
    }

    #[test]
    fn delays_grow_within_full_jitter_and_cap() {
        let t0 = Instant::now();
        let mut r = RetryState::with_seed(policy(), t0, 42);
        for i in 0..5u32 {
            let d = r.next_delay(t0, None).expect("within budget");
            let ceiling = (Duration::from_millis(100) * (1 << i)).min(Duration::from_secs(2));
            assert!(d < ceiling, "attempt {i}: {d:?} < {ceiling:?}");
        }
        assert_eq!(
            r.next_delay(t0, None),
            None,
            "sixth failure exceeds max_retries"
        );
    }

    #[test]
    fn progress_resets_the_budget() {
        let t0 = Instant::now();
        let mut r = RetryState::with_seed(policy(), t0, 7);
        for _ in 0..5 {
            assert!(r.next_delay(t0, None).is_some());
        }
        r.progress(t0);
        assert_eq!(r.failures(), 0);
        assert!(r.next_delay(t0, None).is_some());
    }

    #[test]
    fn time_budget_without_progress() {
        let t0 = Instant::now();
        let mut r = RetryState::with_seed(policy(), t0, 9);
        assert!(
            r.next_delay(t0 + Duration::from_secs(59), None).unwrap() <= Duration::from_secs(1)
        );
        assert_eq!(r.next_delay(t0 + Duration::from_secs(61), None), None);
    }

    #[test]
    fn retry_after_is_honoured() {
        let t0 = Instant::now();
        let mut r = RetryState::with_seed(policy(), t0, 3);
        let d = r.next_delay(t0, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(d, Duration::from_secs(5));
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn jitter_spreads() {
        let t0 = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for seed in 0..50 {
            let mut r = RetryState::with_seed(policy(), t0, seed);
            r.next_delay(t0, None);
            r.next_delay(t0, None);
            seen.insert(r.next_delay(t0, None).unwrap().as_micros() / 10_000);
        }
        assert!(seen.len() > 10, "delays are spread: {seen:?}");
    }
}
