//! Text queries: each class name is put into OpenAI's 80 ImageNet prompt templates, encoded by
//! CLIP's text tower, and the normalised embeddings are averaged into one unit vector.

pub mod cache;
pub mod queries;

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::{
    Activation as CandleActivation, ClipTextConfig, ClipTextTransformer,
};
use tokenizers::Tokenizer;

use crate::model::config::{Activation, TextConfig};
use crate::model::weights::tensor;

const TEMPLATES: &str = include_str!("../../assets/imagenet_templates.txt");
const START_TOKEN: &str = "<|startoftext|>";
const END_TOKEN: &str = "<|endoftext|>";
/// Prompts encoded per forward pass: large enough to keep the GEMMs efficient, small enough
/// that activations stay in the tens of megabytes.
const PROMPTS_PER_BATCH: usize = 320;

/// The 80 prompt templates of OpenAI's CLIP ImageNet zero-shot notebook, `{}` marking the name.
pub fn templates() -> Vec<&'static str> {
    TEMPLATES.lines().filter(|l| !l.is_empty()).collect()
}

/// How a batch of prompts is padded before the text tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// To the batch's longest prompt: what sclip does.
    Longest,
    /// To the full context (77 tokens), as the authors' code does; the same queries, several
    /// times the work. Kept to measure and test that equivalence.
    Context,
}

pub struct TextEncoder {
    transformer: ClipTextTransformer,
    projection: Tensor,
    tokenizer: Tokenizer,
    start_id: u32,
    end_id: u32,
    context_length: usize,
    device: Device,
}

