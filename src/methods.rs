//! The training-free methods sclip runs: SCLIP and the peers its paper compares with, each a
//! [`LastBlock`] (spec section 8) and, per benchmark, its authors' settings (see
//! [`presets`](crate::presets)). SCLIP's CSA projection ablation is a [`CsaProjection`].

use crate::vision::LastBlock;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Method {
    #[default]
    Sclip,
    Clip,
    MaskClip,
    ClearClip,
    NaClip,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Sclip,
        Method::Clip,
        Method::MaskClip,
        Method::ClearClip,
        Method::NaClip,
    ];

    /// The name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Method::Sclip => "sclip",
            Method::Clip => "clip",
            Method::MaskClip => "maskclip",
            Method::ClearClip => "clearclip",
            Method::NaClip => "naclip",
        }
    }

    /// The paper, and what the last block computes, in one line.
    pub fn summary(self) -> &'static str {
        match self {
            Method::Sclip => {
                "SCLIP (Wang et al., ECCV 2024): softmax(qq^T) + softmax(kk^T), residual and MLP kept"
            }
            Method::Clip => {
                "CLIP's unmodified block (Radford et al., ICML 2021): softmax(qk^T), the baseline"
            }
            Method::MaskClip => "MaskCLIP (Zhou et al., ECCV 2022): each token keeps its own value",
            Method::ClearClip => {
                "ClearCLIP (Lan et al., ECCV 2024): softmax(qq^T), no residual, no MLP"
            }
            Method::NaClip => {
                "NACLIP (Hajimiri et al., WACV 2025): softmax(kk^T + Gaussian neighbourhood), no residual, no MLP"
            }
        }
    }

    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|method| method.name() == name)
    }

    /// The method's last block; a projection other than SCLIP's own only exists for SCLIP.
    pub fn last_block(self, projection: CsaProjection) -> Result<LastBlock, ProjectionNotSclip> {
        if self != Method::Sclip && projection != CsaProjection::QueryKey {
            return Err(ProjectionNotSclip {
                method: self,
                projection,
            });
        }
        Ok(match self {
            Method::Sclip => match projection {
                CsaProjection::QueryKey => LastBlock::SCLIP,
                CsaProjection::Query => LastBlock::SCLIP_QUERY_ONLY,
                CsaProjection::Key => LastBlock::SCLIP_KEY_ONLY,
                CsaProjection::Identity => LastBlock::SCLIP_NO_PROJECTION,
            },
            Method::Clip => LastBlock::CLIP,
            Method::MaskClip => LastBlock::MASKCLIP,
            Method::ClearClip => LastBlock::CLEARCLIP,
            Method::NaClip => LastBlock::NACLIP,
        })
    }
}

/// The attention maps of SCLIP's Correlative Self-Attention: the paper's, or one of its Table 2
/// ablation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CsaProjection {
    /// softmax(qq^T) + softmax(kk^T).
    #[default]
    QueryKey,
    Query,
    Key,
    /// softmax(yy^T) of the block's input y.
    Identity,
}

impl CsaProjection {
    pub const ALL: [CsaProjection; 4] = [
        CsaProjection::QueryKey,
        CsaProjection::Query,
        CsaProjection::Key,
        CsaProjection::Identity,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CsaProjection::QueryKey => "qk",
            CsaProjection::Query => "q",
            CsaProjection::Key => "k",
            CsaProjection::Identity => "identity",
        }
    }

    pub fn summary(self) -> &'static str {
        match self {
            CsaProjection::QueryKey => "softmax(qq^T) + softmax(kk^T), the paper's",
            CsaProjection::Query => "softmax(qq^T) alone",
            CsaProjection::Key => "softmax(kk^T) alone",
            CsaProjection::Identity => "softmax(yy^T) of the block's input, no projection",
        }
    }

    pub fn from_name(name: &str) -> Option<CsaProjection> {
        CsaProjection::ALL
            .into_iter()
            .find(|projection| projection.name() == name)
    }
}

/// A CSA projection asked of a method that has no CSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionNotSclip {
    pub method: Method,
    pub projection: CsaProjection,
}

impl std::fmt::Display for ProjectionNotSclip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the CSA projection {} changes SCLIP's attention only, not {}'s",
            self.projection.name(),
            self.method.name()
        )
    }
}

impl std::error::Error for ProjectionNotSclip {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_each_method_has_its_own_block() {
        for method in Method::ALL {
            assert_eq!(Method::from_name(method.name()), Some(method));
        }
        for projection in CsaProjection::ALL {
            assert_eq!(
                CsaProjection::from_name(projection.name()),
                Some(projection)
            );
        }
        let mut blocks: Vec<LastBlock> = Method::ALL
            .iter()
            .map(|method| method.last_block(CsaProjection::QueryKey).unwrap())
            .collect();
        blocks.extend(
            CsaProjection::ALL[1..]
                .iter()
                .map(|&projection| Method::Sclip.last_block(projection).unwrap()),
        );
        for (i, a) in blocks.iter().enumerate() {
            for b in &blocks[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            Method::ClearClip.last_block(CsaProjection::Key),
            Err(ProjectionNotSclip {
                method: Method::ClearClip,
                projection: CsaProjection::Key
            })
        );
    }
}
