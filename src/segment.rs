//! One image through the whole method: resize, sliding windows through the vision tower,
//! per-window logits against the class queries, then post-processing at the original size.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::classes::ClassList;
use crate::load::{open_weights, ClipConfig, ModelFiles};
use crate::postprocess::{postprocess, PostprocessParams, Segmentation};
use crate::preprocess::{
    normalize_chw, rescaled_size, resize_linear_opencv, RgbImage, MAX_LONG_SIDE,
};
use crate::slide::{window_grid, LogitCanvas, Window};
use crate::text::cache::{model_fingerprint, QueryCache, QueryKey};
use crate::text::{templates, Padding, TextEncoder};
use crate::vision::VisionTower;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The resized image's short side (before the 2048 long-side cap).
    pub short_side: u32,
    pub window: usize,
    pub stride: usize,
    /// Windows per forward pass.
    pub batch_size: usize,
    pub postprocess: PostprocessParams,
    /// Keep the final per-class scores (for `--save-probs`).
    pub keep_probs: bool,
}

impl Settings {
    /// Checks what needs no model, so that a mistyped option fails before any download.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.short_side > 0, "--short-side must be positive");
        ensure!(
            self.stride > 0 && self.stride <= self.window,
            "--stride {} must be between 1 and --window {}: a longer stride leaves pixels no window sees",
            self.stride,
            self.window
        );
        ensure!(self.batch_size > 0, "--batch-size must be positive");
        ensure!(
            self.postprocess.logit_scale.is_finite(),
            "--logit-scale must be a finite number"
        );
        if let Some(area) = self.postprocess.area_thd {
            ensure!(
                (0.0..=1.0).contains(&area),
                "--area-thd must be between 0 and 1"
            );
        }
        Ok(())
    }
}

/// A vision tower with the class queries already encoded: everything needed per image.
pub struct Segmenter {
    vision: VisionTower,
    /// projection_dim x queries, so that patch features times this are the logits.
    queries_t: Tensor,
    query_class: Vec<usize>,
    classes: ClassList,
    settings: Settings,
    text_stats: TextStats,
}

