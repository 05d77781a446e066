//! Function packages: a gzip'd tar (or a zip) of a folder with `function.toml` at its root.
//!
//! Every entry is checked before anything is written or stored: relative paths that stay inside
//! the package folder, regular files and folders only (no links, no devices), and bounded sizes.
//! Management checks at publish ([`inspect`]); workers check again when unpacking ([`unpack`]),
//! after verifying the sha256 the store recorded.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::azure;
use crate::manifest::{Manifest, MANIFEST_FILE};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Size of the package as uploaded (compressed).
    pub max_package_bytes: u64,
    /// Sum of the sizes of all files once unpacked.
    pub max_unpacked_bytes: u64,
    pub max_entries: usize,
    /// Unpacked size over packed size above which a package is taken for a decompression bomb.
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_package_bytes: 64 << 20, max_unpacked_bytes: 512 << 20, max_entries: 20_000, max_ratio: 200 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("package is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("package unpacks to more than {limit} bytes")]
    UnpackedTooLarge { limit: u64 },
    #[error("package unpacks to {ratio} times its packed size, over the limit of {limit}: refusing a likely decompression bomb")]
    Bomb { ratio: u64, limit: u64 },
    #[error("package has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error(
        "package entry {path:?} would land outside the package folder: entries must be relative paths without '..'"
    )]
    EscapingPath { path: String },
    #[error("package entry {path:?} is a {kind}; only regular files and folders are allowed")]
    ForbiddenEntry { path: String, kind: &'static str },
    #[error("package has no {MANIFEST_FILE} at its root (nor, for an Azure Functions app, host.json)")]
    MissingManifest,
    #[error("the Azure Functions app cannot run on Warren:\n  - {}", .0.join("\n  - "))]
    App(Vec<String>),
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("package is not a readable .tar.gz or .zip archive: {0}")]
    Unreadable(String),
    #[error("package sha256 is {actual}, but the store recorded {expected}: refusing to run it")]
    HashMismatch { expected: String, actual: String },
    #[error("could not write the unpacked package: {0}")]
    Io(#[from] std::io::Error),
}

/// What a walk over a package's entries calls for each: its path, whether it is a folder, its
/// mode, and its content.
type Visit<'a> = dyn FnMut(&Path, bool, u32, &mut dyn Read) -> Result<(), PackageError> + 'a;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Turns an entry's raw path into a safe relative path, or refuses it.
fn safe_relative(raw: &[u8]) -> Result<PathBuf, PackageError> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let escaping = || PackageError::EscapingPath { path: text.clone() };
    if text.contains('\\') || text.contains(':') {
        // Windows separators or drive letters could escape once unpacked on a Windows worker.
        return Err(escaping());
    }
    let mut out = PathBuf::new();
    for c in Path::new(&text).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(escaping()),
        }
    }
    Ok(out)
}

/// Counts what is read through it.
struct Counting<'a, R: Read + ?Sized> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read + ?Sized> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// The running checks of one walk: entry count, bytes really unpacked, compression ratio.
struct Budget<'a> {
    limits: &'a Limits,
    packed: u64,
    entries: usize,
    total: u64,
}

