//! A function's settings as its runs get them: read from the store at most every
//! [`SETTINGS_TTL`], secret ones opened with the worker's key, and kept out of what a run
//! reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use warren_service::secret::{SecretError, SecretKey};
use warren_store::{Store, StoreError};

/// How long a function's settings are reused before they are read again.
const SETTINGS_TTL: Duration = Duration::from_secs(5);

/// A function's settings, opened: environment variables, and the secret values to keep out of
/// log lines and errors.
#[derive(Default)]
pub(crate) struct Settings {
    pub(crate) vars: Vec<(String, String)>,
    pub(crate) secrets: Vec<String>,
}

impl Settings {
    /// The result with each secret value replaced: a function that echoes a secret does not
    /// publish it through the API.
    pub(crate) fn redact_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        let mut out = bytes;
        for s in self.secrets.iter().filter(|s| s.len() >= 3) {
            let needle = s.as_bytes();
            if !out.windows(needle.len()).any(|w| w == needle) {
                continue;
            }
            let mut replaced = Vec::with_capacity(out.len());
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(needle) {
                    replaced.extend_from_slice(b"[secret]");
                    i += needle.len();
                } else {
                    replaced.push(out[i]);
                    i += 1;
                }
            }
            out = replaced;
        }
        out
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if s.len() >= 3 && out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[secret]");
            }
        }
        out
    }
}

/// Each function's settings, opened, for [`SETTINGS_TTL`].
pub(crate) struct SettingsCache {
    store: Arc<dyn Store>,
    key: Option<SecretKey>,
    cache: DashMap<String, (Instant, Arc<Settings>)>,
}

impl SettingsCache {
    pub(crate) fn new(store: Arc<dyn Store>, key: Option<SecretKey>) -> Self {
        SettingsCache { store, key, cache: DashMap::new() }
    }

    /// The function's settings (cached for a few seconds). The outer error is the store being
    /// unavailable (the message goes back); the inner one, settings that cannot be opened
    /// (the invocation fails with that reason).
    pub(crate) async fn get(&self, function: &str) -> Result<Result<Arc<Settings>, String>, StoreError> {
        if let Some(e) = self.cache.get(function) {
            if e.0.elapsed() < SETTINGS_TTL {
                return Ok(Ok(e.1.clone()));
            }
        }
        let stored = self.store.list_settings(function).await?;
        let mut opened = Settings::default();
        for s in stored {
            let value = if s.secret {
                let Some(key) = &self.key else {
                    return Ok(Err(SecretError::NoKey.to_string()));
                };
                match key.open(&s.value) {
                    Ok(v) => {
                        opened.secrets.push(v.clone());
                        v
                    }
                    Err(e) => return Ok(Err(format!("setting {}: {e}", s.name))),
                }
            } else {
                s.value
            };
            opened.vars.push((s.name, value));
        }
        let opened = Arc::new(opened);
        self.cache.insert(function.to_string(), (Instant::now(), opened.clone()));
        Ok(Ok(opened))
    }
}
