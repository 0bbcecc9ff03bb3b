//! Progress reporting and rate limiting, shared by every stream of a transfer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Receives progress; the CLI draws bars with it, a library user may log or ignore it.
pub trait ProgressSink: Send + Sync {
    /// A transfer of `total` bytes starts (or resumes at `position`).
    fn start(&self, name: &str, total: u64, position: u64);
    /// Bytes now known sent (absolute position; may go back after a failure).
    fn position(&self, position: u64);
    /// A notice worth showing (retrying, resumed, not verified...).
    fn note(&self, message: &str);
    /// The transfer ended.
    fn finish(&self);
    /// How many streams carry the transfer now (1 unless it runs in parallel).
    fn streams(&self, _n: usize) {}
    /// A transfer of a length not known until its end (standard input) starts.
    fn start_unknown(&self, name: &str) {
        self.start(name, 0, 0);
    }
}

/// `n` bytes for people: `512 B`, `1.5 KiB`, `3.1 GiB` (binary units, as the size flags).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A sink that ignores everything.
#[derive(Debug, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn start(&self, _: &str, _: u64, _: u64) {}
    fn position(&self, _: u64) {}
    fn note(&self, message: &str) {
        tracing::info!("{message}");
    }
    fn finish(&self) {}
}

/// A token bucket: at most `rate` bytes per second on average, bursts up to a tenth of a
/// second's worth.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter of `rate` bytes/s (> 0).
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1);
        Self {
            rate,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    /// How long to wait before sending `n` more bytes (and books them).
    pub fn reserve(&self, n: u64) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let burst = self.rate as f64 / 10.0;
        let (tokens, last) = *st;
        let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate as f64;
        let available = (tokens + refill).min(burst) - n as f64;
        *st = (available, now);
        if available >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-available / self.rate as f64)
        }
    }

    /// Waits until `n` more bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        let d = self.reserve(n);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

/// `data` as a request body, paced by `limiter` (if any) a block at a time (a body built from
/// bytes in memory would otherwise leave at once, whatever the limit), calling `each_block`
/// with each block's length as it is handed over (the caller's stall detector and progress).
/// Small blocks (slices of `data`, no copies) let many bodies share the budget in turn: 32 files at 1M each move every half
/// second, where whole 64 KiB bodies would leave the last one silent for two seconds, long
/// enough for a server's minimum body rate to cut it.
pub fn paced_body(
    data: bytes::Bytes,
    limiter: Option<Arc<RateLimiter>>,
    each_block: impl Fn(u64) + Send + Sync + 'static,
) -> reqwest::Body {
    const BLOCK: usize = 16 << 10;
    let each_block = Arc::new(each_block);
    let blocks = futures_util::stream::unfold((data, limiter), move |(mut rest, limiter)| {
        let each_block = each_block.clone();
        async move {
            if rest.is_empty() {
                return None;
            }
            let block = rest.split_to(rest.len().min(BLOCK));
            if let Some(l) = &limiter {
                l.acquire(block.len() as u64).await;
            }
            each_block(block.len() as u64);
            Some((Ok::<_, std::io::Error>(block), (rest, limiter)))
        }
    });
    reqwest::Body::wrap_stream(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3_328_599_654), "3.1 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn limiter_paces_to_the_rate() {
        let l = RateLimiter::new(1_000_000);
        let mut wait = Duration::ZERO;
        for _ in 0..20 {
            // Each reservation says when its bytes may go, counting those booked before.
            wait = l.reserve(100_000);
        }
        // 2 MB booked at once at 1 MB/s: the last bytes may go about 2 s from now.
        assert!(wait > Duration::from_millis(1900), "{wait:?}");
        assert!(wait < Duration::from_millis(2100), "{wait:?}");
    }
}