impl Budget<'_> {
    fn entry(&mut self) -> Result<(), PackageError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(PackageError::TooManyEntries { limit: self.limits.max_entries });
        }
        Ok(())
    }

    /// The most the next entry may unpack to before one limit or the other is crossed.
    fn room(&self) -> u64 {
        let by_size = self.limits.max_unpacked_bytes.saturating_sub(self.total);
        let by_ratio = (self.packed.max(1) * self.limits.max_ratio).saturating_sub(self.total);
        by_size.min(by_ratio)
    }

    /// Feeds one entry's content to `visit`, counting what it really holds: a header (tar) or
    /// a central directory (zip) may lie about sizes.
    fn read(
        &mut self,
        path: &Path,
        is_dir: bool,
        mode: u32,
        content: &mut dyn Read,
        visit: &mut Visit<'_>,
    ) -> Result<(), PackageError> {
        let mut limited = content.take(self.room() + 1);
        let mut counting = Counting { inner: &mut limited, n: 0 };
        visit(path, is_dir, mode, &mut counting)?;
        // Whatever the visitor left unread counts too.
        std::io::copy(&mut counting, &mut std::io::sink()).map_err(|e| PackageError::Unreadable(e.to_string()))?;
        self.total += counting.n;
        if self.total > self.limits.max_unpacked_bytes {
            return Err(PackageError::UnpackedTooLarge { limit: self.limits.max_unpacked_bytes });
        }
        if self.total > self.packed.max(1) * self.limits.max_ratio {
            return Err(PackageError::Bomb { ratio: self.total / self.packed.max(1), limit: self.limits.max_ratio });
        }
        Ok(())
    }
}

/// The archive format, by its first bytes.
fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// Walks a package (.tar.gz or .zip), checking every entry; calls `visit` with each entry's
/// path, kind, mode and content.
fn walk(
    bytes: &[u8],
    limits: &Limits,
    mut visit: impl FnMut(&Path, bool, u32, &mut dyn Read) -> Result<(), PackageError>,
) -> Result<(), PackageError> {
    if bytes.len() as u64 > limits.max_package_bytes {
        return Err(PackageError::TooLarge { size: bytes.len() as u64, limit: limits.max_package_bytes });
    }
    let mut budget = Budget { limits, packed: bytes.len() as u64, entries: 0, total: 0 };
    if is_zip(bytes) {
        return walk_zip(bytes, &mut budget, &mut visit);
    }
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let entries = archive.entries().map_err(|e| PackageError::Unreadable(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| PackageError::Unreadable(e.to_string()))?;
        budget.entry()?;
        let raw = entry.path_bytes().into_owned();
        let path = safe_relative(&raw)?;
        let shown = || String::from_utf8_lossy(&raw).into_owned();
        let is_dir = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => false,
            tar::EntryType::Directory => true,
            // Metadata entries some tar writers add; they carry no file.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(PackageError::ForbiddenEntry { path: shown(), kind: "link" })
            }
            _ => return Err(PackageError::ForbiddenEntry { path: shown(), kind: "special file" }),
        };
        let mode = entry.header().mode().unwrap_or(0o644);
        budget.read(&path, is_dir, mode, &mut entry, &mut visit)?;
    }
    Ok(())
}

fn walk_zip(bytes: &[u8], budget: &mut Budget<'_>, visit: &mut Visit<'_>) -> Result<(), PackageError> {
    let unreadable = |e: zip::result::ZipError| PackageError::Unreadable(format!("zip: {e}"));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(unreadable)?;
    for i in 0..archive.len() {
        budget.entry()?;
        let mut file = archive.by_index(i).map_err(unreadable)?;
        let raw = file.name_raw().to_vec();
        let path = safe_relative(&raw)?;
        let mode = file.unix_mode().unwrap_or(0o644);
        // S_IFLNK: a symbolic link stored as a file whose content is its target.
        if mode & 0o170000 == 0o120000 {
            return Err(PackageError::ForbiddenEntry {
                path: String::from_utf8_lossy(&raw).into_owned(),
                kind: "link",
            });
        }
        let is_dir = file.is_dir();
        budget.read(&path, is_dir, mode, &mut file, visit)?;
    }
    Ok(())
}

/// What [`inspect`] learns of a good package.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub manifest: Manifest,
    /// `function.toml` as packaged, stored beside the version.
    pub manifest_text: String,
    pub sha256: String,
}

/// What a good package holds: one function, or the functions of an Azure Functions app (each
/// with the whole package as its own).
#[derive(Debug, Clone)]
pub enum Contents {
    Function(Box<Inspected>),
    App { functions: Vec<Inspected>, notes: Vec<String> },
}

