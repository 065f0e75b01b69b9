//! Finding a CLIP checkpoint on disk: a local folder, or a Hugging Face hub repo through the
//! hub's cache (downloading once when allowed).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

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
    if looks_like_path(model) {
        local_model_files(Path::new(model))
    } else {
        hub::model_files(model, revision)
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

mod hub {
    //! The hub's own conventions: HF_HUB_CACHE or HF_HOME/hub for the cache, HF_HUB_OFFLINE=1 to
    //! never touch the network, HF_ENDPOINT for mirrors, HF_TOKEN (or the saved token) for gated repos.
    use super::*;
    use hf_hub::api::sync::{ApiBuilder, ApiError};
    use hf_hub::{Cache, Repo, RepoType};

    fn cache_from_env() -> Cache {
        match std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
            Some(dir) => Cache::new(PathBuf::from(dir)),
            None => Cache::from_env(),
        }
    }

    fn offline() -> bool {
        std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false)
    }

    /// Where files come from: the cache alone (offline), or the hub through the cache.
    enum Source {
        Cache(hf_hub::CacheRepo),
        Hub(Box<hf_hub::api::sync::ApiRepo>),
    }

    impl Source {
        /// The local path of `name`, or None when the repo revision has no such file.
        fn fetch(&self, name: &str, repo_id: &str, cache: &Cache) -> Result<Option<PathBuf>> {
            match self {
                Source::Cache(cached) => Ok(cached.get(name)),
                Source::Hub(remote) => match remote.get(name) {
                    Ok(path) => Ok(Some(path)),
                    Err(ApiError::RequestError(err))
                        if matches!(*err, ureq::Error::StatusCode(404)) =>
                    {
                        Ok(None)
                    }
                    Err(err) => Err(anyhow!(
                        "cannot download {name} of {repo_id}: {err}; check the network (or HF_ENDPOINT), \
                         or, if the model was downloaded before, set HF_HUB_OFFLINE=1 to use the cache in {}",
                        cache.path().display()
                    )),
                },
            }
        }
    }

    pub fn model_files(repo_id: &str, revision: &str) -> Result<ModelFiles> {
        let cache = cache_from_env();
        let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
        let source = if offline() {
            Source::Cache(cache.repo(repo))
        } else {
            let mut builder = ApiBuilder::from_cache(cache.clone()).with_progress(true);
            if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
                builder = builder.with_token(Some(token));
            }
            let api = builder
                .build()
                .context("cannot set up the Hugging Face hub client")?;
            Source::Hub(Box::new(api.repo(repo)))
        };
        let fetch = |name: &str| source.fetch(name, repo_id, &cache);
        let missing = |name: &str| {
            if offline() {
                anyhow::Error::new(NotCached {
                    repo_id: repo_id.to_string(),
                    revision: revision.to_string(),
                    file: name.to_string(),
                    cache_dir: cache.path().clone(),
                })
            } else {
                anyhow!("{repo_id} (revision {revision}) has no file {name} on the hub")
            }
        };
        let config = fetch(CONFIG_FILE)?.ok_or_else(|| missing(CONFIG_FILE))?;
        let tokenizer = fetch(TOKENIZER_FILE)?.ok_or_else(|| missing(TOKENIZER_FILE))?;
        let weights = match fetch(SAFETENSORS_FILE)? {
            Some(path) => WeightsFile::Safetensors(path),
            None => {
                WeightsFile::Pytorch(fetch(PYTORCH_FILE)?.ok_or_else(|| missing(SAFETENSORS_FILE))?)
            }
        };
        Ok(ModelFiles {
            config,
            tokenizer,
            weights,
        })
    }
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
