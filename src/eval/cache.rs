//! The per-image counts of an evaluation, kept on disk so that an interrupted evaluation resumes
//! where it stopped instead of segmenting its images again.
//!
//! A run's files live in `<cache folder>/<run digest>/`, the digest of everything the
//! predictions and the counting depend on ([`RunKey`]): the exact model files, dtype and device,
//! every setting, the classes, the preset and reduce_zero_label. Beside them `key.txt` says in
//! words what the digest covers. An image's file is named by the digest of the run's and its
//! own identity: its ID and its image and truth files' canonical path, size and modification
//! time, so an edited image or truth is counted again. Each file holds the image's sparse
//! counts under a digest of its whole content; a file that does not check out in full is taken
//! as absent (and replaced), never trusted.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use sha2::digest::Output;
use sha2::{Digest, Sha256};

use crate::atomic_write::write_atomically;
use crate::classes::{ClassList, MAX_CLASSES};
use crate::eval::confusion::ImageCounts;
use crate::eval::layout::Sample;
use crate::model::ModelFiles;
use crate::preprocess::open_without_blocking;
use crate::settings::Settings;
use crate::text::cache::{file_identity, model_fingerprint, FieldDigest};

/// Bumped whenever the counting or this file format changes, so that old files are no longer
/// found.
const KEY_VERSION: &str = "sclip-eval-v2";
const MAGIC: &[u8; 8] = b"SCLIPE1\0";
const DIGEST_LEN: usize = 32;
/// Truth class, predicted class, then the pixel count as a little-endian u64.
const ENTRY_LEN: usize = 1 + 1 + 8;
/// Magic, the key's digest, then the entry count as a little-endian u32.
const HEADER_LEN: usize = MAGIC.len() + DIGEST_LEN + 4;
/// One entry per (truth, prediction) pair at most.
const MAX_ENTRIES: usize = MAX_CLASSES * MAX_CLASSES;

/// What an evaluation computes besides the model: its settings, classes and benchmark.
pub struct RunSettings<'a> {
    pub settings: &'a Settings,
    pub classes: &'a ClassList,
    pub preset: &'a str,
    pub reduce_zero_label: bool,
}

/// What an evaluation's predictions and counts depend on, besides the images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunKey {
    digest: Output<Sha256>,
    /// The same, in words, for people wondering what a cache folder is.
    description: String,
}

impl RunKey {
    /// The whole `settings` value enters the key (as its `Debug` text), so a setting added later
    /// enters it without a change here.
    /// `dtype` is the one asked for (`--dtype`): the weights' own can differ from it (bf16 runs
    /// its products on AMX over f32 weights), and the results differ with it.
    pub fn new(
        model: &ModelFiles,
        dtype: DType,
        device: &Device,
        run: &RunSettings,
    ) -> Result<RunKey> {
        let RunSettings {
            settings,
            classes,
            preset,
            reduce_zero_label,
        } = run;
        let description = format!(
            "{KEY_VERSION}\npreset: {preset}\nreduce_zero_label: {reduce_zero_label}\n\
             dtype: {dtype:?}\ndevice: {:?}\nsettings: {settings:?}\nclasses: {classes:?}\nmodel files:\n{}",
            device.location(),
            model_fingerprint(model)?,
        );
        let mut digest = FieldDigest::default();
        digest.field(description.as_bytes());
        Ok(RunKey {
            digest: digest.finish(),
            description,
        })
    }
}

/// One image's identity within a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageKey {
    digest: Output<Sha256>,
}

/// What the cache holds for an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(ImageCounts),
    Absent,
    /// A file is there but does not check out (edited, cut short, another key's): the image is
    /// counted again and its file replaced.
    Damaged,
}

/// The cached counts of one run.
#[derive(Debug, Clone)]
pub struct EvalCache {
    dir: PathBuf,
    run: Output<Sha256>,
    description: String,
    classes: usize,
}

impl EvalCache {
    /// The files of `run` under `root`; nothing is read or made until used.
    pub fn new(root: &Path, run: &RunKey, classes: usize) -> EvalCache {
        EvalCache {
            dir: root.join(format!("{:x}", run.digest)),
            run: run.digest,
            description: run.description.clone(),
            classes,
        }
    }

