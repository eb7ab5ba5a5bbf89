//! Cron schedules as the CronJob controller reads them (robfig/cron's standard parser): five
//! fields (minute, hour, day of month, month, day of week) of lists, ranges, steps and names,
//! the descriptors `@yearly` … `@hourly`, and `@every <duration>`.
//!
//! Times are whole seconds since the Unix epoch, in UTC; the calendar arithmetic is done here
//! (days from civil dates), so no time zone database is involved.

/// Bit 63 of a field's set: the field was `*` or `?` (matters for day-of-month/day-of-week).
const STAR: u64 = 1 << 63;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A cron expression, one bit set per allowed value of each field.
    Spec {
        minute: u64,
        hour: u64,
        dom: u64,
        month: u64,
        dow: u64,
    },
    /// `@every <duration>`: runs each `seconds` seconds after the previous time.
    Every { seconds: i64 },
}

/// One field's bounds and, for months and weekdays, its names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DOW: Field = Field {
    name: "day of week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// How many years ahead `next` searches before giving up (a schedule like `0 0 30 2 *`).
const SEARCH_YEARS: i64 = 5;

impl Schedule {
    /// Parses `expr`; a leading `TZ=…`/`CRON_TZ=…` (tolerated on old objects) is skipped.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let mut expr = expr.trim();
        if expr.starts_with("TZ=") || expr.starts_with("CRON_TZ=") {
            expr = expr
                .split_once(' ')
                .map(|(_, rest)| rest.trim())
                .unwrap_or("");
        }
        if let Some(descriptor) = expr.strip_prefix('@') {
            return descriptor_schedule(descriptor.trim());
        }
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {expr:?}",
                fields.len()
            ));
        }
        Ok(Schedule::Spec {
            minute: field_bits(fields[0], &MINUTE)?,
            hour: field_bits(fields[1], &HOUR)?,
            dom: field_bits(fields[2], &DOM)?,
            month: field_bits(fields[3], &MONTH)?,
            dow: field_bits(fields[4], &DOW)?,
        })
    }

    /// The first time strictly after `after` (seconds since the epoch, UTC) that the schedule
    /// fires, or `None` if it never does within five years.
    pub fn next(&self, after: i64) -> Option<i64> {
        match *self {
            Schedule::Every { seconds } => after.checked_add(seconds),
            Schedule::Spec {
                minute,
                hour,
                dom,
                month,
                dow,
            } => {
                let days = after.div_euclid(86_400);
                let limit_year = civil_from_days(days).0 + SEARCH_YEARS;
                // Cron times are whole minutes; the first candidate is the next minute.
                let mut t = after.div_euclid(60) * 60 + 60;
                loop {
                    let days = t.div_euclid(86_400);
                    let (y, m, d) = civil_from_days(days);
                    if y > limit_year {
                        return None;
                    }
                    let secs_of_day = t.rem_euclid(86_400);
                    let (h, min) = (secs_of_day / 3600, secs_of_day % 3600 / 60);
                    if !has(month, m) {
                        // The first minute of the next month.
                        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                        t = days_from_civil(ny, nm, 1) * 86_400;
                    } else if !day_matches(dom, dow, d, weekday(days)) {
                        t = (days + 1) * 86_400;
                    } else if !has(hour, h) {
                        t = days * 86_400 + (h + 1) * 3600;
                    } else if !has(minute, min) {
                        t += 60;
                    } else {
                        return Some(t);
                    }
                }
            }
        }
    }
}

fn has(bits: u64, value: i64) -> bool {
    (0..63).contains(&value) && bits & (1 << value) != 0
}

/// robfig/cron's rule: when either day field is `*`, both must match; otherwise either may.
fn day_matches(dom: u64, dow: u64, day: i64, weekday: i64) -> bool {
    let dom_match = has(dom, day);
    let dow_match = has(dow, weekday);
    if dom & STAR != 0 || dow & STAR != 0 {
        dom_match && dow_match
    } else {
        dom_match || dow_match
    }
}

fn descriptor_schedule(descriptor: &str) -> Result<Schedule, String> {
    let standard = match descriptor {
        "yearly" | "annually" => "0 0 1 1 *",
        "monthly" => "0 0 1 * *",
        "weekly" => "0 0 * * 0",
        "daily" | "midnight" => "0 0 * * *",
        "hourly" => "0 * * * *",
        _ => {
            let Some(duration) = descriptor.strip_prefix("every ") else {
                return Err(format!("unrecognized descriptor: @{descriptor}"));
            };
            let seconds = go_duration_seconds(duration.trim())
                .ok_or_else(|| format!("failed to parse duration @every {duration}"))?;
            // robfig/cron rounds to whole seconds, at least one.
            return Ok(Schedule::Every {
                seconds: seconds.max(1),
            });
        }
    };
    Schedule::parse(standard)
}

