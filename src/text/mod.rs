//! Text queries: each class name is put into OpenAI's 80 ImageNet prompt templates, encoded by
//! CLIP's text tower, and the normalised embeddings are averaged into one unit vector.

pub mod cache;
pub mod queries;
mod tower;

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::{Tensor, D};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use crate::model::config::TextConfig;
use tower::{Member, PromptGroup, TextTower};

const TEMPLATES: &str = include_str!("../../assets/imagenet_templates.txt");
const START_TOKEN: &str = "<|startoftext|>";
const END_TOKEN: &str = "<|endoftext|>";
/// Names whose prompts are encoded together: all of them for any list of up to
/// [`MAX_CLASSES`](crate::classes::MAX_CLASSES) names, so that such lists share their prompts'
/// prefixes as before; past it the embeddings held at once (80 prompts a name) stop growing.
pub const NAMES_PER_PASS: usize = 256;

/// The 80 prompt templates of OpenAI's CLIP ImageNet zero-shot notebook, `{}` marking the name.
pub fn templates() -> Vec<&'static str> {
    TEMPLATES.lines().filter(|l| !l.is_empty()).collect()
}

/// How prompts are laid out for the text tower. All three give the same queries (the causal
/// mask makes the end token's output depend only on the tokens before it); they differ in work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptLayout {
    /// A template's words before the name are encoded once for all names: what sclip does.
    SharedPrefix,
    /// Every prompt whole, to its own length.
    Whole,
    /// Every prompt padded to the full context (77 tokens), as the authors' code does. Kept to
    /// measure and test the equivalence.
    PaddedToContext,
}

/// The tokenizer and the text tower: prompts in, unit-length embeddings out, on the CPU in f32.
pub struct TextEncoder {
    tower: TextTower,
    tokenizer: Tokenizer,
    start_id: u32,
    end_id: u32,
    context_length: usize,
}

