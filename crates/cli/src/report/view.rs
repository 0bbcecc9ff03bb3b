//! The pure part of progress output: the rate over a recent window, the ETA, and lines that fit
//! a terminal's width. No clock is read here: callers pass `now`.

use ferry_client::progress::human_bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use unicode_width::UnicodeWidthChar;

/// The rate is measured over this much recent time: long enough to smooth bursts, short enough
/// to follow a change of link.
const WINDOW: Duration = Duration::from_secs(5);
/// No rate before this much of the run has been measured: the first fraction of a second is
/// mostly socket buffers filling at memory speed, which would show a rate the link never had.
const WARMUP: Duration = Duration::from_secs(1);
/// No byte moved for this long: shown as stalled, with no ETA.
pub const STALLED_AFTER: Duration = Duration::from_secs(3);

/// Bytes moved over time, sampled by the caller's ticker.
#[derive(Debug, Default)]
pub struct Meter {
    samples: VecDeque<(Instant, u64)>,
    first: Option<Instant>,
    last_move: Option<Instant>,
}

impl Meter {
    /// Records that `moved` bytes (counted since the run began, never decreasing) had moved
    /// by `now`.
    pub fn record(&mut self, now: Instant, moved: u64) {
        let grew = self.samples.back().map_or(moved > 0, |&(_, m)| moved > m);
        if grew {
            self.last_move = Some(now);
            // Measured from the first bytes on: what they took (buffers filling) is not rate.
            self.first.get_or_insert(now);
        }
        // Nothing moving from the start counts toward "stalled" too.
        self.last_move.get_or_insert(now);
        self.samples.push_back((now, moved));
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) > WINDOW)
            && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window; none in the first second after the first bytes.
    pub fn rate(&self) -> Option<f64> {
        let first = self.first?;
        let &(t1, m1) = self.samples.back()?;
        if t1.duration_since(first) < WARMUP {
            return None;
        }
        let &(t0, m0) = self.samples.iter().find(|&&(t, _)| t >= first)?;
        let secs = t1.duration_since(t0).as_secs_f64();
        (secs > 0.0).then(|| m1.saturating_sub(m0) as f64 / secs)
    }

    /// Whether nothing has moved for [`STALLED_AFTER`].
    pub fn stalled(&self, now: Instant) -> bool {
        self.last_move
            .is_some_and(|t| now.duration_since(t) >= STALLED_AFTER)
    }
}

/// Time left for `remaining` bytes at `rate`, when that means something: not while stalled,
/// not before a rate is known.
pub fn eta(remaining: Option<u64>, rate: Option<f64>, stalled: bool) -> Option<Duration> {
    let (remaining, rate) = (remaining?, rate?);
    if stalled || rate < 1.0 {
        return None;
    }
    // Rounded up: "eta 0s" only when nothing is left.
    Some(Duration::from_secs_f64(
        (remaining as f64 / rate).ceil().min(1e9),
    ))
}

/// `12s`, `3m04s`, `1h02m`, `3d04h`: two units at most, as in a glance.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// What one progress line shows.
#[derive(Debug, Clone, Default)]
pub struct Line {
    /// A file's name, or "Total 3/300 files".
    pub label: String,
    pub done: u64,
    pub total: Option<u64>,
    /// `Some(None)`: a rate field with no rate yet; `None`: no rate field.
    pub rate: Option<Option<f64>>,
    pub stalled: bool,
    /// `Some(None)`: an ETA field with no estimate.
    pub eta: Option<Option<Duration>>,
    pub streams: Option<usize>,
}

impl Line {
    fn percent(&self) -> Option<String> {
        let total = self.total?;
        let pct = if total == 0 {
            100
        } else {
            (self.done.min(total) as u128 * 100 / total as u128) as u64
        };
        Some(format!("{pct:>3}%"))
    }

    fn bytes(&self) -> String {
        match self.total {
            Some(t) => format!("{}/{}", human_bytes(self.done), human_bytes(t)),
            None => human_bytes(self.done),
        }
    }

    fn rate_text(&self) -> Option<String> {
        let rate = self.rate?;
        Some(if self.stalled {
            "stalled".into()
        } else {
            match rate {
                Some(r) => format!("{}/s", human_bytes(r as u64)),
                None => "-- B/s".into(),
            }
        })
    }

    fn eta_text(&self) -> Option<String> {
        Some(match self.eta? {
            Some(d) => format!("eta {}", short_duration(d)),
            None => "eta --".into(),
        })
    }

