//! A class list's queries: one unit vector per name, from the on-disk cache when it has them,
//! else from the text tower (and then stored for the next run).

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};

use super::cache::{model_fingerprint, Lookup, QueryCache, QueryKey};
use super::{templates, PromptLayout, TextEncoder};
use crate::classes::ClassList;
use crate::model::Model;

/// How the text tower computes, for the cache key: the same for every model dtype and device.
const TEXT_COMPUTATION: &str = "f32-cpu";

/// The queries of one class list: every name's, with the class each name belongs to.
pub struct ClassQueries {
    classes: ClassList,
    /// names x projection_dim, f32, on the CPU.
    matrix: Tensor,
    query_class: Vec<usize>,
    stats: TextStats,
}

impl ClassQueries {
    pub fn classes(&self) -> &ClassList {
        &self.classes
    }

    /// names x projection_dim unit vectors (f32, on the CPU), names in the class list's order.
    pub fn matrix(&self) -> &Tensor {
        &self.matrix
    }

    /// The class of each query (row of [`ClassQueries::matrix`]).
    pub fn query_class(&self) -> &[usize] {
        &self.query_class
    }

    /// Where the queries came from and how long they took.
    pub fn stats(&self) -> &TextStats {
        &self.stats
    }
}

/// Builds queries for one model, as many class lists as asked: the text tower is loaded at the
/// first cache miss and kept until the encoder is dropped.
pub struct QueryEncoder<'m> {
    model: &'m Model,
    cache: Option<QueryCache>,
    text: Option<TextEncoder>,
}

impl<'m> QueryEncoder<'m> {
    /// `cache`: where queries are looked up and stored; `None` encodes every time.
    pub fn new(model: &'m Model, cache: Option<QueryCache>) -> Self {
        QueryEncoder {
            model,
            cache,
            text: None,
        }
    }

    pub fn encode(&mut self, classes: &ClassList) -> Result<ClassQueries> {
        let started = Instant::now();
        let (names, query_class) = classes.queries();
        let dim = self.model.config().projection_dim;
        let key = match &self.cache {
            Some(_) => {
                let fingerprint = model_fingerprint(self.model.files())?;
                Some(QueryKey::new(
                    &fingerprint,
                    &templates(),
                    &names,
                    TEXT_COMPUTATION,
                    dim,
                ))
            }
            None => None,
        };
        let queries = |matrix, cache, store_error, damaged_file| ClassQueries {
            classes: classes.clone(),
            matrix,
            query_class: query_class.clone(),
            stats: TextStats {
                names: names.len(),
                cache,
                seconds: started.elapsed().as_secs_f64(),
                store_error,
                damaged_file,
            },
        };
        let mut damaged_file = None;
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            match cache.load(key) {
                Lookup::Hit(data) => {
                    let matrix = Tensor::from_vec(data, (names.len(), dim), &Device::Cpu)?;
                    return Ok(queries(matrix, CacheUse::Hit, None, None));
                }
                Lookup::Absent => {}
                Lookup::Damaged(damage) => {
                    damaged_file = Some(format!("{} ({damage})", cache.path(key).display()));
                }
            }
        }
        let text = match &mut self.text {
            Some(text) => text,
            empty => empty.insert(self.model.text_encoder()?),
        };
        let matrix = text
            .name_queries(&names, PromptLayout::SharedPrefix)
            .context("cannot encode the class queries")?;
        // Checked here, not only when caching: NaN queries would label every pixel class 0.
        let finite = matrix
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|value| value.is_finite());
        ensure!(
            finite,
            "the text tower gave class queries that are not finite numbers; the model's weights \
             may be damaged"
        );
        let (cache_use, store_error) = match (&self.cache, &key) {
            (Some(cache), Some(key)) => {
                let data = matrix.flatten_all()?.to_vec1::<f32>()?;
                let stored = cache.store(key, &data);
                (
                    CacheUse::Miss,
                    stored.err().map(|error| format!("{error:#}")),
                )
            }
            _ => (CacheUse::Off, None),
        };
        Ok(queries(matrix, cache_use, store_error, damaged_file))
    }
}

/// Where a list's queries came from.
#[derive(Debug, Clone)]
pub struct TextStats {
    pub names: usize,
    pub cache: CacheUse,
    pub seconds: f64,
    /// Why freshly encoded queries could not be saved for the next run, if they could not.
    pub store_error: Option<String>,
    /// The cache file that was there but damaged (which file, and how), if one was: its
    /// queries were encoded again and, unless `store_error` says otherwise, the file replaced.
    pub damaged_file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Miss,
    /// No cache was given.
    Off,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{fixture_model, max_abs_difference};
    use candle_core::DType;

    #[test]
    fn queries_come_from_the_cache_once_stored_and_equal_fresh_ones() {
        let model = fixture_model(DType::F32);
        let dir = tempfile::tempdir().unwrap();
        let classes = ClassList::parse_inline("dog,boat|ship").unwrap();
        let mut encoder = QueryEncoder::new(&model, Some(QueryCache::new(dir.path().into())));
        let fresh = encoder.encode(&classes).unwrap();
        assert_eq!(fresh.stats().cache, CacheUse::Miss);
        assert_eq!(fresh.stats().store_error, None);
        assert_eq!(fresh.query_class(), [0, 1, 1]);
        assert_eq!(fresh.matrix().dims(), [3, model.config().projection_dim]);
        let cached = encoder.encode(&classes).unwrap();
        assert_eq!(cached.stats().cache, CacheUse::Hit);
        assert_eq!(max_abs_difference(fresh.matrix(), cached.matrix()), 0.0);

        // Another list through the same encoder, and the same list without a cache.
        let other = encoder
            .encode(&ClassList::parse_inline("boat").unwrap())
            .unwrap();
        assert_eq!(other.stats().cache, CacheUse::Miss);
        let uncached = QueryEncoder::new(&model, None).encode(&classes).unwrap();
        assert_eq!(uncached.stats().cache, CacheUse::Off);
        assert!(max_abs_difference(fresh.matrix(), uncached.matrix()) < 1e-6);
        let boat_row = fresh.matrix().narrow(0, 1, 1).unwrap();
        assert!(max_abs_difference(&boat_row, other.matrix()) < 1e-6);
    }
}
