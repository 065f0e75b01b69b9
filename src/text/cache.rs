//! Class queries cached on disk, so that a second run with the same classes spends no time on
//! the text tower.
//!
//! A file's name is the digest of everything the queries depend on: the exact model files, the
//! dtype and device kind they were computed with, the templates and the names in order. A file
//! is only ever written whole (temp file + rename) and is checked in full when read (magic, shape,
//! digest, length), so concurrent runs, a killed run or a foreign file can cost a recomputation,
//! never a wrong query.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::load::ModelFiles;
use crate::output::write_atomically;

const MAGIC: &[u8; 8] = b"SCLIPQ1\0";
const KEY_VERSION: &str = "sclip-queries-v1";
const HEADER_LEN: usize = MAGIC.len() + 4 + 4 + 32;

/// `$SCLIP_CACHE_DIR`, else `$XDG_CACHE_HOME/sclip`, else `~/.cache/sclip`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    cache_dir_from(var("SCLIP_CACHE_DIR"), var("XDG_CACHE_HOME"), var("HOME"))
}

fn cache_dir_from(
    sclip: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    sclip
        .map(PathBuf::from)
        .or_else(|| xdg.map(|xdg| Path::new(&xdg).join("sclip")))
        .or_else(|| home.map(|home| Path::new(&home).join(".cache").join("sclip")))
}

/// What the queries of one run depend on, reduced to a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryKey {
    digest: [u8; 32],
    rows: usize,
    dim: usize,
}

impl QueryKey {
    /// `model_fingerprint` from [`model_fingerprint`]; `dtype_tag` names the dtype and device
    /// kind the queries are computed with, since both change their last bits.
    pub fn new(
        model_fingerprint: &str,
        templates: &[&str],
        names: &[String],
        dtype_tag: &str,
        dim: usize,
    ) -> Self {
        let mut hasher = Sha256::new();
        // Every field is length-prefixed, so that ["a,b"] and ["a", "b"] cannot collide.
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

    fn file_name(&self) -> String {
        let hex: String = self.digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("queries-{hex}.f32")
    }
}

/// Identifies the exact weights, tokenizer and config: each file's canonical path (inside a
/// Hugging Face cache that resolves the snapshot's symlink to `blobs/<content hash>`, so it names
/// the content), size and modification time. Rewriting a local model's files changes it.
pub fn model_fingerprint(files: &ModelFiles) -> Result<String> {
    let mut fingerprint = String::new();
    for path in [files.weights.path(), &files.tokenizer, &files.config] {
        let canonical = std::fs::canonicalize(path)
            .with_context(|| format!("cannot resolve {}", path.display()))?;
        let metadata = std::fs::metadata(&canonical)
            .with_context(|| format!("cannot read the metadata of {}", path.display()))?;
        let modified = metadata
            .modified()
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |age| age.as_nanos());
        fingerprint.push_str(&format!(
            "{}\n{}\n{modified}\n",
            canonical.display(),
            metadata.len()
        ));
    }
    Ok(fingerprint)
}

/// A folder of cached query matrices.
pub struct QueryCache {
    dir: PathBuf,
}

impl QueryCache {
    pub fn new(dir: PathBuf) -> Self {
        QueryCache { dir }
    }

    /// The rows x dim queries stored under `key`; `None` when absent, unreadable or not exactly
    /// what `key` describes.
    pub fn load(&self, key: &QueryKey) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.dir.join(key.file_name())).ok()?;
        let (header, data) = bytes.split_at_checked(HEADER_LEN)?;
        let expected = header_bytes(key);
        if header != expected.as_slice() || data.len() != key.rows * key.dim * 4 {
            return None;
        }
        Some(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    pub fn store(&self, key: &QueryKey, data: &[f32]) -> Result<()> {
        anyhow::ensure!(
            data.len() == key.rows * key.dim,
            "expected {} x {} queries, got {} values",
            key.rows,
            key.dim,
            data.len()
        );
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the cache folder {}", self.dir.display()))?;
        let path = self.dir.join(key.file_name());
        write_atomically(&path, |out| {
            out.write_all(&header_bytes(key))?;
            let values: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            out.write_all(&values)?;
            Ok(())
        })
        .with_context(|| format!("cannot write the query cache file {}", path.display()))
    }
}

