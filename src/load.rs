//! Finding a CLIP checkpoint (a local folder or a Hugging Face hub repo), reading its
//! `config.json`, and opening its weights.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;
use serde_json::Value;

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

/// `--model` names a folder when it looks like a path (or one exists there); otherwise a hub repo id.
pub fn looks_like_path(model: &str) -> bool {
    let has_path_prefix = ["/", "./", "../", "~", ".\\", "..\\"]
        .iter()
        .any(|p| model.starts_with(p));
    has_path_prefix
        || model == "."
        || model == ".."
        || model.contains('\\')
        || model.matches('/').count() > 1
        || Path::new(model).exists()
}

/// Resolves `--model` to files on disk, downloading from the hub when needed and allowed.
pub fn resolve_model(model: &str, revision: &str) -> Result<ModelFiles> {
    if looks_like_path(model) {
        local_model_files(Path::new(model))
    } else {
        hub::model_files(model, revision)
    }
}

fn local_model_files(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        bail!(
            "model directory {} does not exist; pass a folder holding {CONFIG_FILE}, {TOKENIZER_FILE} and \
             {SAFETENSORS_FILE}, or a hub repo id such as {DEFAULT_MODEL}",
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
                anyhow!(
                    "{repo_id} (revision {revision}) has no cached {name} in {} and HF_HUB_OFFLINE=1 forbids \
                     downloading; unset HF_HUB_OFFLINE to download it once, point HF_HOME/HF_HUB_CACHE at \
                     the cache that has it, or pass --model DIR with a local copy",
                    cache.path().display()
                )
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

/// The sizes of one transformer tower, read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct TowerConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

impl TowerConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    QuickGelu,
    /// The exact (erf) GELU, which Hugging Face calls "gelu".
    Gelu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub tower: TowerConfig,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
}

impl VisionConfig {
    /// Patches per side of the image size the position embeddings were trained for (14 for ViT-B/16).
    pub fn base_grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub tower: TowerConfig,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub projection_dim: usize,
}

/// The fields of one tower as Hugging Face writes them; absent fields take CLIPConfig's defaults.
#[derive(Deserialize)]
struct RawTower {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    // vision only
    image_size: Option<usize>,
    patch_size: Option<usize>,
    num_channels: Option<usize>,
    // text only
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
}

impl ClipConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("bad model config {}", path.display()))
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(json).context("config.json is not valid JSON")?;
        let model_type = root.get("model_type").and_then(Value::as_str);
        if let Some(model_type) = model_type {
            if model_type != "clip" {
                bail!(
                    "model_type is {model_type:?}, not \"clip\": sclip needs a CLIP ViT checkpoint \
                     such as {DEFAULT_MODEL}"
                );
            }
        }
        let vision = tower_section(&root, "vision")?;
        let text = tower_section(&root, "text")?;
        let projection_dim = root
            .get("projection_dim")
            .and_then(Value::as_u64)
            .unwrap_or(512) as usize;

        let vision = VisionConfig {
            tower: tower_config(&vision, "vision", 768, 3072, 12, 12)?,
            image_size: vision.image_size.unwrap_or(224),
            patch_size: vision.patch_size.unwrap_or(32),
            num_channels: vision.num_channels.unwrap_or(3),
        };
        if vision.num_channels != 3 {
            bail!(
                "vision_config.num_channels is {}, expected 3 (RGB)",
                vision.num_channels
            );
        }
        if vision.patch_size == 0 || !vision.image_size.is_multiple_of(vision.patch_size) {
            bail!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                vision.image_size,
                vision.patch_size
            );
        }
        let text = TextConfig {
            tower: tower_config(&text, "text", 512, 2048, 12, 8)?,
            vocab_size: text.vocab_size.unwrap_or(49408),
            max_position_embeddings: text.max_position_embeddings.unwrap_or(77),
        };
        Ok(ClipConfig {
            vision,
            text,
            projection_dim,
        })
    }
}

/// Old hub configs carry both `vision_config` and `vision_config_dict`; the latter wins, as in transformers.
fn tower_section(root: &Value, tower: &str) -> Result<RawTower> {
    let mut merged = serde_json::Map::new();
    let mut found = false;
    for key in [format!("{tower}_config"), format!("{tower}_config_dict")] {
        if let Some(Value::Object(section)) = root.get(&key) {
            found = true;
            merged.extend(section.clone());
        }
    }
    if !found {
        bail!(
            "config.json has no {tower}_config section: this is not a CLIP checkpoint \
             (sclip needs a CLIP ViT model such as {DEFAULT_MODEL})"
        );
    }
    serde_json::from_value(Value::Object(merged))
        .with_context(|| format!("{tower}_config has a field of the wrong type"))
}

