//! A CLIP checkpoint loaded once: [`files`] finds it (a folder or the hub's cache), [`config`]
//! reads its sizes, [`weights`] its tensors, and [`Model`] holds the vision tower ready to run
//! with the weights still open for the text tower, which only a text query cache miss needs.

pub mod config;
pub mod device;
pub mod files;
mod hub;
pub mod weights;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

pub use config::ClipConfig;
pub use device::{parse_device, DeviceError};
pub use files::{
    looks_like_path, resolve_model, resolve_model_with, HubSnapshot, ModelFiles, NotCached,
    WeightsFile, DEFAULT_MODEL,
};
pub use hub::HubOptions;

use crate::text::TextEncoder;
use crate::transformer::amx;
use crate::transformer::cpu_kernels::vector_extension;
use crate::vision::{Products, VisionTower};

/// A checkpoint's config, its vision tower (loaded in `dtype` on `device`) and its open weights.
pub struct Model {
    files: ModelFiles,
    config: ClipConfig,
    /// Read from lazily: the text tower is loaded from here only when queries must be encoded.
    weights: VarBuilder<'static>,
    vision: VisionTower,
    /// The dtype asked for, and how the vision tower's linear layers multiply.
    requested: DType,
    products: Products,
}

impl Model {
    /// Reads `config.json`, opens the weights and loads the vision tower.
    ///
    /// bf16 on the CPU keeps f32 weights and activations and multiplies the linear layers in
    /// bf16 with f32 sums on AMX, as PyTorch's CPU autocast does; without AMX it computes in
    /// f32 ([`Model::compute_note`] says which). On a GPU, bf16 and f16 are the weights' dtype.
    pub fn load(files: ModelFiles, device: &Device, dtype: DType) -> Result<Self> {
        let config = ClipConfig::from_file(&files.config)?;
        let (weights_dtype, products) = match (device.is_cpu(), dtype) {
            (true, DType::BF16) if amx::available() => (DType::F32, Products::Bf16Amx),
            (true, DType::BF16) => (DType::F32, Products::Native),
            _ => (dtype, Products::Native),
        };
        let weights = weights::open_weights(&files.weights, weights_dtype, device)?;
        let vision = VisionTower::load(&weights, &config.vision, config.projection_dim, products)
            .with_context(|| {
            format!(
                "cannot load the vision tower from {}",
                files.weights.path().display()
            )
        })?;
        Ok(Model {
            files,
            config,
            weights,
            vision,
            requested: dtype,
            products,
        })
    }

    /// How a bf16 model on the CPU computes, once said (`-v`); `None` otherwise.
    pub fn compute_note(&self) -> Option<&'static str> {
        match (self.device().is_cpu(), self.requested, self.products) {
            (true, DType::BF16, Products::Bf16Amx) => {
                Some("bf16: linear layers multiply on AMX in bf16 with f32 sums, the rest in f32")
            }
            (true, DType::BF16, Products::Native) => {
                Some("bf16: this CPU has no AMX, so the model computes in f32")
            }
            _ => None,
        }
    }

    /// Which kernels run the vision tower, in words (`-v`).
    pub fn kernels(&self) -> String {
        if !self.device().is_cpu() {
            return "candle's GPU kernels".to_string();
        }
        let vector = vector_extension();
        match (self.dtype(), self.products) {
            (DType::F32, Products::Bf16Amx) => format!(
                "AMX-BF16 tiles for the linear layers, sclip's f32 CPU kernels ({vector}) for the rest"
            ),
            (DType::F32, Products::Native) => {
                format!("sclip's f32 CPU kernels ({vector}) with gemm's matrix products")
            }
            (dtype, _) => format!("candle's generic CPU ops in {dtype:?} (sclip's kernels are f32)"),
        }
    }

    /// Resolves `model` (a folder, or a hub repo id at `revision`) and loads it.
    pub fn open(model: &str, revision: &str, device: &Device, dtype: DType) -> Result<Self> {
        Model::open_with(model, revision, device, dtype, HubOptions::default())
    }

    /// [`Model::open`], with the hub client reporting on stderr as `hub` asks.
    pub fn open_with(
        model: &str,
        revision: &str,
        device: &Device,
        dtype: DType,
        hub: HubOptions,
    ) -> Result<Self> {
        let files = resolve_model_with(model, revision, hub)?;
        Model::load(files, device, dtype)
    }

    /// Loads the text tower and the tokenizer; dropping the encoder frees them. The text tower
    /// runs on the CPU in f32 whatever the vision tower's device and dtype: it runs once per
    /// class list, and its queries are then cached.
    pub fn text_encoder(&self) -> Result<TextEncoder> {
        let cpu_f32;
        let weights = if self.device().is_cpu() && self.dtype() == DType::F32 {
            &self.weights
        } else {
            cpu_f32 = weights::open_weights(&self.files.weights, DType::F32, &Device::Cpu)?;
            &cpu_f32
        };
        TextEncoder::load(
            weights,
            &self.config.text,
            self.config.projection_dim,
            &self.files.tokenizer,
        )
        .with_context(|| {
            format!(
                "cannot load the text tower from {}",
                self.files.weights.path().display()
            )
        })
    }

    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    pub fn vision(&self) -> &VisionTower {
        &self.vision
    }

    pub fn device(&self) -> &Device {
        self.weights.device()
    }

    pub fn dtype(&self) -> DType {
        self.weights.dtype()
    }
}