    fn streams_text(&self) -> Option<String> {
        self.streams.map(|n| match n {
            1 => "1 stream".into(),
            n => format!("{n} streams"),
        })
    }

    /// The fields for a log line: everything, unpadded.
    pub fn plain(&self) -> String {
        let mut out = self.label.clone();
        for f in [
            self.percent(),
            Some(self.bytes()),
            self.rate_text(),
            self.eta_text(),
            self.streams_text(),
        ]
        .into_iter()
        .flatten()
        {
            out.push(' ');
            out.push_str(&f);
        }
        out
    }

    /// The line for a terminal `width` columns wide, shorter than it (a line that reaches the
    /// last column makes some terminals wrap). The bar takes only the room left; then fields
    /// go, least useful first, when they do not fit: the stream count, the ETA, the rate. The
    /// label is shortened from the front (the end of a name tells files apart).
    pub fn fit(&self, width: usize) -> String {
        const LABEL_MIN: usize = 12;
        const LABEL_MAX: usize = 32;
        const BAR_MIN: usize = 10;
        const BAR_MAX: usize = 30;
        let avail = width.saturating_sub(1);
        // In the order shown; the number says which goes first (higher first).
        let mut fields: Vec<(u8, String)> = [
            (0, self.percent()),
            (1, Some(self.bytes())),
            (2, self.rate_text()),
            (3, self.eta_text()),
            (5, self.streams_text()),
        ]
        .into_iter()
        .filter_map(|(p, f)| f.map(|f| (p, f)))
        .collect();
        let label_w = text_width(&self.label);
        let fixed = |fields: &[(u8, String)]| -> usize {
            fields.iter().map(|(_, f)| text_width(f) + 1).sum()
        };
        while !fields.is_empty() && fixed(&fields) + label_w.min(LABEL_MIN) > avail {
            let worst = fields
                .iter()
                .enumerate()
                .max_by_key(|(_, (p, _))| *p)
                .map(|(i, _)| i)
                .unwrap_or(0);
            fields.remove(worst);
        }
        let room = avail.saturating_sub(fixed(&fields));
        let label = truncate_front(&self.label, label_w.min(LABEL_MAX).min(room));
        let mut rest = room - text_width(&label);
        let mut out = label;
        // The bar goes after the percent; it needs its brackets and a space.
        let bar_w = (rest >= BAR_MIN + 3).then(|| (rest - 3).min(BAR_MAX));
        for (i, (_, f)) in fields.iter().enumerate() {
            out.push(' ');
            out.push_str(f);
            if i == 0
                && let (Some(w), Some(total)) = (bar_w, self.total)
            {
                out.push(' ');
                out.push_str(&bar(w, self.done, total));
                rest -= w + 3;
            }
        }
        let _ = rest;
        out
    }
}

/// `[=====>    ]` of `w` cells between the brackets.
fn bar(w: usize, done: u64, total: u64) -> String {
    let filled = if total == 0 {
        w
    } else {
        (done.min(total) as u128 * w as u128 / total as u128) as usize
    };
    let mut s = String::with_capacity(w + 2);
    s.push('[');
    for i in 0..w {
        s.push(match i.cmp(&filled) {
            std::cmp::Ordering::Less => '=',
            std::cmp::Ordering::Equal if filled < w => '>',
            _ => ' ',
        });
    }
    s.push(']');
    s
}

