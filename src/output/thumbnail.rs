//! Thumbnails of overlays: small JPEGs for a page that shows thousands of results at a glance.

use std::path::Path;

use anyhow::{Context, Result};
use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::RgbImage;

use crate::atomic_write::Staged;

/// Thumbnails are small and many: a lower quality than full overlays keeps a page of thousands
/// light, and artefacts do not show at this size.
const JPEG_QUALITY: u8 = 80;

/// The size of the thumbnail of a `width` x `height` photo whose longer side becomes `long_side`
/// (never enlarged), keeping the aspect ratio, and at least one pixel either way.
pub fn thumbnail_size(width: u32, height: u32, long_side: u32) -> (u32, u32) {
    let longer = width.max(height);
    if longer <= long_side {
        return (width.max(1), height.max(1));
    }
    let scaled = |side: u32| {
        let exact = u64::from(side) * u64::from(long_side);
        // Rounded to the nearest pixel; the quotient is at most `long_side`, so it fits.
        ((exact + u64::from(longer) / 2) / u64::from(longer)).max(1) as u32
    };
    (scaled(width), scaled(height))
}

/// Stages a JPEG thumbnail of the top `photo_height` rows of `overlay` (the photo with its mask,
/// leaving out the legend strip below it, which would be unreadable at this size), scaled to
/// [`thumbnail_size`].
pub fn stage_thumbnail(
    path: &Path,
    overlay: &RgbImage,
    photo_height: u32,
    long_side: u32,
) -> Result<Staged> {
    let width = overlay.width();
    let photo_height = photo_height.min(overlay.height());
    let photo = imageops::crop_imm(overlay, 0, 0, width, photo_height);
    let (thumb_width, thumb_height) = thumbnail_size(width, photo_height, long_side);
    // Triangle (bilinear over the whole footprint) averages every source pixel, so thin regions
    // of a class neither vanish nor alias as a nearest-neighbour pick would make them.
    let small = imageops::resize(&*photo, thumb_width, thumb_height, FilterType::Triangle);
    Staged::write(path, |out| {
        small.write_with_encoder(JpegEncoder::new_with_quality(out, JPEG_QUALITY))?;
        Ok(())
    })
    .with_context(|| format!("cannot write thumbnail {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn the_longer_side_becomes_long_side_and_the_ratio_stays() {
        assert_eq!(thumbnail_size(1024, 768, 256), (256, 192));
        assert_eq!(thumbnail_size(768, 1024, 256), (192, 256));
        assert_eq!(thumbnail_size(1000, 333, 256), (256, 85));
    }

    #[test]
    fn small_images_are_never_enlarged_and_slivers_keep_a_pixel() {
        assert_eq!(thumbnail_size(100, 50, 256), (100, 50));
        assert_eq!(thumbnail_size(100_000, 10, 256), (256, 1));
        assert_eq!(thumbnail_size(u32::MAX, u32::MAX, 256), (256, 256));
    }

    #[test]
    fn the_thumbnail_leaves_out_the_legend_strip() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("thumb.jpg");
        // A 512x256 red photo above a 512x64 white strip.
        let overlay = RgbImage::from_fn(512, 320, |_, y| {
            Rgb(if y < 256 {
                [255, 0, 0]
            } else {
                [255, 255, 255]
            })
        });
        stage_thumbnail(&path, &overlay, 256, 256)
            .unwrap()
            .commit()
            .unwrap();
        let thumbnail = image::open(&path).unwrap().to_rgb8();
        assert_eq!(thumbnail.dimensions(), (256, 128));
        let bottom = thumbnail.get_pixel(128, 127).0;
        assert!(bottom[0] > 200 && bottom[1] < 60, "{bottom:?}");
    }
}