fn tower_config(
    raw: &RawTower,
    tower: &str,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
) -> Result<TowerConfig> {
    let config = TowerConfig {
        hidden_size: raw.hidden_size.unwrap_or(hidden),
        intermediate_size: raw.intermediate_size.unwrap_or(intermediate),
        num_layers: raw.num_hidden_layers.unwrap_or(layers),
        num_heads: raw.num_attention_heads.unwrap_or(heads),
        layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-5),
        activation: match raw.hidden_act.as_deref().unwrap_or("quick_gelu") {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => {
                bail!("{tower}_config.hidden_act {other:?} is not supported (quick_gelu or gelu)")
            }
        },
    };
    if config.num_heads == 0 || !config.hidden_size.is_multiple_of(config.num_heads) {
        bail!(
            "{tower}_config.hidden_size {} is not divisible by num_attention_heads {}",
            config.hidden_size,
            config.num_heads
        );
    }
    if config.num_layers == 0 {
        bail!("{tower}_config.num_hidden_layers is 0");
    }
    Ok(config)
}

/// `--device cpu|cuda|cuda:N`.
pub fn device_from_spec(spec: &str) -> Result<Device> {
    let ordinal = match spec.trim().to_ascii_lowercase().as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("unknown device {spec:?}; use cpu, cuda or cuda:N"),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        bail!(
            "--device {spec}: this sclip was built without CUDA support; rebuild with \
             `cargo install --path . --features cuda` (needs the CUDA toolkit) or use --device cpu"
        );
    }
    Device::new_cuda(ordinal).with_context(|| {
        format!(
            "--device {spec}: no usable CUDA GPU {ordinal}; check nvidia-smi, or use --device cpu"
        )
    })
}

/// Opens the weights for reading tensors by name, converting them to `dtype` on `device`.
pub fn open_weights(
    weights: &WeightsFile,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    match weights {
        WeightsFile::Safetensors(path) => {
            let reader = SafetensorsReader::open(path)
                .with_context(|| format!("cannot read weights {}", path.display()))?;
            Ok(VarBuilder::from_backend(
                Box::new(reader),
                dtype,
                device.clone(),
            ))
        }
        WeightsFile::Pytorch(path) => VarBuilder::from_pth(path, dtype, device)
            .with_context(|| format!("cannot read weights {}", path.display())),
    }
}

/// Reads tensors from a safetensors file one at a time, with plain reads. A memory map (candle's
/// way) would leave every page it touched resident next to the converted copy, doubling the
/// memory peak while the model loads.
struct SafetensorsReader {
    file: Mutex<File>,
    /// Where the data section begins, after the length and the JSON header.
    data_start: u64,
    tensors: HashMap<String, StoredTensor>,
}

struct StoredTensor {
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range within the data section.
    offsets: (u64, u64),
}

/// A safetensors header longer than this is not one (the format caps it at 100 MB).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

impl SafetensorsReader {
    fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path)?;
        let mut length = [0u8; 8];
        file.read_exact(&mut length)
            .context("too short for a safetensors file")?;
        let header_length = u64::from_le_bytes(length);
        ensure!(
            header_length <= MAX_SAFETENSORS_HEADER,
            "not a safetensors file (its header would be {header_length} bytes)"
        );
        let mut header = vec![0u8; header_length as usize];
        file.read_exact(&mut header)
            .context("the safetensors header is truncated")?;
        let header: HashMap<String, Value> =
            serde_json::from_slice(&header).context("the safetensors header is not JSON")?;
        let file_length = file.metadata()?.len();
        let data_start = 8 + header_length;
        let mut tensors = HashMap::new();
        for (name, info) in header {
            if name == "__metadata__" {
                continue;
            }
            let stored = StoredTensor::from_header(&info)
                .with_context(|| format!("bad safetensors entry for tensor {name}"))?;
            ensure!(
                data_start + stored.offsets.1 <= file_length,
                "tensor {name} lies past the end of the file: is it truncated?"
            );
            tensors.insert(name, stored);
        }
        Ok(SafetensorsReader {
            file: Mutex::new(file),
            data_start,
            tensors,
        })
    }

    fn stored(&self, name: &str) -> candle_core::Result<&StoredTensor> {
        self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })
    }

    fn read(&self, name: &str, stored: &StoredTensor) -> candle_core::Result<candle_core::Tensor> {
        let (start, end) = stored.offsets;
        let mut bytes = vec![0u8; (end - start) as usize];
        {
            let mut file = self.file.lock().expect("weights file lock poisoned");
            file.seek(SeekFrom::Start(self.data_start + start))?;
            file.read_exact(&mut bytes)?;
        }
        candle_core::Tensor::from_raw_buffer(&bytes, stored.dtype, &stored.shape, &Device::Cpu)
            .map_err(|err| err.context(format!("tensor {name}")))
    }
}

