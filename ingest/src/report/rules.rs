//! The contract's value rules, each as a plain function: formats, lengths and the
//! messages clients see. The limits are those of `schema/report.schema.json`.

/// `run_id`: 1–255 characters.
pub const RUN_ID_MAX: usize = 255;
/// `branch`, `pull_request`, `idempotency_key`: at most 255 characters.
pub const OPTIONAL_TEXT_MAX: usize = 255;
/// `tests[].path` and `tests[].name`: 1–500 characters.
pub const TEST_TEXT_MAX: usize = 500;
/// `tests[].failureDetails`: at most 10,000 characters.
pub const FAILURE_DETAILS_MAX: usize = 10_000;

/// The frameworks a report may name.
pub const FRAMEWORKS: [&str; 7] = [
    "junit",
    "jest",
    "pytest",
    "playwright",
    "mocha",
    "vitest",
    "unknown",
];
/// The outcomes a test may have.
pub const STATUSES: [&str; 3] = ["pass", "fail", "skip"];

/// Length in characters (Unicode scalar values), as JSON Schema counts it, stopping
/// once `limit` is passed: only "within" or "over" matters.
pub fn chars_over(text: &str, limit: usize) -> bool {
    // Every character is at least one byte, so a short string is within any limit
    // without counting.
    text.len() > limit && text.chars().nth(limit).is_some()
}

/// `8-4-4-4-12` hexadecimal digits, either case: the JSON Schema `uuid` format.
pub fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Exactly 40 hexadecimal digits (`^[0-9a-fA-F]{40}$`).
pub fn is_commit_sha(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The JSON Schema `date-time` format (RFC 3339 `date-time`, `T` or `t` between date and
/// time, leap seconds only at 23:59:60 UTC).
pub fn is_date_time(text: &str) -> bool {
    let Some(t) = text.bytes().position(|b| b == b'T' || b == b't') else {
        return false;
    };
    is_date(&text.as_bytes()[..t]) && is_time(&text.as_bytes()[t + 1..])
}

fn digits(bytes: &[u8]) -> Option<u16> {
    bytes.iter().try_fold(0u16, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u16::from(b - b'0'))
    })
}

fn is_date(bytes: &[u8]) -> bool {
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return false;
    }
    let (Some(year), Some(month), Some(day)) = (
        digits(&bytes[..4]),
        digits(&bytes[5..7]),
        digits(&bytes[8..10]),
    ) else {
        return false;
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

fn is_time(bytes: &[u8]) -> bool {
    // `HH:MM:SS`, optional fraction, then `Z` or `±HH:MM`.
    if bytes.len() < 9 || bytes[2] != b':' || bytes[5] != b':' {
        return false;
    }
    let (Some(hour), Some(minute), Some(second)) = (
        digits(&bytes[..2]),
        digits(&bytes[3..5]),
        digits(&bytes[6..8]),
    ) else {
        return false;
    };
    if hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut i = 8;
    if bytes[i] == b'.' {
        let fraction = bytes[i + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if fraction == 0 {
            return false;
        }
        i += 1 + fraction;
    }
    let (hour, minute) = (i32::from(hour), i32::from(minute));
    match bytes.get(i) {
        Some(b'Z' | b'z') => i + 1 == bytes.len() && (second != 60 || (hour == 23 && minute == 59)),
        Some(sign @ (b'+' | b'-')) => {
            let offset = &bytes[i + 1..];
            if offset.len() != 5 || offset[2] != b':' {
                return false;
            }
            let (Some(oh), Some(om)) = (digits(&offset[..2]), digits(&offset[3..])) else {
                return false;
            };
            if oh > 23 || om > 59 {
                return false;
            }
            if second != 60 {
                return true;
            }
            // A leap second is valid only at 23:59:60 UTC.
            let offset = i32::from(oh) * 60 + i32::from(om);
            let local = hour * 60 + minute;
            let utc = if *sign == b'+' {
                local - offset
            } else {
                local + offset
            };
            utc.rem_euclid(24 * 60) == 23 * 60 + 59
        }
        _ => false,
    }
}