fn header_bytes(key: &QueryKey) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(key.rows as u32).to_le_bytes());
    header.extend_from_slice(&(key.dim as u32).to_le_bytes());
    header.extend_from_slice(&key.digest);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::WeightsFile;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn key(names_list: &[&str]) -> QueryKey {
        QueryKey::new(
            "model",
            &["a {}.", "the {}."],
            &names(names_list),
            "F32-cpu",
            3,
        )
    }

    #[test]
    fn stored_queries_come_back_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().join("nested/cache"));
        let key = key(&["dog", "cat"]);
        assert_eq!(cache.load(&key), None);
        let data = [0.1f32, -0.0, 3.5e-8, f32::MIN_POSITIVE, 1.0, -2.25];
        cache.store(&key, &data).unwrap();
        assert_eq!(cache.load(&key).unwrap(), data.to_vec());
    }

    #[test]
    fn every_input_of_the_queries_changes_the_key() {
        let base = key(&["dog", "cat"]);
        let templates = ["a {}.", "the {}."];
        let dog_cat = names(&["dog", "cat"]);
        assert_ne!(base, key(&["cat", "dog"]), "order matters");
        assert_ne!(base, key(&["dog,cat"]));
        assert_ne!(
            base,
            QueryKey::new("other", &templates, &dog_cat, "F32-cpu", 3)
        );
        assert_ne!(
            base,
            QueryKey::new("model", &["a {}."], &dog_cat, "F32-cpu", 3)
        );
        assert_ne!(
            base,
            QueryKey::new("model", &templates, &dog_cat, "F16-cpu", 3)
        );
        assert_ne!(
            base,
            QueryKey::new("model", &templates, &dog_cat, "F32-gpu", 3)
        );
        assert_eq!(
            base,
            QueryKey::new("model", &templates, &dog_cat, "F32-cpu", 3)
        );
    }

    #[test]
    fn damaged_or_foreign_files_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = QueryCache::new(dir.path().to_path_buf());
        let key = key(&["dog"]);
        let path = dir.path().join(key.file_name());
        cache.store(&key, &[1.0, 2.0, 3.0]).unwrap();
        let whole = std::fs::read(&path).unwrap();

        std::fs::write(&path, &whole[..whole.len() - 1]).unwrap();
        assert_eq!(cache.load(&key), None, "truncated");
        let mut wrong_magic = whole.clone();
        wrong_magic[0] = b'X';
        std::fs::write(&path, wrong_magic).unwrap();
        assert_eq!(cache.load(&key), None, "wrong magic");

        let other = self::key(&["cat"]);
        cache.store(&other, &[4.0, 5.0, 6.0]).unwrap();
        std::fs::copy(dir.path().join(other.file_name()), &path).unwrap();
        assert_eq!(cache.load(&key), None, "another key's file");
        assert!(cache.store(&key, &[1.0]).is_err(), "wrong shape");
    }

    #[test]
    fn the_cache_folder_follows_the_usual_variables() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            cache_dir_from(os("/s"), os("/x"), os("/h")),
            Some(PathBuf::from("/s"))
        );
        assert_eq!(
            cache_dir_from(None, os("/x"), os("/h")),
            Some(PathBuf::from("/x/sclip"))
        );
        assert_eq!(
            cache_dir_from(None, None, os("/h")),
            Some(PathBuf::from("/h/.cache/sclip"))
        );
        assert_eq!(cache_dir_from(None, None, None), None);
    }

    #[test]
    fn the_fingerprint_follows_symlinks_and_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob-1234");
        std::fs::write(&blob, b"weights").unwrap();
        let weights = dir.path().join("model.safetensors");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&blob, &weights).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&blob, &weights).unwrap();
        let config = dir.path().join("config.json");
        let tokenizer = dir.path().join("tokenizer.json");
        std::fs::write(&config, b"{}").unwrap();
        std::fs::write(&tokenizer, b"{}").unwrap();
        let files = ModelFiles {
            config,
            tokenizer,
            weights: WeightsFile::Safetensors(weights),
        };
        let before = model_fingerprint(&files).unwrap();
        #[cfg(unix)]
        assert!(before.contains("blob-1234"), "{before}");
        std::fs::write(&blob, b"other weights").unwrap();
        assert_ne!(model_fingerprint(&files).unwrap(), before);
    }
}
