//! One image through the whole method: resize, sliding windows through the vision tower,
//! per-window logits against the class queries, then post-processing at the original size.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

use crate::model::Model;
use crate::postprocess::{postprocess, postprocess_refined, Guide, Segmentation};
use crate::preprocess::{
    normalize_chw, rescaled_size, resize_linear_opencv, RgbImage, MAX_LONG_SIDE,
};
use crate::settings::Settings;
use crate::slide::{window_grid, LogitCanvas, Window};
use crate::text::queries::ClassQueries;
use crate::vision::LastBlock;

/// A model, a class list's queries and the settings: everything needed per image.
pub struct Segmenter<'m> {
    model: &'m Model,
    /// projection_dim x queries in the model's dtype, so that patch features times this are
    /// the logits.
    queries_t: Tensor,
    queries: ClassQueries,
    settings: Settings,
    last_block: LastBlock,
}

impl<'m> Segmenter<'m> {
    /// Fails with a [`SettingsError`](crate::SettingsError) when the settings cannot work with
    /// this model.
    pub fn new(model: &'m Model, queries: ClassQueries, settings: Settings) -> Result<Self> {
        settings.validate()?;
        settings.validate_for_patch(model.config().vision.patch_size)?;
        let last_block = settings.method.last_block(settings.csa_projection)?;
        let queries_t = queries
            .matrix()
            .to_device(model.device())?
            .to_dtype(model.dtype())?
            .t()?
            .contiguous()?;
        Ok(Segmenter {
            model,
            queries_t,
            queries,
            settings,
            last_block,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn queries(&self) -> &ClassQueries {
        &self.queries
    }

    /// Segments one decoded image at its original size.
    pub fn segment(&self, image: &RgbImage) -> Result<Segmentation> {
        let prepared = self.prepare(image)?;
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
    /// on other threads while the vision tower is busy with earlier images. Fails for an image
    /// too thin for the model: one whose short side, once resized, is under one patch.
    pub fn prepare(&self, image: &RgbImage) -> Result<PreparedImage> {
        let (width, height) = image.dimensions();
        let short_side = self.settings.short_side;
        let (resized_w, resized_h) = rescaled_size(width, height, short_side, MAX_LONG_SIDE);
        let patch = self.model.vision().patch_size();
        if (resized_w.min(resized_h) as usize) < patch {
            // Thin images are scaled to put their long side at this cap, so this is the longest
            // side that keeps a patch across the short one.
            let longest_ratio = short_side.max(MAX_LONG_SIDE) as usize / patch;
            bail!(
                "the image is too thin to segment: {width}x{height} resizes to \
                 {resized_w}x{resized_h}, whose short side is under the model's {patch}-pixel \
                 patch; crop it into pieces whose long side is at most {longest_ratio} times \
                 the short one"
            );
        }
        let resized = resize_linear_opencv(image, resized_w, resized_h);
        let (resized_w, resized_h) = (resized_w as usize, resized_h as usize);
        Ok(PreparedImage {
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
        })
    }

    /// An empty canvas to gather a prepared image's window logits on.
    pub fn canvas_for(&self, prepared: &PreparedImage) -> LogitCanvas {
        LogitCanvas::new(
            self.queries.query_class().len(),
            prepared.resized_h,
            prepared.resized_w,
        )
    }

    /// Post-processing once every window of the image is on its canvas.
    pub fn finish(&self, canvas: LogitCanvas, prepared: &PreparedImage) -> Segmentation {
        let logits = canvas.finish();
        let (query_class, num_classes) = (self.queries.query_class(), self.queries.classes().len());
        let Settings {
            postprocess: params,
            keep_probs,
            ..
        } = &self.settings;
        match &self.settings.pamr {
            None => postprocess(
                &logits,
                query_class,
                num_classes,
                prepared.width,
                prepared.height,
                params,
                *keep_probs,
            ),
            Some(pamr) => {
                let guide = Guide {
                    pixels: &prepared.pixels,
                    width: prepared.resized_w,
                    height: prepared.resized_h,
                };
                postprocess_refined(
                    &logits,
                    guide,
                    pamr,
                    query_class,
                    num_classes,
                    (prepared.width, prepared.height),
                    params,
                    *keep_probs,
                )
            }
        }
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
        let vision = self.model.vision();
        let batch = Tensor::from_vec(batch, (crops.len(), 3, win_h, win_w), vision.device())?;
        let features = vision.patch_features(&batch, &self.last_block)?;
        let (count, patches, dim) = features.dims3()?;
        let patch = vision.patch_size();
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
            queries: self.queries.query_class().len(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::ClassList;
    use crate::test_support::fixture_model;
    use crate::text::queries::QueryEncoder;

    #[test]
    fn images_too_thin_for_one_patch_are_refused_before_the_model() {
        let model = fixture_model(DType::F32);
        let classes = ClassList::parse_inline("sky,wall").unwrap();
        let queries = QueryEncoder::new(&model, None).encode(&classes).unwrap();
        let segmenter = Segmenter::new(&model, queries, Settings::default()).unwrap();

        // 10x100000 resizes to 1x2048 (the long side capped at 2048), under the 16-pixel patch.
        let thin = RgbImage::new(10, 100_000);
        let message = format!("{:#}", segmenter.prepare(&thin).err().expect("refused"));
        assert!(
            message.contains("10x100000 resizes to 1x2048")
                && message.contains("16-pixel patch")
                && message.contains("whose long side is at most 128 times the short one"),
            "{message}"
        );
        assert!(segmenter.segment(&thin).is_err());

        // 128:1 keeps a 16-pixel short side, which one patch covers.
        let prepared = segmenter.prepare(&RgbImage::new(16 * 128, 16)).unwrap();
        assert_eq!((prepared.resized_w, prepared.resized_h), (2048, 16));
    }
}
