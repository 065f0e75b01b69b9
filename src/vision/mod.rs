//! CLIP's vision tower with a training-free last block ([`LastBlock`]: SCLIP's Correlative
//! Self-Attention unless told otherwise), giving one L2-normalised, projected feature per patch.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::interp::resize_position_grid;
use crate::model::config::VisionConfig;
use crate::model::weights::tensor;
use crate::text::l2_normalize;
pub use crate::transformer::Products;
use crate::transformer::{layer_norm, EncoderLayer};

pub mod last_block;

pub use crate::transformer::{Gram, LogitBias, Mixing};
pub use last_block::LastBlock;

/// The vision tower of a CLIP checkpoint, its last block replaceable.
pub struct VisionTower {
    patch_embedding: Tensor,
    class_embedding: Tensor,
    /// grid x grid x hidden on the host, resized per window shape and cached.
    base_position_grid: Vec<f32>,
    class_position: Tensor,
    resized_positions: Mutex<HashMap<(usize, usize), Tensor>>,
    pre_layernorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    projection: Tensor,
    config: VisionConfig,
    dtype: DType,
    device: Device,
}

impl VisionTower {
    /// Loads `vision_model.*` and `visual_projection.weight` from a checkpoint, the encoder's
    /// linear layers multiplying as `products` says.
    pub fn load(
        root: &VarBuilder,
        config: &VisionConfig,
        projection_dim: usize,
        products: Products,
    ) -> Result<Self> {
        let vb = root.pp("vision_model");
        let hidden = config.tower.hidden_size;
        let patch = config.patch_size;
        let grid = config.base_grid();
        let embeddings = vb.pp("embeddings");
        let patch_embedding = tensor(
            &embeddings,
            (hidden, config.num_channels, patch, patch),
            "patch_embedding.weight",
        )?
        .reshape((hidden, config.num_channels * patch * patch))?;
        let class_embedding = tensor(&embeddings, hidden, "class_embedding")?;
        let positions = tensor(
            &embeddings,
            (grid * grid + 1, hidden),
            "position_embedding.weight",
        )?;
        let base_position_grid = positions
            .narrow(0, 1, grid * grid)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let layers_vb = vb.pp("encoder").pp("layers");
        let layers = (0..config.tower.num_layers)
            .map(|i| {
                // The first block reads the patch and position embeddings themselves, where
                // bf16 rounding costs most: kept in the weights' dtype, it cuts the largest
                // score error on the fixtures about five-fold for 1/12 of the products.
                let products = if i == 0 { Products::Native } else { products };
                EncoderLayer::load(&layers_vb.pp(i), &config.tower, products)
            })
            .collect::<Result<Vec<_>>>()?;
        let eps = config.tower.layer_norm_eps;
        Ok(VisionTower {
            patch_embedding,
            class_embedding,
            base_position_grid,
            class_position: positions.narrow(0, 0, 1)?,
            resized_positions: Mutex::new(HashMap::new()),
            // "pre_layrnorm" is how Hugging Face spells it in every CLIP checkpoint.
            pre_layernorm: layer_norm(&vb, hidden, eps, "pre_layrnorm")?,
            layers,
            post_layernorm: layer_norm(&vb, hidden, eps, "post_layernorm")?,
            projection: tensor(root, (projection_dim, hidden), "visual_projection.weight")?,
            config: config.clone(),
            dtype: root.dtype(),
            device: root.device().clone(),
        })
    }

