//! Cron schedules of timer triggers: six fields with seconds first (Azure Functions' NCRONTAB
//! form, `sec min hour day month weekday`) or the usual five (`min hour day month weekday`),
//! evaluated in UTC or an IANA time zone. Parsing and the next-occurrence arithmetic (months of
//! different lengths, daylight-saving gaps) are croner's; times are jiff's.
//!
//! Ticks are named by their instant in ms since the epoch: the key that makes each tick fire
//! exactly once across management instances (see `Store::fire_tick`).

use std::str::FromStr;

use croner::parser::{CronParser, Seconds};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
    text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule {0:?} is not a cron expression (six fields with seconds, or five): {1}")]
    Pattern(String, String),
    #[error("time zone {0:?} is unknown (use an IANA name such as \"Europe/Paris\"; UTC when absent): {1}")]
    TimeZone(String, String),
}

impl Schedule {
    pub fn parse(pattern: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|e| ScheduleError::Pattern(pattern.to_string(), e.to_string()))?;
        let tz = match timezone {
            None | Some("") | Some("UTC") | Some("utc") => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|e| ScheduleError::TimeZone(name.to_string(), e.to_string()))?,
        };
        // Reject patterns that never fire (Feb 30th): they would make a function silently idle.
        let s = Schedule { cron, tz, text: pattern.to_string() };
        if s.next_after(crate::time::now_ms()).is_none() {
            return Err(ScheduleError::Pattern(pattern.to_string(), "it never fires".into()));
        }
        Ok(s)
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn zoned(&self, ms: i64) -> Option<Zoned> {
        Timestamp::from_millisecond(ms).ok().map(|t| t.to_zoned(self.tz.clone()))
    }

    /// The first tick strictly after `ms`.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let z = self.zoned(ms)?;
        self.cron.find_next_occurrence(&z, false).ok().map(|n| n.timestamp().as_millisecond())
    }

    /// The last tick at or before `ms`.
    pub fn last_at_or_before(&self, ms: i64) -> Option<i64> {
        let z = self.zoned(ms)?;
        self.cron.find_previous_occurrence(&z, true).ok().map(|n| n.timestamp().as_millisecond())
    }

    /// Ticks in `(after, until]`, oldest first, at most `max` of them (the newest are kept when
    /// there are more: a scheduler that fell far behind fires the recent ones).
    pub fn ticks_between(&self, after: i64, until: i64, max: usize) -> Vec<i64> {
        let mut out = std::collections::VecDeque::new();
        let mut at = after;
        while let Some(next) = self.next_after(at) {
            if next > until {
                break;
            }
            if out.len() == max {
                out.pop_front();
            }
            out.push_back(next);
            at = next;
        }
        out.into()
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s, None)
    }
}

/// An instant as RFC 3339 text (UTC), for timer inputs and listings.
pub fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

/// Milliseconds since the epoch of an RFC 3339 time (`2026-12-24T06:00:00Z`, or with an offset).
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    text.parse::<Timestamp>().map(|t| t.as_millisecond()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn six_fields_fire_every_second_five_fields_every_minute() {
        let every_sec = Schedule::parse("* * * * * *", None).unwrap();
        let t = ms("2026-01-01T00:00:00.500Z");
        assert_eq!(every_sec.next_after(t), Some(ms("2026-01-01T00:00:01Z")));
        assert_eq!(every_sec.ticks_between(t, t + 3000, 100).len(), 3);
        let every_min = Schedule::parse("*/15 * * * *", None).unwrap();
        assert_eq!(every_min.next_after(ms("2026-01-01T00:01:00Z")), Some(ms("2026-01-01T00:15:00Z")));
        assert_eq!(every_min.last_at_or_before(ms("2026-01-01T00:29:59Z")), Some(ms("2026-01-01T00:15:00Z")));
    }

    #[test]
    fn time_zones_shift_the_wall_clock() {
        // 02:00 in Paris is 01:00 UTC in winter.
        let s = Schedule::parse("0 0 2 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(s.next_after(ms("2026-01-10T00:00:00Z")), Some(ms("2026-01-10T01:00:00Z")));
    }

    #[test]
    fn bad_input_is_explained() {
        let e = Schedule::parse("every minute", None).unwrap_err();
        assert!(e.to_string().contains("cron expression"), "{e}");
        let e = Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(e.to_string().contains("IANA"), "{e}");
    }

    #[test]
    fn a_far_behind_scheduler_keeps_the_newest_ticks() {
        let s = Schedule::parse("* * * * * *", None).unwrap();
        let t = ms("2026-01-01T00:00:00Z");
        let ticks = s.ticks_between(t, t + 10_000, 3);
        assert_eq!(ticks, vec![t + 8000, t + 9000, t + 10_000]);
    }
}
