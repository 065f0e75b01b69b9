//! Class queries cached on disk, so that a second run with the same classes spends no time on
//! the text tower.
//!
//! A file is named by the digest of everything its queries depend on: the exact model files, the
//! dtype tag, the templates and the names in order. It is only ever written whole (through
//! [`write_atomically`]) and is checked in full when read (magic, shape, key digest, exact
//! length, the payload's own digest, finite values), so concurrent runs, a killed run, a damaged
//! disk or a foreign file can cost a recomputation, never a wrong query.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use sha2::digest::Output;
use sha2::{Digest, Sha256};

use crate::atomic_write::write_atomically;
use crate::model::ModelFiles;
use crate::preprocess::open_without_blocking;

/// Version 2 added the payload digest.
const MAGIC: &[u8; 8] = b"SCLIPQ2\0";
/// Bumped whenever the queries' computation or this file format changes, so that old files
/// become misses instead of wrong answers (their names no longer match any key).
const KEY_VERSION: &str = "sclip-queries-v3";
const DIGEST_LEN: usize = 32;
/// Magic, rows, dim, the key's digest, then the payload's digest.
const HEADER_LEN: usize = MAGIC.len() + 4 + 4 + DIGEST_LEN + DIGEST_LEN;
/// Temporary files older than this were left by a killed run: none takes this long to write one.
const STALE_TEMP_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Where cached queries live: `$SCLIP_CACHE_DIR` if set (non-empty), else `$XDG_CACHE_HOME/sclip`,
/// else `$HOME/.cache/sclip`; `None` if none is available.
pub fn default_cache_dir() -> Option<PathBuf> {
    cache_dir_from(|name| std::env::var_os(name))
}

/// The logic of [`default_cache_dir`] over any environment, so tests need not mutate the real one.
fn cache_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = |name| var(name).filter(|value| !value.is_empty());
    if let Some(dir) = var("SCLIP_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    // The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    let xdg = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute());
    xdg.or_else(|| var("HOME").map(|home| Path::new(&home).join(".cache")))
        .map(|cache| cache.join("sclip"))
}

/// What the queries of one run depend on, reduced to a digest, plus the matrix shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryKey {
    digest: [u8; DIGEST_LEN],
    pub rows: usize,
    pub dim: usize,
}

impl QueryKey {
    /// `model_fingerprint` comes from [`model_fingerprint`]; `dtype_tag` names whatever else
    /// changes the queries' last bits (dtype, device kind).
    pub fn new(
        model_fingerprint: &str,
        templates: &[&str],
        names: &[String],
        dtype_tag: &str,
        dim: usize,
    ) -> Self {
        let mut digest = FieldDigest::default();
        // Counts before both lists keep a name moving into the templates from giving the same
        // fields.
        let mut field = |bytes: &[u8]| digest.field(bytes);
        field(KEY_VERSION.as_bytes());
        field(model_fingerprint.as_bytes());
        field(dtype_tag.as_bytes());
        field(&(dim as u64).to_le_bytes());
        field(&(templates.len() as u64).to_le_bytes());
        for template in templates {
            field(template.as_bytes());
        }
        field(&(names.len() as u64).to_le_bytes());
        for name in names {
            field(name.as_bytes());
        }
        QueryKey {
            digest: digest.finish().into(),
            rows: names.len(),
            dim,
        }
    }

    /// `queries-<64 hex digits>.f32`.
    pub fn file_name(&self) -> String {
        let mut name = String::with_capacity("queries-.f32".len() + 2 * DIGEST_LEN);
        name.push_str("queries-");
        for byte in self.digest {
            write!(name, "{byte:02x}").expect("writing to a String cannot fail");
        }
        name.push_str(".f32");
        name
    }

    /// Bytes of the f32 payload; `None` when it would not fit in memory anyway.
    fn payload_len(&self) -> Option<usize> {
        self.rows.checked_mul(self.dim)?.checked_mul(4)
    }

