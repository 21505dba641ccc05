//! `enabledPeriod`: whether scale-to-zero is allowed at an instant, and when that answer next
//! changes (the reconcile requeue).
//!
//! A window opens at every fire time of the five-field cron `schedule` and lasts `duration`;
//! windows that overlap or touch merge. This is KubeElasti's rule (`pkg/cronutil`): enabled at
//! `now` exactly when the latest fire time at or before `now` is less than `duration` ago.
//!
//! The schedule is read in UTC, in the zone of KubeElasti's `CRON_TZ=<zone> ` prefix, or in
//! `timeZone` (elasti's extension). Across a DST change in such a zone, fire times follow the
//! wall clock as croner computes them (the Open Cron Pattern Specification): a fixed time that
//! a spring-forward gap skips fires at the first second after the gap, and a fixed time that a
//! fall-back repeats fires once, at its first occurrence; `*` and `*/n` fields fire on each
//! pass. `duration` is elapsed time, not wall clock time: a `24h` window opened at midnight
//! ends at 23:00 on a 25-hour day.
//!
//! # Caveats
//!
//! KubeElasti parses with robfig/cron, this module with croner. Every schedule robfig accepts
//! is accepted here and fires at the same instants in UTC. croner also accepts what robfig
//! refuses (`L`, `W`, `#`, `@daily`-style nicknames, `7` for Sunday). In a zone with DST,
//! robfig skips a fixed time that falls in a gap and fires a repeated one twice.
use croner::{
    Cron,
    errors::CronError,
    parser::{CronParser, Seconds, Year},
};
use jiff::{SignedDuration, Timestamp, tz::TimeZone};

use crate::EnabledPeriod;

/// How far ahead [`Window::next_change`] looks. A requeue further out than a month is no
/// better than the periodic resync every controller has anyway.
pub const HORIZON: SignedDuration = SignedDuration::from_hours(24 * 35);

/// Windows [`Window::next_change`] merges before it gives up. Bounds the work when fire times
/// are dense and windows long (`* * * * *` for `1m` is enabled forever, one merge a minute).
const MAX_MERGES: usize = 1000;

/// Why an `enabledPeriod` cannot be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `schedule` is not a five-field cron expression.
    #[error("invalid schedule {schedule:?}")]
    InvalidSchedule {
        schedule: String,
        #[source]
        source: CronError,
    },
    /// `schedule` starts with `CRON_TZ=` (or `TZ=`) but no expression follows the zone.
    #[error("invalid schedule {schedule:?}: no cron expression after its time zone prefix")]
    MissingExpression { schedule: String },
    /// `duration` is not a positive Go duration.
    #[error("invalid duration {duration:?}: {reason}")]
    InvalidDuration {
        duration: String,
        reason: &'static str,
    },
    /// The time zone is not in the tz database.
    #[error("unknown time zone {zone:?}")]
    UnknownTimeZone {
        zone: String,
        #[source]
        source: jiff::Error,
    },
    /// `timeZone` and the schedule's `CRON_TZ=` prefix name different zones.
    #[error("two time zones given: timeZone {field:?} and schedule prefix {prefix:?}")]
    ConflictingTimeZones { field: String, prefix: String },
    /// Fire times could not be computed around an instant.
    #[error("cannot compute fire times of {schedule:?} around {at}")]
    EvaluationFailed {
        schedule: String,
        at: Timestamp,
        #[source]
        source: CronError,
    },
}

/// A parsed `enabledPeriod`.
#[derive(Clone, Debug)]
pub struct Window {
    schedule: String,
    cron: Cron,
    duration: SignedDuration,
    zone: TimeZone,
}

