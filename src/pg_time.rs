//! PostgreSQL's calendar: the range of its `DATE` and `TIMESTAMP` types and the text it reads
//! back for any day in that range (five-digit years, `BC` instead of a minus sign).
//!
//! Transform checks values against these bounds, so what it lets through is what PostgreSQL
//! stores; the COPY encoder writes them with [`write_date`] and [`write_timestamp`]. Days and
//! microseconds count from the Unix epoch like Arrow's `Date32` and `Timestamp(µs)`. The
//! arithmetic is plain integer math (Howard Hinnant's civil-from-days), valid for every `i64`
//! day, so nothing here depends on chrono's narrower range (±262143 years).

use std::fmt::Write as _;

pub(crate) const MICROS_PER_DAY: i64 = 86_400_000_000;

/// 4714-11-24 BC (Julian day 0), PostgreSQL's first `DATE` and `TIMESTAMP` day.
pub(crate) const FIRST_DAY: i64 = -2_440_588;
/// 5874897-12-31, PostgreSQL's last `DATE`.
pub(crate) const LAST_DATE: i64 = 2_145_042_905;
/// 4714-11-24 00:00:00 BC in microseconds since 1970. PostgreSQL's last `TIMESTAMP`
/// (294276-12-31) is past `i64::MAX` microseconds since 1970: a staged (Arrow µs) timestamp
/// never exceeds it.
pub(crate) const FIRST_TIMESTAMP_MICROS: i64 = FIRST_DAY * MICROS_PER_DAY;

/// (year, month, day) of a day counted from 1970-01-01, proleptic Gregorian; the year is
/// astronomical (0 is 1 BC, -1 is 2 BC).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift to 0000-03-01 so leap days end each 400-year era; i128 keeps every i64 day exact.
    let z = i128::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i128::from(month <= 2);
    // Bounded above: month and day are small; the year of an i64 day fits an i64.
    (
        i64::try_from(year).unwrap_or(i64::MAX),
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// Days from 1970-01-01 to (astronomical year, month 1-12, day 1-31).
#[cfg(test)]
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = i128::from(year) - i128::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i128::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i128::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    i64::try_from(era * 146_097 + doe - 719_468).unwrap_or(i64::MAX)
}

/// Writes a day as PostgreSQL reads it: `2024-06-15`, `20240-06-15`, `0101-06-15 BC`.
pub(crate) fn write_date(out: &mut String, days: i64) {
    let (year, month, day) = civil_from_days(days);
    write_ymd(out, year, month, day);
    if year <= 0 {
        out.push_str(" BC");
    }
}

/// Writes microseconds since 1970 (UTC) as `2024-06-15 10:00:00.000001`, with `+00` when
/// `utc_offset` (a `TIMESTAMPTZ`), and ` BC` last for years before 1 AD.
pub(crate) fn write_timestamp(out: &mut String, micros: i64, utc_offset: bool) {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    let (secs, frac) = (in_day / 1_000_000, in_day % 1_000_000);
    let (year, month, day) = civil_from_days(days);
    write_ymd(out, year, month, day);
    let _ = write!(
        out,
        " {:02}:{:02}:{:02}.{frac:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if utc_offset {
        out.push_str("+00");
    }
    if year <= 0 {
        out.push_str(" BC");
    }
}

/// `YYYY-MM-DD` with at least four year digits; BC years counted the historical way
/// (astronomical 0 is 1 BC), the caller appending ` BC`.
fn write_ymd(out: &mut String, year: i64, month: u32, day: u32) {
    let shown = if year <= 0 {
        1_i128 - i128::from(year)
    } else {
        i128::from(year)
    };
    let _ = write!(out, "{shown:04}-{month:02}-{day:02}");
}

/// The year of a day, as PostgreSQL prints it (`300000`, `101 BC`), for messages.
pub(crate) fn year_text(days: i64) -> String {
    let (year, _, _) = civil_from_days(days);
    if year <= 0 {
        format!("{} BC", 1_i128 - i128::from(year))
    } else {
        year.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(days: i64) -> String {
        let mut s = String::new();
        write_date(&mut s, days);
        s
    }

    #[test]
    fn bounds_are_postgresql_s() {
        assert_eq!(date(FIRST_DAY), "4714-11-24 BC");
        assert_eq!(date(LAST_DATE), "5874897-12-31");
        assert_eq!(date(LAST_DATE + 1), "5874898-01-01");
        // PostgreSQL's last TIMESTAMP day is past i64::MAX µs since 1970.
        let last_timestamp_day = 106_762_939;
        assert_eq!(date(last_timestamp_day), "294276-12-31");
        assert!(i128::from(last_timestamp_day) * i128::from(MICROS_PER_DAY) > i128::from(i64::MAX));
        assert_eq!(days_from_civil(-4713, 11, 24), FIRST_DAY);
        assert_eq!(days_from_civil(5_874_897, 12, 31), LAST_DATE);
        assert_eq!(days_from_civil(294_276, 12, 31), last_timestamp_day);
    }

    #[test]
    fn years_before_1_ad_are_bc_with_no_year_zero() {
        assert_eq!(date(days_from_civil(0, 1, 1)), "0001-01-01 BC");
        assert_eq!(date(days_from_civil(-100, 6, 15)), "0101-06-15 BC");
        assert_eq!(date(days_from_civil(1, 1, 1)), "0001-01-01");
        assert_eq!(date(days_from_civil(20_240, 6, 15)), "20240-06-15");
        assert_eq!(year_text(days_from_civil(-100, 6, 15)), "101 BC");
    }

    #[test]
    fn timestamps_carry_time_offset_and_era() {
        let mut s = String::new();
        let micros = days_from_civil(-100, 6, 15) * MICROS_PER_DAY + 36_000_000_001;
        write_timestamp(&mut s, micros, true);
        assert_eq!(s, "0101-06-15 10:00:00.000001+00 BC");
        s.clear();
        write_timestamp(&mut s, -1, false);
        assert_eq!(s, "1969-12-31 23:59:59.999999");
        s.clear();
        write_timestamp(&mut s, i64::MAX, false);
        assert_eq!(s, "294247-01-10 04:00:54.775807");
    }

    /// Against chrono where both work, on days spread over chrono's whole range.
    #[test]
    fn civil_dates_agree_with_chrono() {
        let mut days = -95_000_000_i64;
        while days < 95_000_000 {
            let (y, m, d) = civil_from_days(days);
            let c = chrono::NaiveDate::from_num_days_from_ce_opt(
                i32::try_from(days + 719_163).unwrap(),
            )
            .unwrap();
            use chrono::Datelike;
            assert_eq!((y, m, d), (i64::from(c.year()), c.month(), c.day()));
            assert_eq!(days_from_civil(y, m, d), days);
            days += 9_973;
        }
        for extreme in [
            i64::MIN / 2,
            i64::MAX / 2,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
        ] {
            let (y, m, d) = civil_from_days(extreme);
            assert_eq!(days_from_civil(y, m, d), extreme);
        }
    }
}