/// Columns `s` takes on a terminal (wide characters count two; control characters none).
pub fn text_width(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// `s` in at most `w` columns, its start replaced by `…` when cut.
fn truncate_front(s: &str, w: usize) -> String {
    if text_width(s) <= w {
        return s.to_owned();
    }
    if w == 0 {
        return String::new();
    }
    let mut kept = Vec::new();
    let mut used = 1; // the ellipsis
    for c in s.chars().rev() {
        let cw = c.width().unwrap_or(0);
        if used + cw > w {
            break;
        }
        used += cw;
        kept.push(c);
    }
    std::iter::once('…').chain(kept.into_iter().rev()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn no_rate_in_the_first_second_then_the_window() {
        let t = Instant::now();
        let mut m = Meter::default();
        // Setting up (no byte for half a second), then a burst into socket buffers: 40 MB in
        // the first 100 ms.
        m.record(at(t, 0), 0);
        m.record(at(t, 500), 0);
        m.record(at(t, 600), 40_000_000);
        assert_eq!(m.rate(), None);
        m.record(at(t, 1500), 40_000_000);
        assert_eq!(m.rate(), None, "the first second after the first bytes");
        // Then 1 MB in a second: the burst never counts.
        m.record(at(t, 1600), 41_000_000);
        let r = m.rate().unwrap();
        assert!((r - 1e6).abs() < 0.1e6, "{r}");
        // Then 10 MB/s for 10 s: the window follows.
        for s in 1..=10u64 {
            m.record(at(t, 1600 + 1000 * s), 41_000_000 + 10_000_000 * s);
        }
        let r = m.rate().unwrap();
        assert!((r - 10e6).abs() < 0.3e6, "{r}");
    }

    #[test]
    fn stalled_after_three_seconds_without_a_byte_and_then_no_eta() {
        let t = Instant::now();
        let mut m = Meter::default();
        m.record(at(t, 0), 0);
        m.record(at(t, 2000), 5_000_000);
        assert!(!m.stalled(at(t, 2000)));
        m.record(at(t, 4000), 5_000_000);
        assert!(!m.stalled(at(t, 4000)));
        m.record(at(t, 5000), 5_000_000);
        assert!(m.stalled(at(t, 5000)));
        assert_eq!(eta(Some(1000), m.rate(), true), None);
        assert_eq!(eta(Some(1000), Some(0.0), false), None);
        assert_eq!(eta(Some(1000), None, false), None);
        assert_eq!(eta(None, Some(5.0), false), None);
        assert_eq!(
            eta(Some(1000), Some(100.0), false),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            eta(Some(1), Some(100.0), false),
            Some(Duration::from_secs(1))
        );
        assert_eq!(eta(Some(0), Some(100.0), false), Some(Duration::ZERO));
    }

    #[test]
    fn durations_at_a_glance() {
        assert_eq!(short_duration(Duration::from_secs(9)), "9s");
        assert_eq!(short_duration(Duration::from_secs(184)), "3m04s");
        assert_eq!(short_duration(Duration::from_secs(3720)), "1h02m");
        assert_eq!(
            short_duration(Duration::from_secs(3 * 86400 + 4 * 3600)),
            "3d04h"
        );
    }

    fn full(label: &str) -> Line {
        Line {
            label: label.into(),
            done: 471_859_200,
            total: Some(1_073_741_824),
            rate: Some(Some(52_428_800.0)),
            stalled: false,
            eta: Some(Some(Duration::from_secs(11))),
            streams: Some(8),
        }
    }

    #[test]
    fn a_line_fits_every_width_and_drops_fields_in_order() {
        let names = [
            "big.iso",
            "a-very-long-directory/with-a-much-longer-file-name-than-fits-anywhere.tar.zst",
            "写真/二〇二四年/とても長いファイル名のテスト.jpg",
        ];
        for name in names {
            for width in 20..200 {
                let l = full(name).fit(width);
                assert!(text_width(&l) < width, "{width}: {l:?}");
            }
        }
        let l = full("big.iso").fit(80);
        assert_eq!(
            l,
            "big.iso  43% [=======>         ] 450.0 MiB/1.0 GiB 50.0 MiB/s eta 11s 8 streams"
        );
        // Narrower: the bar goes first, then the streams, then the ETA.
        let l = full("big.iso").fit(60);
        assert_eq!(
            l,
            "big.iso  43% 450.0 MiB/1.0 GiB 50.0 MiB/s eta 11s 8 streams"
        );
        let l = full("big.iso").fit(52);
        assert_eq!(l, "big.iso  43% 450.0 MiB/1.0 GiB 50.0 MiB/s eta 11s");
        let l = full("big.iso").fit(44);
        assert_eq!(l, "big.iso  43% 450.0 MiB/1.0 GiB 50.0 MiB/s");
        // A long name keeps its end.
        let l = full(names[1]).fit(80);
        assert!(l.starts_with("…than-fits-anywhere.tar.zst  43%"), "{l}");
        assert!(l.contains(".tar.zst"), "{l}");
    }

    #[test]
    fn stalled_and_unknown_read_as_such() {
        let mut l = full("f");
        l.stalled = true;
        l.eta = Some(None);
        assert_eq!(
            l.plain(),
            "f  43% 450.0 MiB/1.0 GiB stalled eta -- 8 streams"
        );
        l.rate = Some(None);
        l.stalled = false;
        l.total = None;
        assert_eq!(l.plain(), "f 450.0 MiB -- B/s eta -- 8 streams");
    }

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(10, 0, 100), "[>         ]");
        assert_eq!(bar(10, 55, 100), "[=====>    ]");
        assert_eq!(bar(10, 100, 100), "[==========]");
        assert_eq!(bar(4, 0, 0), "[====]");
    }
}