impl StoredTensor {
    fn from_header(info: &Value) -> Result<Self> {
        let dtype = match info["dtype"].as_str() {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some("F64") => DType::F64,
            Some("I64") => DType::I64,
            Some("I32") => DType::I32,
            Some("U32") => DType::U32,
            Some("U8") => DType::U8,
            other => bail!("unsupported dtype {other:?}"),
        };
        let numbers = |key: &str| -> Result<Vec<u64>> {
            info[key]
                .as_array()
                .and_then(|items| items.iter().map(Value::as_u64).collect())
                .with_context(|| format!("{key} is not a list of numbers"))
        };
        let shape: Vec<usize> = numbers("shape")?.into_iter().map(|n| n as usize).collect();
        let offsets = match numbers("data_offsets")?[..] {
            [start, end] if start <= end => (start, end),
            _ => bail!("data_offsets is not [start, end]"),
        };
        let expected = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
        ensure!(
            offsets.1 - offsets.0 == expected,
            "{} bytes stored for a {shape:?} {dtype:?} tensor",
            offsets.1 - offsets.0
        );
        Ok(StoredTensor {
            dtype,
            shape,
            offsets,
        })
    }
}

impl candle_nn::var_builder::SimpleBackend for SafetensorsReader {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let stored = self.stored(name)?;
        if stored.shape != shape.dims() {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: stored.shape.clone().into(),
            }
            .bt());
        }
        self.get_unchecked(name, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let stored = self.stored(name)?;
        self.read(name, stored)?.to_dtype(dtype)?.to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Reads one tensor, naming it and the file when it is missing or of the wrong shape.
pub fn tensor(
    vb: &VarBuilder,
    shape: impl Into<candle_core::Shape>,
    name: &str,
) -> Result<candle_core::Tensor> {
    let shape = shape.into();
    vb.get(shape.clone(), name).map_err(|err| {
        let full_name = if vb.prefix().is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", vb.prefix())
        };
        if vb.contains_tensor(name) {
            // candle appends a backtrace on later lines when RUST_BACKTRACE is set; keep the cause.
            let cause = err.to_string();
            let cause = cause.lines().next().unwrap_or_default();
            anyhow!(
                "tensor {full_name} does not have the shape {shape:?} that config.json implies ({cause}); \
                 the weights and config.json are from different models"
            )
        } else {
            anyhow!(
                "the checkpoint has no tensor {full_name}; is it a CLIP model in Hugging Face format?"
            )
        }
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
    }

    #[test]
    fn hub_config_with_legacy_dict_sections_parses() {
        // The shape of openai/clip-vit-base-patch16's config.json: both sections, text eos_token_id 2.
        let json = r#"{
            "model_type": "clip", "projection_dim": 512,
            "text_config": {"hidden_size": 512, "eos_token_id": 2, "vocab_size": 49408},
            "text_config_dict": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                                 "num_hidden_layers": 12},
            "vision_config": {"patch_size": 32},
            "vision_config_dict": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                                   "num_hidden_layers": 12, "patch_size": 16}
        }"#;
        let config = ClipConfig::from_json(json).unwrap();
        assert_eq!(config.vision.patch_size, 16);
        assert_eq!(config.vision.base_grid(), 14);
        assert_eq!(config.vision.tower.head_dim(), 64);
        assert_eq!(config.text.tower.num_heads, 8);
        assert_eq!(config.text.vocab_size, 49408);
        assert_eq!(config.text.max_position_embeddings, 77);
        assert_eq!(config.projection_dim, 512);
        assert_eq!(config.vision.tower.activation, Activation::QuickGelu);
    }

    #[test]
    fn vit_l14_sizes_come_from_the_config() {
        let json = r#"{"model_type": "clip", "projection_dim": 768,
            "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                              "num_hidden_layers": 24, "patch_size": 14, "image_size": 224}}"#;
        let config = ClipConfig::from_json(json).unwrap();
        assert_eq!(config.vision.base_grid(), 16);
        assert_eq!(config.vision.tower.num_layers, 24);
        assert_eq!(config.vision.tower.head_dim(), 64);
        assert_eq!(config.projection_dim, 768);
    }

    #[test]
    fn non_clip_configs_are_refused_with_the_reason() {
        let err =
            ClipConfig::from_json(r#"{"model_type": "bert", "hidden_size": 768}"#).unwrap_err();
        assert!(format!("{err:#}").contains("not \"clip\""));
        let err = ClipConfig::from_json(r#"{"text_config": {}}"#).unwrap_err();
        assert!(format!("{err:#}").contains("no vision_config"));
        let err = ClipConfig::from_json(
            r#"{"text_config": {}, "vision_config": {"hidden_act": "relu"}}"#,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("relu"));
    }
}