    /// The header of a file holding `payload` under this key; `None` when the shape does not
    /// fit the header's u32 fields.
    fn header(&self, payload: &[u8]) -> Option<[u8; HEADER_LEN]> {
        let rows = u32::try_from(self.rows).ok()?;
        let dim = u32::try_from(self.dim).ok()?;
        let mut header = [0; HEADER_LEN];
        let (magic, rest) = header.split_at_mut(MAGIC.len());
        let (rows_field, rest) = rest.split_at_mut(4);
        let (dim_field, rest) = rest.split_at_mut(4);
        let (key_digest, payload_digest) = rest.split_at_mut(DIGEST_LEN);
        magic.copy_from_slice(MAGIC);
        rows_field.copy_from_slice(&rows.to_le_bytes());
        dim_field.copy_from_slice(&dim.to_le_bytes());
        key_digest.copy_from_slice(&self.digest);
        payload_digest.copy_from_slice(&Sha256::digest(payload));
        Some(header)
    }
}

/// What the cache holds for a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The `rows x dim` queries, row-major, verified.
    Hit(Vec<f32>),
    /// No file, or one that cannot be read.
    Absent,
    /// A file is there but is not what the key describes; storing fresh queries replaces it.
    Damaged(Damage),
}

/// Why a cache file was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Not the length the key's shape gives.
    WrongLength,
    /// Another format, another key's file, or a payload that does not match its digest.
    WrongContent,
    /// The payload checks out but holds NaN or infinite values: no query can be.
    NotFinite,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Damage::WrongLength => "it has the wrong length",
            Damage::WrongContent => "its contents do not match their digest",
            Damage::NotFinite => "it holds values that are not finite",
        })
    }
}

/// A SHA-256 over fields, each prefixed with its length, which keeps the encoding injective:
/// ["a,b"] and ["a", "b"] cannot produce the same bytes.
#[derive(Default)]
pub(crate) struct FieldDigest(Sha256);

impl FieldDigest {
    pub(crate) fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> Output<Sha256> {
        self.0.finalize()
    }
}

/// Identifies the exact weights, tokenizer and config, a `file_identity` line for each, so
/// that rewriting a local model's files changes it. Errors if a file cannot be resolved or
/// stat'ed.
pub fn model_fingerprint(files: &ModelFiles) -> Result<String> {
    let mut fingerprint = String::new();
    for path in [files.weights.path(), &files.tokenizer, &files.config] {
        fingerprint.push_str(&file_identity(path)?);
        fingerprint.push('\n');
    }
    Ok(fingerprint)
}

/// A file's content as the file system knows it: its canonical path (inside a Hugging Face cache
/// this resolves the snapshot's symlink to `blobs/<content hash>`, so it names the content), size
/// and modification time in nanoseconds. Errors if it cannot be resolved or stat'ed.
pub(crate) fn file_identity(path: &Path) -> Result<String> {
    let canonical = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let metadata = std::fs::metadata(&canonical)
        .with_context(|| format!("cannot stat {}", canonical.display()))?;
    let modified = metadata.modified().with_context(|| {
        format!(
            "cannot read the modification time of {}",
            canonical.display()
        )
    })?;
    // Signed, since archives and some file systems hand out times before 1970.
    let modified_ns = match modified.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    // Debug formatting escapes newlines and non-UTF-8 bytes, so distinct paths stay distinct.
    Ok(format!("{canonical:?} {} {modified_ns}", metadata.len()))
}

/// A folder of cached query matrices, one file per [`QueryKey`].
#[derive(Debug, Clone)]
pub struct QueryCache {
    dir: PathBuf,
}

impl QueryCache {
    pub fn new(dir: PathBuf) -> Self {
        QueryCache { dir }
    }

    /// What is stored under `key`: its `rows x dim` queries (row-major) only if the file is
    /// exactly what `key` describes and its payload matches the digest it was written with.
    pub fn load(&self, key: &QueryKey) -> Lookup {
        // Without blocking: a named pipe put in a file's place must not hang the run.
        let Ok(mut file) = open_without_blocking(&self.path(key)) else {
            return Lookup::Absent;
        };
        let Some(expected_len) = key
            .payload_len()
            .and_then(|len| len.checked_add(HEADER_LEN))
        else {
            return Lookup::Damaged(Damage::WrongLength);
        };
        // Checked before reading so that a foreign file of any size (or a pipe, a device) costs
        // one stat.
        match file.metadata() {
            Ok(metadata) if metadata.is_file() && metadata.len() == expected_len as u64 => {}
            Ok(_) => return Lookup::Damaged(Damage::WrongLength),
            Err(_) => return Lookup::Absent,
        }
        let mut bytes = Vec::with_capacity(expected_len);
        if (&mut file)
            .take(expected_len as u64 + 1)
            .read_to_end(&mut bytes)
            .is_err()
        {
            return Lookup::Absent;
        }
        if bytes.len() != expected_len {
            return Lookup::Damaged(Damage::WrongLength);
        }
        let (header, payload) = bytes.split_at(HEADER_LEN);
        if key.header(payload).as_ref().map(|h| &h[..]) != Some(header) {
            return Lookup::Damaged(Damage::WrongContent);
        }
        let values: Vec<f32> = payload
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if !values.iter().all(|value| value.is_finite()) {
            return Lookup::Damaged(Damage::NotFinite);
        }
        Lookup::Hit(values)
    }