/// The bits of one comma-separated field.
fn field_bits(text: &str, field: &Field) -> Result<u64, String> {
    let mut bits = 0;
    for part in text.split(',') {
        bits |=
            range_bits(part, field).map_err(|e| format!("failed to parse {}: {e}", field.name))?;
    }
    Ok(bits)
}

/// `*`, `?`, `n`, `a-b`, each optionally `/step` (`n/step` runs from n to the field's maximum).
fn range_bits(part: &str, field: &Field) -> Result<u64, String> {
    let (range, step) = match part.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (part, None),
    };
    let mut star = 0;
    let (low, high) = if range == "*" || range == "?" {
        star = STAR;
        (field.min, field.max)
    } else {
        match range.split_once('-') {
            Some((a, b)) => (value(a, field)?, value(b, field)?),
            None => {
                let v = value(range, field)?;
                (v, if step.is_some() { field.max } else { v })
            }
        }
    };
    let step = match step {
        None => 1,
        Some(s) => match s.parse::<u32>() {
            Ok(s) if s > 0 => s,
            _ => return Err(format!("step of range should be a positive number: {part}")),
        },
    };
    if step > 1 {
        star = 0;
    }
    if low < field.min {
        return Err(format!(
            "beginning of range ({low}) below minimum ({}): {part}",
            field.min
        ));
    }
    if high > field.max {
        return Err(format!(
            "end of range ({high}) above maximum ({}): {part}",
            field.max
        ));
    }
    if low > high {
        return Err(format!(
            "beginning of range ({low}) beyond end of range ({high}): {part}"
        ));
    }
    let mut bits = star;
    let mut v = low;
    while v <= high {
        bits |= 1 << v;
        v += step;
    }
    Ok(bits)
}

fn value(text: &str, field: &Field) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = field.names.iter().position(|n| *n == lower) {
        return Ok(field.min + i as u32);
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("failed to parse int from {text}"));
    }
    text.parse()
        .map_err(|_| format!("failed to parse int from {text}"))
}