impl Segmenter {
    pub fn new(
        files: &ModelFiles,
        device: &Device,
        dtype: DType,
        classes: ClassList,
        settings: Settings,
        cache: Option<&QueryCache>,
    ) -> Result<Self> {
        let config = ClipConfig::from_file(&files.config)?;
        settings.validate()?;
        ensure!(
            settings.window >= config.vision.patch_size,
            "--window {} is smaller than the model's {}-pixel patch",
            settings.window,
            config.vision.patch_size
        );
        let weights = open_weights(&files.weights, dtype, device)?;
        let vision = VisionTower::load(&weights, &config.vision, config.projection_dim)
            .with_context(|| {
                format!(
                    "cannot load the vision tower from {}",
                    files.weights.path().display()
                )
            })?;
        let (names, query_class) = classes.queries();
        let (queries, text_stats) =
            class_queries(files, &config, &weights, &names, dtype, device, cache)?;
        let queries_t = queries.to_dtype(dtype)?.t()?.contiguous()?;
        Ok(Segmenter {
            vision,
            queries_t,
            query_class,
            classes,
            settings,
            text_stats,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn text_stats(&self) -> &TextStats {
        &self.text_stats
    }

    pub fn classes(&self) -> &ClassList {
        &self.classes
    }

    /// Segments one decoded image at its original size.
    pub fn segment(&self, image: &RgbImage) -> Result<Segmentation> {
        let prepared = self.prepare(image);
        let mut canvas = self.canvas_for(&prepared);
        for batch in prepared.windows.chunks(self.settings.batch_size) {
            let crops: Vec<WindowCrop> = batch
                .iter()
                .map(|window| WindowCrop {
                    image: &prepared,
                    window,
                })
                .collect();
            let logits = self.window_logits(&crops)?;
            for (window, window_logits) in batch.iter().zip(logits.per_window()) {
                canvas.add_window(window, window_logits, logits.grid_h, logits.grid_w);
            }
        }
        Ok(self.finish(canvas, &prepared))
    }

    /// Resizes and normalises an image and lays out its windows: the CPU work that can run
    /// on other threads while the vision tower is busy with earlier images.
    pub fn prepare(&self, image: &RgbImage) -> PreparedImage {
        let (width, height) = image.dimensions();
        let (resized_w, resized_h) =
            rescaled_size(width, height, self.settings.short_side, MAX_LONG_SIDE);
        let resized = resize_linear_opencv(image, resized_w, resized_h);
        let (resized_w, resized_h) = (resized_w as usize, resized_h as usize);
        PreparedImage {
            width: width as usize,
            height: height as usize,
            resized_w,
            resized_h,
            pixels: normalize_chw(&resized),
            windows: window_grid(
                resized_h,
                resized_w,
                self.settings.window,
                self.settings.stride,
            ),
        }
    }

    /// An empty canvas to gather a prepared image's window logits on.
    pub fn canvas_for(&self, prepared: &PreparedImage) -> LogitCanvas {
        LogitCanvas::new(
            self.query_class.len(),
            prepared.resized_h,
            prepared.resized_w,
        )
    }

    /// Post-processing once every window of the image is on its canvas.
    pub fn finish(&self, canvas: LogitCanvas, prepared: &PreparedImage) -> Segmentation {
        postprocess(
            &canvas.finish(),
            &self.query_class,
            self.classes.len(),
            prepared.width,
            prepared.height,
            &self.settings.postprocess,
            self.settings.keep_probs,
        )
    }

    /// Runs same-sized windows (of one image or several) as one batch through the vision tower
    /// and scores their patches against the class queries.
    pub fn window_logits(&self, crops: &[WindowCrop]) -> Result<BatchLogits> {
        let (win_h, win_w) = (crops[0].window.height, crops[0].window.width);
        let mut batch = Vec::with_capacity(crops.len() * 3 * win_h * win_w);
        for crop in crops {
            assert_eq!(
                (crop.window.height, crop.window.width),
                (win_h, win_w),
                "one batch holds windows of one size"
            );
            let plane = crop.image.resized_w * crop.image.resized_h;
            for channel in 0..3 {
                for row in crop.window.top..crop.window.top + win_h {
                    let start = channel * plane + row * crop.image.resized_w + crop.window.left;
                    batch.extend_from_slice(&crop.image.pixels[start..start + win_w]);
                }
            }
        }
        let batch = Tensor::from_vec(batch, (crops.len(), 3, win_h, win_w), self.vision.device())?;
        let features = self.vision.patch_features(&batch)?;
        let (count, patches, dim) = features.dims3()?;
        let patch = self.vision.patch_size();
        let data = features
            .reshape((count * patches, dim))?
            .matmul(&self.queries_t)?
            .reshape((count, patches, ()))?
            .transpose(1, 2)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(BatchLogits {
            grid_h: win_h / patch,
            grid_w: win_w / patch,
            queries: self.query_class.len(),
            data,
        })
    }
}

/// An image ready for the vision tower: its original size, the normalised resized pixels and
/// the windows over them.
pub struct PreparedImage {
    pub width: usize,
    pub height: usize,
    resized_w: usize,
    resized_h: usize,
    /// 3 x resized_h x resized_w, normalised.
    pixels: Vec<f32>,
    pub windows: Vec<Window>,
}

/// One window of one prepared image, as a member of a batch.
pub struct WindowCrop<'a> {
    pub image: &'a PreparedImage,
    pub window: &'a Window,
}

/// The logits of a batch of windows: per window, queries x grid_h x grid_w cosine similarities.
pub struct BatchLogits {
    pub grid_h: usize,
    pub grid_w: usize,
    queries: usize,
    data: Vec<f32>,
}

impl BatchLogits {
    /// Each window's logits, in the batch's order.
    pub fn per_window(&self) -> impl Iterator<Item = &[f32]> {
        self.data
            .chunks_exact(self.queries * self.grid_h * self.grid_w)
    }
}

/// Where a run's class queries came from, for `--verbose` and the `--json` summary.
#[derive(Debug, Clone)]
pub struct TextStats {
    pub names: usize,
    pub cache: CacheUse,
    pub seconds: f64,
    /// Why freshly encoded queries could not be saved for the next run, if they could not.
    pub store_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Miss,
    /// `--no-cache`, or no cache folder could be found.
    Off,
}

impl TextStats {
    pub fn to_json(&self) -> serde_json::Value {
        let cache = match self.cache {
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
            CacheUse::Off => "off",
        };
        serde_json::json!({
            "names": self.names,
            "cache": cache,
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
        })
    }
}

impl std::fmt::Display for TextStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = match self.cache {
            CacheUse::Hit => "read from the cache",
            CacheUse::Miss if self.store_error.is_none() => "encoded and cached",
            CacheUse::Miss => "encoded",
            CacheUse::Off => "encoded",
        };
        write!(
            f,
            "text queries for {} names {origin} in {:.2} s",
            self.names, self.seconds
        )?;
        if let Some(error) = &self.store_error {
            write!(f, " (not cached: {error})")?;
        }
        Ok(())
    }
}

/// The names' queries (names x projection_dim, f32) from the cache when it has them, else
/// encoded by the text tower and stored for next time.
fn class_queries(
    files: &ModelFiles,
    config: &ClipConfig,
    weights: &candle_nn::VarBuilder,
    names: &[String],
    dtype: DType,
    device: &Device,
    cache: Option<&QueryCache>,
) -> Result<(Tensor, TextStats)> {
    let started = Instant::now();
    let dim = config.projection_dim;
    let key = match cache {
        Some(_) => {
            let device_kind = if device.is_cpu() { "cpu" } else { "gpu" };
            let fingerprint = model_fingerprint(files)?;
            Some(QueryKey::new(
                &fingerprint,
                &templates(),
                names,
                &format!("{dtype:?}-{device_kind}"),
                dim,
            ))
        }
        None => None,
    };
    let stats = |cache, store_error| TextStats {
        names: names.len(),
        cache,
        seconds: started.elapsed().as_secs_f64(),
        store_error,
    };
    if let (Some(cache), Some(key)) = (cache, &key) {
        if let Some(data) = cache.load(key) {
            let queries = Tensor::from_vec(data, (names.len(), dim), device)?;
            return Ok((queries, stats(CacheUse::Hit, None)));
        }
    }
    // The text tower is needed only here; dropping it frees its memory for the windows.
    let text =
        TextEncoder::load(weights, &config.text, dim, &files.tokenizer).with_context(|| {
            format!(
                "cannot load the text tower from {}",
                files.weights.path().display()
            )
        })?;
    let queries = text
        .name_queries(names, Padding::Longest)
        .context("cannot encode the class queries")?;
    let (cache_use, store_error) = match (cache, &key) {
        (Some(cache), Some(key)) => {
            let data = queries.flatten_all()?.to_vec1::<f32>()?;
            let stored = cache.store(key, &data);
            (
                CacheUse::Miss,
                stored.err().map(|error| format!("{error:#}")),
            )
        }
        _ => (CacheUse::Off, None),
    };
    Ok((queries, stats(cache_use, store_error)))
}
