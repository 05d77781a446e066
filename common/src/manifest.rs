//! A function's manifest, `function.toml`, at the root of its package.
//!
//! ```toml
//! name = "resize"            # letters, digits, '-' and '_'
//! runtime = "process"        # "process" (a command per invocation) or "echo" (built in)
//! command = ["python3", "main.py"]   # process only; run in the unpacked package folder
//! timeout_secs = 30          # past this the whole process tree is killed: timed_out
//! pool = "default"           # the queue (worker pool) it runs on
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
        match self.runtime {
            Runtime::Process if self.command.is_empty() || self.command[0].is_empty() => {
                bad("runtime \"process\" needs command = [\"program\", \"arg\", ...]".into())
            }
            Runtime::Echo if !self.command.is_empty() => {
                bad("runtime \"echo\" is built in and takes no command".into())
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
    fn explains_what_is_wrong() {
        let e = Manifest::parse("name = \"a b\"\nruntime = \"echo\"\n").unwrap_err();
        assert!(e.to_string().contains("letters, digits"), "{e}");
        let e = Manifest::parse("name = \"a\"\nruntime = \"process\"\n").unwrap_err();
        assert!(e.to_string().contains("needs command"), "{e}");
        let e = Manifest::parse("name = \"a\"\nruntime = \"cobol\"\n").unwrap_err();
        assert!(matches!(e, ManifestError::Parse(_)), "{e}");
    }
}
