//! Time: the wall clock ([`now_ms`], the one function here that is not pure), RFC 3339 parsing
//! (thin events' `created`), the times and durations people type (`--since 2026-01-31`, the admin's
//! `from=`, `--older-than 90d`) and UTC formatting for humans. Hand-written because these few
//! functions are all the crate needs of a date library.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The latest time [`parse_rfc3339`] and [`parse_when`] give: 9999-12-31T23:59:59Z. Keeping every
/// parsed time within years 0000-9999 lets callers turn it into milliseconds without overflow.
pub const MAX_SECS: i64 = 253_402_300_799;

/// Parses an RFC 3339 timestamp (`2025-10-04T15:13:32.232083866Z`, or with a `+hh:mm` offset) to
/// unix seconds, dropping the fraction. Total: any text gives a time or `None`, never a panic
/// (it works on bytes, so a multi-byte character anywhere is just a byte that does not match).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, min, sec) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if *sign == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset)
}

/// A time as people type it, to unix seconds: unix seconds (`1759590812`), a date (`2025-10-04`,
/// midnight UTC), a date and time in UTC with or without seconds (`2025-10-04T15:13`, a browser's
/// `datetime-local`; a space instead of `T` is fine), or full RFC 3339.
pub fn parse_when(text: &str) -> Option<i64> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().filter(|secs| *secs <= MAX_SECS);
    }
    let text = text.replacen(' ', "T", 1);
    match text.len() {
        10 => parse_rfc3339(&format!("{text}T00:00:00Z")),
        16 => parse_rfc3339(&format!("{text}:00Z")),
        19 => parse_rfc3339(&format!("{text}Z")),
        _ => parse_rfc3339(&text),
    }
    .filter(|secs| (0..=MAX_SECS).contains(secs))
}

/// A duration as people type it, to milliseconds: a whole number and one unit, `s`, `m`, `h`, `d`
/// or `w` (`90d`, `36h`, `2w`).
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let number: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let ms = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    number.checked_mul(ms).filter(|ms| *ms >= 0)
}

/// The value of a run of ASCII digits (at most 4 here), `None` if any byte is not one.
fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-22 11:24:01Z` for unix seconds.
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951868800));
        assert_eq!(
            parse_rfc3339("2025-10-04T17:13:32.5+02:00"),
            Some(1759590812)
        );
        assert_eq!(parse_rfc3339("2025-10-04"), None);
        assert_eq!(parse_rfc3339("2025-13-04T15:13:32Z"), None);
        assert_eq!(parse_rfc3339("2025-10-04T15:13:32"), None);
        assert_eq!(parse_rfc3339("2025-10-04T15:13:32+24:00"), None);
    }

    /// Issue 13, case 5: `&rest[3..4]` on a non-char boundary panicked (a thin event's `created`
    /// and the admin's `from=` reached it). Every slice is now of bytes.
    #[test]
    fn rfc3339_non_char_boundary_is_none_not_a_panic() {
        for bad in [
            "2025-10-04T15:13:32+0é00",
            "2025-10-04T15:13:32+é:00",
            "2025-10-04T15:13:32é0:00",
            "2025-10-04T15:13:3é+00:00",
            "2025-1é-04T15:13:32Z",
            "2025-10-04T15:13:32.é",
            "2025-10-04T15:13:32.5+0é0",
            "€€€€€€€€€€€€€€€€€€€€",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
            assert_eq!(parse_when(bad), None, "{bad}");
        }
    }

    #[test]
    fn typed_times() {
        assert_eq!(parse_when("1759590812"), Some(1_759_590_812));
        assert_eq!(parse_when("2025-10-04"), Some(1_759_536_000));
        assert_eq!(parse_when("2025-10-04T15:13:32Z"), Some(1_759_590_812));
        assert_eq!(parse_when("2025-10-04T15:13"), Some(1_759_590_780));
        assert_eq!(parse_when("2025-10-04 15:13:32"), Some(1_759_590_812));
        // Past year 9999 (so that `* 1000` cannot overflow a caller's milliseconds).
        assert_eq!(parse_when("253402300799"), Some(MAX_SECS));
        assert_eq!(parse_when("9999-12-31T23:59:59Z"), Some(MAX_SECS));
        for bad in [
            "",
            "yesterday",
            "2025-13-01",
            "-5",
            "2025-10-04T25:00",
            "253402300800",
            "9223372036854775807",
            "0000-01-01",
        ] {
            assert_eq!(parse_when(bad), None, "{bad}");
        }
    }

    #[test]
    fn typed_durations() {
        assert_eq!(parse_duration_ms("90d"), Some(90 * 86_400_000));
        assert_eq!(parse_duration_ms("2w"), Some(14 * 86_400_000));
        assert_eq!(parse_duration_ms("36h"), Some(36 * 3_600_000));
        assert_eq!(parse_duration_ms("30m"), Some(1_800_000));
        assert_eq!(parse_duration_ms("10s"), Some(10_000));
        for bad in [
            "",
            "d",
            "90",
            "90 days",
            "-1d",
            "1.5d",
            "99999999999999999w",
        ] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for secs in [0, 951_868_800, 1_759_590_812, 4_102_444_799] {
            let text = format_utc(secs).replace(' ', "T");
            assert_eq!(parse_rfc3339(&text), Some(secs), "{text}");
        }
        assert_eq!(format_utc(1_759_590_812), "2025-10-04 15:13:32Z");
    }
}
