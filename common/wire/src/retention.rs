//! How long finished work is kept: a function's `[retention]` and management's defaults.
//!
//! ```toml
//! [retention]
//! succeeded = "7d"     # succeeded invocations, counted from their end
//! failed = "30d"       # failed, dead and cancelled ones (and finished batches: the longer of the two)
//! versions = 10        # the newest version numbers kept (0: all); older ones go unless something uses them
//! ```
//!
//! A span is a whole number with a unit: `s`, `m`, `h` or `d` (`90m`, `12h`, `7d`), or
//! `forever`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long something is kept: for a span, or for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Keep {
    For(Duration),
    Forever,
}

/// The longest span accepted: about 100 years, far inside every clock's range.
const MAX_DAYS: u64 = 36_500;

impl Keep {
    /// The newest end time (ms since the epoch) that is past this span at `now_ms`; `None` for
    /// `forever`.
    pub fn cutoff(self, now_ms: i64) -> Option<i64> {
        match self {
            Keep::For(d) => Some(now_ms.saturating_sub(d.as_millis() as i64)),
            Keep::Forever => None,
        }
    }
}

impl FromStr for Keep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("forever") {
            return Ok(Keep::Forever);
        }
        let bad = || format!("{s:?} is not a span: write a number with s, m, h or d (\"7d\", \"12h\"), or \"forever\"");
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n.checked_mul(60).ok_or_else(bad)?,
            "h" => n.checked_mul(3600).ok_or_else(bad)?,
            "d" => n.checked_mul(86_400).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        if secs == 0 {
            return Err(format!("{s:?} keeps nothing: a span must be at least 1s (or \"forever\")"));
        }
        if secs > MAX_DAYS * 86_400 {
            return Err(format!("{s:?} is longer than {MAX_DAYS}d: write \"forever\""));
        }
        Ok(Keep::For(Duration::from_secs(secs)))
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = match self {
            Keep::Forever => return f.write_str("forever"),
            Keep::For(d) => d.as_secs(),
        };
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
            if secs % size == 0 {
                return write!(f, "{}{unit}", secs / size);
            }
        }
        write!(f, "{secs}s")
    }
}

impl Serialize for Keep {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[retention]` in a manifest: what is absent takes management's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<Keep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Keep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<u32>,
}

/// A retention with every part decided: a function's own, over management's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Succeeded invocations.
    pub succeeded: Keep,
    /// Failed, dead and cancelled invocations.
    pub failed: Keep,
    /// Versions kept by number (the newest this many); `0` keeps all of them.
    pub versions: u32,
}

impl Policy {
    /// `own`'s parts where it has them, this policy's elsewhere.
    pub fn over(self, own: Option<&Retention>) -> Policy {
        let Some(r) = own else { return self };
        Policy {
            succeeded: r.succeeded.unwrap_or(self.succeeded),
            failed: r.failed.unwrap_or(self.failed),
            versions: r.versions.unwrap_or(self.versions),
        }
    }

    /// How long a finished batch (with its items) and a timer's ticks are kept: the longer of
    /// the two spans, since a batch may hold both outcomes.
    pub fn batches(self) -> Keep {
        self.succeeded.max(self.failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_and_print_alike() {
        for (text, secs) in [("7d", 7 * 86_400), ("12h", 12 * 3600), ("90m", 90 * 60), ("45s", 45)] {
            let k: Keep = text.parse().unwrap();
            assert_eq!(k, Keep::For(Duration::from_secs(secs)));
            assert_eq!(k.to_string(), text);
        }
        assert_eq!("120m".parse::<Keep>().unwrap().to_string(), "2h");
        assert_eq!("Forever".parse::<Keep>().unwrap(), Keep::Forever);
        for bad in ["", "7", "d", "7w", "-1d", "0d", "1.5d", "36501d", "99999999999999999999d"] {
            assert!(bad.parse::<Keep>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn forever_outlasts_every_span_and_has_no_cutoff() {
        assert!(Keep::Forever > Keep::For(Duration::from_secs(MAX_DAYS * 86_400)));
        assert_eq!(Keep::Forever.cutoff(1_000), None);
        assert_eq!(Keep::For(Duration::from_secs(1)).cutoff(5_000), Some(4_000));
    }

    #[test]
    fn a_function_overrides_only_what_it_names() {
        let base = Policy { succeeded: "7d".parse().unwrap(), failed: "30d".parse().unwrap(), versions: 10 };
        let own: Retention = toml::from_str("succeeded = \"1h\"").unwrap();
        let p = base.over(Some(&own));
        assert_eq!((p.succeeded.to_string(), p.failed.to_string(), p.versions), ("1h".into(), "30d".into(), 10));
        assert_eq!(p.batches(), base.failed);
        assert!(toml::from_str::<Retention>("succeeded = \"soon\"").is_err());
        assert!(toml::from_str::<Retention>("kept = \"1d\"").is_err());
    }
}