    /// Stores `data` (`key.rows x key.dim`, row-major) under `key`, creating the folder if needed;
    /// concurrent readers see the previous file or the complete new one. Also removes the
    /// temporary files that killed runs left in the folder.
    pub fn store(&self, key: &QueryKey, data: &[f32]) -> Result<()> {
        ensure!(
            key.payload_len() == Some(data.len() * 4),
            "cannot cache {} values as a {} x {} query matrix",
            data.len(),
            key.rows,
            key.dim
        );
        ensure!(
            data.iter().all(|value| value.is_finite()),
            "the text tower gave queries that are not finite numbers; are the model's weights damaged?"
        );
        let payload: Vec<u8> = data.iter().flat_map(|value| value.to_le_bytes()).collect();
        let header = key.header(&payload).with_context(|| {
            format!(
                "a {} x {} query matrix is too large for the cache format",
                key.rows, key.dim
            )
        })?;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the cache folder {}", self.dir.display()))?;
        self.remove_stale_temp_files(SystemTime::now());
        let path = self.path(key);
        write_atomically(&path, |out| {
            out.write_all(&header)?;
            out.write_all(&payload)?;
            Ok(())
        })
        .with_context(|| format!("cannot write the query cache file {}", path.display()))
    }

    /// The file that holds (or would hold) `key`'s queries.
    pub fn path(&self, key: &QueryKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// Removes [`write_atomically`]'s temporaries of query files (`.queries-<hex>.f32.<random>.tmp`)
    /// last modified before `now - STALE_TEMP_AGE`: younger ones may be a running store's.
    /// Best effort: a file that cannot be removed costs only its space.
    fn remove_stale_temp_files(&self, now: SystemTime) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_ours = name.to_str().is_some_and(|name| {
                name.starts_with(".queries-") && name.contains(".f32.") && name.ends_with(".tmp")
            });
            let is_stale = || {
                let modified = entry.metadata().and_then(|metadata| metadata.modified());
                modified.is_ok_and(|modified| {
                    now.duration_since(modified)
                        .is_ok_and(|age| age > STALE_TEMP_AGE)
                })
            };
            // Only plain files: DirEntry::file_type does not follow symlinks.
            let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
            if is_ours && is_file && is_stale() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WeightsFile;
    use std::fs;

    const TEMPLATES: [&str; 2] = ["a photo of a {}.", "the {}."];

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn key_for(names: &[&str]) -> QueryKey {
        QueryKey::new("model", &TEMPLATES, &strings(names), "F32-cpu", 3)
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    fn hit(lookup: Lookup) -> Vec<f32> {
        match lookup {
            Lookup::Hit(values) => values,
            other => panic!("expected a hit, got {other:?}"),
        }
    }

    #[test]
    fn stored_queries_come_back_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().join("nested").join("sclip"));
        let key = key_for(&["dog", "cat"]);
        assert_eq!(cache.load(&key), Lookup::Absent, "nothing stored yet");
        let data = [0.1, -0.0, 1e-45, f32::MAX, f32::MIN_POSITIVE, -2.25];
        cache.store(&key, &data).unwrap();
        assert_eq!(bits(&hit(cache.load(&key))), bits(&data));

        let replacement = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        cache.store(&key, &replacement).unwrap();
        assert_eq!(hit(cache.load(&key)), replacement);
        let entries: Vec<_> = fs::read_dir(&cache.dir).unwrap().collect();
        assert_eq!(entries.len(), 1, "one file per key, no temporary left");
    }

