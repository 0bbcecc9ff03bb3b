//! Human-written values on the command line and in the config file that are not sizes
//! (sizes are parsed by `ferry_proto::size`).

use std::time::Duration;

/// Parses a duration: a bare number of seconds (`90`) or a humantime value (`90s`, `5m`,
/// `1h 30m`). The error names the option.
pub fn parse_duration(name: &str, v: &str) -> Result<Duration, String> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(v)
        .map_err(|_| format!("{name}: {v:?} is not a duration (e.g. 30s, 5m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_humantime_values() {
        assert_eq!(parse_duration("x", " 90 "), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("x", "1h 30m"), Ok(Duration::from_secs(5400)));
        let e = parse_duration("--timeout", "soon").unwrap_err();
        assert!(
            e.starts_with("--timeout: \"soon\" is not a duration"),
            "{e}"
        );
        assert!(parse_duration("x", "-5").is_err());
    }
}