impl TextEncoder {
    /// Loads `text_model.*` and `text_projection.weight` (`root` reads f32 on the CPU), and the
    /// BPE tokenizer.
    pub fn load(
        root: &VarBuilder,
        config: &TextConfig,
        projection_dim: usize,
        tokenizer_path: &Path,
    ) -> Result<Self> {
        let tower = TextTower::load(root, config, projection_dim)
            .context("cannot load the text tower (text_model.*)")?;
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
            tower,
            tokenizer,
            context_length: config.max_position_embeddings,
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

    /// One query per name: the normalised mean of its normalised prompt embeddings,
    /// names x projection_dim (f32, on the CPU). Names go through the tower
    /// [`NAMES_PER_PASS`] at a time, so that its memory does not grow with the list.
    pub fn name_queries(&self, names: &[String], layout: PromptLayout) -> Result<Tensor> {
        let chunks = names
            .chunks(NAMES_PER_PASS)
            .map(|chunk| self.chunk_queries(chunk, layout))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&chunks, 0)?)
    }

    fn chunk_queries(&self, names: &[String], layout: PromptLayout) -> Result<Tensor> {
        let groups = self.prompt_groups(names, layout)?;
        // Rows come template-major: template 0 with every name, then template 1, ...
        let embeddings = l2_normalize(&self.tower.encode(&groups)?)?;
        let dim = embeddings.dim(1)?;
        let means = embeddings
            .reshape((templates().len(), names.len(), dim))?
            .mean(0)?;
        l2_normalize(&means)
    }

    /// How many tokens the text tower runs for `names`' prompts laid out as `layout` (the
    /// shared ones once).
    pub fn tokens_computed(&self, names: &[String], layout: PromptLayout) -> Result<usize> {
        Ok(self
            .prompt_groups(names, layout)?
            .iter()
            .map(|group| {
                group.shared.len()
                    + group
                        .members
                        .iter()
                        .map(|member| member.tokens.len())
                        .sum::<usize>()
            })
            .sum())
    }

    /// Every template filled with every name, template-major, grouped as `layout` says.
    fn prompt_groups(&self, names: &[String], layout: PromptLayout) -> Result<Vec<PromptGroup>> {
        let templates = templates();
        // ids[t][n]: template t filled with name n.
        let ids = templates
            .iter()
            .map(|template| {
                names
                    .iter()
                    .map(|name| self.token_ids(&template.replace("{}", name)))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(match layout {
            PromptLayout::SharedPrefix => ids.into_iter().map(share_prefix).collect(),
            PromptLayout::Whole | PromptLayout::PaddedToContext => {
                let members = ids
                    .into_iter()
                    .flatten()
                    .map(|mut tokens| {
                        let end = tokens.len() - 1;
                        if layout == PromptLayout::PaddedToContext {
                            tokens.resize(self.context_length, 0);
                        }
                        Member { tokens, end }
                    })
                    .collect();
                vec![PromptGroup {
                    shared: Vec::new(),
                    members,
                }]
            }
        })
    }
}

/// One template's prompts as a group: the longest run of tokens they all start with is shared,
/// short of each prompt's end token (so with one name, or names that tokenise alike, every
/// member keeps at least that).
fn share_prefix(prompts: Vec<Vec<u32>>) -> PromptGroup {
    let shortest = prompts.iter().map(Vec::len).min().unwrap_or(0);
    let first = prompts.first().cloned().unwrap_or_default();
    let shared = (0..shortest.saturating_sub(1))
        .take_while(|&i| prompts.iter().all(|prompt| prompt[i] == first[i]))
        .count();
    let members = prompts
        .into_iter()
        .map(|prompt| {
            let tokens = prompt[shared..].to_vec();
            Member {
                end: tokens.len() - 1,
                tokens,
            }
        })
        .collect();
    PromptGroup {
        shared: first[..shared].to_vec(),
        members,
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

    /// Sharing prefixes and trimming change the work, never the queries; the names include
    /// one that is a prefix of another, and one long enough to share little.
    #[test]
    fn every_prompt_layout_gives_the_same_queries() {
        let encoder = crate::test_support::fixture_model(candle_core::DType::F32)
            .text_encoder()
            .unwrap();
        let names: Vec<String> = ["dog", "dog house", "a very long name of a thing", "cat"]
            .iter()
            .map(|name| name.to_string())
            .collect();
        let shared = encoder
            .name_queries(&names, PromptLayout::SharedPrefix)
            .unwrap();
        for layout in [PromptLayout::Whole, PromptLayout::PaddedToContext] {
            let other = encoder.name_queries(&names, layout).unwrap();
            let difference = crate::test_support::max_abs_difference(&shared, &other);
            assert!(difference < 1e-6, "{layout:?}: {difference}");
        }
        // One name: each template's prompt is shared up to its end token.
        let alone = encoder
            .name_queries(&names[..1], PromptLayout::SharedPrefix)
            .unwrap();
        let difference =
            crate::test_support::max_abs_difference(&alone, &shared.narrow(0, 0, 1).unwrap());
        assert!(difference < 1e-6, "{difference}");
    }

    /// Past [`NAMES_PER_PASS`] the names go through the tower in passes: each name's query is
    /// exactly what its pass alone gives, in the list's order.
    #[test]
    fn long_lists_are_encoded_in_passes_of_names() {
        let encoder = crate::test_support::fixture_model(candle_core::DType::F32)
            .text_encoder()
            .unwrap();
        let names: Vec<String> = (0..NAMES_PER_PASS + 3)
            .map(|i| format!("{} thing {i}", ["red", "small", "wooden"][i % 3]))
            .collect();
        let all = encoder
            .name_queries(&names, PromptLayout::SharedPrefix)
            .unwrap();
        assert_eq!(all.dim(0).unwrap(), names.len());
        for (start, pass) in [
            (0, &names[..NAMES_PER_PASS]),
            (NAMES_PER_PASS, &names[NAMES_PER_PASS..]),
        ] {
            let alone = encoder
                .name_queries(pass, PromptLayout::SharedPrefix)
                .unwrap();
            let rows = all.narrow(0, start, pass.len()).unwrap();
            assert_eq!(crate::test_support::max_abs_difference(&rows, &alone), 0.0);
        }
    }

    #[test]
    fn a_group_shares_its_common_tokens_but_never_an_end_token() {
        let group = share_prefix(vec![vec![1, 2, 3, 9], vec![1, 2, 4, 5, 9]]);
        assert_eq!(group.shared, [1, 2]);
        assert_eq!(group.members[0].tokens, [3, 9]);
        assert_eq!(group.members[1].end, 2);
        let group = share_prefix(vec![vec![1, 2, 9], vec![1, 2, 9]]);
        assert_eq!(group.shared, [1, 2]);
        assert_eq!(group.members[0].tokens, [9]);
        assert_eq!(group.members[0].end, 0);
    }

    #[test]
    fn normalised_rows_have_unit_length() {
        let rows = Tensor::new(&[[3f32, 4.0], [0.0, 2.0]], &candle_core::Device::Cpu).unwrap();
        let unit = l2_normalize(&rows).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(unit, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
    }
}