impl Window {
    /// Parses `period`'s schedule, duration and time zone.
    ///
    /// # Errors
    ///
    /// Each part that KubeElasti would refuse, and an unknown or doubly given time zone.
    pub fn new(period: &EnabledPeriod) -> Result<Self, Error> {
        let (prefix_zone, expression) = split_zone_prefix(&period.schedule)?;
        let zone = match (period.time_zone.as_deref(), prefix_zone) {
            (Some(field), Some(prefix)) if field != prefix => {
                return Err(Error::ConflictingTimeZones {
                    field: field.into(),
                    prefix: prefix.into(),
                });
            }
            (Some(name), _) | (None, Some(name)) => {
                jiff::tz::db()
                    .get(name)
                    .map_err(|source| Error::UnknownTimeZone {
                        zone: name.into(),
                        source,
                    })?
            }
            (None, None) => TimeZone::UTC,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            // robfig reads `5/15` as `5-59/15`; croner needs this to do the same.
            .sloppy_ranges(true)
            .build()
            .parse(&as_robfig_reads_it(expression))
            .map_err(|source| Error::InvalidSchedule {
                schedule: period.schedule.clone(),
                source,
            })?;
        let duration = parse_go_duration(&period.duration)?;
        if !duration.is_positive() {
            return Err(Error::InvalidDuration {
                duration: period.duration.clone(),
                reason: "it is not positive",
            });
        }
        Ok(Self {
            schedule: period.schedule.clone(),
            cron,
            duration,
            zone,
        })
    }

    /// How long each window lasts.
    pub fn duration(&self) -> SignedDuration {
        self.duration
    }

    /// Whether scale-to-zero is allowed at `now`.
    ///
    /// # Errors
    ///
    /// [`Error::EvaluationFailed`] when fire times cannot be computed (an instant outside
    /// years 1–5000).
    pub fn enabled_at(&self, now: Timestamp) -> Result<bool, Error> {
        Ok(self
            .last_fire(now)?
            .is_some_and(|fire| now < self.end_of(fire)))
    }

    /// The first instant after `now` at which [`Window::enabled_at`] answers differently,
    /// or `None` if it answers the same for the next [`HORIZON`] (a duration as long as the
    /// gaps between fire times, or a schedule that never fires again).
    ///
    /// # Errors
    ///
    /// As [`Window::enabled_at`].
    pub fn next_change(&self, now: Timestamp) -> Result<Option<Timestamp>, Error> {
        let horizon = now.checked_add(HORIZON).unwrap_or(Timestamp::MAX);
        let (fire, mut end) = match self.last_fire(now)? {
            Some(fire) if now < self.end_of(fire) => (fire, self.end_of(fire)),
            _ => return Ok(self.next_fire(now)?.filter(|at| *at <= horizon)),
        };
        for _ in 0..MAX_MERGES {
            if end > horizon {
                return Ok(None);
            }
            // A window opening at or before `end` merges with this one.
            let last = self.last_fire(end)?.unwrap_or(fire);
            let extended = self.end_of(last);
            if extended <= end {
                return Ok(Some(end));
            }
            end = extended;
        }
        Ok(None)
    }

    fn end_of(&self, fire: Timestamp) -> Timestamp {
        fire.checked_add(self.duration).unwrap_or(Timestamp::MAX)
    }

    /// The latest fire time at or before `at`.
    fn last_fire(&self, at: Timestamp) -> Result<Option<Timestamp>, Error> {
        self.found(
            at,
            self.cron
                .find_previous_occurrence(&at.to_zoned(self.zone.clone()), true),
        )
    }

    /// The earliest fire time after `at`.
    fn next_fire(&self, at: Timestamp) -> Result<Option<Timestamp>, Error> {
        self.found(
            at,
            self.cron
                .find_next_occurrence(&at.to_zoned(self.zone.clone()), false),
        )
    }

    fn found(
        &self,
        at: Timestamp,
        search: Result<jiff::Zoned, CronError>,
    ) -> Result<Option<Timestamp>, Error> {
        match search {
            Ok(fire) => Ok(Some(fire.timestamp())),
            // A schedule that never fires (`0 0 30 2 *`): KubeElasti's search comes back
            // empty too, and the period is never enabled.
            Err(CronError::TimeSearchLimitExceeded) => Ok(None),
            Err(source) => Err(Error::EvaluationFailed {
                schedule: self.schedule.clone(),
                at,
                source,
            }),
        }
    }
}

/// Splits robfig's `CRON_TZ=<zone> ` (or `TZ=<zone> `) prefix off `schedule`.
fn split_zone_prefix(schedule: &str) -> Result<(Option<&str>, &str), Error> {
    let Some(rest) = schedule
        .strip_prefix("CRON_TZ=")
        .or_else(|| schedule.strip_prefix("TZ="))
    else {
        return Ok((None, schedule));
    };
    match rest.split_once(char::is_whitespace) {
        Some((zone, expression)) if !expression.trim().is_empty() => Ok((Some(zone), expression)),
        _ => Err(Error::MissingExpression {
            schedule: schedule.into(),
        }),
    }
}

/// robfig treats `*/1` in a day field as `*`: the other day field alone then decides. croner
/// does so only for a literal `*`.
fn as_robfig_reads_it(expression: &str) -> String {
    let mut fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() == 5 {
        for day_field in [2, 4] {
            if fields[day_field] == "*/1" {
                fields[day_field] = "*";
            }
        }
    }
    fields.join(" ")
}

/// Parses a duration exactly as Go's `time.ParseDuration` does: `[-+]?([0-9]*(\.[0-9]*)?unit)+`
/// with units `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m`, `h`, or a bare `0`. Fractions are scaled
/// through an `f64`, as Go scales them.
///
/// # Errors
///
/// [`Error::InvalidDuration`] for anything Go refuses, including values beyond ±2⁶³ ns.
pub fn parse_go_duration(text: &str) -> Result<SignedDuration, Error> {
    /// Go accumulates in a `uint64` and allows up to 2⁶³ ns (the magnitude of `i64::MIN`).
    const LIMIT: u64 = 1 << 63;
    let invalid = |reason| Error::InvalidDuration {
        duration: text.into(),
        reason,
    };
    let not_go = || invalid("it is not a Go duration");
    let overflow = || invalid("it is out of range");

    let mut s = text.as_bytes();
    if s.is_empty() {
        return Err(invalid("it is empty"));
    }
    let mut negative = false;
    if let [sign @ (b'-' | b'+'), rest @ ..] = s {
        negative = *sign == b'-';
        s = rest;
    }
    if s == b"0" {
        return Ok(SignedDuration::ZERO);
    }
    if s.is_empty() {
        return Err(not_go());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(not_go());
        }
        let before = s.len();
        let (whole, rest) = leading_int(s).ok_or_else(overflow)?;
        s = rest;
        let pre = before != s.len();
        let (mut fraction, mut scale, mut post) = (0, 1.0, false);
        if let [b'.', rest @ ..] = s {
            let before = rest.len();
            (fraction, scale, s) = leading_fraction(rest);
            post = before != s.len();
        }
        if !pre && !post {
            return Err(not_go());
        }
        let unit_len = s
            .iter()
            .position(|c| *c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(invalid("a number has no unit"));
        }
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let unit = unit_nanos(unit).ok_or_else(|| invalid("it has an unknown unit"))?;
        if whole > LIMIT / unit {
            return Err(overflow());
        }
        let mut value = whole * unit;
        if fraction > 0 {
            // Go's conversion: a float64 product, truncated.
            value += (fraction as f64 * (unit as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(overflow());
            }
        }
        total = total.checked_add(value).ok_or_else(overflow)?;
        if total > LIMIT {
            return Err(overflow());
        }
    }
    let nanos = if negative {
        -i128::from(total)
    } else {
        i128::from(total)
    };
    i64::try_from(nanos)
        .map(SignedDuration::from_nanos)
        .map_err(|_| overflow())
}

fn unit_nanos(unit: &[u8]) -> Option<u64> {
    Some(match unit {
        b"ns" => 1,
        b"us" => 1_000,
        _ if unit == "µs".as_bytes() || unit == "μs".as_bytes() => 1_000,
        b"ms" => 1_000_000,
        b"s" => 1_000_000_000,
        b"m" => 60 * 1_000_000_000,
        b"h" => 3_600 * 1_000_000_000,
        _ => return None,
    })
}

/// Go's `leadingInt`: the leading digits, `None` past 2⁶³.
fn leading_int(s: &[u8]) -> Option<(u64, &[u8])> {
    let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut x: u64 = 0;
    for c in &s[..digits] {
        if x > (1 << 63) / 10 {
            return None;
        }
        x = x * 10 + u64::from(c - b'0');
        if x > 1 << 63 {
            return None;
        }
    }
    Some((x, &s[digits..]))
}

/// Go's `leadingFraction`: the leading digits and their scale; digits past the precision of a
/// `u64` are skipped, not refused.
fn leading_fraction(s: &[u8]) -> (u64, f64, &[u8]) {
    let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
    let (mut x, mut scale, mut overflow) = (0u64, 1.0, false);
    for c in &s[..digits] {
        if overflow {
            continue;
        }
        if x > ((1 << 63) - 1) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(c - b'0');
        if y > 1 << 63 {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[digits..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse()
            .unwrap_or_else(|e| panic!("timestamp {text:?}: {e}"))
    }

    fn window(schedule: &str, duration: &str, zone: Option<&str>) -> Window {
        Window::new(&EnabledPeriod {
            schedule: schedule.into(),
            duration: duration.into(),
            time_zone: zone.map(Into::into),
        })
        .unwrap_or_else(|e| panic!("{schedule:?} for {duration:?} in {zone:?}: {e}"))
    }

    fn enabled(w: &Window, at: &str) -> bool {
        w.enabled_at(ts(at)).unwrap_or_else(|e| panic!("{at}: {e}"))
    }

    fn next_change(w: &Window, at: &str) -> Option<Timestamp> {
        w.next_change(ts(at))
            .unwrap_or_else(|e| panic!("{at}: {e}"))
    }

    fn refused(schedule: &str, duration: &str, zone: Option<&str>) -> Error {
        match Window::new(&EnabledPeriod {
            schedule: schedule.into(),
            duration: duration.into(),
            time_zone: zone.map(Into::into),
        }) {
            Ok(_) => panic!("{schedule:?} for {duration:?} in {zone:?} was accepted"),
            Err(e) => e,
        }
    }

    /// KubeElasti's own `cronutil` cases give the same answers.
    #[test]
    fn kubeelasti_cases_agree() {
        let cases = [
            ("0 0 * * *", "24h", "2024-01-15T12:00:00Z", true),
            ("0 0 * * *", "1h", "2024-01-15T12:00:00Z", false),
            ("0 9 * * 1-5", "8h", "2024-01-15T14:00:00Z", true), // Monday 14:00
            ("0 9 * * 1-5", "8h", "2024-01-15T18:00:00Z", false), // Monday 18:00
            ("0 9 * * 1-5", "8h", "2024-01-13T14:00:00Z", false), // Saturday
            ("0 14 * * *", "1h", "2024-01-15T14:05:00Z", true),
            ("0 0 * * *", "168h", "2024-01-15T18:00:00Z", true),
        ];
        for (schedule, duration, at, want) in cases {
            let w = window(schedule, duration, None);
            assert_eq!(enabled(&w, at), want, "{schedule:?} for {duration} at {at}");
        }
    }

    #[test]
    fn window_opens_at_the_fire_time_and_closes_after_the_duration() {
        let w = window("0 9 * * *", "8h", None);
        assert!(!enabled(&w, "2026-05-04T08:59:59.999999999Z"));
        assert!(enabled(&w, "2026-05-04T09:00:00Z"));
        assert!(enabled(&w, "2026-05-04T16:59:59.999999999Z"));
        assert!(!enabled(&w, "2026-05-04T17:00:00Z"));
        assert_eq!(
            next_change(&w, "2026-05-04T08:00:00Z"),
            Some(ts("2026-05-04T09:00:00Z"))
        );
        assert_eq!(
            next_change(&w, "2026-05-04T09:00:00Z"),
            Some(ts("2026-05-04T17:00:00Z"))
        );
        assert_eq!(
            next_change(&w, "2026-05-04T17:00:00Z"),
            Some(ts("2026-05-05T09:00:00Z"))
        );
    }

    #[test]
    fn window_crosses_midnight() {
        let w = window("0 22 * * *", "4h", None);
        assert!(!enabled(&w, "2026-05-04T21:59:59Z"));
        assert!(enabled(&w, "2026-05-04T23:30:00Z"));
        assert!(enabled(&w, "2026-05-05T01:59:59Z"));
        assert!(!enabled(&w, "2026-05-05T02:00:00Z"));
        assert_eq!(
            next_change(&w, "2026-05-04T23:30:00Z"),
            Some(ts("2026-05-05T02:00:00Z"))
        );
    }

    #[test]
    fn overlapping_windows_merge() {
        let w = window("0 9,12 * * *", "4h", None);
        assert!(enabled(&w, "2026-05-04T12:30:00Z"));
        assert!(enabled(&w, "2026-05-04T15:59:59Z"));
        assert!(!enabled(&w, "2026-05-04T16:00:00Z"));
        assert_eq!(
            next_change(&w, "2026-05-04T10:00:00Z"),
            Some(ts("2026-05-04T16:00:00Z"))
        );
    }

    #[test]
    fn duration_as_long_as_the_period_is_always_enabled() {
        for (schedule, duration) in [
            ("0 * * * *", "2h"),
            ("0 * * * *", "1h"), // windows that touch merge
            ("0 0 * * *", "25h"),
            ("* * * * *", "1m"),
        ] {
            let w = window(schedule, duration, None);
            for at in [
                "2026-05-04T00:00:00Z",
                "2026-05-04T00:59:59Z",
                "2026-05-04T13:37:00Z",
                "2026-12-31T23:59:59Z",
            ] {
                assert!(enabled(&w, at), "{schedule:?} for {duration} at {at}");
                assert_eq!(next_change(&w, at), None, "{schedule:?} for {duration}");
            }
        }
        // KubeElasti's defaults: from midnight for 24h, every day.
        let w = Window::new(&EnabledPeriod::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(enabled(&w, "2026-05-04T23:59:59Z"));
        assert_eq!(next_change(&w, "2026-05-04T12:00:00Z"), None);
    }

    #[test]
    fn schedule_that_never_fires_is_never_enabled() {
        let w = window("0 0 30 2 *", "24h", None);
        assert!(!enabled(&w, "2026-05-04T12:00:00Z"));
        assert_eq!(next_change(&w, "2026-05-04T12:00:00Z"), None);
    }

    #[test]
    fn day_fields_combine_as_in_robfig() {
        // Both restricted: either may match (Monday, or the 1st).
        let w = window("0 0 1 * 1", "1h", None);
        assert!(enabled(&w, "2026-05-04T00:30:00Z")); // Monday 4th
        assert!(enabled(&w, "2026-05-01T00:30:00Z")); // Friday 1st
        assert!(!enabled(&w, "2026-05-05T00:30:00Z")); // Tuesday 5th
        // `*/1` counts as `*`, so the weekday alone decides.
        let w = window("0 0 */1 * 1", "1h", None);
        assert!(enabled(&w, "2026-05-04T00:30:00Z"));
        assert!(!enabled(&w, "2026-05-05T00:30:00Z"));
        // `N/step` is robfig's `N-max/step`; names and `?` work.
        let w = window("15/30 * ? * MON-fri", "1m", None);
        assert!(enabled(&w, "2026-05-04T10:45:30Z"));
        assert!(!enabled(&w, "2026-05-04T10:30:30Z"));
        assert!(!enabled(&w, "2026-05-03T10:45:30Z")); // Sunday
    }

    #[test]
    fn time_zone_field_and_cron_tz_prefix_shift_the_schedule() {
        for w in [
            window("0 9 * * *", "1h", Some("Europe/Berlin")),
            window("CRON_TZ=Europe/Berlin 0 9 * * *", "1h", None),
            window("TZ=Europe/Berlin 0 9 * * *", "1h", Some("Europe/Berlin")),
        ] {
            assert!(enabled(&w, "2026-07-01T07:30:00Z")); // 09:30 CEST
            assert!(!enabled(&w, "2026-07-01T09:30:00Z"));
            assert!(enabled(&w, "2026-01-15T08:30:00Z")); // 09:30 CET
        }
    }

    #[test]
    fn berlin_spring_forward_fires_after_the_gap() {
        // 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that day.
        let w = window("30 2 * * *", "1h", Some("Europe/Berlin"));
        assert!(enabled(&w, "2026-03-28T01:45:00Z")); // 02:45 CET, the day before
        assert!(!enabled(&w, "2026-03-29T00:59:59Z")); // 01:59:59 CET
        assert!(enabled(&w, "2026-03-29T01:00:00Z")); // 03:00 CEST, right after the gap
        assert!(enabled(&w, "2026-03-29T01:59:59Z"));
        assert!(!enabled(&w, "2026-03-29T02:00:00Z"));
        assert!(enabled(&w, "2026-03-30T00:30:00Z")); // 02:30 CEST, the day after
        assert_eq!(
            next_change(&w, "2026-03-28T23:00:00Z"),
            Some(ts("2026-03-29T01:00:00Z"))
        );
        // A day of 23 hours: daily 24h windows overlap, so the period stays enabled.
        let w = window("0 0 * * *", "24h", Some("Europe/Berlin"));
        assert!(enabled(&w, "2026-03-29T22:30:00Z")); // 00:30 CEST on the 30th
    }

    #[test]
    fn berlin_fall_back_fires_once_and_a_long_day_leaves_a_gap() {
        // 2026-10-25 03:00 CEST falls back to 02:00 CET: 02:30 happens twice.
        let w = window("30 2 * * *", "30m", Some("Europe/Berlin"));
        assert!(enabled(&w, "2026-10-25T00:45:00Z")); // 02:45 CEST, first pass
        assert!(!enabled(&w, "2026-10-25T01:00:00Z"));
        assert!(!enabled(&w, "2026-10-25T01:45:00Z")); // 02:45 CET: no second firing
        // A day of 25 hours: the 24h window opened at 00:00 CEST ends at 23:00 CET, an hour
        // before the next midnight.
        let w = window("0 0 * * *", "24h", Some("Europe/Berlin"));
        assert!(enabled(&w, "2026-10-25T21:59:59Z"));
        assert!(!enabled(&w, "2026-10-25T22:30:00Z"));
        assert!(enabled(&w, "2026-10-25T23:00:00Z")); // 00:00 CET on the 26th
        assert_eq!(
            next_change(&w, "2026-10-25T12:00:00Z"),
            Some(ts("2026-10-25T22:00:00Z"))
        );
        assert_eq!(
            next_change(&w, "2026-10-25T22:30:00Z"),
            Some(ts("2026-10-25T23:00:00Z"))
        );
    }

    #[test]
    fn new_york_windows_follow_the_wall_clock() {
        // 09:00 to 17:00 local: 14:00–22:00 UTC in EST, 13:00–21:00 UTC in EDT (from 2026-03-08).
        let w = window("0 9 * * *", "8h", Some("America/New_York"));
        assert!(!enabled(&w, "2026-03-06T13:30:00Z"));
        assert!(enabled(&w, "2026-03-06T21:30:00Z"));
        assert!(enabled(&w, "2026-03-09T13:30:00Z"));
        assert!(!enabled(&w, "2026-03-09T21:30:00Z"));
        assert_eq!(
            next_change(&w, "2026-03-07T23:00:00Z"),
            Some(ts("2026-03-08T13:00:00Z"))
        );
        // Interval fields fire on both passes of the repeated hour (2026-11-01 01:00–02:00).
        let w = window("*/30 * * * *", "10m", Some("America/New_York"));
        assert!(enabled(&w, "2026-11-01T05:05:00Z")); // 01:05 EDT
        assert!(enabled(&w, "2026-11-01T06:05:00Z")); // 01:05 EST
        assert!(!enabled(&w, "2026-11-01T06:15:00Z"));
    }

    #[test]
    fn invalid_schedules_are_refused() {
        for schedule in [
            "",
            "bogus",
            "0 0 *",
            "0 0 * * * *",
            "0 25 * * *",
            "60 * * * *",
            "0 0 32 * *",
            "0 0 * 13 *",
            "CRON_TZ=Europe/Berlin",
            "CRON_TZ=Europe/Berlin  ",
        ] {
            let e = refused(schedule, "1h", None);
            assert!(
                matches!(
                    e,
                    Error::InvalidSchedule { .. } | Error::MissingExpression { .. }
                ),
                "{schedule:?}: {e}"
            );
        }
    }

    #[test]
    fn invalid_durations_are_refused() {
        for duration in ["", "0", "0h", "-1h", "1d", "1", "forever", "1H", "24 h"] {
            let e = refused("0 0 * * *", duration, None);
            assert!(
                matches!(e, Error::InvalidDuration { .. }),
                "{duration:?}: {e}"
            );
        }
    }

    #[test]
    fn unknown_or_conflicting_time_zones_are_refused() {
        let e = refused("0 0 * * *", "1h", Some("Mars/Olympus_Mons"));
        assert!(matches!(e, Error::UnknownTimeZone { .. }), "{e}");
        let e = refused("CRON_TZ=Mars/Olympus_Mons 0 0 * * *", "1h", None);
        assert!(matches!(e, Error::UnknownTimeZone { .. }), "{e}");
        let e = refused(
            "CRON_TZ=Europe/Berlin 0 0 * * *",
            "1h",
            Some("America/New_York"),
        );
        assert!(matches!(e, Error::ConflictingTimeZones { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "two time zones given: timeZone \"America/New_York\" and schedule prefix \"Europe/Berlin\""
        );
    }

    #[test]
    fn go_durations_parse_as_go_parses_them() {
        let secs = SignedDuration::from_secs;
        let cases = [
            ("24h", secs(86_400)),
            ("1h30m", secs(5_400)),
            ("30m1h", secs(5_400)),
            ("90s", secs(90)),
            ("1.5h", secs(5_400)),
            (".5h", secs(1_800)),
            ("1.h", secs(3_600)),
            ("+5s", secs(5)),
            ("-1h", secs(-3_600)),
            ("0", SignedDuration::ZERO),
            ("1h1m1.5s", SignedDuration::from_millis(3_661_500)),
            ("300ms", SignedDuration::from_millis(300)),
            ("2us", SignedDuration::from_micros(2)),
            ("2µs", SignedDuration::from_micros(2)),
            ("2μs", SignedDuration::from_micros(2)),
            ("3ns", SignedDuration::from_nanos(3)),
            ("0.1s", SignedDuration::from_millis(100)),
            (
                "9223372036854775807ns",
                SignedDuration::from_nanos(i64::MAX),
            ),
            (
                "-9223372036854775808ns",
                SignedDuration::from_nanos(i64::MIN),
            ),
            ("2562047h", secs(2_562_047 * 3_600)),
        ];
        for (text, want) in cases {
            match parse_go_duration(text) {
                Ok(got) => assert_eq!(got, want, "{text:?}"),
                Err(e) => panic!("{text:?}: {e}"),
            }
        }
        for text in [
            "",
            "-",
            "h",
            ".h",
            "1",
            "1.5.5h",
            "1hh",
            "1 h",
            "1d",
            "9223372036854775808ns",
            "2562048h",
            "1e3s",
        ] {
            assert!(
                parse_go_duration(text).is_err(),
                "{text:?} should be refused"
            );
        }
    }
}
