//! Which days of which site an API extract reads. Matomo's `period=day` is a day of the
//! site's time zone, so the window is computed there: the site's zone comes from
//! `SitesManager.getSiteFromId` (an IANA name, or Matomo's manual offsets `UTC+5.5`), or
//! from `MATOMO_TIMEZONE` for every site.
//!
//! The first day, as the existing sync chooses it and better: an explicit `--since` date;
//! else, unless `FORCE_STARTDATE` (or `--full`, `force_reimport`), the day of the last
//! loaded action minus the lag (so visits still open when it was read are read again, and
//! the upsert updates them); else `STARTDATE`; else today minus `INITIAL_OFFSET`.
//! `GLOBAL_DATE_THRESHOLD` moves it back when earlier. Whole days are re-read, never resumed
//! inside a day: the upsert makes a re-read free of duplicates whatever was deleted since.

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// A site's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SiteZone {
    Named(chrono_tz::Tz),
    /// Matomo's `UTC+5.5`-style zones.
    Fixed(FixedOffset),
}

impl SiteZone {
    /// An IANA name, `UTC`, or `UTC±H[.fraction]` / `UTC±H:MM`.
    pub(crate) fn parse(text: &str) -> Option<SiteZone> {
        let text = text.trim();
        if let Some(offset) = text.strip_prefix("UTC").filter(|r| !r.is_empty()) {
            let (sign, rest) = match offset.as_bytes().first() {
                Some(b'+') => (1, &offset[1..]),
                Some(b'-') => (-1, &offset[1..]),
                _ => return None,
            };
            let seconds = match rest.split_once(':') {
                Some((h, m)) => {
                    h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok().filter(|m| *m < 60)? * 60
                }
                None => {
                    let hours: f64 = rest.parse().ok().filter(|h: &f64| h.is_finite())?;
                    let seconds = (hours * 3600.0).round();
                    if !(0.0..=86_399.0).contains(&seconds) {
                        return None;
                    }
                    format!("{seconds:.0}").parse::<i32>().ok()?
                }
            };
            return FixedOffset::east_opt(sign * seconds).map(SiteZone::Fixed);
        }
        text.parse::<chrono_tz::Tz>().ok().map(SiteZone::Named)
    }

    /// The local date of an instant.
    pub(crate) fn date_of(self, instant: DateTime<Utc>) -> NaiveDate {
        match self {
            SiteZone::Named(tz) => instant.with_timezone(&tz).date_naive(),
            SiteZone::Fixed(offset) => instant.with_timezone(&offset).date_naive(),
        }
    }

    pub(crate) fn name(self) -> String {
        match self {
            SiteZone::Named(tz) => tz.name().to_string(),
            SiteZone::Fixed(offset) => format!("UTC{offset}"),
        }
    }

    /// Midnight starting `day`, as UTC (the earliest instant of a day read).
    pub(crate) fn start_of(self, day: NaiveDate) -> NaiveDateTime {
        let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
        match self {
            SiteZone::Named(tz) => tz
                .from_local_datetime(&midnight)
                .earliest()
                .map_or(midnight, |t| t.naive_utc()),
            SiteZone::Fixed(offset) => offset
                .from_local_datetime(&midnight)
                .earliest()
                .map_or(midnight, |t| t.naive_utc()),
        }
    }
}

/// What decides a site's first day; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct StartRule {
    /// `--since`: the first day, as given.
    pub since: Option<NaiveDate>,
    /// `FORCE_STARTDATE`, `--full` or `force_reimport`: the watermark is ignored.
    pub force: bool,
    /// The last loaded action (UTC): the target's, else the one the last loaded run recorded.
    pub watermark: Option<NaiveDateTime>,
    /// Days read again before the watermark's day.
    pub lag_days: u32,
    /// `GLOBAL_DATE_THRESHOLD`.
    pub threshold: Option<NaiveDate>,
    /// `STARTDATE`.
    pub start_date: Option<NaiveDate>,
    /// `INITIAL_OFFSET`.
    pub initial_offset: u32,
}

