//! The pre-LN transformer block both CLIP towers are made of, its layers, and how attention
//! mixes tokens ([`Mixing`]). On the CPU in f32 the block runs on [`cpu_kernels`]; elsewhere on
//! candle's ops.

use anyhow::{Context, Result};
use candle_core::{Module, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};

use crate::model::config::{Activation, TowerConfig};
use crate::model::weights::tensor;

pub mod amx;
pub(crate) mod cpu_kernels;

/// What the CPU kernels run with on this machine, as detected at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuKernels {
    /// The vector instructions of the f32 loops: "AVX-512", "AVX2", or "neither AVX-512 nor
    /// AVX2".
    pub vector: &'static str,
    /// Whether bf16 products run on AMX tiles (a bf16 model on the CPU).
    pub amx_bf16: bool,
}

/// The kernels' own detection, so that a report names what they really run.
pub fn cpu_kernels() -> CpuKernels {
    CpuKernels {
        vector: cpu_kernels::vector_extension(),
        amx_bf16: amx::available(),
    }
}

/// A product of two projections of `ln1(x)` whose row softmax is one attention map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gram {
    /// q k^T: CLIP's own attention.
    QueryKey,
    /// q q^T
    QueryQuery,
    /// k k^T
    KeyKey,
    /// y_h y_h^T, with y = ln1(x) before any projection (SCLIP's `identity` CSA ablation).
    InputInput,
}

/// A term added to a map's scaled logits before its softmax; it is not scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LogitBias {
    /// `exp(-((ri - rj)^2 + (ci - cj)^2) / (2 std^2))` between patch tokens at grid positions
    /// (r, c) of the window's own patch grid, and 0 in the class token's row and column
    /// (NACLIP's neighbourhood term).
    Gaussian { std: f32 },
}

impl LogitBias {
    /// The bias as a tokens x tokens matrix (row-major, class token first) for a
    /// `grid_h` x `grid_w` patch grid.
    pub fn matrix(&self, grid_h: usize, grid_w: usize) -> Vec<f32> {
        let tokens = 1 + grid_h * grid_w;
        let mut matrix = vec![0.0f32; tokens * tokens];
        match *self {
            LogitBias::Gaussian { std } => {
                let denominator = 2.0 * std * std;
                for i in 0..grid_h * grid_w {
                    let (ri, ci) = ((i / grid_w) as f32, (i % grid_w) as f32);
                    let row = &mut matrix[(1 + i) * tokens + 1..(2 + i) * tokens];
                    for (j, value) in row.iter_mut().enumerate() {
                        let (rj, cj) = ((j / grid_w) as f32, (j % grid_w) as f32);
                        let distance = (ri - rj).powi(2) + (ci - cj).powi(2);
                        *value = (-distance / denominator).exp();
                    }
                }
            }
        }
        matrix
    }
}

/// How a block's attention mixes the tokens' values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mixing {
    /// Each token takes only its own value: A = I.
    Identity,
    /// A = sum over `maps` of softmax(a b^T / sqrt(head dim) + bias), row-wise, the maps summed
    /// without renormalising.
    Softmax {
        maps: &'static [Gram],
        bias: Option<LogitBias>,
    },
}

impl Mixing {
    /// Whether a map multiplies the block's input rather than its projections.
    pub fn reads_the_input(&self) -> bool {
        match self {
            Mixing::Identity => false,
            Mixing::Softmax { maps, .. } => {
                let reads = maps.contains(&Gram::InputInput);
                debug_assert!(
                    !reads
                        || !maps
                            .iter()
                            .any(|gram| matches!(gram, Gram::QueryKey | Gram::QueryQuery)),
                    "a mixing reads the input or the queries, not both"
                );
                reads
            }
        }
    }
}

/// A linear layer run as one GEMM over every row of its input (all windows' or prompts' tokens
/// at once), with its weight stored transposed (in x out, row-major): the GEMM packs that layout
/// faster than the checkpoint's, 6-16% of a ViT-B/16 window. candle's `Linear` multiplies a 3-D
/// input window by window, repacking the weight for each small product.
pub(crate) struct Dense {
    weight: Weight,
    bias: Tensor,
}

