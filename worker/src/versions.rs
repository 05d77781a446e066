//! Function versions as a worker runs them: each one's manifest, read from the store once, and
//! its package, fetched once, verified by its sha256 and unpacked into the cache folder, whose
//! least recently used packages are removed past its size limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use warren_store::{Store, StoreError};
use warren_wire::manifest::{Manifest, Runtime};
use warren_wire::package;

/// A loaded function version: its manifest and, for process functions, its unpacked folder.
pub(crate) struct Loaded {
    pub(crate) manifest: Manifest,
    pub(crate) dir: Option<PathBuf>,
    sha256: String,
}

/// Why a version could not be loaded.
pub(crate) enum LoadError {
    /// It does not exist (any more): no worker could ever run this message.
    Missing(String),
    /// Its manifest or package is unusable: the invocation fails, saying why.
    Broken(String),
    /// The store (or the disk) failed: try the message again later.
    Unavailable(StoreError),
}

/// The versions this worker has loaded, and its package cache.
pub(crate) struct Versions {
    store: Arc<dyn Store>,
    cache_dir: PathBuf,
    cache_max_bytes: u64,
    limits: package::Limits,
    loaded: DashMap<(String, i64), Arc<Loaded>>,
    /// When each cached package (by sha256) was last used, for eviction.
    last_used: DashMap<String, Instant>,
}

impl Versions {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        cache_dir: PathBuf,
        cache_max_bytes: u64,
        limits: package::Limits,
    ) -> Self {
        Versions { store, cache_dir, cache_max_bytes, limits, loaded: DashMap::new(), last_used: DashMap::new() }
    }

    pub(crate) fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// A version's manifest from memory, or from the store on first use; its package unpacked
    /// into the cache (by sha256, verified) unless it is there already.
    pub(crate) async fn load(&self, function: &str, version: i64) -> Result<Arc<Loaded>, LoadError> {
        let key = (function.to_string(), version);
        if let Some(l) = self.loaded.get(&key).map(|l| l.clone()) {
            if l.dir.is_some() {
                self.last_used.insert(l.sha256.clone(), Instant::now());
            }
            return Ok(l);
        }
        let v = self
            .store
            .get_version(function, version)
            .await
            .map_err(LoadError::Unavailable)?
            .ok_or_else(|| LoadError::Missing(format!("function {function} version {version} does not exist")))?;
        let manifest = v.parsed_manifest().map_err(|e| LoadError::Broken(e.to_string()))?;
        let dir = match manifest.runtime {
            Runtime::Process | Runtime::Azure => Some(self.unpacked(function, version, &v.sha256).await?),
            Runtime::Echo => None,
        };
        let loaded = Arc::new(Loaded { manifest, dir, sha256: v.sha256 });
        self.loaded.insert(key, loaded.clone());
        Ok(loaded)
    }

    /// The folder of a version's package, unpacked now if it is not in the cache yet.
    async fn unpacked(&self, function: &str, version: i64, sha256: &str) -> Result<PathBuf, LoadError> {
        let dir = self.cache_dir.join(sha256);
        // Only complete folders are renamed into place (an app's has no function.toml).
        if !dir.is_dir() {
            let bytes = self
                .store
                .get_package(function, version)
                .await
                .map_err(LoadError::Unavailable)?
                .ok_or_else(|| LoadError::Missing(format!("package of {function} version {version} is gone")))?;
            let (sha, dest, limits) = (sha256.to_string(), dir.clone(), self.limits);
            tokio::task::spawn_blocking(move || package::unpack(&bytes, &sha, &dest, &limits))
                .await
                .map_err(|e| {
                    LoadError::Unavailable(StoreError::Unavailable(format!("unpacking was interrupted: {e}")))
                })?
                .map_err(|e| match e {
                    // The disk, not the package: try again later (the message is returned).
                    package::PackageError::Io(e) => {
                        LoadError::Unavailable(StoreError::Unavailable(format!("cannot unpack into the cache: {e}")))
                    }
                    e => LoadError::Broken(format!("package of {function} version {version}: {e}")),
                })?;
            self.last_used.insert(sha256.to_string(), Instant::now());
            self.evict().await;
        }
        self.last_used.insert(sha256.to_string(), Instant::now());
        Ok(dir)
    }

    /// Keeps the package cache under its size: removes the least recently used unpacked
    /// packages, never one used in the last ten minutes (it may be running).
    async fn evict(&self) {
        let dir = self.cache_dir.clone();
        let max = self.cache_max_bytes;
        let recent: HashMap<String, Instant> = self.last_used.iter().map(|e| (e.key().clone(), *e.value())).collect();
        let removed = tokio::task::spawn_blocking(move || evict_cache(&dir, max, &recent)).await.unwrap_or_default();
        for sha in removed {
            self.last_used.remove(&sha);
            self.loaded.retain(|_, l| l.sha256 != sha);
            tracing::info!(%sha, "evicted an unpacked package from the cache");
        }
    }
}

