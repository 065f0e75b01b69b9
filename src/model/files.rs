//! Finding a CLIP checkpoint on disk: a local folder, or a Hugging Face hub repo through the
//! hub's cache (downloading once when allowed).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use super::hub::{HubOptions, HubRepo};

pub const DEFAULT_MODEL: &str = "openai/clip-vit-base-patch16";

const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const SAFETENSORS_FILE: &str = "model.safetensors";
const PYTORCH_FILE: &str = "pytorch_model.bin";

/// Where the three files of a checkpoint live on disk, once found or downloaded.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: WeightsFile,
    /// The hub snapshot the files are; `None` for a local folder.
    pub hub: Option<HubSnapshot>,
}

/// A hub repo at a revision, and the commit the revision named when its files were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSnapshot {
    pub repo_id: String,
    pub revision: String,
    pub commit: String,
}

impl ModelFiles {
    /// The folder holding the files: the local folder, or the hub cache's snapshot of the commit.
    pub fn folder(&self) -> &Path {
        self.config
            .parent()
            .expect("config.json is a file in the model's folder")
    }
}

#[derive(Debug, Clone)]
pub enum WeightsFile {
    Safetensors(PathBuf),
    /// The legacy PyTorch pickle, used when a revision has no safetensors file.
    Pytorch(PathBuf),
}

impl WeightsFile {
    pub fn path(&self) -> &Path {
        match self {
            WeightsFile::Safetensors(p) | WeightsFile::Pytorch(p) => p,
        }
    }
}

/// A model is named by a folder when the name looks like a path: it starts like one, or its
/// first component exists here (`models/x` with a `models` folder), or it exists; otherwise by
/// a hub repo id.
pub fn looks_like_path(model: &str) -> bool {
    let has_path_prefix = ["/", "./", "../", "~", ".\\", "..\\"]
        .iter()
        .any(|p| model.starts_with(p));
    let first_component_exists = model
        .split_once('/')
        .is_some_and(|(first, _)| !first.is_empty() && Path::new(first).exists());
    has_path_prefix
        || model.starts_with('.')
        || model.contains('\\')
        || model.matches('/').count() > 1
        || first_component_exists
        || Path::new(model).exists()
}

/// Resolves a model's name (a folder, or a hub repo id at `revision`) to files on disk,
/// downloading from the hub when needed and allowed.
pub fn resolve_model(model: &str, revision: &str) -> Result<ModelFiles> {
    resolve_model_with(model, revision, HubOptions::default())
}

/// [`resolve_model`], saying what the hub client does as `options` ask.
pub fn resolve_model_with(model: &str, revision: &str, options: HubOptions) -> Result<ModelFiles> {
    if looks_like_path(model) {
        local_model_files(Path::new(model))
    } else {
        hub_model_files(model, revision, options)
    }
}

fn local_model_files(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a folder"
        } else {
            "no such folder"
        };
        bail!(
            "{}: {what}; a model is a folder holding {CONFIG_FILE}, {TOKENIZER_FILE} and \
             {SAFETENSORS_FILE}, or a hub repo id such as {DEFAULT_MODEL} (a name is taken for a \
             folder when it starts with '.', '/' or '~', or its first component exists here)",
            dir.display()
        );
    }
    let missing = |what: &str| {
        anyhow!(
            "model directory {} has no {what}; a CLIP checkpoint in Hugging Face format needs \
             {CONFIG_FILE}, {TOKENIZER_FILE} and {SAFETENSORS_FILE} (or {PYTORCH_FILE})",
            dir.display()
        )
    };
    let existing = |name: &str| Some(dir.join(name)).filter(|path| path.is_file());
    let config = existing(CONFIG_FILE).ok_or_else(|| missing(CONFIG_FILE))?;
    let tokenizer = existing(TOKENIZER_FILE).ok_or_else(|| missing(TOKENIZER_FILE))?;
    let weights = match (existing(SAFETENSORS_FILE), existing(PYTORCH_FILE)) {
        (Some(path), _) => WeightsFile::Safetensors(path),
        (None, Some(path)) => WeightsFile::Pytorch(path),
        (None, None) => return Err(missing(&format!("{SAFETENSORS_FILE} or {PYTORCH_FILE}"))),
    };
    Ok(ModelFiles {
        config,
        tokenizer,
        weights,
        hub: None,
    })
}

/// A hub file the cache does not have, when HF_HUB_OFFLINE=1 forbids downloading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotCached {
    pub repo_id: String,
    pub revision: String,
    pub file: String,
    pub cache_dir: PathBuf,
}

impl std::fmt::Display for NotCached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (revision {}) has no cached {} in {} and HF_HUB_OFFLINE=1 forbids downloading; \
             unset HF_HUB_OFFLINE to download it once, point HF_HOME/HF_HUB_CACHE at the cache \
             that has it, or load the model from a local folder holding a copy",
            self.repo_id,
            self.revision,
            self.file,
            self.cache_dir.display()
        )
    }
}

impl std::error::Error for NotCached {}

fn hub_model_files(repo_id: &str, revision: &str, options: HubOptions) -> Result<ModelFiles> {
    let mut repo = HubRepo::from_env(repo_id, revision, options)?;
    let mut get = |name: &str| repo.get(name)?.ok_or_else(|| repo.missing(name));
    let config = get(CONFIG_FILE)?;
    let tokenizer = get(TOKENIZER_FILE)?;
    let weights = match repo.get(SAFETENSORS_FILE) {
        Ok(Some(path)) => WeightsFile::Safetensors(path),
        // Offline, a cache holding only the pickle (and no record that the revision lacks the
        // safetensors file) still loads, as transformers falls back to it.
        Err(not_cached) if not_cached.is::<NotCached>() => match repo.get(PYTORCH_FILE) {
            Ok(Some(path)) => WeightsFile::Pytorch(path),
            _ => return Err(not_cached),
        },
        Err(error) => return Err(error),
        Ok(None) => WeightsFile::Pytorch(
            repo.get(PYTORCH_FILE)?
                .ok_or_else(|| anyhow!("{}, nor {SAFETENSORS_FILE}", repo.missing(PYTORCH_FILE)))?,
        ),
    };
    let commit = repo
        .commit()
        .ok_or_else(|| anyhow!("{repo_id} (revision {revision}): no commit known for its files"))?;
    Ok(ModelFiles {
        config,
        tokenizer,
        weights,
        hub: Some(HubSnapshot {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            commit,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_repo_ids_are_told_apart() {
        assert!(!looks_like_path("openai/clip-vit-base-patch16"));
        assert!(!looks_like_path("org-that-does-not-exist/model"));
        assert!(looks_like_path("./models/clip"));
        assert!(looks_like_path("/abs/clip"));
        assert!(looks_like_path("../clip"));
        assert!(looks_like_path("~/clip"));
        assert!(looks_like_path("a/b/c"));
        assert!(looks_like_path(".models/clip"));
    }

    /// Unit tests run in the crate's root, which has a `src` folder.
    #[test]
    fn a_name_whose_first_component_exists_is_a_missing_folder() {
        assert!(looks_like_path("src/no-such-model"));
        let missing = resolve_model("src/no-such-model", "main")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("src/no-such-model: no such folder"),
            "{missing}"
        );
    }
}
