//! Human-readable sizes, as used in configuration and on the command line.

use crate::error::{ProtoError, echo};

/// Binary unit suffixes after plain bytes, each 1024 times the previous.
const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Fractional digits taken into account; further digits are ignored
/// (rounding down), which keeps the arithmetic exact in `u128`.
const MAX_FRACTION_DIGITS: u32 = 9;

/// Parses a curl-style size such as `1024`, `64MiB`, `10GB`, `1.5M` or `512k`.
///
/// Grammar (surrounding whitespace ignored): digits, optionally `.` and one or
/// more digits, optionally spaces, then an optional unit. Units are
/// case-insensitive: `b` (bytes), or one of `k m g t p e` optionally followed
/// by `b` or `ib`; all of these are powers of 1024 (`10GB` = `10GiB`). The
/// result is computed exactly and rounded down to whole bytes. Anything else,
/// or a result above `u64::MAX`, gives [`ProtoError::InvalidSize`] holding
/// the first 40 chars of the input.
pub fn parse_size(s: &str) -> Result<u64, ProtoError> {
    parse_size_inner(s).ok_or_else(|| ProtoError::InvalidSize(echo(s)))
}

fn parse_size_inner(s: &str) -> Option<u64> {
    let s = s.trim_ascii();
    let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (int_digits, rest) = s.split_at(int_end);
    if int_digits.is_empty() {
        return None;
    }
    let (frac_digits, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            if end == 0 {
                return None;
            }
            after.split_at(end)
        }
        None => ("", rest),
    };
    let multiplier = unit_multiplier(rest.trim_start_matches(' '))?;

    let mut int: u128 = 0;
    for b in int_digits.bytes() {
        int = int * 10 + u128::from(b - b'0');
        // Stop early so arbitrarily long digit strings cannot overflow.
        if int > u128::from(u64::MAX) {
            return None;
        }
    }
    let mut frac: u128 = 0;
    let mut scale: u128 = 1;
    for b in frac_digits.bytes().take(MAX_FRACTION_DIGITS as usize) {
        frac = frac * 10 + u128::from(b - b'0');
        scale *= 10;
    }
    // int < 2^64 and multiplier <= 2^60, so nothing here overflows u128.
    let total = int * multiplier + frac * multiplier / scale;
    u64::try_from(total).ok()
}