/// Checks a package completely and returns its manifest and sha256. Nothing is written.
pub fn inspect(bytes: &[u8], limits: &Limits) -> Result<Inspected, PackageError> {
    match inspect_contents(bytes, limits, None)? {
        Contents::Function(i) => Ok(*i),
        Contents::App { .. } => Err(PackageError::MissingManifest),
    }
}

/// Checks a package completely and returns what it holds: a function (`function.toml` at its
/// root) or an Azure Functions app (`host.json` at its root, `*/function.json`). Nothing is
/// written. An app's functions run on `app_pool` (the default pool when `None`).
pub fn inspect_contents(bytes: &[u8], limits: &Limits, app_pool: Option<&str>) -> Result<Contents, PackageError> {
    let mut manifest_text: Option<String> = None;
    let mut host: Option<String> = None;
    let mut functions: Vec<(String, String)> = Vec::new();
    let mut local_settings = false;
    walk(bytes, limits, |path, is_dir, _, content| {
        let parts: Vec<&str> = path.iter().filter_map(|p| p.to_str()).collect();
        let small_text = |content: &mut dyn Read, what: &str| -> Result<String, PackageError> {
            let mut s = String::new();
            content
                .take(1 << 20)
                .read_to_string(&mut s)
                .map_err(|e| PackageError::Unreadable(format!("{what}: {e}")))?;
            Ok(s)
        };
        match (is_dir, parts.as_slice()) {
            (false, [MANIFEST_FILE]) => manifest_text = Some(small_text(&mut *content, MANIFEST_FILE)?),
            (false, [azure::HOST_FILE]) => host = Some(small_text(&mut *content, azure::HOST_FILE)?),
            (false, [azure::LOCAL_SETTINGS_FILE]) => local_settings = true,
            (false, [folder, azure::FUNCTION_FILE]) => {
                let text = small_text(&mut *content, &format!("{folder}/{}", azure::FUNCTION_FILE))?;
                functions.push((folder.to_string(), text));
            }
            _ => {}
        }
        std::io::copy(content, &mut std::io::sink()).map_err(|e| PackageError::Unreadable(e.to_string()))?;
        Ok(())
    })?;
    let sha256 = sha256_hex(bytes);
    if let Some(manifest_text) = manifest_text {
        let manifest = Manifest::parse(&manifest_text)?;
        return Ok(Contents::Function(Box::new(Inspected { manifest, manifest_text, sha256 })));
    }
    let host = host.ok_or(PackageError::MissingManifest)?;
    functions.sort();
    let app = azure::convert(&host, &functions, local_settings, app_pool).map_err(PackageError::App)?;
    let functions = app
        .functions
        .into_iter()
        .map(|(manifest, manifest_text)| Inspected { manifest, manifest_text, sha256: sha256.clone() })
        .collect();
    Ok(Contents::App { functions, notes: app.notes })
}

/// Verifies `expected_sha256`, then unpacks into `dest` (which must not exist yet): into a
/// sibling temporary folder first, renamed into place at the end, so a half-written package is
/// never visible.
pub fn unpack(bytes: &[u8], expected_sha256: &str, dest: &Path, limits: &Limits) -> Result<(), PackageError> {
    let actual = sha256_hex(bytes);
    if actual != expected_sha256 {
        return Err(PackageError::HashMismatch { expected: expected_sha256.to_string(), actual });
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        dest.file_name().and_then(|s| s.to_str()).unwrap_or("pkg"),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&tmp)?;
    let result = walk(bytes, limits, |path, is_dir, mode, content| {
        let target = tmp.join(path);
        if is_dir {
            std::fs::create_dir_all(&target)?;
            return Ok(());
        }
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p)?;
        }
        let mut f = std::fs::File::create(&target)?;
        std::io::copy(content, &mut f)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(m))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        Ok(())
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, dest) {
        Ok(()) => Ok(()),
        // Another task unpacked the same version first: theirs is identical.
        Err(_) if dest.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e.into())
        }
    }
}

