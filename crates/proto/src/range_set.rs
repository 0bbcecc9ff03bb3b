//! Which bytes of a representation have arrived: a set of byte ranges, kept merged.

/// A set of disjoint, non-adjacent half-open byte ranges, kept sorted. Used by writers that
/// accept bytes in any order: the set says exactly which bytes have arrived.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `[start, end)`, merging with overlapping or touching ranges.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.ranges {
            if b < s {
                out.push((a, b));
            } else if a > e {
                if !placed {
                    out.push((s, e));
                    placed = true;
                }
                out.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        if !placed {
            out.push((s, e));
        }
        self.ranges = out;
    }

    /// The ranges, sorted, as half-open `(start, end)` pairs.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Total number of bytes covered.
    pub fn covered(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| b - a).sum()
    }

    /// The end of the range that starts at 0, i.e. how many bytes are contiguous from the start.
    pub fn contiguous_prefix(&self) -> u64 {
        match self.ranges.first() {
            Some(&(0, e)) => e,
            _ => 0,
        }
    }

    /// Whether `[0, len)` is fully covered.
    pub fn covers(&self, len: u64) -> bool {
        len == 0 || self.contiguous_prefix() >= len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_touching_and_overlapping() {
        let mut r = RangeSet::new();
        r.insert(10, 20);
        r.insert(0, 5);
        r.insert(5, 10);
        assert_eq!(r.ranges(), &[(0, 20)]);
        r.insert(30, 40);
        r.insert(15, 31);
        assert_eq!(r.ranges(), &[(0, 40)]);
        r.insert(50, 50);
        assert_eq!(r.ranges(), &[(0, 40)]);
        assert!(r.covers(40));
        assert!(!r.covers(41));
    }

    proptest! {
        #[test]
        fn rangeset_matches_bitmap(ops in proptest::collection::vec((0u64..200, 0u64..50), 0..40)) {
            let mut r = RangeSet::new();
            let mut bits = [false; 256];
            for (s, l) in ops {
                r.insert(s, s + l);
                for b in &mut bits[s as usize..(s + l) as usize] { *b = true; }
            }
            let covered = bits.iter().filter(|b| **b).count() as u64;
            prop_assert_eq!(r.covered(), covered);
            for w in r.ranges().windows(2) {
                prop_assert!(w[0].1 < w[1].0, "ranges must be disjoint and non-adjacent");
            }
            let prefix = bits.iter().take_while(|b| **b).count() as u64;
            prop_assert_eq!(r.contiguous_prefix(), prefix);
        }
    }
}
