//! The files an image's result becomes: its label PNG, and the scores and overlay when asked.

use anyhow::{Context, Result};

use sclip::output::overlay::{render_overlay, write_overlay, LegendEntry};
use sclip::output::{voc_palette, write_label_png, write_npy_f32};
use sclip::stream::ImageResult;
use sclip::ClassList;

use crate::jobs::Job;

/// Writes `job`'s outputs from `result`; each file is written whole or not at all.
pub fn write_outputs(
    job: &Job,
    result: &ImageResult,
    classes: &ClassList,
    overlay_alpha: f32,
) -> Result<()> {
    for dir in job.outputs().filter_map(|path| path.parent()) {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        }
    }
    let segmentation = &result.segmentation;
    let (width, height) = (segmentation.width, segmentation.height);
    write_label_png(&job.mask, &segmentation.labels, width as u32, height as u32)?;
    if let (Some(path), Some(probs)) = (&job.probs, &segmentation.probs) {
        let classes = probs.len() / (width * height);
        write_npy_f32(path, &[classes, height, width], probs)?;
    }
    if let (Some(path), Some(photo)) = (&job.overlay, &result.image) {
        let palette = voc_palette();
        let legend: Vec<LegendEntry> = segmentation
            .class_pixels
            .iter()
            .enumerate()
            .filter(|(_, &pixels)| pixels > 0)
            .map(|(class, _)| LegendEntry {
                name: classes.display_name(class),
                colour: palette[class],
            })
            .collect();
        let overlay = render_overlay(
            photo,
            &segmentation.labels,
            &palette,
            overlay_alpha,
            &legend,
        );
        write_overlay(path, &overlay)?;
    }
    Ok(())
}
