//! How large each part of a multipart upload is: a pure plan by part number.
//!
//! S3 allows 10,000 parts of 5 MiB to 5 GiB (the last may be smaller). The length of an upload
//! is not known to the writer (tus may defer it, and a resumed writer starts anywhere), so the
//! size depends on the part number alone: tiers of 1,000 parts, 8 MiB each in the first tier
//! and doubling with each tier, up to 4 GiB. 10,000 parts then hold 7.99 TiB, above the 5 TiB
//! default limit, however many resumes there were (a resumed writer uploads full parts only;
//! what is left over is staged). Within a tier the parts are equal, which Cloudflare R2 needs:
//! uploads up to 7.8 GiB are all one tier.

/// The smallest part S3 accepts, except the last.
pub const MIN_PART: u64 = 5 << 20;
/// The most parts of one multipart upload.
pub const MAX_PARTS: u16 = 10_000;
/// Parts per tier of equal size.
const TIER: u16 = 1_000;
/// The size of the parts of the first tier.
const FIRST: u64 = 8 << 20;

/// The size of part `number` (1 to 10,000; numbers past the last count as the last).
pub fn part_size(number: u16) -> u64 {
    let tier = (number.clamp(1, MAX_PARTS) - 1) / TIER;
    FIRST << tier
}

/// The bytes parts `1..=n` hold together.
pub fn capacity(n: u16) -> u64 {
    (1..=n.min(MAX_PARTS)).map(part_size).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_legal_equal_within_a_tier_and_cover_5_tib() {
        assert_eq!(part_size(1), 8 << 20);
        assert_eq!(part_size(1000), 8 << 20);
        assert_eq!(part_size(1001), 16 << 20);
        assert_eq!(part_size(MAX_PARTS), 4 << 30);
        for n in [1, 999, 1000, 1001, 5000, MAX_PARTS] {
            let size = part_size(n);
            assert!((MIN_PART..=5 << 30).contains(&size), "part {n}: {size}");
        }
        assert!(capacity(MAX_PARTS) >= 5 << 40, "{}", capacity(MAX_PARTS));
        // A few hundred numbers lost to writers that were taken over still leave 5 TiB.
        assert!(capacity(MAX_PARTS - 300) >= 5 << 40);
        assert_eq!(capacity(1000), 1000 * (8 << 20));
    }
}