impl TextEncoder {
    /// Loads `text_model.*` and `text_projection.weight`, and the BPE tokenizer.
    pub fn load(
        root: &VarBuilder,
        config: &TextConfig,
        projection_dim: usize,
        tokenizer_path: &Path,
    ) -> Result<Self> {
        if config.tower.activation != Activation::QuickGelu {
            bail!("text_config.hidden_act must be quick_gelu (as in OpenAI's CLIP) for the text tower");
        }
        if (config.tower.layer_norm_eps - 1e-5).abs() > 1e-12 {
            bail!(
                "text_config.layer_norm_eps is {}, but the text tower supports CLIP's 1e-5 only",
                config.tower.layer_norm_eps
            );
        }
        let candle_config = ClipTextConfig {
            vocab_size: config.vocab_size,
            embed_dim: config.tower.hidden_size,
            activation: CandleActivation::QuickGelu,
            intermediate_size: config.tower.intermediate_size,
            max_position_embeddings: config.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: config.tower.num_layers,
            num_attention_heads: config.tower.num_heads,
            projection_dim,
        };
        let transformer = ClipTextTransformer::new(root.pp("text_model"), &candle_config)
            .context("cannot load the text tower (text_model.*)")?;
        let projection = tensor(
            root,
            (projection_dim, config.tower.hidden_size),
            "text_projection.weight",
        )?;
        let tokenizer = Tokenizer::from_file(tokenizer_path)
            .map_err(|e| anyhow!("cannot read tokenizer {}: {e}", tokenizer_path.display()))?;
        let special = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                anyhow!(
                    "tokenizer {} has no {token} token; is it CLIP's tokenizer?",
                    tokenizer_path.display()
                )
            })
        };
        Ok(TextEncoder {
            start_id: special(START_TOKEN)?,
            end_id: special(END_TOKEN)?,
            transformer,
            projection,
            tokenizer,
            context_length: config.max_position_embeddings,
            device: root.device().clone(),
        })
    }

    /// Token ids of one prompt: start, BPE tokens, end; cut to the context length keeping the end token.
    fn token_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| anyhow!("cannot tokenise {prompt:?}: {e}"))?;
        let mut ids = Vec::with_capacity(encoding.len() + 2);
        ids.push(self.start_id);
        ids.extend_from_slice(encoding.get_ids());
        ids.truncate(self.context_length - 1);
        ids.push(self.end_id);
        Ok(ids)
    }

    /// Unit-length embeddings of `prompts`, prompts x projection_dim (f32).
    ///
    /// With [`Padding::Longest`] each batch is padded only to its longest prompt: the causal
    /// mask makes the end token's output independent of anything after it, so this equals
    /// padding to the full context.
    pub fn encode_prompts(&self, prompts: &[String], padding: Padding) -> Result<Tensor> {
        let ids = prompts
            .iter()
            .map(|p| self.token_ids(p))
            .collect::<Result<Vec<_>>>()?;
        // Batches of prompts of similar length pad little: encode them shortest first, then put
        // the embeddings back in the prompts' order.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        if padding == Padding::Longest {
            order.sort_by_key(|&prompt| ids[prompt].len());
        }
        let mut embeddings = Vec::new();
        for batch in order.chunks(PROMPTS_PER_BATCH) {
            let longest = match padding {
                Padding::Longest => batch.iter().map(|&p| ids[p].len()).max().unwrap_or(1),
                Padding::Context => self.context_length,
            };
            let mut padded = vec![0u32; batch.len() * longest];
            let mut end_rows = Vec::with_capacity(batch.len());
            for (row, &prompt) in batch.iter().enumerate() {
                let prompt_ids = &ids[prompt];
                padded[row * longest..row * longest + prompt_ids.len()].copy_from_slice(prompt_ids);
                end_rows.push((row * longest + prompt_ids.len() - 1) as u32);
            }
            let input = Tensor::from_vec(padded, (batch.len(), longest), &self.device)?;
            let hidden = self.transformer.forward_with_mask(&input, usize::MAX)?;
            let hidden_size = hidden.dim(D::Minus1)?;
            let end_rows = Tensor::from_vec(end_rows, batch.len(), &self.device)?;
            let at_end = hidden
                .reshape((batch.len() * longest, hidden_size))?
                .index_select(&end_rows, 0)?;
            let projected = at_end.matmul(&self.projection.t()?)?.to_dtype(DType::F32)?;
            embeddings.push(l2_normalize(&projected)?);
        }
        let mut position_of = vec![0u32; order.len()];
        for (position, &prompt) in order.iter().enumerate() {
            position_of[prompt] = position as u32;
        }
        let position_of = Tensor::from_vec(position_of, order.len(), &self.device)?;
        Ok(Tensor::cat(&embeddings, 0)?.index_select(&position_of, 0)?)
    }

    /// One query per name: the normalised mean of its normalised prompt embeddings,
    /// names x projection_dim (f32).
    pub fn name_queries(&self, names: &[String], padding: Padding) -> Result<Tensor> {
        let templates = templates();
        let prompts: Vec<String> = names
            .iter()
            .flat_map(|name| templates.iter().map(move |t| t.replace("{}", name)))
            .collect();
        let embeddings = self.encode_prompts(&prompts, padding)?;
        let dim = embeddings.dim(1)?;
        let means = embeddings
            .reshape((names.len(), templates.len(), dim))?
            .mean(1)?;
        l2_normalize(&means)
    }
}

/// Scales every row (last dimension) to unit length: queries and patch features are compared
/// by cosine similarity.
pub(crate) fn l2_normalize(rows: &Tensor) -> Result<Tensor> {
    let norms = rows.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(rows.broadcast_div(&norms)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_80_openai_templates_ship_in_order() {
        let templates = templates();
        assert_eq!(templates.len(), 80);
        assert_eq!(templates[0], "a bad photo of a {}.");
        assert_eq!(templates[79], "a tattoo of the {}.");
        assert!(templates.iter().all(|t| t.matches("{}").count() == 1));
    }

    #[test]
    fn trimming_prompts_gives_the_queries_of_full_padding() {
        let encoder = crate::test_support::fixture_model(DType::F32)
            .text_encoder()
            .unwrap();
        let names = ["dog".to_string(), "a very long name of a thing".to_string()];
        let trimmed = encoder.name_queries(&names, Padding::Longest).unwrap();
        let padded = encoder.name_queries(&names, Padding::Context).unwrap();
        let difference = crate::test_support::max_abs_difference(&trimmed, &padded);
        assert!(difference < 1e-5, "{difference}");
    }

    #[test]
    fn normalised_rows_have_unit_length() {
        let rows = Tensor::new(&[[3f32, 4.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        let unit = l2_normalize(&rows).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(unit, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
    }
}