/// How a tower's linear layers multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Products {
    /// In the weights' own dtype.
    Native,
    /// bf16 inputs with f32 sums on AMX, everything around them in f32 (CPU f32 weights only).
    Bf16Amx,
}

enum Weight {
    /// in x out.
    Transposed(Tensor),
    Packed(amx::PackedWeight),
}

impl Dense {
    /// `weight` is out x in, as checkpoints store it.
    fn new(weight: Tensor, bias: Tensor, products: Products) -> Result<Self> {
        let weight = if products == Products::Bf16Amx && cpu_kernels::applies(&weight) {
            let (outputs, inputs) = weight.dims2()?;
            Weight::Packed(cpu_kernels::with_f32_values(&weight, |values| {
                amx::PackedWeight::new(values, outputs, inputs)
            })?)
        } else if cpu_kernels::applies(&weight) {
            Weight::Transposed(cpu_kernels::transpose(&weight)?)
        } else {
            Weight::Transposed(weight.t()?.contiguous()?)
        };
        Ok(Dense { weight, bias })
    }

    fn load(
        vb: &VarBuilder,
        in_dim: usize,
        out_dim: usize,
        name: &str,
        products: Products,
    ) -> Result<Self> {
        let vb = vb.pp(name);
        Dense::new(
            tensor(&vb, (out_dim, in_dim), "weight")?,
            tensor(&vb, out_dim, "bias")?,
            products,
        )
    }

    /// `xs`: ... x in -> ... x out.
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, Epilogue::None)
    }

    /// QuickGELU(x W^T + b).
    fn forward_quick_gelu(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, Epilogue::QuickGelu)
    }

    fn forward_with(&self, xs: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let width = xs.dim(candle_core::D::Minus1)?;
        let mut out_shape = xs.dims().to_vec();
        let xs = xs.reshape(((), width))?;
        let out = match &self.weight {
            Weight::Packed(packed) => cpu_kernels::linear_bf16(&xs, packed, &self.bias, epilogue)?,
            Weight::Transposed(weight_t) if cpu_kernels::applies(&xs) => {
                cpu_kernels::linear(&xs, weight_t, &self.bias, epilogue)?
            }
            Weight::Transposed(weight_t) => {
                let out = xs.matmul(weight_t)?.broadcast_add(&self.bias)?;
                match epilogue {
                    Epilogue::None => out,
                    Epilogue::QuickGelu => (&out * candle_nn::ops::sigmoid(&(&out * 1.702)?)?)?,
                }
            }
        };
        *out_shape
            .last_mut()
            .context("a linear layer needs a matrix")? = out.dim(1)?;
        Ok(out.reshape(out_shape)?)
    }
}

/// What a linear layer applies to its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Epilogue {
    None,
    /// v * sigmoid(1.702 v), CLIP's activation.
    QuickGelu,
}

pub(crate) fn layer_norm(vb: &VarBuilder, dim: usize, eps: f64, name: &str) -> Result<LayerNorm> {
    let vb = vb.pp(name);
    Ok(LayerNorm::new(
        tensor(&vb, dim, "weight")?,
        tensor(&vb, dim, "bias")?,
        eps,
    ))
}

pub(crate) struct Mlp {
    fc1: Dense,
    fc2: Dense,
    activation: Activation,
}