    #[test]
    fn file_name_is_the_hex_digest() {
        let name = key_for(&["dog"]).file_name();
        let hex = name
            .strip_prefix("queries-")
            .and_then(|rest| rest.strip_suffix(".f32"))
            .unwrap();
        assert_eq!(hex.len(), 64, "{name}");
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn every_input_of_the_queries_changes_the_key() {
        let base = key_for(&["dog", "cat"]);
        let names = strings(&["dog", "cat"]);
        let same = QueryKey::new("model", &TEMPLATES, &names, "F32-cpu", 3);
        assert_eq!(base, same);
        assert_eq!(base.file_name(), same.file_name());
        let different = [
            ("order", key_for(&["cat", "dog"])),
            ("names", key_for(&["dog", "horse"])),
            ("fewer names", key_for(&["dog"])),
            (
                "fingerprint",
                QueryKey::new("other", &TEMPLATES, &names, "F32-cpu", 3),
            ),
            (
                "templates",
                QueryKey::new("model", &TEMPLATES[..1], &names, "F32-cpu", 3),
            ),
            (
                "dtype",
                QueryKey::new("model", &TEMPLATES, &names, "F16-cpu", 3),
            ),
            (
                "device",
                QueryKey::new("model", &TEMPLATES, &names, "F32-gpu", 3),
            ),
            (
                "dim",
                QueryKey::new("model", &TEMPLATES, &names, "F32-cpu", 4),
            ),
        ];
        for (what, key) in different {
            assert_ne!(base.file_name(), key.file_name(), "{what}");
        }
    }

    #[test]
    fn list_boundaries_are_part_of_the_key() {
        let key = |templates: &[&str], names: &[&str]| {
            QueryKey::new("model", templates, &strings(names), "F32-cpu", 3).file_name()
        };
        assert_ne!(key(&["t"], &["a,b"]), key(&["t"], &["a", "b"]));
        assert_ne!(key(&["t"], &["ab"]), key(&["t"], &["a", "b"]));
        assert_ne!(key(&["t"], &["a"]), key(&["t", "a"], &[]));
    }

    #[cfg(unix)]
    #[test]
    fn a_named_pipe_in_a_files_place_is_a_miss_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().to_path_buf());
        let key = key_for(&["dog"]);
        let path = dir.path().join(key.file_name());
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(cache.load(&key), Lookup::Damaged(Damage::WrongLength));
        cache.store(&key, &[1.0, 2.0, 3.0]).unwrap();
        assert!(matches!(cache.load(&key), Lookup::Hit(_)));
    }

    #[test]
    fn truncated_extended_or_altered_files_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().to_path_buf());
        let key = key_for(&["dog"]);
        let path = dir.path().join(key.file_name());
        cache.store(&key, &[1.0, 2.0, 3.0]).unwrap();
        let whole = fs::read(&path).unwrap();
        assert_eq!(whole.len(), HEADER_LEN + 12);

        for len in [0, 4, HEADER_LEN - 1, HEADER_LEN, whole.len() - 1] {
            fs::write(&path, &whole[..len]).unwrap();
            assert_eq!(
                cache.load(&key),
                Lookup::Damaged(Damage::WrongLength),
                "truncated to {len} bytes"
            );
        }
        let mut extended = whole.clone();
        extended.push(0);
        fs::write(&path, extended).unwrap();
        assert_eq!(
            cache.load(&key),
            Lookup::Damaged(Damage::WrongLength),
            "trailing byte"
        );

        let fields = [
            (0, "magic"),
            (8, "rows"),
            (12, "dim"),
            (16, "key digest"),
            (48, "payload digest"),
            (HEADER_LEN, "first value"),
            (whole.len() - 1, "last value"),
        ];
        for (offset, what) in fields {
            let mut altered = whole.clone();
            altered[offset] ^= 1;
            fs::write(&path, altered).unwrap();
            assert_eq!(
                cache.load(&key),
                Lookup::Damaged(Damage::WrongContent),
                "altered {what}"
            );
        }

        fs::write(&path, &whole).unwrap();
        assert_eq!(hit(cache.load(&key)), [1.0, 2.0, 3.0]);
        // A miss is followed by a store, which replaces the damaged file.
        fs::write(&path, vec![0; whole.len()]).unwrap();
        assert_eq!(cache.load(&key), Lookup::Damaged(Damage::WrongContent));
        cache.store(&key, &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), whole);
    }

    #[test]
    fn non_finite_queries_are_never_stored_nor_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().to_path_buf());
        let key = key_for(&["dog"]);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let error = cache.store(&key, &[1.0, bad, 3.0]).unwrap_err();
            assert!(format!("{error:#}").contains("not finite"), "{error:#}");
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        // A file with a valid digest over NaN (as a buggy or foreign writer could make).
        let payload: Vec<u8> = [f32::NAN; 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut file = key.header(&payload).unwrap().to_vec();
        file.extend(&payload);
        fs::write(dir.path().join(key.file_name()), file).unwrap();
        assert_eq!(cache.load(&key), Lookup::Damaged(Damage::NotFinite));
    }

    #[test]
    fn a_first_format_file_is_a_clean_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().to_path_buf());
        let key = key_for(&["dog"]);
        // Version 1: the same header without the payload digest, under the same name.
        let mut old = b"SCLIPQ1\0".to_vec();
        old.extend(1u32.to_le_bytes());
        old.extend(3u32.to_le_bytes());
        old.extend(key.digest);
        old.extend([1f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()));
        old.resize(HEADER_LEN + 12, 0);
        fs::write(dir.path().join(key.file_name()), old).unwrap();
        assert_eq!(cache.load(&key), Lookup::Damaged(Damage::WrongContent));
    }

    #[test]
    fn temporary_files_of_killed_runs_are_removed_after_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().to_path_buf());
        let name = key_for(&["dog"]).file_name();
        let stale = dir.path().join(format!(".{name}.a1B2c3.tmp"));
        let fresh = dir.path().join(format!(".{name}.d4E5f6.tmp"));
        // Not ours, however old: another program's temporary, a user's file, a folder.
        let others = [
            dir.path().join(".other.f32.a1B2c3.tmp"),
            dir.path().join("queries-notes.tmp"),
            dir.path().join(format!("{name}.tmp")),
        ];
        let folder = dir.path().join(format!(".{name}.folder.tmp"));
        fs::create_dir(&folder).unwrap();
        let two_days_ago = SystemTime::now() - 2 * STALE_TEMP_AGE;
        for path in others.iter().chain([&stale, &fresh]) {
            fs::write(path, b"partial").unwrap();
        }
        for path in others.iter().chain([&stale, &folder]) {
            let file = fs::File::open(path).unwrap();
            file.set_modified(two_days_ago).unwrap();
        }
        cache.store(&key_for(&["cat"]), &[1.0, 2.0, 3.0]).unwrap();
        assert!(!stale.exists(), "a day-old temporary is removed");
        assert!(fresh.exists(), "a running store's temporary is kept");
        assert!(folder.exists());
        for path in &others {
            assert!(path.exists(), "{} is kept", path.display());
        }
    }

    #[test]
    fn another_keys_file_renamed_into_place_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().to_path_buf());
        let key = key_for(&["dog"]);
        // Same shape, so only the digest in the header tells the files apart.
        let other = key_for(&["cat"]);
        cache.store(&other, &[4.0, 5.0, 6.0]).unwrap();
        fs::rename(
            dir.path().join(other.file_name()),
            dir.path().join(key.file_name()),
        )
        .unwrap();
        assert_eq!(cache.load(&key), Lookup::Damaged(Damage::WrongContent));
    }

    #[test]
    fn store_refuses_data_of_the_wrong_shape_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().to_path_buf());
        let error = cache.store(&key_for(&["dog"]), &[1.0]).unwrap_err();
        assert!(
            format!("{error:#}").contains("1 values as a 1 x 3"),
            "{error:#}"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn store_into_an_impossible_folder_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"not a folder").unwrap();
        let cache = QueryCache::new(blocker.join("sclip"));
        let error = cache
            .store(&key_for(&["dog"]), &[1.0, 2.0, 3.0])
            .unwrap_err();
        assert!(
            format!("{error:#}").starts_with("cannot create the cache folder"),
            "{error:#}"
        );
        assert_eq!(cache.load(&key_for(&["dog"])), Lookup::Absent);
    }

    #[test]
    fn concurrent_stores_never_expose_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().to_path_buf());
        let names: Vec<String> = (0..64).map(|i| format!("class {i}")).collect();
        let key = QueryKey::new("model", &TEMPLATES, &names, "F32-cpu", 512);
        let data: Vec<f32> = (0..64 * 512).map(|i| i as f32).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10 {
                        cache.store(&key, &data).unwrap();
                    }
                });
            }
            scope.spawn(|| {
                for _ in 0..200 {
                    match cache.load(&key) {
                        Lookup::Hit(loaded) => assert!(loaded == data),
                        Lookup::Absent => {}
                        damaged => panic!("a reader saw {damaged:?}"),
                    }
                }
            });
        });
        assert!(hit(cache.load(&key)) == data);
    }

    #[test]
    fn cache_folder_precedence() {
        let dir = |vars: &[(&str, &str)]| {
            cache_dir_from(|name| {
                vars.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            })
        };
        let all = [
            ("SCLIP_CACHE_DIR", "/s"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(dir(&all), Some(PathBuf::from("/s")));
        assert_eq!(dir(&all[1..]), Some(PathBuf::from("/x/sclip")));
        assert_eq!(dir(&all[2..]), Some(PathBuf::from("/h/.cache/sclip")));
        assert_eq!(dir(&[]), None);
        assert_eq!(
            dir(&[
                ("SCLIP_CACHE_DIR", ""),
                ("XDG_CACHE_HOME", ""),
                ("HOME", "/h")
            ]),
            Some(PathBuf::from("/h/.cache/sclip")),
            "empty values count as unset"
        );
        assert_eq!(
            dir(&[("XDG_CACHE_HOME", "relative"), ("HOME", "/h")]),
            Some(PathBuf::from("/h/.cache/sclip")),
            "a relative XDG_CACHE_HOME is ignored"
        );
        assert_eq!(
            dir(&[("SCLIP_CACHE_DIR", "relative")]),
            Some(PathBuf::from("relative")),
            "an explicit sclip folder is taken as given"
        );
    }

    /// A model folder whose weights file is a symlink to `blobs/<hash>`, as in a hub snapshot.
    fn model_with_blob(root: &Path) -> (ModelFiles, PathBuf) {
        let blobs = root.join("blobs");
        let snapshot = root.join("snapshots").join("abc");
        fs::create_dir_all(&blobs).unwrap();
        fs::create_dir_all(&snapshot).unwrap();
        let blob = blobs.join("0123456789abcdef");
        fs::write(&blob, b"weights").unwrap();
        let weights = snapshot.join("model.safetensors");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&blob, &weights).unwrap();
        #[cfg(not(unix))]
        fs::copy(&blob, &weights).unwrap();
        let config = snapshot.join("config.json");
        let tokenizer = snapshot.join("tokenizer.json");
        fs::write(&config, b"{}").unwrap();
        fs::write(&tokenizer, b"{}").unwrap();
        let files = ModelFiles {
            config,
            tokenizer,
            weights: WeightsFile::Safetensors(weights),
            hub: None,
        };
        (files, blob)
    }

    #[cfg(unix)]
    #[test]
    fn fingerprint_names_the_blob_behind_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let (files, blob) = model_with_blob(dir.path());
        let fingerprint = model_fingerprint(&files).unwrap();
        let blob = fs::canonicalize(blob).unwrap();
        assert!(fingerprint.contains(&format!("{blob:?}")), "{fingerprint}");
        assert!(!fingerprint.contains("model.safetensors"), "{fingerprint}");
    }

    #[test]
    fn fingerprint_changes_when_the_weights_are_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let (files, blob) = model_with_blob(dir.path());
        let mut seen = vec![model_fingerprint(&files).unwrap()];
        assert_eq!(model_fingerprint(&files).unwrap(), seen[0], "stable");

        fs::write(&blob, b"longer weights").unwrap();
        seen.push(model_fingerprint(&files).unwrap());

        // Same size and content, only the modification time differs.
        let file = fs::OpenOptions::new().write(true).open(&blob).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        seen.push(model_fingerprint(&files).unwrap());

        // Before 1970 must neither fail nor collide with the time as far after.
        file.set_modified(SystemTime::UNIX_EPOCH - Duration::from_secs(1_000_000))
            .unwrap();
        seen.push(model_fingerprint(&files).unwrap());

        for (i, a) in seen.iter().enumerate() {
            for b in &seen[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn fingerprint_of_a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, _) = model_with_blob(dir.path());
        files.tokenizer = dir.path().join("gone.json");
        let error = model_fingerprint(&files).unwrap_err();
        assert!(format!("{error:#}").contains("gone.json"), "{error:#}");
    }
}
