//! Times as operators write them on the command line.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use super::Usage;

/// An RFC 3339 time, a date (midnight UTC), or an age before `now`
/// (`30m`, `2h`, `7d`).
pub(super) fn parse_time(
    flag: &str,
    raw: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Usage> {
    if let Ok(time) = DateTime::parse_from_rfc3339(raw) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    let age = raw
        .char_indices()
        .last()
        .and_then(|(at, unit)| Some((raw[..at].parse::<i64>().ok()?, unit)))
        .and_then(|(n, unit)| match unit {
            's' => TimeDelta::try_seconds(n),
            'm' => TimeDelta::try_minutes(n),
            'h' => TimeDelta::try_hours(n),
            'd' => TimeDelta::try_days(n),
            _ => None,
        });
    match age {
        Some(age) if age >= TimeDelta::zero() => Ok(now - age),
        _ => Err(Usage(format!(
            "{flag} '{raw}' is not a time; write 2026-12-03T10:00:00+09:00, 2026-12-03 or an \
             age such as 30m, 2h, 7d"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-12-03T12:00:00Z".parse().expect("time")
    }

    fn time(raw: &str) -> DateTime<Utc> {
        parse_time("--since", raw, now()).expect(raw)
    }

    #[test]
    fn times_are_instants_dates_or_ages() {
        assert_eq!(
            time("2026-12-03T10:00:00+09:00"),
            "2026-12-03T01:00:00Z".parse::<DateTime<Utc>>().expect("t")
        );
        assert_eq!(
            time("2026-12-01"),
            "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().expect("t")
        );
        assert_eq!(
            time("90m"),
            "2026-12-03T10:30:00Z".parse::<DateTime<Utc>>().expect("t")
        );
        assert_eq!(
            time("2d"),
            "2026-12-01T12:00:00Z".parse::<DateTime<Utc>>().expect("t")
        );
        for bad in ["yesterday", "2026-13-01", "5w", "-3h", ""] {
            let err = parse_time("--since", bad, now()).unwrap_err();
            assert!(
                err.0.starts_with(&format!("--since '{bad}' is not a time")),
                "{err}"
            );
        }
    }
}