    pub fn patch_size(&self) -> usize {
        self.config.patch_size
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Position embeddings (class first) for a gh x gw patch grid: the trained grid resized
    /// bicubically when the window is not the trained size.
    fn position_embeddings(&self, grid_h: usize, grid_w: usize) -> Result<Tensor> {
        let mut cache = self
            .resized_positions
            .lock()
            .expect("position cache poisoned");
        if let Some(positions) = cache.get(&(grid_h, grid_w)) {
            return Ok(positions.clone());
        }
        let grid = self.config.base_grid();
        let hidden = self.config.tower.hidden_size;
        let patches = if (grid_h, grid_w) == (grid, grid) {
            self.base_position_grid.clone()
        } else {
            resize_position_grid(&self.base_position_grid, grid, grid, hidden, grid_h, grid_w)
        };
        let patches = Tensor::from_vec(patches, (grid_h * grid_w, hidden), &self.device)?
            .to_dtype(self.dtype)?;
        let positions = Tensor::cat(&[&self.class_position, &patches], 0)?.unsqueeze(0)?;
        cache.insert((grid_h, grid_w), positions.clone());
        Ok(positions)
    }

    /// `pixels`: batch x 3 x h x w normalised windows, all of one size, the last block computed as
    /// `last_block` says (the others are CLIP's). Returns
    /// batch x (gh*gw) x projection_dim unit-length patch features, gh = h / patch, gw = w / patch
    /// (rows and columns past the last whole patch are not seen, as with a strided conv).
    pub fn patch_features(&self, pixels: &Tensor, last_block: &LastBlock) -> Result<Tensor> {
        let (batch, channels, height, width) = pixels.dims4()?;
        let patch = self.config.patch_size;
        let (grid_h, grid_w) = (height / patch, width / patch);
        anyhow::ensure!(
            grid_h > 0 && grid_w > 0,
            "a {width}x{height} window is smaller than one {patch}x{patch} patch"
        );
        // A stride-p p x p convolution is a matmul over non-overlapping p x p tiles.
        let tiles = pixels
            .to_dtype(self.dtype)?
            .narrow(2, 0, grid_h * patch)?
            .narrow(3, 0, grid_w * patch)?
            .reshape((batch, channels, grid_h, patch, grid_w, patch))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((batch * grid_h * grid_w, channels * patch * patch))?;
        let hidden = self.config.tower.hidden_size;
        let patch_tokens =
            tiles
                .matmul(&self.patch_embedding.t()?)?
                .reshape((batch, grid_h * grid_w, hidden))?;
        let class_token = self
            .class_embedding
            .reshape((1, 1, hidden))?
            .repeat((batch, 1, 1))?;
        let xs = Tensor::cat(&[&class_token, &patch_tokens], 1)?
            .broadcast_add(&self.position_embeddings(grid_h, grid_w)?)?;
        let mut xs = self.pre_layernorm.forward(&xs)?;
        let (last, clip_layers) = self.layers.split_last().expect("config has >= 1 layer");
        for layer in clip_layers {
            xs = layer.forward(&xs, LastBlock::CLIP.mixing, true, None)?;
        }
        let bias = match last_block.mixing {
            Mixing::Softmax {
                bias: Some(bias), ..
            } => Some(bias.matrix(grid_h, grid_w)),
            _ => None,
        };
        let xs = last.forward(
            &xs,
            last_block.mixing,
            last_block.residual_and_mlp,
            bias.as_deref(),
        )?;
        let xs = self.post_layernorm.forward(&xs)?;
        let patches = grid_h * grid_w;
        let projected = xs
            .narrow(1, 1, patches)?
            .contiguous()?
            .reshape((batch * patches, hidden))?
            .matmul(&self.projection.t()?)?
            .reshape((batch, patches, ()))?;
        l2_normalize(&projected).context("cannot normalise patch features")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{fixture_model, max_abs_difference};

    /// f16 runs candle's own ops (the path CUDA takes), f32 the CPU kernels: the two must
    /// compute the same features, for the trained window size and another one, up to f16's
    /// rounding (a head or token mixed up would move features by tenths), for every kind of
    /// last block.
    #[test]
    fn cpu_kernels_agree_with_candles_ops() {
        let (fast, generic) = (fixture_model(DType::F32), fixture_model(DType::F16));
        let neighbourly = LastBlock {
            mixing: Mixing::Softmax {
                maps: &[Gram::KeyKey],
                bias: Some(LogitBias::Gaussian { std: 2.0 }),
            },
            residual_and_mlp: false,
        };
        let identity = LastBlock {
            mixing: Mixing::Identity,
            residual_and_mlp: true,
        };
        for block in [LastBlock::SCLIP, LastBlock::CLIP, neighbourly, identity] {
            for (height, width) in [(224, 224), (160, 96)] {
                let count = 3 * 3 * height * width;
                let pixels = Tensor::arange(0u32, count as u32, &Device::Cpu)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .and_then(|t| (t * 0.37)?.sin())
                    .and_then(|t| t.reshape((3, 3, height, width)))
                    .unwrap();
                let fast = fast.vision().patch_features(&pixels, &block).unwrap();
                let generic = generic.vision().patch_features(&pixels, &block).unwrap();
                assert_eq!(fast.dims(), generic.dims());
                let worst = max_abs_difference(&fast, &generic);
                assert!(
                    worst < 1e-2,
                    "{block:?} {height}x{width}: max |diff| {worst:e}"
                );
            }
        }
    }

    /// The last block must matter: features with CLIP's block differ from SCLIP's.
    #[test]
    fn the_last_block_changes_the_features() {
        let model = fixture_model(DType::F32);
        let pixels = Tensor::ones((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
        let features = |block: &LastBlock| model.vision().patch_features(&pixels, block).unwrap();
        let moved = max_abs_difference(&features(&LastBlock::SCLIP), &features(&LastBlock::CLIP));
        assert!(moved > 1e-3, "{moved}");
    }
}
