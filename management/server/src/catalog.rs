//! The function catalog as management reads it: functions' active versions (trusted for
//! [`ACTIVE_TTL`]) and versions' manifests (immutable, so kept), publishing, and settings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use warren_service::secret::SecretKey;
use warren_store::{FunctionVersion, Setting, Store};
use warren_wire::manifest::{AuthLevel, Manifest};
use warren_wire::package;
use warren_wire::time::now_ms;

use crate::error::Error;

/// How long an instance trusts the active version it read. Another management instance's
/// publish is seen within this delay.
pub const ACTIVE_TTL: Duration = Duration::from_secs(1);

/// What a publish stored: one version, or one per function of an Azure Functions app, and
/// what the publisher should be told.
#[derive(Debug, serde::Serialize)]
pub struct Published {
    pub versions: Vec<FunctionVersion>,
    pub notes: Vec<String>,
    pub app: bool,
}

pub struct Catalog {
    store: Arc<dyn Store>,
    limits: package::Limits,
    /// Seals secret settings; without it, secret settings are refused.
    secret_key: Option<SecretKey>,
    /// Active version per function, reused for [`ACTIVE_TTL`]: invoking does not read the
    /// store for it each time. A publish through this instance updates it at once.
    active: DashMap<String, (Instant, i64)>,
    /// Manifests of versions (immutable, so kept).
    manifests: DashMap<(String, i64), Arc<Manifest>>,
}

impl Catalog {
    pub(crate) fn new(store: Arc<dyn Store>, limits: package::Limits, secret_key: Option<SecretKey>) -> Catalog {
        Catalog { store, limits, secret_key, active: DashMap::new(), manifests: DashMap::new() }
    }

    /// Checks a package completely, then stores it as the function's new active version; for
    /// an Azure Functions app, as a new version of each of its functions, run on `app_pool`.
    pub async fn publish(
        &self,
        package_bytes: &[u8],
        app_pool: Option<&str>,
        activate: bool,
    ) -> Result<Published, Error> {
        let limits = self.limits;
        if package_bytes.len() as u64 > limits.max_package_bytes {
            return Err(Error::TooLarge(format!(
                "the package is {} bytes, over the limit of {} bytes",
                package_bytes.len(),
                limits.max_package_bytes
            )));
        }
        // Decompressing and checking every entry is CPU work: keep it off the async threads.
        let bytes = Bytes::copy_from_slice(package_bytes);
        let checked = bytes.clone();
        let pool = app_pool.map(str::to_string);
        let contents =
            tokio::task::spawn_blocking(move || package::inspect_contents(&checked, &limits, pool.as_deref()))
                .await
                .map_err(|e| Error::BadRequest(format!("package check failed: {e}")))?
                .map_err(|e| Error::BadRequest(format!("package refused: {e}")))?;
        let (functions, notes, app) = match contents {
            package::Contents::Function(p) if app_pool.is_some_and(|pool| pool != p.manifest.pool) => {
                return Err(Error::BadRequest(format!(
                    "pool={} is for Azure Functions apps; {}'s pool is {:?}, set in its {}",
                    app_pool.unwrap_or_default(),
                    p.manifest.name,
                    p.manifest.pool,
                    warren_wire::manifest::MANIFEST_FILE
                )))
            }
            package::Contents::Function(p) => (vec![*p], Vec::new(), false),
            package::Contents::App { functions, notes } => (functions, notes, true),
        };
        // Every function of an app was checked above before the first is stored.
        let mut versions = Vec::with_capacity(functions.len());
        for p in functions {
            let v = self.store.store_version(&p.manifest, &p.manifest_text, &bytes, &p.sha256, activate).await?;
            if activate {
                self.active.insert(v.name.clone(), (Instant::now(), v.version));
            } else {
                // A draft of a new function is its active version: read it again.
                self.active.remove(&v.name);
            }
            tracing::info!(function = %v.name, version = v.version, sha256 = %v.sha256, app, activate, "published");
            versions.push(v);
        }
        Ok(Published { versions, notes, app })
    }

