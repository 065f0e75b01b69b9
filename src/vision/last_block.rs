//! What the last vision block computes. SCLIP and its training-free peers differ only there
//! (spec sections 1 and 8): which attention maps mix the tokens, any term added to their logits,
//! and whether the block keeps its residual and MLP. A new head is a new [`LastBlock`] value;
//! the candle path and the CPU kernels both interpret it, so neither needs to change.

use crate::transformer::{Gram, Mixing};

/// One block's computation: `x + out(A v)`, then `x + mlp(ln2(x))`, or `out(A v)` alone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LastBlock {
    pub mixing: Mixing,
    /// Keep the residual connections and the MLP, as CLIP's blocks do.
    pub residual_and_mlp: bool,
}

impl LastBlock {
    /// CLIP's unmodified block; every block but the last always runs it.
    pub const CLIP: LastBlock = LastBlock {
        mixing: Mixing::Softmax {
            maps: &[Gram::QueryKey],
            bias: None,
        },
        residual_and_mlp: true,
    };

    /// SCLIP's Correlative Self-Attention: softmax(q q^T s) + softmax(k k^T s).
    pub const SCLIP: LastBlock = LastBlock {
        mixing: Mixing::Softmax {
            maps: &[Gram::QueryQuery, Gram::KeyKey],
            bias: None,
        },
        residual_and_mlp: true,
    };
}

impl Default for LastBlock {
    fn default() -> Self {
        LastBlock::SCLIP
    }
}
