//! CLIP's text transformer on the CPU kernels, in f32, computing only what the end-of-text
//! features depend on:
//!
//! - prompts are packed row after row (no padding) and attend causally within themselves;
//! - prompts that start with the same tokens (a template's words before the class name) share
//!   them: that prefix runs once per group, and its keys and values are what every member's own
//!   tokens attend to first, which the causal mask makes exact;
//! - the last layer needs keys and values of every token but the rest (attention output, MLP,
//!   final LayerNorm, projection) only at the end-of-text token.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::model::config::TextConfig;
use crate::model::weights::tensor;
use crate::transformer::cpu_kernels::{
    causal_attention, with_f32_values, CausalSequence, QueryRows,
};
use crate::transformer::{layer_norm, EncoderLayer, Products};

/// Rows (tokens) per pass over the members: enough for efficient GEMMs, few enough that the
/// MLP's activations stay in the tens of megabytes.
const ROWS_PER_PASS: usize = 4096;

/// Prompts whose first tokens are the same.
pub struct PromptGroup {
    /// The tokens every member starts with (possibly none).
    pub shared: Vec<u32>,
    pub members: Vec<Member>,
}

/// One prompt of a group: its tokens after the shared ones, and where its end token is.
pub struct Member {
    /// At least one token: the end token is never shared.
    pub tokens: Vec<u32>,
    /// Index of the end-of-text token within `tokens`.
    pub end: usize,
}

pub struct TextTower {
    /// vocab x hidden.
    token_embedding: Tensor,
    /// context x hidden.
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    /// hidden x projection_dim.
    projection_t: Tensor,
    hidden: usize,
    vocab: usize,
    context: usize,
}

impl TextTower {
    /// Loads `text_model.*` and `text_projection.weight`; `root` must read f32 on the CPU.
    pub fn load(root: &VarBuilder, config: &TextConfig, projection_dim: usize) -> Result<Self> {
        ensure!(
            root.device().is_cpu() && root.dtype() == DType::F32,
            "the text tower runs on the CPU in f32"
        );
        let tower = &config.tower;
        let hidden = tower.hidden_size;
        let vb = root.pp("text_model");
        let embeddings = vb.pp("embeddings");
        let table = |name: &str, rows: usize| tensor(&embeddings, (rows, hidden), name);
        let layers_vb = vb.pp("encoder").pp("layers");
        let layers = (0..tower.num_layers)
            .map(|i| EncoderLayer::load(&layers_vb.pp(i), tower, Products::Native))
            .collect::<Result<Vec<_>>>()?;
        let projection = tensor(root, (projection_dim, hidden), "text_projection.weight")?;
        Ok(TextTower {
            token_embedding: table("token_embedding.weight", config.vocab_size)?,
            position_embedding: table("position_embedding.weight", config.max_position_embeddings)?,
            layers,
            final_layer_norm: layer_norm(&vb, hidden, tower.layer_norm_eps, "final_layer_norm")?,
            projection_t: projection.t()?.contiguous()?,
            hidden,
            vocab: config.vocab_size,
            context: config.max_position_embeddings,
        })
    }

    /// The projected end-of-text features of every member of every group (not normalised),
    /// members x projection_dim, groups' members one after another.
    pub fn encode(&self, groups: &[PromptGroup]) -> Result<Tensor> {
        for group in groups {
            for member in &group.members {
                ensure!(
                    member.end < member.tokens.len(),
                    "a prompt's end token lies outside it"
                );
                ensure!(
                    group.shared.len() + member.tokens.len() <= self.context,
                    "a prompt of {} tokens is longer than the context of {}",
                    group.shared.len() + member.tokens.len(),
                    self.context
                );
            }
        }
        let prefixes = self.prefix_keys_and_values(groups)?;
        let members: Vec<(usize, &Member)> = groups
            .iter()
            .enumerate()
            .flat_map(|(group, g)| g.members.iter().map(move |member| (group, member)))
            .collect();
        let mut features = Vec::new();
        let mut pass_start = 0;
        while pass_start < members.len() {
            let mut rows = 0;
            let mut pass_end = pass_start;
            while pass_end < members.len()
                && (pass_end == pass_start
                    || rows + members[pass_end].1.tokens.len() <= ROWS_PER_PASS)
            {
                rows += members[pass_end].1.tokens.len();
                pass_end += 1;
            }
            features.push(self.encode_members(
                &members[pass_start..pass_end],
                groups,
                &prefixes,
            )?);
            pass_start = pass_end;
        }
        Ok(Tensor::cat(&features, 0)?)
    }

