//! A function's manifest, `function.toml`, at the root of its package.
//!
//! ```toml
//! name = "resize"            # letters, digits, '-' and '_'
//! runtime = "process"        # "process" (a command per invocation) or "echo" (built in)
//! command = ["python3", "main.py"]   # process only; run in the unpacked package folder
//! timeout_secs = 30          # past this the whole process tree is killed: timed_out
//! pool = "default"           # the queue (worker pool) it runs on
//! auth = "function"          # "anonymous" (no key), "function" (its key or an admin key), "admin"
//!
//! mode = "per_invocation"    # or "persistent": warm handlers (framed protocol on stdin/stdout)
//!
//! [handler]                  # persistent mode only
//! processes = 2              # warm handler processes per version on each worker
//! concurrency = 1            # invocations given to one handler at once
//! recycle_after = 10000      # invocations before a handler is replaced
//!
//! [retry]                    # optional; without it a failure is final at once
//! max_attempts = 5           # attempts in all, the first included
//! initial_delay_ms = 1000    # delay before the second attempt
//! max_delay_ms = 60000       # the delay doubles per attempt up to this
//! jitter = 0.2               # each delay is shortened by a random 0..20 %
//! ```

use serde::{Deserialize, Serialize};

pub const MANIFEST_FILE: &str = "function.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// One OS process per invocation: input on stdin, result on stdout, log lines on stderr.
    Process,
    /// Built in: the result is the input. Measures the mesh itself.
    Echo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub runtime: Runtime,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_pool")]
    pub pool: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// `per_invocation` (default): a process per invocation. `persistent`: warm handler
    /// processes speaking the framed handler protocol (see README, "Warm handlers").
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub handler: HandlerConfig,
    /// Who may invoke the function and read its invocations (see [`AuthLevel`]).
    #[serde(default)]
    pub auth: AuthLevel,
}

/// A function's authorization level, like Azure Functions' levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthLevel {
    /// Anyone may invoke it and read its invocations, with no key.
    Anonymous,
    /// A key for this function, or an admin key (the default).
    #[default]
    Function,
    /// An admin key only.
    Admin,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    PerInvocation,
    Persistent,
}

/// Warm handler settings (`mode = "persistent"` only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandlerConfig {
    /// Warm handler processes per function version on one worker.
    pub processes: u32,
    /// Invocations one handler process is given at once.
    pub concurrency: u32,
    /// Invocations after which a handler is replaced by a fresh one.
    pub recycle_after: u64,
    /// Seconds a new handler has to say it is ready.
    pub start_timeout_secs: u64,
}

impl Default for HandlerConfig {
    fn default() -> Self {
        HandlerConfig { processes: 2, concurrency: 1, recycle_after: 10_000, start_timeout_secs: 30 }
    }
}

/// How failed attempts are retried. The delay is held by the broker (a TTL queue that
/// dead-letters back into the pool's queue), never by a sleeping consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    pub multiplier: f64,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 1, initial_delay_ms: 1000, max_delay_ms: 60_000, multiplier: 2.0, jitter: 0.2 }
    }
}

impl RetryPolicy {
    /// Whether a retry policy is in force (more than one attempt).
    pub fn retries(&self) -> bool {
        self.max_attempts > 1
    }

    /// The delay before attempt `failed + 1`, given a uniform random `r` in [0, 1).
    pub fn delay_ms(&self, failed: u32, r: f64) -> u64 {
        let exp = self.multiplier.powi(failed.saturating_sub(1).min(60) as i32);
        let base = (self.initial_delay_ms as f64 * exp).min(self.max_delay_ms as f64);
        (base * (1.0 - self.jitter * r)).max(1.0) as u64
    }
}

fn default_timeout() -> u64 {
    300
}
pub fn default_pool() -> String {
    "default".to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{MANIFEST_FILE} is not valid TOML for a Warren function: {0}")]
    Parse(String),
    #[error("{MANIFEST_FILE}: {0}")]
    Invalid(String),
}

