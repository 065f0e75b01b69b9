//! CLIP's vision tower with SCLIP's Correlative Self-Attention in its last block, giving one
//! L2-normalised, projected feature per patch.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::interp::resize_position_grid;
use crate::load::{tensor, Activation, TowerConfig, VisionConfig};
use crate::text::l2_normalize;

mod cpu_kernels;

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

    /// The attention of `ln1(xs)`, heads merged: batch x tokens x hidden.
    fn attend(&self, xs: &Tensor, kind: Attention) -> Result<Tensor> {
        let qkv = self.qkv.forward(&self.layer_norm1.forward(xs)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        if cpu_kernels::applies(&qkv) {
            return Ok(cpu_kernels::attention(
                &qkv,
                self.num_heads,
                scale as f32,
                kind,
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
        let softmax_of = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
            Ok(candle_nn::ops::softmax_last_dim(
                &(a.matmul(&b.t()?)? * scale)?,
            )?)
        };
        let weights = match kind {
            Attention::Standard => softmax_of(&q, &k)?,
            Attention::Correlative => (softmax_of(&q, &q)? + softmax_of(&k, &k)?)?,
        };
        Ok(weights
            .matmul(&v)?
            .reshape((batch, self.num_heads, tokens, self.head_dim))?
            .transpose(1, 2)?
            .reshape((batch, tokens, self.num_heads * self.head_dim))?)
    }

    /// The pre-LN block with the given attention; residuals and MLP as in CLIP.
    fn forward(&self, xs: &Tensor, kind: Attention) -> Result<Tensor> {
        let xs = (xs + self.out_proj.forward(&self.attend(xs, kind)?)?)?;
        Ok((&xs + self.mlp.forward(&self.layer_norm2.forward(&xs)?)?)?)
    }
}

/// Which attention map a block uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attention {
    /// CLIP's own: softmax(q k^T / sqrt(d)) v.
    Standard,
    /// SCLIP's Correlative Self-Attention, in the last block:
    /// (softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d))) v, the two softmaxes summed without
    /// renormalising.
    Correlative,
}

/// The vision tower of a CLIP checkpoint, run SCLIP's way.
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

    /// `pixels`: batch x 3 x h x w normalised windows, all of one size. Returns
    /// batch x (gh*gw) x projection_dim unit-length patch features, gh = h / patch, gw = w / patch
    /// (rows and columns past the last whole patch are not seen, as with a strided conv).
    pub fn patch_features(&self, pixels: &Tensor) -> Result<Tensor> {
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
        let (last, standard) = self.layers.split_last().expect("config has >= 1 layer");
        for layer in standard {
            xs = layer.forward(&xs, Attention::Standard)?;
        }
        let xs = last.forward(&xs, Attention::Correlative)?;
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
    use std::path::Path;

    use super::*;
    use crate::load::{open_weights, resolve_model, ClipConfig};

    fn fixture_tower(dtype: DType) -> VisionTower {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model");
        let files = resolve_model(dir.to_str().unwrap(), "main").unwrap();
        let config = ClipConfig::from_file(&files.config).unwrap();
        let weights = open_weights(&files.weights, dtype, &Device::Cpu).unwrap();
        VisionTower::load(&weights, &config.vision, config.projection_dim).unwrap()
    }

    /// f16 runs candle's own ops (the path CUDA takes), f32 the CPU kernels: the two must
    /// compute the same features, for the trained window size and another one, up to f16's
    /// rounding (a head or token mixed up would move features by tenths).
    #[test]
    fn cpu_kernels_agree_with_candles_ops() {
        let (fast, generic) = (fixture_tower(DType::F32), fixture_tower(DType::F16));
        for (height, width) in [(224, 224), (160, 96)] {
            let count = 3 * 3 * height * width;
            let pixels = Tensor::arange(0u32, count as u32, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| (t * 0.37)?.sin())
                .and_then(|t| t.reshape((3, 3, height, width)))
                .unwrap();
            let fast = fast.patch_features(&pixels).unwrap();
            let generic = generic
                .patch_features(&pixels)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            assert_eq!(fast.dims(), generic.dims());
            let worst = (fast - generic)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(worst < 1e-2, "{height}x{width}: max |diff| {worst:e}");
        }
    }
}