    /// The folder holding this run's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Errors when the image or its truth cannot be stat'ed (a missing truth, say).
    pub fn image_key(&self, sample: &Sample) -> Result<ImageKey> {
        let mut digest = FieldDigest::default();
        digest.field(&self.run);
        digest.field(sample.id.as_os_str().as_encoded_bytes());
        digest.field(file_identity(&sample.image)?.as_bytes());
        digest.field(file_identity(&sample.truth)?.as_bytes());
        Ok(ImageKey {
            digest: digest.finish(),
        })
    }

    fn path(&self, key: &ImageKey) -> PathBuf {
        self.dir.join(format!("{:x}.counts", key.digest))
    }

    pub fn load(&self, key: &ImageKey) -> Lookup {
        let Ok(file) = open_without_blocking(&self.path(key)) else {
            return Lookup::Absent;
        };
        let longest = HEADER_LEN + MAX_ENTRIES * ENTRY_LEN + DIGEST_LEN;
        if !file
            .metadata()
            .is_ok_and(|metadata| metadata.is_file() && metadata.len() <= longest as u64)
        {
            return Lookup::Damaged;
        }
        let mut bytes = Vec::new();
        if file.take(longest as u64).read_to_end(&mut bytes).is_err() {
            return Lookup::Absent;
        }
        match self.parse(key, &bytes) {
            Some(counts) => Lookup::Hit(counts),
            None => Lookup::Damaged,
        }
    }

    /// The counts in `bytes`, if they are exactly what [`EvalCache::store`] writes for `key`.
    fn parse(&self, key: &ImageKey, bytes: &[u8]) -> Option<ImageCounts> {
        let content_len = bytes.len().checked_sub(DIGEST_LEN)?;
        let (content, digest) = bytes.split_at(content_len);
        if Sha256::digest(content).as_slice() != digest {
            return None;
        }
        let (header, entries) = content.split_at_checked(HEADER_LEN)?;
        let (magic, rest) = header.split_at(MAGIC.len());
        let (key_digest, count) = rest.split_at(DIGEST_LEN);
        let count = u32::from_le_bytes(count.try_into().ok()?) as usize;
        if magic != MAGIC
            || key_digest != key.digest.as_slice()
            || entries.len() != count * ENTRY_LEN
        {
            return None;
        }
        let entries: Vec<(u8, u8, u64)> = entries
            .chunks_exact(ENTRY_LEN)
            .map(|entry| {
                let pixels = u64::from_le_bytes(entry[2..].try_into().expect("8 bytes"));
                (entry[0], entry[1], pixels)
            })
            .collect();
        // As tallied: classes in range, pairs in increasing order, no empty entry.
        let in_range = |class: u8| usize::from(class) < self.classes;
        let well_formed = entries.iter().all(|&(truth, predicted, pixels)| {
            in_range(truth) && in_range(predicted) && pixels > 0
        }) && entries
            .windows(2)
            .all(|pair| (pair[0].0, pair[0].1) < (pair[1].0, pair[1].1));
        well_formed.then_some(ImageCounts { entries })
    }

    /// Stores an image's counts, creating the run's folder (and its `key.txt`) if needed.
    pub fn store(&self, key: &ImageKey, counts: &ImageCounts) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the cache folder {}", self.dir.display()))?;
        let description = self.dir.join("key.txt");
        if !description.exists() {
            write_atomically(&description, |out| {
                out.write_all(self.description.as_bytes())?;
                Ok(())
            })
            .with_context(|| format!("cannot write {}", description.display()))?;
        }
        let mut content = Vec::with_capacity(HEADER_LEN + counts.entries.len() * ENTRY_LEN);
        content.extend_from_slice(MAGIC);
        content.extend_from_slice(&key.digest);
        let count = u32::try_from(counts.entries.len()).expect("at most 256 x 256 entries");
        content.extend_from_slice(&count.to_le_bytes());
        for &(truth, predicted, pixels) in &counts.entries {
            content.extend_from_slice(&[truth, predicted]);
            content.extend_from_slice(&pixels.to_le_bytes());
        }
        let digest = Sha256::digest(&content);
        let path = self.path(key);
        write_atomically(&path, |out| {
            out.write_all(&content)?;
            out.write_all(&digest)?;
            Ok(())
        })
        .with_context(|| format!("cannot write the cache file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_in(dir: &Path) -> EvalCache {
        let run = RunKey {
            digest: Output::<Sha256>::from([7; DIGEST_LEN]),
            description: "a test run".to_string(),
        };
        EvalCache::new(dir, &run, 3)
    }

    fn sample_in(dir: &Path) -> Sample {
        let sample = Sample {
            id: PathBuf::from("a"),
            image: dir.join("a.jpg"),
            truth: dir.join("a.png"),
        };
        std::fs::write(&sample.image, b"image").unwrap();
        std::fs::write(&sample.truth, b"truth").unwrap();
        sample
    }

    fn counts() -> ImageCounts {
        ImageCounts {
            entries: vec![(0, 0, 5), (0, 2, 1), (2, 1, u64::MAX)],
        }
    }

    #[test]
    fn stored_counts_come_back_and_the_run_is_described() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(&dir.path().join("cache"));
        let key = cache.image_key(&sample_in(dir.path())).unwrap();
        assert_eq!(cache.load(&key), Lookup::Absent);
        cache.store(&key, &counts()).unwrap();
        assert_eq!(cache.load(&key), Lookup::Hit(counts()));
        let description = std::fs::read_to_string(cache.dir().join("key.txt")).unwrap();
        assert_eq!(description, "a test run");
        // An image with nothing but ignored pixels has no entries, and is cached too.
        cache.store(&key, &ImageCounts::default()).unwrap();
        assert_eq!(cache.load(&key), Lookup::Hit(ImageCounts::default()));
    }