/// Packs a folder into a package (what `warren publish DIR` sends): a function's folder, or an
/// Azure Functions app's (whose `local.settings.json` stays behind). Links are followed as the
/// files they point to; hidden folders such as `.git` are left out.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, PackageError> {
    let app = !dir.join(MANIFEST_FILE).is_file() && dir.join(azure::HOST_FILE).is_file();
    if !app && !dir.join(MANIFEST_FILE).is_file() {
        return Err(PackageError::MissingManifest);
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    builder.follow_symlinks(true);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut children: Vec<_> = std::fs::read_dir(dir.join(&rel))?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let name = child.file_name();
            if name.to_string_lossy().starts_with('.')
                || (app && rel.as_os_str().is_empty() && name == azure::LOCAL_SETTINGS_FILE)
            {
                continue;
            }
            let rel_child = rel.join(&name);
            let full = dir.join(&rel_child);
            if full.is_dir() {
                builder.append_dir(&rel_child, &full)?;
                stack.push(rel_child);
            } else {
                builder.append_path_with_name(&full, &rel_child)?;
            }
        }
    }
    Ok(builder.into_inner()?.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        // Raw headers, so that paths the tar crate's own builder would refuse can be written.
        let mut raw = Vec::new();
        for (name, body) in entries {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            raw.extend_from_slice(h.as_bytes());
            raw.extend_from_slice(body);
            raw.resize(raw.len().div_ceil(512) * 512, 0);
        }
        raw.resize(raw.len() + 1024, 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        gz.finish().unwrap()
    }

    const MANIFEST: &[u8] = b"name = \"t\"\nruntime = \"echo\"\n";

    #[test]
    fn accepts_a_good_package_and_unpacks_it() {
        let pkg = tar_gz(&[(b"function.toml", MANIFEST), (b"./lib/a.txt", b"hi")]);
        let i = inspect(&pkg, &Limits::default()).unwrap();
        assert_eq!(i.manifest.name, "t");
        let sha = i.sha256;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("v1");
        unpack(&pkg, &sha, &dest, &Limits::default()).unwrap();
        assert_eq!(std::fs::read(dest.join("lib/a.txt")).unwrap(), b"hi");
    }

    #[test]
    fn refuses_escaping_and_absolute_entries() {
        for bad in [&b"../x"[..], b"a/../../x", b"/etc/x", b"a\\..\\x"] {
            let pkg = tar_gz(&[(b"function.toml", MANIFEST), (bad, b"boom")]);
            let err = inspect(&pkg, &Limits::default()).unwrap_err();
            assert!(matches!(err, PackageError::EscapingPath { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn unpack_refuses_wrong_hash_and_writes_nothing() {
        let pkg = tar_gz(&[(b"function.toml", MANIFEST)]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("v1");
        let err = unpack(&pkg, "00", &dest, &Limits::default()).unwrap_err();
        assert!(matches!(err, PackageError::HashMismatch { .. }));
        assert!(!dest.exists());
    }

    #[test]
    fn refuses_missing_manifest_and_oversize() {
        let pkg = tar_gz(&[(b"main.py", b"print(1)")]);
        assert!(matches!(inspect(&pkg, &Limits::default()), Err(PackageError::MissingManifest)));
        let big = tar_gz(&[(b"function.toml", MANIFEST), (b"big", &vec![0u8; 10_000])]);
        let limits = Limits { max_unpacked_bytes: 5_000, ..Limits::default() };
        assert!(matches!(inspect(&big, &limits), Err(PackageError::UnpackedTooLarge { .. })));
        assert!(matches!(inspect(b"not a tarball", &Limits::default()), Err(PackageError::Unreadable(_))));
    }

    #[test]
    fn pack_dir_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("function.toml"), MANIFEST).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), b"1").unwrap();
        let pkg = pack_dir(dir.path()).unwrap();
        assert_eq!(inspect(&pkg, &Limits::default()).unwrap().manifest.name, "t");
    }
}
