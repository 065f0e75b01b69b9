//! Class queries cached on disk, so that a second run with the same classes spends no time on
//! the text tower.
//!
//! A file is named by the digest of everything its queries depend on: the exact model files, the
//! dtype tag, the templates and the names in order. It is only ever written whole (through
//! [`write_atomically`]) and is checked in full when read (magic, shape, digest, exact length), so
//! concurrent runs, a killed run or a foreign file can cost a recomputation, never a wrong query.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::atomic_write::write_atomically;
use crate::model::ModelFiles;

const MAGIC: &[u8; 8] = b"SCLIPQ1\0";
/// Bumped whenever the queries' computation or this file format changes, so that old files
/// become misses instead of wrong answers.
const KEY_VERSION: &str = "sclip-queries-v2";
const DIGEST_LEN: usize = 32;
const HEADER_LEN: usize = MAGIC.len() + 4 + 4 + DIGEST_LEN;

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
        let mut hasher = Sha256::new();
        // Length prefixes on every field and both lists keep the encoding injective: ["a,b"] vs
        // ["a", "b"], or a name moving into the templates, cannot produce the same bytes.
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
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
            digest: hasher.finalize().into(),
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

    /// `None` when the shape does not fit the header's u32 fields.
    fn header(&self) -> Option<[u8; HEADER_LEN]> {
        let rows = u32::try_from(self.rows).ok()?;
        let dim = u32::try_from(self.dim).ok()?;
        let mut header = [0; HEADER_LEN];
        let (magic, rest) = header.split_at_mut(MAGIC.len());
        let (rows_field, rest) = rest.split_at_mut(4);
        let (dim_field, digest) = rest.split_at_mut(4);
        magic.copy_from_slice(MAGIC);
        rows_field.copy_from_slice(&rows.to_le_bytes());
        dim_field.copy_from_slice(&dim.to_le_bytes());
        digest.copy_from_slice(&self.digest);
        Some(header)
    }
}

/// Identifies the exact weights, tokenizer and config: for each file its canonical path (inside a
/// Hugging Face cache this resolves the snapshot's symlink to `blobs/<content hash>`, so it names
/// the content), size and modification time in nanoseconds, so that rewriting a local model's
/// files changes it. Errors if a file cannot be resolved or stat'ed.
pub fn model_fingerprint(files: &ModelFiles) -> Result<String> {
    let mut fingerprint = String::new();
    for path in [files.weights.path(), &files.tokenizer, &files.config] {
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
        writeln!(
            fingerprint,
            "{canonical:?} {} {modified_ns}",
            metadata.len()
        )
        .expect("writing to a String cannot fail");
    }
    Ok(fingerprint)
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

    /// The `rows x dim` queries stored under `key` (row-major); `None` when the file is absent,
    /// unreadable, or anything but exactly what `key` describes.
    pub fn load(&self, key: &QueryKey) -> Option<Vec<f32>> {
        let expected_len = HEADER_LEN.checked_add(key.payload_len()?)?;
        let mut file = File::open(self.dir.join(key.file_name())).ok()?;
        // Checked before reading so that a foreign file of any size costs one stat.
        if file.metadata().ok()?.len() != expected_len as u64 {
            return None;
        }
        let mut bytes = Vec::with_capacity(expected_len);
        file.read_to_end(&mut bytes).ok()?;
        if bytes.len() != expected_len {
            return None;
        }
        let (header, payload) = bytes.split_at(HEADER_LEN);
        if header != key.header()? {
            return None;
        }
        Some(
            payload
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    /// Stores `data` (`key.rows x key.dim`, row-major) under `key`, creating the folder if needed;
    /// concurrent readers see the previous file or the complete new one.
    pub fn store(&self, key: &QueryKey, data: &[f32]) -> Result<()> {
        ensure!(
            key.payload_len() == Some(data.len() * 4),
            "cannot cache {} values as a {} x {} query matrix",
            data.len(),
            key.rows,
            key.dim
        );
        let header = key.header().with_context(|| {
            format!(
                "a {} x {} query matrix is too large for the cache format",
                key.rows, key.dim
            )
        })?;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the cache folder {}", self.dir.display()))?;
        let path = self.dir.join(key.file_name());
        let payload: Vec<u8> = data.iter().flat_map(|value| value.to_le_bytes()).collect();
        write_atomically(&path, |out| {
            out.write_all(&header)?;
            out.write_all(&payload)?;
            Ok(())
        })
        .with_context(|| format!("cannot write the query cache file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WeightsFile;
    use std::fs;
    use std::time::{Duration, SystemTime};

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

    #[test]
    fn stored_queries_come_back_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().join("nested").join("sclip"));
        let key = key_for(&["dog", "cat"]);
        assert_eq!(cache.load(&key), None, "nothing stored yet");
        let data = [0.1, -0.0, 1e-45, f32::NAN, f32::INFINITY, -2.25];
        cache.store(&key, &data).unwrap();
        assert_eq!(bits(&cache.load(&key).unwrap()), bits(&data));

        let replacement = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        cache.store(&key, &replacement).unwrap();
        assert_eq!(cache.load(&key).unwrap(), replacement);
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
            assert_eq!(cache.load(&key), None, "truncated to {len} bytes");
        }
        let mut extended = whole.clone();
        extended.push(0);
        fs::write(&path, extended).unwrap();
        assert_eq!(cache.load(&key), None, "trailing byte");

        for (offset, what) in [(0, "magic"), (8, "rows"), (12, "dim"), (16, "digest")] {
            let mut altered = whole.clone();
            altered[offset] ^= 1;
            fs::write(&path, altered).unwrap();
            assert_eq!(cache.load(&key), None, "altered {what}");
        }

        fs::write(&path, &whole).unwrap();
        assert_eq!(cache.load(&key).unwrap(), [1.0, 2.0, 3.0]);
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
        assert_eq!(cache.load(&key), None);
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
        assert_eq!(cache.load(&key_for(&["dog"])), None);
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
                    if let Some(loaded) = cache.load(&key) {
                        assert!(loaded == data);
                    }
                }
            });
        });
        assert!(cache.load(&key).unwrap() == data);
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
