//! How many streams to run: a pure controller fed with goodput measurements.
//!
//! It starts with [`ParallelBounds::initial`] streams and grows like TCP's slow start: it
//! doubles the count while each doubling raises total goodput by at least half of what the
//! added streams could bring (the link is still limited per stream). Once a step pays less, it
//! adds one stream at a time while each addition raises goodput by a clear margin; when an
//! increase does not pay, it takes it back and holds. After holding for a while it probes one
//! more stream again, so it follows a network whose character changes. On loopback, where one
//! stream already fills the machine, it stays where it started (or one above); on a long, lossy
//! link, where each TCP flow is limited by its own congestion window, it reaches the knee in a
//! few windows and keeps probing from there.

/// Settings of the controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParallelBounds {
    /// Never more streams than this.
    pub max: usize,
    /// Streams to start with.
    pub initial: usize,
    /// An added stream must raise goodput by this fraction to stay (e.g. 0.1 = 10 %).
    pub gain: f64,
    /// Windows to hold after a failed probe before probing again.
    pub hold_windows: u32,
}

impl Default for ParallelBounds {
    fn default() -> Self {
        Self {
            max: 32,
            initial: 1,
            gain: 0.10,
            hold_windows: 8,
        }
    }
}

/// Decides the stream count from per-window goodput.
#[derive(Debug, Clone)]
pub struct ParallelismController {
    bounds: ParallelBounds,
    streams: usize,
    /// Doubling rather than adding one.
    slow_start: bool,
    /// Goodput and stream count measured before the last increase, if probing.
    before_probe: Option<(f64, usize)>,
    hold: u32,
}

impl ParallelismController {
    /// Starts at `bounds.initial` streams (at least one, at most `bounds.max`).
    pub fn new(bounds: ParallelBounds) -> Self {
        let max = bounds.max.max(1);
        Self {
            bounds: ParallelBounds { max, ..bounds },
            streams: bounds.initial.clamp(1, max),
            slow_start: true,
            before_probe: None,
            hold: 0,
        }
    }

    /// Streams to run now.
    pub fn streams(&self) -> usize {
        self.streams
    }

    /// Feeds the goodput (bytes/s) measured over the last window with [`streams`](Self::streams)
    /// streams; returns the stream count for the next window.
    pub fn record(&mut self, goodput: f64) -> usize {
        if let Some((before, from)) = self.before_probe.take() {
            let gain = if before > 0.0 {
                goodput / before - 1.0
            } else if goodput > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            // What the added streams would bring at the old per-stream rate.
            let linear = (self.streams - from) as f64 / from as f64;
            if self.slow_start && gain >= linear / 2.0 {
                // Still limited per stream: keep doubling.
            } else if gain >= self.bounds.gain {
                // It paid, but less than half of linear: near the knee. Keep it and go on
                // one stream at a time.
                self.slow_start = false;
            } else {
                // The extra streams did not pay: take them back and hold.
                self.streams = from;
                self.slow_start = false;
                self.hold = self.bounds.hold_windows;
                return self.streams;
            }
        } else if self.hold > 0 {
            self.hold -= 1;
            return self.streams;
        }
        if self.streams < self.bounds.max {
            self.before_probe = Some((goodput, self.streams));
            self.streams = if self.slow_start {
                self.streams * 2
            } else {
                self.streams + 1
            }
            .min(self.bounds.max);
        }
        self.streams
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link where each TCP stream gets at most `per_stream` (its congestion window over the
    /// RTT, the Mathis limit under loss) and all share `capacity`; `noise` in [0, 1).
    fn link(streams: usize, per_stream: f64, capacity: f64, noise: f64) -> f64 {
        (streams as f64 * per_stream).min(capacity) * (1.0 - noise)
    }

    fn run(per_stream: f64, capacity: f64, windows: usize, seed: u64) -> (usize, f64) {
        run_from(1, per_stream, capacity, windows, seed)
    }

    fn run_from(
        initial: usize,
        per_stream: f64,
        capacity: f64,
        windows: usize,
        seed: u64,
    ) -> (usize, f64) {
        let mut c = ParallelismController::new(ParallelBounds {
            initial,
            ..ParallelBounds::default()
        });
        let mut rng = seed | 1;
        let mut total = 0.0;
        for _ in 0..windows {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let noise = (rng % 1000) as f64 / 1000.0 * 0.05;
            let g = link(c.streams(), per_stream, capacity, noise);
            total += g;
            c.record(g);
        }
        (c.streams(), total / windows as f64)
    }

    #[test]
    fn loopback_like_stays_low() {
        // One stream already fills the machine.
        let (n, _) = run(900e6, 900e6, 60, 1);
        assert!(n <= 2, "settled on {n} streams");
        // Started higher, it does not climb either.
        let (n, _) = run_from(4, 900e6, 900e6, 60, 1);
        assert!((4..=5).contains(&n), "settled on {n} streams");
    }

    #[test]
    fn long_lossy_link_climbs_and_reaches_near_best_fixed() {
        // 50 ms RTT, 1 % loss: about 1.5 MB/s per flow; a 100 Mbit/s link.
        let per_stream = 1.5e6;
        let capacity = 12.5e6;
        let best_fixed = [1usize, 2, 4, 8]
            .iter()
            .map(|&n| link(n, per_stream, capacity, 0.0))
            .fold(0.0, f64::max);
        for seed in 1..20 {
            let (n, avg) = run(per_stream, capacity, 120, seed);
            assert!(n >= 8, "seed {seed}: only {n} streams");
            assert!(
                avg >= 0.9 * best_fixed * 0.95,
                "seed {seed}: average {avg:.0} vs best fixed {best_fixed:.0}"
            );
        }
    }

    #[test]
    fn slow_start_reaches_the_knee_in_a_few_windows() {
        // 1.1 MB/s per flow, 12.5 MB/s link: the knee is at 11-12 streams.
        let mut c = ParallelismController::new(ParallelBounds {
            initial: 4,
            ..ParallelBounds::default()
        });
        let seen: Vec<usize> = (0..4)
            .map(|_| c.record(link(c.streams(), 1.1e6, 12.5e6, 0.0)))
            .collect();
        // 4 → 8 doubles goodput; 8 → 16 pays 42 %, less than half of linear: keep 16, then
        // one at a time, and 17 does not pay: back to 16.
        assert_eq!(seen, vec![8, 16, 17, 16]);
        // From one stream, doubling gets there in as many windows as it takes to double.
        let mut c = ParallelismController::new(ParallelBounds::default());
        let seen: Vec<usize> = (0..4)
            .map(|_| c.record(link(c.streams(), 1.5e6, 12.5e6, 0.0)))
            .collect();
        assert_eq!(seen, vec![2, 4, 8, 16]);
        assert_eq!(c.record(link(16, 1.5e6, 12.5e6, 0.0)), 8, "16 does not pay");
    }

    #[test]
    fn respects_max_and_probes_again_after_holding() {
        let mut c = ParallelismController::new(ParallelBounds {
            max: 3,
            gain: 0.1,
            hold_windows: 2,
            ..ParallelBounds::default()
        });
        for _ in 0..20 {
            let g = link(c.streams(), 10.0, 1000.0, 0.0);
            c.record(g);
        }
        assert_eq!(c.streams(), 3);
        // A flat link: it probes, backs off, holds, probes again.
        let mut c = ParallelismController::new(ParallelBounds {
            max: 8,
            gain: 0.1,
            hold_windows: 2,
            ..ParallelBounds::default()
        });
        let seen: Vec<usize> = (0..12).map(|_| c.record(100.0)).collect();
        assert_eq!(seen, vec![2, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1]);
    }
}
