//! How large each part of a multipart upload is: a pure plan by part number.
//!
//! S3 allows 10,000 parts of 5 MiB to 5 GiB (the last may be smaller). The length of an upload
//! is not known to the writer (tus may defer it, and a resumed writer starts anywhere), so the
//! size depends on the part number alone: tiers of 1,000 parts, 8 MiB each in the first tier
//! and doubling with each tier, up to 4 GiB. 10,000 parts then hold 7.99 TiB, above the 5 TiB
//! default limit, however many resumes there were (a resumed writer uploads full parts only;
//! what is left over is staged). Within a tier the parts are equal, which Cloudflare R2 needs:
//! uploads up to 7.8 GiB are all one tier. An upload whose length is declared at creation gets
//! equal parts throughout instead ([`equal_part`]).

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

/// Part numbers an upload of known length keeps spare: a writer that is taken over may have
/// used numbers that are never recorded, and a finish run again sends its last part anew.
const SPARE: u64 = 1_000;
/// The largest part S3 accepts.
pub const MAX_PART: u64 = 5 << 30;

/// The size of every part of an upload whose `length` is known at creation: equal, as
/// Cloudflare R2 requires, 8 MiB or more, whole MiB, and few enough that the upload fits in
/// 9,000 parts. `None` past what 9,000 parts of 5 GiB hold (the tiers then apply).
pub fn equal_part(length: u64) -> Option<u64> {
    const MIB: u64 = 1 << 20;
    let per = length.div_ceil(u64::from(MAX_PARTS) - SPARE).div_ceil(MIB) * MIB;
    let size = per.max(FIRST);
    (size <= MAX_PART).then_some(size)
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

    #[test]
    fn a_known_length_gets_equal_parts_that_fit_with_numbers_to_spare() {
        const MIB: u64 = 1 << 20;
        assert_eq!(equal_part(0), Some(8 * MIB));
        assert_eq!(equal_part(7 << 30), Some(8 * MIB));
        assert_eq!(equal_part(9000 * 8 * MIB), Some(8 * MIB));
        assert_eq!(equal_part(9000 * 8 * MIB + 1), Some(9 * MIB));
        for length in [100 << 30, (5u64 << 40) - 1, 5 << 40, 9000 * MAX_PART] {
            let size = equal_part(length).unwrap();
            assert!(size.is_multiple_of(MIB) && (MIN_PART..=MAX_PART).contains(&size));
            assert!(length.div_ceil(size) <= 9000, "{length}: {size}");
        }
        assert_eq!(equal_part(9000 * MAX_PART + 1), None);
    }
}
