//! One image through the whole method: resize, sliding windows through the vision tower,
//! per-window logits against the class queries, then post-processing at the original size.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::classes::ClassList;
use crate::load::{open_weights, ClipConfig, ModelFiles};
use crate::postprocess::{postprocess, PostprocessParams, Segmentation};
use crate::preprocess::{
    normalize_chw, rescaled_size, resize_linear_opencv, RgbImage, MAX_LONG_SIDE,
};
use crate::slide::{window_grid, LogitCanvas, Window};
use crate::text::TextEncoder;
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
}

impl Segmenter {
    pub fn new(
        files: &ModelFiles,
        device: &Device,
        dtype: DType,
        classes: ClassList,
        settings: Settings,
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
        let queries = {
            // The text tower is needed only here; dropping it frees its memory for the windows.
            let text = TextEncoder::load(
                &weights,
                &config.text,
                config.projection_dim,
                &files.tokenizer,
            )
            .with_context(|| {
                format!(
                    "cannot load the text tower from {}",
                    files.weights.path().display()
                )
            })?;
            text.name_queries(&names)
                .context("cannot encode the class queries")?
        };
        let queries_t = queries.to_dtype(dtype)?.t()?.contiguous()?;
        Ok(Segmenter {
            vision,
            queries_t,
            query_class,
            classes,
            settings,
        })
    }

    pub fn classes(&self) -> &ClassList {
        &self.classes
    }

    /// Segments one decoded image at its original size.
    pub fn segment(&self, image: &RgbImage) -> Result<Segmentation> {
        let (width, height) = image.dimensions();
        let (resized_w, resized_h) =
            rescaled_size(width, height, self.settings.short_side, MAX_LONG_SIDE);
        let resized = resize_linear_opencv(image, resized_w, resized_h);
        let pixels = normalize_chw(&resized);
        let (resized_w, resized_h) = (resized_w as usize, resized_h as usize);
        let windows = window_grid(
            resized_h,
            resized_w,
            self.settings.window,
            self.settings.stride,
        );
        let queries = self.query_class.len();
        let mut canvas = LogitCanvas::new(queries, resized_h, resized_w);
        for batch in windows.chunks(self.settings.batch_size) {
            let (grid_h, grid_w, logits) =
                self.window_logits(&pixels, resized_w, resized_h, batch)?;
            let per_window = queries * grid_h * grid_w;
            for (window, window_logits) in batch.iter().zip(logits.chunks_exact(per_window)) {
                canvas.add_window(window, window_logits, grid_h, grid_w);
            }
        }
        Ok(postprocess(
            &canvas.finish(),
            &self.query_class,
            self.classes.len(),
            width as usize,
            height as usize,
            &self.settings.postprocess,
            self.settings.keep_probs,
        ))
    }

    /// Runs same-sized windows as one batch; returns the patch grid and, per window,
    /// queries x grid_h x grid_w logits (cosine similarities), concatenated.
    fn window_logits(
        &self,
        pixels: &[f32],
        width: usize,
        height: usize,
        windows: &[Window],
    ) -> Result<(usize, usize, Vec<f32>)> {
        let (win_h, win_w) = (windows[0].height, windows[0].width);
        let plane = width * height;
        let mut batch = Vec::with_capacity(windows.len() * 3 * win_h * win_w);
        for window in windows {
            debug_assert_eq!((window.height, window.width), (win_h, win_w));
            for channel in 0..3 {
                for row in window.top..window.top + win_h {
                    let start = channel * plane + row * width + window.left;
                    batch.extend_from_slice(&pixels[start..start + win_w]);
                }
            }
        }
        let batch = Tensor::from_vec(
            batch,
            (windows.len(), 3, win_h, win_w),
            self.vision.device(),
        )?;
        let features = self.vision.patch_features(&batch)?;
        let (count, patches, dim) = features.dims3()?;
        let patch = self.vision.patch_size();
        let logits = features
            .reshape((count * patches, dim))?
            .matmul(&self.queries_t)?
            .reshape((count, patches, ()))?
            .transpose(1, 2)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((win_h / patch, win_w / patch, logits))
    }
}