    #[test]
    fn every_altered_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let key = cache.image_key(&sample_in(dir.path())).unwrap();
        cache.store(&key, &counts()).unwrap();
        let path = cache.path(&key);
        let whole = std::fs::read(&path).unwrap();
        for offset in 0..whole.len() {
            let mut altered = whole.clone();
            altered[offset] ^= 0x10;
            std::fs::write(&path, &altered).unwrap();
            assert_eq!(cache.load(&key), Lookup::Damaged, "byte {offset} altered");
        }
        for len in [0, 1, HEADER_LEN, whole.len() - 1] {
            std::fs::write(&path, &whole[..len]).unwrap();
            assert_eq!(cache.load(&key), Lookup::Damaged, "cut to {len} bytes");
        }
        std::fs::write(&path, &whole).unwrap();
        assert_eq!(cache.load(&key), Lookup::Hit(counts()));
    }

    #[test]
    fn a_well_digested_file_with_impossible_counts_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let key = cache.image_key(&sample_in(dir.path())).unwrap();
        let impossible = [
            vec![(3, 0, 1)],
            vec![(0, 0, 0)],
            vec![(1, 1, 1), (0, 0, 1)],
            vec![(1, 1, 1), (1, 1, 1)],
        ];
        for entries in impossible {
            cache
                .store(
                    &key,
                    &ImageCounts {
                        entries: entries.clone(),
                    },
                )
                .unwrap();
            assert_eq!(cache.load(&key), Lookup::Damaged, "{entries:?}");
        }
    }

    #[test]
    fn editing_the_truth_or_image_changes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let sample = sample_in(dir.path());
        let before = cache.image_key(&sample).unwrap();
        assert_eq!(cache.image_key(&sample).unwrap(), before, "stable");
        std::fs::write(&sample.truth, b"other truth").unwrap();
        let after_truth = cache.image_key(&sample).unwrap();
        assert_ne!(after_truth, before);
        std::fs::write(&sample.image, b"other image").unwrap();
        assert_ne!(cache.image_key(&sample).unwrap(), after_truth);
        let renamed = Sample {
            id: PathBuf::from("b"),
            ..sample.clone()
        };
        assert_ne!(
            cache.image_key(&renamed).unwrap(),
            cache.image_key(&sample).unwrap()
        );
        std::fs::remove_file(&sample.truth).unwrap();
        let error = format!("{:#}", cache.image_key(&sample).unwrap_err());
        assert!(error.contains("a.png"), "{error}");
    }

    #[test]
    fn another_images_file_in_its_place_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let sample = sample_in(dir.path());
        let key = cache.image_key(&sample).unwrap();
        let other = cache
            .image_key(&Sample {
                id: PathBuf::from("b"),
                ..sample
            })
            .unwrap();
        cache.store(&other, &counts()).unwrap();
        std::fs::rename(cache.path(&other), cache.path(&key)).unwrap();
        assert_eq!(cache.load(&key), Lookup::Damaged);
    }
}