impl StartRule {
    /// The first day to read in `zone` when it is `today` there, and why.
    pub(crate) fn first_day(&self, zone: SiteZone, today: NaiveDate) -> (NaiveDate, String) {
        let (day, reason) = if let Some(since) = self.since {
            (since, "--since".to_string())
        } else {
            let watermark = self.watermark.filter(|_| !self.force).map(|w| {
                let lagged = w.and_utc() - Duration::days(i64::from(self.lag_days));
                (
                    zone.date_of(lagged),
                    format!(
                        "last loaded action {} minus {} day(s)",
                        w.format("%Y-%m-%d %H:%M:%S"),
                        self.lag_days
                    ),
                )
            });
            match (watermark, self.start_date) {
                (Some(found), _) => found,
                (None, Some(start)) if self.force => (start, "FORCE_STARTDATE: STARTDATE".into()),
                (None, Some(start)) => (start, "STARTDATE".into()),
                (None, None) => (
                    today - Duration::days(i64::from(self.initial_offset)),
                    format!("today minus INITIAL_OFFSET ({} days)", self.initial_offset),
                ),
            }
        };
        match self.threshold {
            Some(t) if t < day => (t, format!("GLOBAL_DATE_THRESHOLD (earlier than {reason})")),
            _ => (day, reason),
        }
    }
}

/// Every day from `first` to `last`, inclusive.
pub(crate) fn days(first: NaiveDate, last: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    first.iter_days().take_while(move |d| *d <= last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn matomo_zones_parse() {
        assert_eq!(
            SiteZone::parse("Europe/Paris"),
            Some(SiteZone::Named(chrono_tz::Europe::Paris))
        );
        assert_eq!(
            SiteZone::parse("UTC+5.5"),
            FixedOffset::east_opt(19_800).map(SiteZone::Fixed)
        );
        assert_eq!(
            SiteZone::parse("UTC-9:30"),
            FixedOffset::east_opt(-34_200).map(SiteZone::Fixed)
        );
        assert_eq!(
            SiteZone::parse("UTC"),
            Some(SiteZone::Named(chrono_tz::UTC))
        );
        for bad in [
            "UTC+",
            "UTC+99",
            "Mars/Olympus",
            "UTC*2",
            "UTC+NaN",
            "UTC+1e400",
        ] {
            assert_eq!(SiteZone::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_day_is_the_sites_day() {
        let paris = SiteZone::parse("Pacific/Kiritimati").unwrap();
        let instant = d("2024-03-01").and_hms_opt(12, 0, 0).unwrap().and_utc();
        assert_eq!(paris.date_of(instant), d("2024-03-02"));
        assert_eq!(
            paris.start_of(d("2024-03-02")),
            d("2024-03-01").and_hms_opt(10, 0, 0).unwrap()
        );
    }

    #[test]
    fn first_day_rules() {
        let utc = SiteZone::Named(chrono_tz::UTC);
        let today = d("2024-03-10");
        let mut rule = StartRule {
            watermark: Some(d("2024-03-08").and_hms_opt(1, 0, 0).unwrap()),
            lag_days: 2,
            start_date: Some(d("2024-01-01")),
            initial_offset: 3,
            ..Default::default()
        };
        assert_eq!(rule.first_day(utc, today).0, d("2024-03-06"));
        // In a zone ahead of UTC the lagged instant may fall on the next local day.
        let tokyo = SiteZone::parse("Asia/Tokyo").unwrap();
        let mut late = rule.clone();
        late.watermark = Some(d("2024-03-08").and_hms_opt(20, 0, 0).unwrap());
        assert_eq!(late.first_day(tokyo, today).0, d("2024-03-07"));
        rule.force = true;
        assert_eq!(
            rule.first_day(utc, today),
            (d("2024-01-01"), "FORCE_STARTDATE: STARTDATE".into())
        );
        rule.start_date = None;
        assert_eq!(rule.first_day(utc, today).0, d("2024-03-07"));
        rule.since = Some(d("2024-03-09"));
        assert_eq!(rule.first_day(utc, today).0, d("2024-03-09"));
        rule.threshold = Some(d("2024-02-01"));
        assert_eq!(rule.first_day(utc, today).0, d("2024-02-01"));
        assert_eq!(days(d("2024-02-28"), d("2024-03-01")).count(), 3);
        assert_eq!(days(d("2024-03-02"), d("2024-03-01")).count(), 0);
    }
}
