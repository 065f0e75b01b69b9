//! What the last vision block computes. SCLIP and its training-free peers differ only there
//! (spec sections 1 and 8): which attention maps mix the tokens, any term added to their logits,
//! and whether the block keeps its residual and MLP. A new head is a new [`LastBlock`] value;
//! the candle path and the CPU kernels both interpret it, so neither needs to change.

use crate::transformer::{Gram, LogitBias, Mixing};

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

    /// SCLIP's CSA ablation (its Table 2) with the query projection alone: softmax(q q^T s).
    pub const SCLIP_QUERY_ONLY: LastBlock = LastBlock {
        mixing: Mixing::Softmax {
            maps: &[Gram::QueryQuery],
            bias: None,
        },
        residual_and_mlp: true,
    };

    /// SCLIP's CSA ablation with the key projection alone: softmax(k k^T s).
    pub const SCLIP_KEY_ONLY: LastBlock = LastBlock {
        mixing: Mixing::Softmax {
            maps: &[Gram::KeyKey],
            bias: None,
        },
        residual_and_mlp: true,
    };

    /// SCLIP's CSA ablation with no projection: softmax(y_h y_h^T s) of the block's input.
    pub const SCLIP_NO_PROJECTION: LastBlock = LastBlock {
        mixing: Mixing::Softmax {
            maps: &[Gram::InputInput],
            bias: None,
        },
        residual_and_mlp: true,
    };

    /// MaskCLIP (Zhou et al., ECCV 2022): each token keeps its own value.
    pub const MASKCLIP: LastBlock = LastBlock {
        mixing: Mixing::Identity,
        residual_and_mlp: true,
    };

    /// ClearCLIP (Lan et al., ECCV 2024): softmax(q q^T s), without the residual and the MLP.
    pub const CLEARCLIP: LastBlock = LastBlock {
        mixing: Mixing::Softmax {
            maps: &[Gram::QueryQuery],
            bias: None,
        },
        residual_and_mlp: false,
    };

    /// NACLIP (Hajimiri et al., WACV 2025): softmax(k k^T s + a Gaussian of std 5 over the
    /// window's patch grid), without the residual and the MLP.
    pub const NACLIP: LastBlock = LastBlock {
        mixing: Mixing::Softmax {
            maps: &[Gram::KeyKey],
            bias: Some(LogitBias::Gaussian { std: 5.0 }),
        },
        residual_and_mlp: false,
    };
}

impl Default for LastBlock {
    fn default() -> Self {
        LastBlock::SCLIP
    }
}