fn dir_size(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Removes the least recently used package folders until the cache fits in `max` bytes.
/// Returns the sha256 of each folder removed.
fn evict_cache(dir: &Path, max: u64, recent: &HashMap<String, Instant>) -> Vec<String> {
    evict_cache_at(dir, max, recent, Instant::now())
}

/// [`evict_cache`] as seen at `now`.
fn evict_cache_at(dir: &Path, max: u64, recent: &HashMap<String, Instant>, now: Instant) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut folders: Vec<(String, u64, std::time::SystemTime)> = entries
        .flatten()
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            let modified = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
            (e.file_name().to_string_lossy().into_owned(), dir_size(&e.path()), modified)
        })
        .collect();
    let mut total: u64 = folders.iter().map(|f| f.1).sum();
    if total <= max {
        return Vec::new();
    }
    // Oldest use first: in-memory use times where known, else the folder's time on disk.
    let sys_now = std::time::SystemTime::now();
    folders.sort_by_key(|(sha, _, modified)| match recent.get(sha) {
        Some(t) => sys_now - now.duration_since(*t),
        None => *modified,
    });
    let mut removed = Vec::new();
    for (sha, size, _) in folders {
        if total <= max {
            break;
        }
        if recent.get(&sha).map(|t| now.duration_since(*t) < Duration::from_secs(600)).unwrap_or(false) {
            continue;
        }
        if std::fs::remove_dir_all(dir.join(&sha)).is_ok() {
            total = total.saturating_sub(size);
            removed.push(sha);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    #[test]
    fn eviction_removes_the_least_recently_used_but_spares_recent_ones() {
        let tmp = tempfile::tempdir().unwrap();
        for (name, size) in [("old", 600), ("mid", 600), ("hot", 600)] {
            std::fs::create_dir(tmp.path().join(name)).unwrap();
            std::fs::write(tmp.path().join(name).join("f"), vec![0u8; size]).unwrap();
        }
        // Later instants, not earlier ones: an `Instant` cannot go back past the host's boot,
        // which on a fresh Windows (or Wine) session may be minutes ago.
        let then = std::time::Instant::now();
        let mut recent = std::collections::HashMap::new();
        recent.insert("old".to_string(), then);
        recent.insert("mid".to_string(), then + std::time::Duration::from_secs(1800));
        recent.insert("hot".to_string(), then + std::time::Duration::from_secs(3600));
        // 1,800 bytes in all; 1,000 allowed: "old" goes, then "mid"; "hot" is in use.
        let now = then + std::time::Duration::from_secs(3600);
        let removed = super::evict_cache_at(tmp.path(), 1000, &recent, now);
        assert_eq!(removed, vec!["old".to_string(), "mid".to_string()]);
        assert!(tmp.path().join("hot").exists());
        assert!(super::evict_cache_at(tmp.path(), 1000, &recent, now).is_empty());
    }
}
