//! Gateway API duration strings (GEP-2257): `^([0-9]{1,5}(h|m|s|ms)){1,4}$`.

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (expected e.g. 500ms, 1s, 1h2m)");
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut i = 0;
    let mut parts = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &text[start..i];
        if digits.is_empty() || digits.len() > 5 {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let unit = if text[i..].starts_with("ms") {
            i += 2;
            Duration::from_millis(n)
        } else {
            let d = match bytes.get(i) {
                Some(b'h') => Duration::from_secs(n * 3600),
                Some(b'm') => Duration::from_secs(n * 60),
                Some(b's') => Duration::from_secs(n),
                _ => return Err(bad()),
            };
            i += 1;
            d
        };
        total += unit;
        parts += 1;
        if parts > 4 {
            return Err(bad());
        }
    }
    Ok(total)
}

/// A timeout: zero means "disabled" (None).
pub fn parse_timeout(text: &str) -> Result<Option<Duration>, String> {
    parse_duration(text).map(|d| (!d.is_zero()).then_some(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_api_durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("1h2m").unwrap(), Duration::from_secs(3720));
        assert_eq!(
            parse_duration("1m30s500ms").unwrap(),
            Duration::from_millis(90_500)
        );
        assert_eq!(parse_timeout("0s").unwrap(), None);
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("123456s").is_err());
        assert!(parse_duration("1h1h1h1h1h").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
