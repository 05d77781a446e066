//! API keys: the configured admin key (held as its digest only), keys made through the API
//! (stored as their sha256, shown once), and the cache of keys found valid.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use warren_store::{ApiKey, Store, StoreError};

use crate::metrics::Metrics;

/// Prefix of every key Warren generates, so a leaked one is recognisable in a scan.
pub const KEY_PREFIX: &str = "wrn_";

/// The shortest admin key accepted on the command line.
pub const MIN_ADMIN_KEY_CHARS: usize = 16;

/// How requests are authorized.
#[derive(Clone, Default)]
pub enum AuthMode {
    /// No key is checked: everything is open (`--insecure-no-auth`).
    #[default]
    Open,
    /// Keys are checked; the configured admin key is held as its sha256 only.
    Keys { admin_digest: [u8; 32] },
}

impl std::fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMode::Open => f.write_str("Open"),
            AuthMode::Keys { .. } => f.write_str("Keys { admin key: [hidden] }"),
        }
    }
}

impl AuthMode {
    /// Keys checked, with `admin_key` as the configured admin key.
    pub fn with_admin_key(admin_key: &SecretString) -> Result<AuthMode, String> {
        let admin_key = admin_key.expose_secret().trim();
        if admin_key.chars().count() < MIN_ADMIN_KEY_CHARS {
            return Err(format!(
                "the admin key is too short: give at least {MIN_ADMIN_KEY_CHARS} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(AuthMode::Keys { admin_digest: digest(admin_key) })
    }
}

pub(crate) fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The hex sha256 of a key: what the store holds.
pub fn hash_key(key: &str) -> String {
    hex::encode(digest(key))
}

/// A new random key: the prefix and 256 random bits in hex.
pub fn generate_key() -> SecretString {
    let bytes: [u8; 32] = rand::random();
    SecretString::from(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

/// Equality whose time does not depend on where the inputs differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long a valid API key found in the store is trusted without reading it again: a key
/// revoked through another management instance is refused by this one within this time (at
/// once by the instance that revoked it). Unknown keys are never cached.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// API keys found by their hash, for [`KEY_CACHE_TTL`]: a function key's request costs no store
/// read while its key is cached. Only keys that were valid are kept.
pub struct Keys {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    cache: DashMap<String, (Instant, ApiKey)>,
}

impl Keys {
    pub(crate) fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Keys {
        Keys { store, metrics, cache: DashMap::new() }
    }

    /// The key whose hash this is (revoked or not), from the cache while fresh.
    pub(crate) async fn find(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        if let Some(k) = self.cache.get(hash).filter(|e| e.0.elapsed() < KEY_CACHE_TTL).map(|e| e.1.clone()) {
            return Ok(Some(k));
        }
        let found = self.metrics.store.time("find_key_by_hash", self.store.find_key_by_hash(hash)).await?;
        match &found {
            Some(k) if k.revoked_ms.is_none() => {
                self.cache.insert(hash.to_string(), (Instant::now(), k.clone()));
            }
            _ => {
                self.cache.remove(hash);
            }
        }
        Ok(found)
    }

    /// A revoked key is refused here at once (other instances within [`KEY_CACHE_TTL`]).
    pub(crate) fn forget(&self, id: Uuid) {
        self.cache.retain(|_, (_, k)| k.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_long_and_distinct() {
        let (a, b) = (generate_key(), generate_key());
        let (a, b) = (a.expose_secret(), b.expose_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_PREFIX.len() + 64);
        assert_eq!(hash_key(a).len(), 64);
        assert!(constant_time_eq(b"same", b"same") && !constant_time_eq(b"same", b"sane"));
        assert!(AuthMode::with_admin_key(&SecretString::from("short")).is_err());
    }
}
