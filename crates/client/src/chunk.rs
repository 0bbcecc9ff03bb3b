//! How big the next request body should be: a pure controller fed with what happened to the
//! previous ones. Start moderate; grow while requests are fast and clean; halve after an
//! error or a stall; never above what the server accepts (learned from 413).

use std::time::Duration;

/// Bounds and aim of the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkBounds {
    /// First size.
    pub initial: u64,
    /// Never below this.
    pub min: u64,
    /// Never above this.
    pub max: u64,
    /// Requests this long are "right": shorter ones grow the chunk.
    pub target: Duration,
}

impl Default for ChunkBounds {
    fn default() -> Self {
        Self {
            initial: 8 << 20,
            min: 64 << 10,
            max: 256 << 20,
            target: Duration::from_secs(2),
        }
    }
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted whole.
    Ok {
        /// Body size.
        bytes: u64,
        /// Time from first byte sent to the response.
        took: Duration,
    },
    /// Failed (network error, stall, 5xx, checksum mismatch).
    Failed,
    /// The server refused the body size (413).
    TooLarge {
        /// The refused size.
        bytes: u64,
    },
}

/// The chunk-size controller.
#[derive(Debug, Clone)]
pub struct ChunkSizeController {
    bounds: ChunkBounds,
    size: u64,
    /// The largest size the server is known to accept (after a 413).
    ceiling: u64,
    /// The largest body the server has accepted so far.
    accepted: u64,
}

impl ChunkSizeController {
    /// A controller within `bounds`.
    pub fn new(bounds: ChunkBounds) -> Self {
        let min = bounds.min.max(1);
        let max = bounds.max.max(min);
        let bounds = ChunkBounds { min, max, ..bounds };
        Self {
            size: bounds.initial.clamp(min, max),
            ceiling: max,
            accepted: 0,
            bounds,
        }
    }

    /// Size of the next body.
    pub fn next_size(&self) -> u64 {
        self.size
    }

    /// The largest size the server accepts, as far as known.
    pub fn ceiling(&self) -> u64 {
        self.ceiling
    }

    /// The largest body the server has accepted so far: a larger one may be refused (413).
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Lowers the ceiling to a server's declared limit.
    pub fn limit(&mut self, max: u64) {
        self.ceiling = max.clamp(self.bounds.min, self.bounds.max);
        self.size = self.size.min(self.ceiling);
    }

    /// Feeds one outcome.
    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok { bytes, took } => {
                self.accepted = self.accepted.max(bytes);
                // Only a full-size request says something about the size; a short last
                // chunk does not.
                if bytes < self.size {
                    return;
                }
                if took < self.bounds.target / 2 {
                    self.size = self.size.saturating_mul(2);
                } else if took > self.bounds.target * 2 {
                    self.size /= 2;
                }
            }
            Outcome::Failed => self.size /= 2,
            Outcome::TooLarge { bytes } => {
                self.ceiling = (bytes / 2).max(self.bounds.min);
                self.size = self.size.min(bytes / 2);
            }
        }
        self.size = self.size.clamp(self.bounds.min, self.ceiling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn grows_when_fast_shrinks_on_failure_and_respects_bounds() {
        let mut c = ChunkSizeController::new(ChunkBounds::default());
        assert_eq!(c.next_size(), 8 << 20);
        for _ in 0..10 {
            let s = c.next_size();
            c.record(Outcome::Ok {
                bytes: s,
                took: ms(100),
            });
        }
        assert_eq!(c.next_size(), 256 << 20, "capped at max");
        c.record(Outcome::Failed);
        assert_eq!(c.next_size(), 128 << 20);
        for _ in 0..40 {
            c.record(Outcome::Failed);
        }
        assert_eq!(c.next_size(), 64 << 10, "floored at min");
    }

    #[test]
    fn learns_the_server_limit_from_413() {
        let mut c = ChunkSizeController::new(ChunkBounds::default());
        c.record(Outcome::TooLarge { bytes: 8 << 20 });
        assert_eq!(c.next_size(), 4 << 20);
        c.record(Outcome::TooLarge { bytes: 4 << 20 });
        c.record(Outcome::TooLarge { bytes: 2 << 20 });
        c.record(Outcome::TooLarge { bytes: 1 << 20 });
        c.record(Outcome::TooLarge { bytes: 512 << 10 });
        assert_eq!(c.next_size(), 256 << 10, "rustus's default limit reached");
        assert_eq!(c.accepted(), 0, "nothing accepted yet");
        for _ in 0..10 {
            let s = c.next_size();
            c.record(Outcome::Ok {
                bytes: s,
                took: ms(1),
            });
        }
        assert_eq!(c.next_size(), 256 << 10, "never grows past a refused size");
        assert_eq!(c.accepted(), 256 << 10);
    }

    #[test]
    fn slow_requests_shrink_and_short_tails_are_ignored() {
        let mut c = ChunkSizeController::new(ChunkBounds::default());
        c.record(Outcome::Ok {
            bytes: 8 << 20,
            took: ms(5000),
        });
        assert_eq!(c.next_size(), 4 << 20);
        c.record(Outcome::Ok {
            bytes: 1000,
            took: ms(1),
        });
        assert_eq!(c.next_size(), 4 << 20);
        c.record(Outcome::Ok {
            bytes: 4 << 20,
            took: ms(2000),
        });
        assert_eq!(c.next_size(), 4 << 20, "on target: unchanged");
    }
}
