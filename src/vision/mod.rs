//! CLIP's vision tower with a training-free last block ([`LastBlock`]: SCLIP's Correlative
//! Self-Attention unless told otherwise), giving one L2-normalised, projected feature per patch.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::interp::resize_position_grid;
use crate::model::config::{Activation, TowerConfig, VisionConfig};
use crate::model::weights::tensor;
use crate::text::l2_normalize;

mod cpu_kernels;
pub mod last_block;

pub use last_block::{Gram, LastBlock, LogitBias, Mixing};

/// A linear layer run as one GEMM over the tokens of every window in the batch, with its weight
/// stored transposed (in x out, row-major). candle's `Linear` multiplies a 3-D input window by
/// window, repacking the weight for each small product.
struct Dense {
    weight_t: Tensor,
    bias: Tensor,
}

impl Dense {
    /// `weight` is out x in, as checkpoints store it.
    fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        Ok(Dense {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize, name: &str) -> Result<Self> {
        let vb = vb.pp(name);
        Dense::new(
            tensor(&vb, (out_dim, in_dim), "weight")?,
            tensor(&vb, out_dim, "bias")?,
        )
    }

    /// `xs`: batch x tokens x in -> batch x tokens x out.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, Epilogue::None)
    }

    /// QuickGELU(x W^T + b).
    fn forward_quick_gelu(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, Epilogue::QuickGelu)
    }

    fn forward_with(&self, xs: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let (batch, tokens, width) = xs.dims3()?;
        let xs = xs.reshape((batch * tokens, width))?;
        let out = if cpu_kernels::applies(&xs) {
            cpu_kernels::linear(&xs, &self.weight_t, &self.bias, epilogue)?
        } else {
            let out = xs.matmul(&self.weight_t)?.broadcast_add(&self.bias)?;
            match epilogue {
                Epilogue::None => out,
                Epilogue::QuickGelu => (&out * candle_nn::ops::sigmoid(&(&out * 1.702)?)?)?,
            }
        };
        Ok(out.reshape((batch, tokens, ()))?)
    }
}

/// What a linear layer applies to its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Epilogue {
    None,
    /// v * sigmoid(1.702 v), CLIP's activation.
    QuickGelu,
}

fn layer_norm(vb: &VarBuilder, dim: usize, eps: f64, name: &str) -> Result<LayerNorm> {
    let vb = vb.pp(name);
    Ok(LayerNorm::new(
        tensor(&vb, dim, "weight")?,
        tensor(&vb, dim, "bias")?,
        eps,
    ))
}

struct Mlp {
    fc1: Dense,
    fc2: Dense,
    activation: Activation,
}