/// Names of functions and pools: what can go in a URL path and a queue name unescaped.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |msg: String| Err(ManifestError::Invalid(msg));
        if !valid_name(&self.name) {
            return bad(format!("name {:?} must be 1-64 letters, digits, '-' or '_'", self.name));
        }
        if !valid_name(&self.pool) {
            return bad(format!("pool {:?} must be 1-64 letters, digits, '-' or '_'", self.pool));
        }
        if self.timeout_secs == 0 || self.timeout_secs > 24 * 3600 {
            return bad(format!("timeout_secs = {} must be between 1 and 86400", self.timeout_secs));
        }
        let h = &self.handler;
        if !(1..=64).contains(&h.processes) || !(1..=1000).contains(&h.concurrency) || h.recycle_after == 0 {
            return bad("handler.processes must be 1-64, handler.concurrency 1-1000, handler.recycle_after > 0".into());
        }
        let r = &self.retry;
        if r.max_attempts == 0 || r.max_attempts > 100 {
            return bad(format!("retry.max_attempts = {} must be between 1 and 100", r.max_attempts));
        }
        if r.initial_delay_ms == 0 || r.max_delay_ms < r.initial_delay_ms || r.max_delay_ms > 24 * 3600 * 1000 {
            return bad("retry delays must satisfy 0 < initial_delay_ms <= max_delay_ms <= 86400000".into());
        }
        if !(1.0..=10.0).contains(&r.multiplier) || !(0.0..=1.0).contains(&r.jitter) {
            return bad("retry.multiplier must be in [1, 10] and retry.jitter in [0, 1]".into());
        }
        match self.runtime {
            Runtime::Process if self.command.is_empty() || self.command[0].is_empty() => {
                bad("runtime \"process\" needs command = [\"program\", \"arg\", ...]".into())
            }
            Runtime::Echo if !self.command.is_empty() => {
                bad("runtime \"echo\" is built in and takes no command".into())
            }
            Runtime::Echo if self.mode == Mode::Persistent => {
                bad("mode = \"persistent\" needs runtime = \"process\"".into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults() {
        let m = Manifest::parse("name = \"a\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\n").unwrap();
        assert_eq!(m.pool, "default");
        assert_eq!(m.timeout_secs, 300);
    }

    #[test]
    fn retry_delays_grow_cap_and_jitter() {
        let m = Manifest::parse(
            "name = \"a\"\nruntime = \"echo\"\n[retry]\nmax_attempts = 6\ninitial_delay_ms = 100\nmax_delay_ms = 500\n",
        )
        .unwrap();
        let r = &m.retry;
        assert!(r.retries());
        assert_eq!([1, 2, 3, 4].map(|n| r.delay_ms(n, 0.0)), [100, 200, 400, 500]);
        assert_eq!(r.delay_ms(1, 0.999_999), 80, "20 % jitter at most");
        assert!(!Manifest::parse("name = \"a\"\nruntime = \"echo\"\n").unwrap().retry.retries());
        let e = Manifest::parse("name = \"a\"\nruntime = \"echo\"\n[retry]\nmax_attempts = 0\n").unwrap_err();
        assert!(e.to_string().contains("max_attempts"), "{e}");
    }

    #[test]
    fn explains_what_is_wrong() {
        let e = Manifest::parse("name = \"a b\"\nruntime = \"echo\"\n").unwrap_err();
        assert!(e.to_string().contains("letters, digits"), "{e}");
        let e = Manifest::parse("name = \"a\"\nruntime = \"process\"\n").unwrap_err();
        assert!(e.to_string().contains("needs command"), "{e}");
        let e = Manifest::parse("name = \"a\"\nruntime = \"cobol\"\n").unwrap_err();
        assert!(matches!(e, ManifestError::Parse(_)), "{e}");
    }
}
