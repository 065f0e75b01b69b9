//! A checkpoint's `config.json`: the sizes of both towers, so that any CLIP ViT (and the tiny
//! test models) load through the same code.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use super::files::DEFAULT_MODEL;

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
    if config.hidden_size == 0 || config.intermediate_size == 0 {
        bail!("{tower}_config.hidden_size and intermediate_size must be positive");
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

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