/// Multiplier for a unit suffix, `None` if unknown.
fn unit_multiplier(unit: &str) -> Option<u128> {
    let unit = unit.to_ascii_lowercase();
    if unit.is_empty() || unit == "b" {
        return Some(1);
    }
    let mut chars = unit.chars();
    let power = match chars.next()? {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    match chars.as_str() {
        "" | "b" | "ib" => Some(1u128 << (10 * power)),
        _ => None,
    }
}

/// Formats a byte count for humans: `"0 B"`, `"1023 B"`, `"1.0 KiB"`,
/// `"64.0 MiB"`, `"1.5 GiB"`. One decimal, rounded down, so the shown value
/// never exceeds `n` and never reads `1024.0` of a unit.
pub fn format_size(n: u64) -> String {
    let mut unit_size: u128 = 1;
    let mut unit = None;
    for name in UNITS {
        if u128::from(n) < unit_size * 1024 {
            break;
        }
        unit_size *= 1024;
        unit = Some(name);
    }
    match unit {
        None => format!("{n} B"),
        Some(name) => {
            let tenths = u128::from(n) * 10 / unit_size;
            format!("{}.{} {name}", tenths / 10, tenths % 10)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: u64 = 1024;

    #[test]
    fn plain_numbers() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size(" 7 "), Ok(7));
        assert_eq!(parse_size("007"), Ok(7));
        assert_eq!(parse_size("5b"), Ok(5));
        assert_eq!(parse_size("5B"), Ok(5));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn suffixes() {
        assert_eq!(parse_size("1k"), Ok(K));
        assert_eq!(parse_size("1K"), Ok(K));
        assert_eq!(parse_size("2M"), Ok(2 * K * K));
        assert_eq!(parse_size("64MiB"), Ok(64 * K * K));
        assert_eq!(parse_size("64mib"), Ok(64 * K * K));
        assert_eq!(parse_size("10GB"), Ok(10 * K * K * K));
        assert_eq!(parse_size("10g"), Ok(10 * K * K * K));
        assert_eq!(parse_size("3T"), Ok(3 * K * K * K * K));
        assert_eq!(parse_size("1PiB"), Ok(K.pow(5)));
        assert_eq!(parse_size("15EiB"), Ok(15 * K.pow(6)));
        assert_eq!(parse_size("64 MiB"), Ok(64 * K * K));
    }

    #[test]
    fn fractions_round_down() {
        assert_eq!(parse_size("1.5M"), Ok(3 * K * K / 2));
        assert_eq!(parse_size("0.5k"), Ok(512));
        assert_eq!(parse_size("1.5"), Ok(1));
        assert_eq!(parse_size("1.9B"), Ok(1));
        assert_eq!(parse_size("0.001k"), Ok(1)); // 1.024 bytes
        assert_eq!(parse_size("0.0001k"), Ok(0));
        assert_eq!(parse_size("1.0KiB"), Ok(K));
        // Digits past the ninth are ignored.
        assert_eq!(
            parse_size("0.9999999999999G"),
            Ok(999_999_999 * K * K * K / 1_000_000_000)
        );
        assert_eq!(parse_size(&format!("1.{}", "9".repeat(500))), Ok(1));
    }

    #[test]
    fn overflow() {
        for s in [
            "18446744073709551616",
            "16E",
            "16EiB",
            "17179869184G",
            "16.0E",
            "15.9999999999999999999999999999999999999999E1",
            &"9".repeat(100),
        ] {
            assert!(
                matches!(parse_size(s), Err(ProtoError::InvalidSize(_))),
                "{s:?}"
            );
        }
        // Only nine fractional digits count, so this stays just below 16 EiB.
        assert!(parse_size("15.99999999999999999E").is_ok());
        assert_eq!(parse_size("15.9E"), Ok(15 * K.pow(6) + 9 * K.pow(6) / 10));
    }

    #[test]
    fn garbage() {
        for s in [
            "", " ", "-1", "+1", "-1k", "k", "MiB", ".5", "1.", "1.k", "1..5", "1.5.5", "0x10",
            "1e3", "1 2", "1KK", "1kbb", "1ki", "1Kib ib", "1iB", "1 b b", "1x", "١", "1\u{0}",
            "1,5M", "1_000",
        ] {
            assert_eq!(
                parse_size(s),
                Err(ProtoError::InvalidSize(s.to_owned())),
                "{s:?}"
            );
        }
    }

    #[test]
    fn error_truncates_input() {
        let s = "x".repeat(100);
        assert_eq!(
            parse_size(&s),
            Err(ProtoError::InvalidSize(format!("{}...", "x".repeat(40))))
        );
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1), "1 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(K * K - 1), "1023.9 KiB");
        assert_eq!(format_size(64 * K * K), "64.0 MiB");
        assert_eq!(format_size(3 * K * K * K / 2), "1.5 GiB");
        assert_eq!(format_size(K.pow(4)), "1.0 TiB");
        assert_eq!(format_size(K.pow(5)), "1.0 PiB");
        assert_eq!(format_size(u64::MAX), "15.9 EiB");
    }

    proptest! {
        #[test]
        fn plain_round_trip(n in any::<u64>()) {
            prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
            prop_assert_eq!(parse_size(&format!("{n}B")), Ok(n));
        }

        #[test]
        fn k_suffix(n in any::<u64>()) {
            let expected = n.checked_mul(1024);
            let got = parse_size(&format!("{n}K")).ok();
            prop_assert_eq!(got, expected);
            prop_assert_eq!(parse_size(&format!("{n}KiB")).ok(), expected);
        }

        #[test]
        fn m_suffix(n in 0u64..(1 << 44)) {
            prop_assert_eq!(parse_size(&format!("{n}M")), Ok(n << 20));
        }

        #[test]
        fn format_then_parse_is_close(n in any::<u64>()) {
            let shown = format_size(n);
            let back = parse_size(&shown).unwrap();
            prop_assert!(back <= n, "{} -> {} -> {}", n, shown, back);
            // Off by at most a tenth of the unit (rounded up).
            let unit = if n < 1024 { 1 } else { 1u64 << (10 * (n.ilog2() / 10)) };
            prop_assert!(n - back <= unit.div_ceil(10), "{} -> {} -> {}", n, shown, back);
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = parse_size(&s);
        }

        #[test]
        fn parse_never_panics_on_plausible_input(s in "[0-9.]{0,30} ?[kKmMgGtTpPeEiIbB]{0,3}") {
            let _ = parse_size(&s);
        }
    }
}