    /// Makes an earlier (or later) published version the function's active one, as a publish
    /// does: callers get it from the next invoke here, from other instances within
    /// [`ACTIVE_TTL`]; triggers follow it at their next refresh.
    pub async fn activate(&self, function: &str, version: i64) -> Result<FunctionVersion, Error> {
        let v = self.store.get_version(function, version).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "function {function:?} has no version {version}; `warren functions {function}` lists them"
            ))
        })?;
        if !self.store.activate_version(function, version).await? {
            return Err(Error::NotFound(format!("function {function:?} has no version {version}")));
        }
        self.active.insert(function.to_string(), (Instant::now(), version));
        tracing::info!(function, version, "activated");
        Ok(v)
    }

    /// Deletes a function, its versions and its settings; refused while it consumes a source
    /// queue or has open invocations or batches. `false` when there is no such function.
    pub async fn delete(&self, function: &str) -> Result<bool, Error> {
        // The active version as the store has it now (not this instance's cached one: another
        // instance may have just activated a version with a source).
        let Some(f) = self.store.get_function(function).await? else { return Ok(false) };
        match self.version_manifest(function, f.active_version).await.map(|m| (f.active_version, m)) {
            Ok((version, manifest)) => {
                if let Some(source) = &manifest.source {
                    let queue = source.queue.as_deref().or(source.exchange.as_deref()).unwrap_or("?");
                    return Err(Error::Store(warren_store::StoreError::Conflict(format!(
                        "function {function} consumes {queue} (the AMQP source of its active version {version}); \
                         publish or activate a version without [source] first, so that nothing it takes is left behind"
                    ))));
                }
            }
            Err(Error::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        let deleted = self.store.delete_function(function).await?;
        self.active.remove(function);
        self.manifests.retain(|(name, _), _| name != function);
        if deleted {
            tracing::info!(function, "deleted");
        }
        Ok(deleted)
    }

    /// The value of one of a function's settings (a secret one unsealed).
    pub async fn setting_value(&self, function: &str, name: &str) -> Result<String, Error> {
        self.setting_text(function, name, true).await
    }

    /// A setting's value, or, for a secret one when not `reveal`, its `%NAME%` (one store read).
    async fn setting_text(&self, function: &str, name: &str, reveal: bool) -> Result<String, Error> {
        let settings = self.store.list_settings(function).await?;
        let s = settings.into_iter().find(|s| s.name == name).ok_or_else(|| {
            Error::BadRequest(format!(
                "{function} refers to setting {name}, which it does not have: `warren settings set {function} {name} VALUE`"
            ))
        })?;
        if !s.secret {
            return Ok(s.value);
        }
        if !reveal {
            return Ok(format!("%{name}%"));
        }
        let key = self.secret_key.as_ref().ok_or_else(|| {
            Error::BadRequest(format!("setting {name} of {function} is secret but management has no WARREN_SECRET_KEY"))
        })?;
        key.open(&s.value).map_err(|e| Error::BadRequest(format!("cannot unseal setting {name} of {function}: {e}")))
    }

    /// A text with each `%NAME%` replaced by the function's setting NAME (`%%` is a `%`).
    pub async fn expand(&self, function: &str, text: &str) -> Result<String, Error> {
        self.expand_with(function, text, true).await
    }

    /// [`Catalog::expand`] for showing: a secret setting stays `%NAME%` (its value is never
    /// answered, as `GET /api/functions/{name}/settings` promises).
    pub async fn expand_shown(&self, function: &str, text: &str) -> Result<String, Error> {
        self.expand_with(function, text, false).await
    }

    async fn expand_with(&self, function: &str, text: &str, reveal: bool) -> Result<String, Error> {
        if !text.contains('%') {
            return Ok(text.to_string());
        }
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else {
                out.push_str(&rest[start..]);
                return Ok(out);
            };
            let name = &after[..end];
            if name.is_empty() {
                out.push('%');
            } else {
                out.push_str(&self.setting_text(function, name, reveal).await?);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// A function's active version and its manifest, from memory when fresh enough.
    pub async fn active_manifest(&self, function: &str) -> Result<(i64, Arc<Manifest>), Error> {
        let cached = self.active.get(function).filter(|e| e.0.elapsed() < ACTIVE_TTL).map(|e| e.1);
        let version = match cached {
            Some(v) => v,
            None => {
                let f = self.store.get_function(function).await?.ok_or_else(|| {
                    Error::NotFound(format!(
                        "function {function:?} does not exist; publish it first (warren publish DIR)"
                    ))
                })?;
                self.active.insert(function.to_string(), (Instant::now(), f.active_version));
                f.active_version
            }
        };
        Ok((version, self.version_manifest(function, version).await?))
    }

    /// The manifest of one version (cached: versions are immutable).
    pub async fn version_manifest(&self, function: &str, version: i64) -> Result<Arc<Manifest>, Error> {
        let key = (function.to_string(), version);
        if let Some(m) = self.manifests.get(&key) {
            return Ok(m.clone());
        }
        let v = self
            .store
            .get_version(function, version)
            .await?
            .ok_or_else(|| Error::NotFound(format!("function {function:?} has no version {version}")))?;
        let manifest = Arc::new(v.parsed_manifest()?);
        self.manifests.insert(key, manifest.clone());
        Ok(manifest)
    }

    /// Every function's active version and its manifest (what the triggers follow).
    pub async fn active_manifests(&self) -> Result<Vec<(String, i64, Arc<Manifest>)>, Error> {
        let mut out = Vec::new();
        for f in self.store.list_functions().await? {
            match self.version_manifest(&f.name, f.active_version).await {
                Ok(m) => out.push((f.name, f.active_version, m)),
                Err(Error::Store(e)) => return Err(Error::Store(e)),
                Err(e) => {
                    tracing::warn!(function = %f.name, error = %e, "skipping a function whose manifest is unreadable")
                }
            }
        }
        Ok(out)
    }

    /// The functions paused now (none when the store cannot say: triggers go on as they were
    /// until it can).
    pub async fn paused(&self) -> std::collections::HashSet<String> {
        match self.store.holds().await {
            Ok(h) => h.into_iter().filter(|h| h.paused_ms.is_some()).map(|h| h.function).collect(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the paused functions now");
                Default::default()
            }
        }
    }

    /// Pauses a function (until `resume_at_ms`, if given).
    pub async fn pause(&self, function: &str, resume_at_ms: Option<i64>) -> Result<bool, Error> {
        Ok(self.store.pause_function(function, now_ms(), resume_at_ms).await?)
    }

    /// Resumes a paused function: `false` when it was not paused.
    pub async fn resume(&self, function: &str) -> Result<bool, Error> {
        Ok(self.store.resume_function(function, now_ms(), false).await?)
    }

    /// The `auth` level of a function's active version; `None` when there is no such function.
    pub async fn auth_level(&self, function: &str) -> Result<Option<AuthLevel>, Error> {
        match self.active_manifest(function).await {
            Ok((_, manifest)) => Ok(Some(manifest.auth)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets one of a function's settings; a secret one is sealed before it is stored.
    pub async fn set_setting(&self, function: &str, name: &str, value: &str, secret: bool) -> Result<(), Error> {
        if self.store.get_function(function).await?.is_none() {
            return Err(Error::NotFound(format!("function {function:?} does not exist; publish it first")));
        }
        let valid = name.len() <= 128
            && name.chars().next().map(|c| c.is_ascii_alphabetic() || c == '_').unwrap_or(false)
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid || name.starts_with("WARREN_") {
            return Err(Error::BadRequest(format!(
                "setting name {name:?} must be an environment variable name (letters, digits, '_'; not starting with a digit or WARREN_)"
            )));
        }
        let stored = if secret {
            let key = self.secret_key.as_ref().ok_or_else(|| {
                Error::BadRequest(
                    "secret settings need an encryption key: start management (and workers) with WARREN_SECRET_KEY=<64 hex chars>".into(),
                )
            })?;
            key.seal(value)
        } else {
            value.to_string()
        };
        let setting = Setting { name: name.to_string(), value: stored, secret, updated_ms: now_ms() };
        self.store.set_setting(function, &setting).await?;
        Ok(())
    }
}
