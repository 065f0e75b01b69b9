//! Helpers for the unit tests of several modules: deterministic inputs, closeness checks and the
//! fixture model.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::model::{resolve_model, Model};

/// The deterministic pseudo-random values several expected outputs were computed from (the same
/// formula, in f32, on the Python side).
pub fn pattern(len: usize, offset: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + offset) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// Deterministic uniform values in [-0.5, 0.5), exactly representable (24-bit), from a 64-bit
/// LCG; the Python side of the expected values uses the same generator.
pub fn uniform(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

pub fn assert_close(actual: &[f32], expected: &[f32], tolerance: f32) {
    assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tolerance, "element {i}: {a} vs {e}");
    }
}

/// The largest |a - b| over two tensors of one shape, as f32.
pub fn max_abs_difference(a: &Tensor, b: &Tensor) -> f32 {
    let b = b.to_dtype(a.dtype()).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Every entry in `directory`, sorted, so tests can spot leftover temporary files.
pub fn directory_entries(directory: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    entries
}

/// The tiny random-weight CLIP that `tests/reference/make_fixtures.py` made.
pub fn fixture_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
}

pub fn fixture_model(dtype: DType) -> Model {
    let files = resolve_model(fixture_model_dir().to_str().unwrap(), "main").unwrap();
    Model::load(files, &Device::Cpu, dtype).unwrap()
}