impl Mlp {
    fn load(vb: &VarBuilder, config: &TowerConfig, products: Products) -> Result<Self> {
        Ok(Mlp {
            fc1: Dense::load(
                vb,
                config.hidden_size,
                config.intermediate_size,
                "fc1",
                products,
            )?,
            fc2: Dense::load(
                vb,
                config.intermediate_size,
                config.hidden_size,
                "fc2",
                products,
            )?,
            activation: config.activation,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = match self.activation {
            Activation::QuickGelu => self.fc1.forward_quick_gelu(xs)?,
            Activation::Gelu => self.fc1.forward(xs)?.gelu_erf()?,
        };
        self.fc2.forward(&hidden)
    }
}

/// One pre-LN transformer block. q, k and v share one matrix so that a block costs one GEMM
/// for all three projections.
pub(crate) struct EncoderLayer {
    pub(crate) layer_norm1: LayerNorm,
    /// q, k and v side by side: `ln1(x)` times this is rows x 3*hidden.
    pub(crate) qkv: Dense,
    pub(crate) out_proj: Dense,
    pub(crate) layer_norm2: LayerNorm,
    pub(crate) mlp: Mlp,
    pub(crate) num_heads: usize,
    pub(crate) head_dim: usize,
}

impl EncoderLayer {
    pub(crate) fn load(vb: &VarBuilder, config: &TowerConfig, products: Products) -> Result<Self> {
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
            products,
        )?;
        Ok(EncoderLayer {
            layer_norm1: layer_norm(vb, hidden, config.layer_norm_eps, "layer_norm1")?,
            qkv,
            out_proj: Dense::load(&attn, hidden, hidden, "out_proj", products)?,
            layer_norm2: layer_norm(vb, hidden, config.layer_norm_eps, "layer_norm2")?,
            mlp: Mlp::load(&vb.pp("mlp"), config, products)?,
            num_heads: config.num_heads,
            head_dim: config.head_dim(),
        })
    }

    /// The attention of `ln1(xs)` as `mixing` mixes it, heads merged: batch x tokens x hidden.
    /// `bias` is the mixing's logit bias as a tokens x tokens matrix, if it has one.
    fn attend(&self, xs: &Tensor, mixing: Mixing, bias: Option<&[f32]>) -> Result<Tensor> {
        let input = self.layer_norm1.forward(xs)?;
        let mut qkv = self.qkv.forward(&input)?;
        if mixing.reads_the_input() {
            // The input takes the queries' place, so every path below reads y_h where it reads
            // q_h; a mixing that reads the input reads no queries.
            let hidden = input.dim(D::Minus1)?;
            qkv = Tensor::cat(
                &[&input, &qkv.narrow(D::Minus1, hidden, 2 * hidden)?],
                D::Minus1,
            )?;
        }
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
                        Gram::QueryQuery | Gram::InputInput => (&q, &q),
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

    /// The pre-LN block with `mixing`: residuals and MLP as in CLIP, or the attention alone.
    pub fn forward(
        &self,
        xs: &Tensor,
        mixing: Mixing,
        residual_and_mlp: bool,
        bias: Option<&[f32]>,
    ) -> Result<Tensor> {
        let attended = self.out_proj.forward(&self.attend(xs, mixing, bias)?)?;
        if !residual_and_mlp {
            return Ok(attended);
        }
        let xs = (xs + attended)?;
        Ok((&xs + self.mlp.forward(&self.layer_norm2.forward(&xs)?)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_bias_follows_grid_distance_and_spares_the_class_token() {
        let (grid_h, grid_w) = (2, 3);
        let tokens = 1 + grid_h * grid_w;
        let matrix = LogitBias::Gaussian { std: 5.0 }.matrix(grid_h, grid_w);
        assert_eq!(matrix.len(), tokens * tokens);
        for t in 0..tokens {
            assert_eq!(matrix[t], 0.0, "class token row");
            assert_eq!(matrix[t * tokens], 0.0, "class token column");
        }
        let at = |i: usize, j: usize| matrix[(1 + i) * tokens + 1 + j];
        for i in 0..grid_h * grid_w {
            assert_eq!(at(i, i), 1.0);
        }
        // Patch 0 is at (0, 0), patch 5 at (1, 2): squared distance 5.
        let expected = (-5.0f32 / 50.0).exp();
        assert!((at(0, 5) - expected).abs() < 1e-7);
        assert_eq!(at(0, 5), at(5, 0));
        // (0, 1) and (1, 1): distance 1.
        assert!((at(1, 4) - (-1.0f32 / 50.0).exp()).abs() < 1e-7);
    }
}