    /// Runs every group's shared tokens once: their q|k|v rows at every layer (rows packed
    /// group after group), and where each group's rows start.
    fn prefix_keys_and_values(&self, groups: &[PromptGroup]) -> Result<Prefixes> {
        let mut sequences = Vec::new();
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        for group in groups {
            sequences.push(CausalSequence {
                start: tokens.len(),
                len: group.shared.len(),
                prefix_start: 0,
                prefix_len: 0,
            });
            tokens.extend_from_slice(&group.shared);
            positions.extend(0..group.shared.len());
        }
        let mut qkv_per_layer = Vec::with_capacity(self.layers.len());
        if tokens.is_empty() {
            qkv_per_layer.resize(self.layers.len(), Vec::new());
            return Ok(Prefixes {
                starts: sequences.iter().map(|s| s.start).collect(),
                qkv_per_layer,
            });
        }
        let non_empty: Vec<CausalSequence> =
            sequences.iter().copied().filter(|s| s.len > 0).collect();
        let mut xs = self.embed(&tokens, &positions)?;
        let (last, earlier) = self.layers.split_last().context("no text layers")?;
        for layer in earlier {
            let qkv = layer.qkv.forward(&layer.layer_norm1.forward(&xs)?)?;
            let attended = self.attend(layer, &qkv, &[], &non_empty, QueryRows::All)?;
            qkv_per_layer.push(qkv.flatten_all()?.to_vec1::<f32>()?);
            xs = residual_and_mlp(layer, &xs, &attended)?;
        }
        // The last layer's keys and values are all its shared rows are needed for.
        let qkv = last.qkv.forward(&last.layer_norm1.forward(&xs)?)?;
        qkv_per_layer.push(qkv.flatten_all()?.to_vec1::<f32>()?);
        Ok(Prefixes {
            starts: sequences.iter().map(|s| s.start).collect(),
            qkv_per_layer,
        })
    }

    /// One pass over some members' own tokens: their end-of-text features, projected.
    fn encode_members(
        &self,
        members: &[(usize, &Member)],
        groups: &[PromptGroup],
        prefixes: &Prefixes,
    ) -> Result<Tensor> {
        let mut sequences = Vec::with_capacity(members.len());
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut ends = Vec::with_capacity(members.len());
        for &(group, member) in members {
            let shared = groups[group].shared.len();
            sequences.push(CausalSequence {
                start: tokens.len(),
                len: member.tokens.len(),
                prefix_start: prefixes.starts[group],
                prefix_len: shared,
            });
            ends.push(member.end);
            tokens.extend_from_slice(&member.tokens);
            positions.extend(shared..shared + member.tokens.len());
        }
        let mut xs = self.embed(&tokens, &positions)?;
        let (last, earlier) = self.layers.split_last().context("no text layers")?;
        for (layer, prefix) in earlier.iter().zip(&prefixes.qkv_per_layer) {
            let qkv = layer.qkv.forward(&layer.layer_norm1.forward(&xs)?)?;
            let attended = self.attend(layer, &qkv, prefix, &sequences, QueryRows::All)?;
            xs = residual_and_mlp(layer, &xs, &attended)?;
        }
        let qkv = last.qkv.forward(&last.layer_norm1.forward(&xs)?)?;
        let prefix = prefixes.qkv_per_layer.last().context("no text layers")?;
        let attended = self.attend(last, &qkv, prefix, &sequences, QueryRows::One(&ends))?;
        let end_rows: Vec<u32> = sequences
            .iter()
            .zip(&ends)
            .map(|(sequence, &end)| (sequence.start + end) as u32)
            .collect();
        let end_rows = Tensor::from_vec(end_rows, members.len(), &Device::Cpu)?;
        let xs = residual_and_mlp(last, &xs.index_select(&end_rows, 0)?, &attended)?;
        let xs = self.final_layer_norm.forward(&xs)?;
        Ok(xs.matmul(&self.projection_t)?)
    }

    fn attend(
        &self,
        layer: &EncoderLayer,
        qkv: &Tensor,
        prefix: &[f32],
        sequences: &[CausalSequence],
        queries: QueryRows,
    ) -> Result<Tensor> {
        let scale = 1.0 / (layer.head_dim as f32).sqrt();
        Ok(causal_attention(
            qkv,
            prefix,
            layer.num_heads,
            scale,
            sequences,
            queries,
        )?)
    }

    /// Token plus position embeddings, rows x hidden.
    fn embed(&self, tokens: &[u32], positions: &[usize]) -> Result<Tensor> {
        let hidden = self.hidden;
        if let Some(&token) = tokens.iter().find(|&&token| token as usize >= self.vocab) {
            bail!(
                "token id {token} is outside the vocabulary of {}",
                self.vocab
            );
        }
        let mut rows = Vec::with_capacity(tokens.len() * hidden);
        with_f32_values(&self.token_embedding, |token_table| {
            with_f32_values(&self.position_embedding, |position_table| {
                for (&token, &position) in tokens.iter().zip(positions) {
                    let embedding = &token_table[token as usize * hidden..][..hidden];
                    let place = &position_table[position * hidden..][..hidden];
                    rows.extend(embedding.iter().zip(place).map(|(t, p)| t + p));
                }
            })
        })??;
        Ok(Tensor::from_vec(
            rows,
            (tokens.len(), hidden),
            &Device::Cpu,
        )?)
    }
}

/// The shared tokens' q|k|v rows at each layer, and where each group's rows start.
struct Prefixes {
    starts: Vec<usize>,
    qkv_per_layer: Vec<Vec<f32>>,
}

/// `x + out(attended)`, then `x + mlp(ln2(x))`.
fn residual_and_mlp(layer: &EncoderLayer, xs: &Tensor, attended: &Tensor) -> Result<Tensor> {
    let xs = (xs + layer.out_proj.forward(attended)?)?;
    Ok((&xs + layer.mlp.forward(&layer.layer_norm2.forward(&xs)?)?)?)
}
