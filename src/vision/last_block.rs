//! What the last vision block computes. SCLIP and its training-free peers differ only there
//! (spec sections 1 and 8): which attention maps mix the tokens, any term added to their logits,
//! and whether the block keeps its residual and MLP. A new head is a new [`LastBlock`] value;
//! the candle path and the CPU kernels both interpret it, so neither needs to change.

/// A product of two projections of `ln1(x)` whose row softmax is one attention map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gram {
    /// q k^T: CLIP's own attention.
    QueryKey,
    /// q q^T
    QueryQuery,
    /// k k^T
    KeyKey,
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