impl Mlp {
    fn load(vb: &VarBuilder, config: &TowerConfig) -> Result<Self> {
        Ok(Mlp {
            fc1: Dense::load(vb, config.hidden_size, config.intermediate_size, "fc1")?,
            fc2: Dense::load(vb, config.intermediate_size, config.hidden_size, "fc2")?,
            activation: config.activation,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = match self.activation {
            Activation::QuickGelu => self.fc1.forward_quick_gelu(xs)?,
            Activation::Gelu => self.fc1.forward(xs)?.gelu_erf()?,
        };
        self.fc2.forward(&hidden)
    }
}

/// One pre-LN transformer block. q, k and v share one matrix so that a block costs one GEMM
/// for all three projections.
struct EncoderLayer {
    layer_norm1: LayerNorm,
    qkv: Dense,
    out_proj: Dense,
    layer_norm2: LayerNorm,
    mlp: Mlp,
    num_heads: usize,
    head_dim: usize,
}

impl EncoderLayer {
    fn load(vb: &VarBuilder, config: &TowerConfig) -> Result<Self> {
        let hidden = config.hidden_size;
        let attn = vb.pp("self_attn");
        let [q, k, v] = ["q_proj", "k_proj", "v_proj"].map(|name| attn.pp(name));
        let qkv = Dense::new(
            Tensor::cat(
                &[
                    tensor(&q, (hidden, hidden), "weight")?,
                    tensor(&k, (hidden, hidden), "weight")?,
                    tensor(&v, (hidden, hidden), "weight")?,
                ],
                0,
            )?,
            Tensor::cat(
                &[
                    tensor(&q, hidden, "bias")?,
                    tensor(&k, hidden, "bias")?,
                    tensor(&v, hidden, "bias")?,
                ],
                0,
            )?,
        )?;
        Ok(EncoderLayer {
            layer_norm1: layer_norm(vb, hidden, config.layer_norm_eps, "layer_norm1")?,
            qkv,
            out_proj: Dense::load(&attn, hidden, hidden, "out_proj")?,
            layer_norm2: layer_norm(vb, hidden, config.layer_norm_eps, "layer_norm2")?,
            mlp: Mlp::load(&vb.pp("mlp"), config)?,
            num_heads: config.num_heads,
            head_dim: config.head_dim(),
        })
    }

    /// The attention of `ln1(xs)` as `mixing` mixes it, heads merged: batch x tokens x hidden.
    /// `bias` is the mixing's logit bias as a tokens x tokens matrix, if it has one.
    fn attend(&self, xs: &Tensor, mixing: Mixing, bias: Option<&[f32]>) -> Result<Tensor> {
        let qkv = self.qkv.forward(&self.layer_norm1.forward(xs)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        if cpu_kernels::applies(&qkv) {
            return Ok(cpu_kernels::attention(
                &qkv,
                self.num_heads,
                scale as f32,
                mixing,
                bias,
            )?);
        }
        let (batch, tokens, _) = qkv.dims3()?;
        let qkv = qkv
            .reshape((batch, tokens, 3, self.num_heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let per_head = (batch * self.num_heads, tokens, self.head_dim);
        let [q, k, v] = [0, 1, 2].map(|part| qkv.get(part).and_then(|t| t.reshape(per_head)));
        let (q, k, v) = (q?, k?, v?);
        let mixed = match mixing {
            Mixing::Identity => v,
            Mixing::Softmax { maps, .. } => {
                let bias = bias
                    .map(|bias| {
                        Tensor::from_slice(bias, (1, tokens, tokens), qkv.device())?
                            .to_dtype(qkv.dtype())
                    })
                    .transpose()?;
                let mut sum: Option<Tensor> = None;
                for gram in maps {
                    let (a, b) = match gram {
                        Gram::QueryKey => (&q, &k),
                        Gram::QueryQuery => (&q, &q),
                        Gram::KeyKey => (&k, &k),
                    };
                    let mut logits = (a.matmul(&b.t()?)? * scale)?;
                    if let Some(bias) = &bias {
                        logits = logits.broadcast_add(bias)?;
                    }
                    let map = candle_nn::ops::softmax_last_dim(&logits)?;
                    sum = Some(match sum {
                        Some(sum) => (sum + map)?,
                        None => map,
                    });
                }
                sum.context("an attention needs at least one map")?
                    .matmul(&v)?
            }
        };
        Ok(mixed
            .reshape((batch, self.num_heads, tokens, self.head_dim))?
            .transpose(1, 2)?
            .reshape((batch, tokens, self.num_heads * self.head_dim))?)
    }

    /// The pre-LN block as `block` says: residuals and MLP as in CLIP, or the attention alone.
    fn forward(&self, xs: &Tensor, block: &LastBlock, bias: Option<&[f32]>) -> Result<Tensor> {
        let attended = self
            .out_proj
            .forward(&self.attend(xs, block.mixing, bias)?)?;
        if !block.residual_and_mlp {
            return Ok(attended);
        }
        let xs = (xs + attended)?;
        Ok((&xs + self.mlp.forward(&self.layer_norm2.forward(&xs)?)?)?)
    }
}

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
    /// Loads `vision_model.*` and `visual_projection.weight` from a checkpoint.
    pub fn load(root: &VarBuilder, config: &VisionConfig, projection_dim: usize) -> Result<Self> {
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
            .map(|i| EncoderLayer::load(&layers_vb.pp(i), &config.tower))
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
            xs = layer.forward(&xs, &LastBlock::CLIP, None)?;
        }
        let bias = match last_block.mixing {
            Mixing::Softmax {
                bias: Some(bias), ..
            } => Some(bias.matrix(grid_h, grid_w)),
            _ => None,
        };
        let xs = last.forward(&xs, last_block, bias.as_deref())?;
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
