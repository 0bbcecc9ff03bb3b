//! How many streams to run: a pure controller fed with goodput measurements.
//!
//! It starts with one stream and adds one at a time while each addition raises total goodput
//! by a clear margin; when an addition does not pay, it takes that stream back and holds.
//! After holding for a while it probes one more stream again, so it follows a network whose
//! character changes. On loopback, where one stream already fills the machine, it settles on
//! one or two streams; on a long, lossy link, where each TCP flow is limited by its own
//! congestion window, it keeps adding.

/// Settings of the controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParallelBounds {
    /// Never more streams than this.
    pub max: usize,
    /// An added stream must raise goodput by this fraction to stay (e.g. 0.1 = 10 %).
    pub gain: f64,
    /// Windows to hold after a failed probe before probing again.
    pub hold_windows: u32,
}

impl Default for ParallelBounds {
    fn default() -> Self {
        Self {
            max: 32,
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
    /// Goodput measured with `streams - 1` before the last addition, if probing.
    before_probe: Option<f64>,
    hold: u32,
}

impl ParallelismController {
    /// Starts at one stream.
    pub fn new(bounds: ParallelBounds) -> Self {
        Self {
            bounds: ParallelBounds {
                max: bounds.max.max(1),
                ..bounds
            },
            streams: 1,
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
        match self.before_probe.take() {
            Some(before) if goodput < before * (1.0 + self.bounds.gain) => {
                // The extra stream did not pay: take it back and hold.
                self.streams -= 1;
                self.hold = self.bounds.hold_windows;
            }
            _ => {
                if self.hold > 0 {
                    self.hold -= 1;
                } else if self.streams < self.bounds.max {
                    self.before_probe = Some(goodput);
                    self.streams += 1;
                }
            }
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
        let mut c = ParallelismController::new(ParallelBounds::default());
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
    fn respects_max_and_probes_again_after_holding() {
        let mut c = ParallelismController::new(ParallelBounds {
            max: 3,
            gain: 0.1,
            hold_windows: 2,
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
        });
        let seen: Vec<usize> = (0..12).map(|_| c.record(100.0)).collect();
        assert_eq!(seen, vec![2, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1]);
    }
}