/// A Go duration (`1h30m`, `90s`, `1.5h`) in whole seconds, rounded down.
fn go_duration_seconds(text: &str) -> Option<i64> {
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let number: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let (unit, scale) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .into_iter()
        .find(|(u, _)| rest.starts_with(u))?;
        rest = &rest[unit.len()..];
        total += number * scale;
    }
    (total.is_finite() && total < 1e15).then_some(total as i64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// 0 for Sunday … 6 for Saturday (1970-01-01 was a Thursday).
fn weekday(days: i64) -> i64 {
    (days + 4).rem_euclid(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch of an RFC 3339 UTC time like `2025-03-01T10:07:00Z`.
    fn at(text: &str) -> i64 {
        let ts: k8s_openapi::jiff::Timestamp = text.parse().unwrap();
        ts.as_second()
    }

    fn show(t: i64) -> String {
        k8s_openapi::jiff::Timestamp::from_second(t)
            .unwrap()
            .to_string()
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-800_000, -1, 0, 59, 365, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(weekday(days_from_civil(2025, 1, 1)), 3, "a Wednesday");
    }

    #[test]
    fn next_times() {
        // (schedule, after, expected next)
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "* * * * *",
                "2025-03-01T10:07:00Z",
                Some("2025-03-01T10:08:00Z"),
            ),
            (
                "* * * * *",
                "2025-03-01T10:07:30Z",
                Some("2025-03-01T10:08:00Z"),
            ),
            (
                "*/15 * * * *",
                "2025-03-01T10:07:00Z",
                Some("2025-03-01T10:15:00Z"),
            ),
            (
                "*/15 * * * *",
                "2025-03-01T10:45:00Z",
                Some("2025-03-01T11:00:00Z"),
            ),
            (
                "5/20 * * * *",
                "2025-03-01T10:30:00Z",
                Some("2025-03-01T10:45:00Z"),
            ),
            (
                "0 9-17/4 * * *",
                "2025-03-01T13:00:00Z",
                Some("2025-03-01T17:00:00Z"),
            ),
            (
                "30 2 * * *",
                "2025-03-01T10:00:00Z",
                Some("2025-03-02T02:30:00Z"),
            ),
            (
                "0 0 1 1 *",
                "2025-03-01T10:00:00Z",
                Some("2026-01-01T00:00:00Z"),
            ),
            (
                "@yearly",
                "2025-03-01T10:00:00Z",
                Some("2026-01-01T00:00:00Z"),
            ),
            (
                "@annually",
                "2025-12-31T23:59:00Z",
                Some("2026-01-01T00:00:00Z"),
            ),
            (
                "@monthly",
                "2025-01-31T12:00:00Z",
                Some("2025-02-01T00:00:00Z"),
            ),
            (
                "@weekly",
                "2025-03-01T10:00:00Z",
                Some("2025-03-02T00:00:00Z"),
            ), // a Sunday
            (
                "@daily",
                "2025-03-01T00:00:00Z",
                Some("2025-03-02T00:00:00Z"),
            ),
            (
                "@midnight",
                "2025-02-28T23:59:59Z",
                Some("2025-03-01T00:00:00Z"),
            ),
            (
                "@hourly",
                "2025-03-01T10:00:00Z",
                Some("2025-03-01T11:00:00Z"),
            ),
            (
                "@every 90s",
                "2025-03-01T10:00:00Z",
                Some("2025-03-01T10:01:30Z"),
            ),
            // Weekdays 1-5 (Mon–Fri): Saturday 1 March → Monday 3 March.
            (
                "0 8 * * 1-5",
                "2025-03-01T10:00:00Z",
                Some("2025-03-03T08:00:00Z"),
            ),
            (
                "0 8 * * MON-FRI",
                "2025-03-01T10:00:00Z",
                Some("2025-03-03T08:00:00Z"),
            ),
            (
                "0 8 * * sun,sat",
                "2025-03-03T10:00:00Z",
                Some("2025-03-08T08:00:00Z"),
            ),
            (
                "0 0 1 JAN,jul *",
                "2025-03-01T10:00:00Z",
                Some("2025-07-01T00:00:00Z"),
            ),
            (
                "0 0 * FEB-MAR *",
                "2025-03-31T00:00:00Z",
                Some("2026-02-01T00:00:00Z"),
            ),
            // Day of month and day of week both restricted: either matches (OR).
            (
                "0 0 13 * 5",
                "2025-03-01T10:00:00Z",
                Some("2025-03-07T00:00:00Z"),
            ), // Fri 7th
            (
                "0 0 13 * 5",
                "2025-03-07T00:00:00Z",
                Some("2025-03-13T00:00:00Z"),
            ), // Thu 13th
            // One of them `*`: both must match (AND): Fridays only.
            (
                "0 0 * * 5",
                "2025-03-07T00:00:00Z",
                Some("2025-03-14T00:00:00Z"),
            ),
            (
                "0 0 ? * 5",
                "2025-03-07T00:00:00Z",
                Some("2025-03-14T00:00:00Z"),
            ),
            // `*/1` keeps the star; `*/2` does not (robfig): 1-31/2 on days OR Fridays.
            (
                "0 0 */2 * 5",
                "2025-03-01T10:00:00Z",
                Some("2025-03-03T00:00:00Z"),
            ),
            (
                "0 0 29 2 *",
                "2025-01-01T00:00:00Z",
                Some("2028-02-29T00:00:00Z"),
            ),
            ("0 0 30 2 *", "2025-01-01T00:00:00Z", None),
            (
                "59 23 31 12 *",
                "2025-12-31T23:59:00Z",
                Some("2026-12-31T23:59:00Z"),
            ),
        ];
        for (expr, after, expected) in cases {
            let schedule = Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let got = schedule.next(at(after)).map(show);
            let want = expected.map(|e| show(at(e)));
            assert_eq!(got, want, "{expr} after {after}");
        }
    }

    #[test]
    fn bad_schedules_are_rejected() {
        let cases = [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 7",
            "5-1 * * * *",
            "*/0 * * * *",
            "a * * * *",
            "* * * foo *",
            "@fortnightly",
            "@every ",
            "@every 5x",
        ];
        for expr in cases {
            assert!(Schedule::parse(expr).is_err(), "{expr:?} should not parse");
        }
        assert!(Schedule::parse("TZ=UTC 0 * * * *").is_ok());
    }
}
