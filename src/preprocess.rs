//! Image decoding and pre-processing, reproducing the reference data pipeline bit for bit:
//! OpenCV `imdecode(IMREAD_COLOR)` (then BGR -> RGB), mmcv's keep-ratio rescale with
//! `cv2.resize(INTER_LINEAR)`, and mmseg's per-channel normalisation.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

mod jpeg;

/// An 8-bit RGB image decoded the way OpenCV's imdecode(IMREAD_COLOR) does (then BGR->RGB).
pub type RgbImage = image::RgbImage;

/// The long-side cap of the reference `Resize` step (its scale is `(2048, short_side)`).
pub const MAX_LONG_SIDE: u32 = 2048;

/// Per-channel mean of the reference normalisation, RGB order, on the 0..255 scale.
const PIXEL_MEAN: [f32; 3] = [122.771, 116.746, 104.094];
/// Per-channel standard deviation of the reference normalisation, RGB order, on the 0..255 scale.
const PIXEL_STD: [f32; 3] = [68.501, 66.632, 70.323];

/// OpenCV's INTER_LINEAR for 8-bit images weighs taps with 11-bit fixed-point coefficients.
const COEF_SCALE: f32 = 2048.0;

/// A decoded image and what the decoder warned about on the way: damage it decoded past (a JPEG
/// cut short and closed, flipped bytes), which OpenCV decodes too, but whose pixels may be grey
/// or smeared where the data was bad.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    pub image: RgbImage,
    pub warnings: Vec<String>,
}

/// Decode bytes: any format the image crate decodes (JPEG incl. CMYK, PNG 8/16-bit, grey, palette, alpha, WebP, BMP, TIFF, GIF first frame).
/// EXIF orientation applied; alpha dropped (not composited); grey/palette expanded to RGB; 16-bit reduced to high byte (v >> 8); CMYK converted as OpenCV does.
///
/// JPEG goes through libjpeg-turbo (the `jpeg` module), as in OpenCV. GIF is the one exception
/// to "alpha dropped": like OpenCV, transparent pixels take the GIF's background colour.
///
/// An image whose header declares more than `max_pixels` pixels is refused with
/// [`TooManyPixels`] before any pixel is decoded (a decompression bomb), and the decoder's
/// allocations are bounded by what that many pixels can need, should a header lie.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<DecodedImage> {
    let format = image::guess_format(bytes)
        .context("not an image in a recognised format (unknown signature)")?;
    let (mut decoded, orientation, warnings) = if format == ImageFormat::Jpeg {
        let (rgb, warnings) = jpeg::decode_jpeg(bytes, max_pixels)?;
        (
            DynamicImage::ImageRgb8(rgb),
            jpeg_exif_orientation(bytes),
            warnings,
        )
    } else {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        // Until the size is known, only metadata is read (a PNG's compressed ICC profile, say):
        // it gets the non-pixel room alone, so a zlib bomb there cannot grow past it.
        reader.limits(decoder_limits(0));
        let mut decoder = reader
            .into_decoder()
            .with_context(|| format!("cannot read the {format:?} header"))?;
        // The size this decoder will allocate for, read by the decoder itself.
        let (width, height) = decoder.dimensions();
        TooManyPixels::check(width, height, max_pixels)?;
        decoder
            .set_limits(decoder_limits(u64::from(width) * u64::from(height)))
            .with_context(|| format!("cannot decode the {format:?} image data"))?;
        let orientation = decoder
            .orientation()
            .with_context(|| format!("cannot read the {format:?} orientation metadata"))?;
        let mut decoded = DynamicImage::from_decoder(decoder)
            .with_context(|| format!("cannot decode the {format:?} image data"))?;
        if let (ImageFormat::Gif, DynamicImage::ImageRgba8(canvas)) = (format, &mut decoded) {
            paint_gif_background(bytes, canvas);
        }
        (
            DynamicImage::ImageRgb8(to_rgb8_as_opencv(decoded)),
            orientation,
            Vec::new(),
        )
    };
    decoded.apply_orientation(orientation);
    Ok(DecodedImage {
        image: decoded.into_rgb8(),
        warnings,
    })
}

/// The most bytes a decoded pixel takes in any layout the image crate decodes to (RGBA, 32-bit
/// float samples).
const MAX_DECODED_BYTES_PER_PIXEL: u64 = 16;

/// Room for what an image file holds besides its pixels, and a decoder needs besides its output:
/// metadata (EXIF, ICC profiles, thumbnails), tables, row buffers.
const NON_PIXEL_BYTES: u64 = 64 << 20;

/// The `image` crate's limits for an image of `pixels` pixels: its decoders stop before
/// allocating more than such an image can need, whatever else the file says. The size itself is
/// checked by the caller against the decoder's own header read, so that it is refused as
/// [`TooManyPixels`] rather than as a generic limit error.
fn decoder_limits(pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(
        pixels
            .saturating_mul(MAX_DECODED_BYTES_PER_PIXEL)
            .saturating_add(NON_PIXEL_BYTES),
    );
    limits
}

/// The orientation in a JPEG's EXIF (APP1) segment, found by walking the markers before the scan
/// as libjpeg does, so that it works for every JPEG libjpeg decodes (the image crate's own JPEG
/// reader refuses some, e.g. arithmetic-coded ones).
fn jpeg_exif_orientation(bytes: &[u8]) -> Orientation {
    const APP1: u8 = 0xE1;
    jpeg_header_segments(bytes)
        .filter(|&(marker, _)| marker == APP1)
        .find_map(|(_, payload)| payload.strip_prefix(b"Exif\0\0"))
        .map_or(Orientation::NoTransforms, |tiff| {
            Orientation::from_exif_chunk(tiff).unwrap_or(Orientation::NoTransforms)
        })
}

/// The (marker, payload) segments of a JPEG before its first scan, found as libjpeg's
/// `next_marker` finds them: bytes other than 0xFF between segments are skipped (libjpeg warns
/// and goes on), and so are the 0xFF fill bytes a marker may be padded with. Ends early where the
/// data is cut short or a length is impossible.
fn jpeg_header_segments(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    const START_OF_IMAGE: u8 = 0xD8;
    const END_OF_IMAGE: u8 = 0xD9;
    const START_OF_SCAN: u8 = 0xDA;
    // Markers that stand alone, with no length or payload: TEM and RST0..RST7.
    let stands_alone = |marker: u8| marker == 0x01 || (0xD0..=0xD7).contains(&marker);
    let mut position = 2;
    std::iter::from_fn(move || loop {
        position += bytes
            .get(position..)?
            .iter()
            .position(|&byte| byte == 0xFF)?;
        let fill = bytes[position..]
            .iter()
            .take_while(|&&byte| byte == 0xFF)
            .count();
        position += fill - 1;
        let marker = *bytes.get(position + 1)?;
        match marker {
            // FF 00 is an escaped data byte, not a marker: more junk to skip.
            0x00 => position += 2,
            marker if stands_alone(marker) => position += 2,
            START_OF_IMAGE | END_OF_IMAGE | START_OF_SCAN => return None,
            _ => {
                let &[high, low] = bytes.get(position + 2..position + 4)? else {
                    return None;
                };
                // The length counts its own two bytes; libjpeg stops at a smaller one.
                let length = usize::from(u16::from_be_bytes([high, low]));
                if length < 2 {
                    return None;
                }
                let payload = bytes.get(position + 4..position + 2 + length)?;
                position += 2 + length;
                return Some((marker, payload));
            }
        }
    })
}

/// The default pixel limit of [`load_image`]: larger declared sizes are refused before decoding,
/// so that a small file claiming a huge size (a decompression bomb) cannot exhaust memory.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// The most bytes a file's pixels take uncompressed in the common formats (16-bit RGBA).
const MAX_FILE_BYTES_PER_PIXEL: u64 = 8;

/// The largest image file [`load_image`] reads for a pixel limit: an uncompressed 16-bit RGBA
/// image of `max_pixels` pixels (8 bytes a pixel) plus 64 MiB of metadata. Anything larger is
/// refused before it is read, so that a huge file cannot exhaust memory.
pub fn max_file_bytes(max_pixels: u64) -> u64 {
    max_pixels
        .saturating_mul(MAX_FILE_BYTES_PER_PIXEL)
        .saturating_add(NON_PIXEL_BYTES)
}

/// Reads and decodes an image file with [`decode_image`]. Only a regular file is read (a folder,
/// a named pipe or a device is refused without waiting on it), and only one of at most
/// [`max_file_bytes`] bytes ([`FileTooLarge`] otherwise); a header that declares more than
/// `max_pixels` pixels is refused before any pixel is decoded ([`TooManyPixels`]).
pub fn load_image(path: &Path, max_pixels: u64) -> Result<DecodedImage> {
    let bytes = read_image_file(path, max_file_bytes(max_pixels))
        .with_context(|| format!("cannot read image file {}", path.display()))?;
    if bytes.is_empty() {
        bail!("{} is empty (0 bytes)", path.display());
    }
    decode_image(&bytes, max_pixels)
        .with_context(|| format!("cannot decode image file {}", path.display()))
}

/// The content of a regular file of at most `limit` bytes. The type and size are those of the
/// file opened, not of whatever the path names a moment later.
fn read_image_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = open_without_blocking(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        bail!(
            "it is {}, not an image file",
            file_kind(&metadata.file_type())
        );
    }
    let too_large = |size| FileTooLarge { size, limit };
    if metadata.len() > limit {
        return Err(too_large(metadata.len()).into());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // The file may grow between the size check and the read.
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64).into());
    }
    Ok(bytes)
}

/// Opens a file for reading without waiting: opening a named pipe normally waits for a writer,
/// which would stall a batch; non-blocking, it returns at once, and a check of the type after it
/// can refuse the pipe. Regular files ignore the flag.
#[cfg(unix)]
pub fn open_without_blocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
pub fn open_without_blocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

/// What a path that is not a regular file is, for errors: "a folder", "a named pipe (FIFO)"...
#[cfg(unix)]
pub(crate) fn file_kind(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_fifo() {
        "a named pipe (FIFO)"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(not(unix))]
pub(crate) fn file_kind(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// An image whose header declares more pixels than the limit allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyPixels {
    pub width: u32,
    pub height: u32,
    pub limit: u64,
}

impl TooManyPixels {
    fn check(width: u32, height: u32, limit: u64) -> Result<(), TooManyPixels> {
        if u64::from(width) * u64::from(height) > limit {
            return Err(TooManyPixels {
                width,
                height,
                limit,
            });
        }
        Ok(())
    }

    /// The declared size and the limit, in megapixels.
    pub fn megapixels(&self) -> (f64, f64) {
        let pixels = u64::from(self.width) * u64::from(self.height);
        (pixels as f64 / 1e6, self.limit as f64 / 1e6)
    }
}

impl std::fmt::Display for TooManyPixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (declared, limit) = self.megapixels();
        write!(
            f,
            "it declares {}x{} = {declared:.1} megapixels, over the limit of {limit:.1}; raise \
             the limit if the image is genuine",
            self.width, self.height
        )
    }
}

impl std::error::Error for TooManyPixels {}

/// An image file larger than [`max_file_bytes`] allows for the pixel limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTooLarge {
    pub size: u64,
    pub limit: u64,
}

impl FileTooLarge {
    /// The smallest pixel limit under which this file would be read.
    pub fn pixels_needed(&self) -> u64 {
        self.size
            .saturating_sub(NON_PIXEL_BYTES)
            .div_ceil(MAX_FILE_BYTES_PER_PIXEL)
    }
}

impl std::fmt::Display for FileTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the file is {} bytes, over the {}-byte limit for images within the pixel limit; \
             raise the pixel limit to {} if the image is genuine",
            self.size,
            self.limit,
            self.pixels_needed()
        )
    }
}

impl std::error::Error for FileTooLarge {}

/// Reduces any decoded layout to 8-bit RGB with OpenCV's conventions, which differ from the
/// image crate's own `to_rgb8`: alpha is dropped rather than kept or blended, and 16-bit samples
/// keep their high byte (libpng's strip_16) instead of being rounded to `v / 257`.
fn to_rgb8_as_opencv(decoded: DynamicImage) -> RgbImage {
    let (width, height) = (decoded.width(), decoded.height());
    let from_samples = |samples: Vec<u8>| {
        RgbImage::from_raw(width, height, samples).expect("sample count matches the dimensions")
    };
    match decoded {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => {
            from_samples(rgba.pixels().flat_map(|p| [p[0], p[1], p[2]]).collect())
        }
        DynamicImage::ImageLuma8(grey) => {
            from_samples(grey.pixels().flat_map(|p| [p[0]; 3]).collect())
        }
        DynamicImage::ImageLumaA8(grey_alpha) => {
            from_samples(grey_alpha.pixels().flat_map(|p| [p[0]; 3]).collect())
        }
        DynamicImage::ImageRgb16(rgb) => from_samples(
            rgb.pixels()
                .flat_map(|p| [high_byte(p[0]), high_byte(p[1]), high_byte(p[2])])
                .collect(),
        ),
        DynamicImage::ImageRgba16(rgba) => from_samples(
            rgba.pixels()
                .flat_map(|p| [high_byte(p[0]), high_byte(p[1]), high_byte(p[2])])
                .collect(),
        ),
        DynamicImage::ImageLuma16(grey) => {
            from_samples(grey.pixels().flat_map(|p| [high_byte(p[0]); 3]).collect())
        }
        DynamicImage::ImageLumaA16(grey_alpha) => from_samples(
            grey_alpha
                .pixels()
                .flat_map(|p| [high_byte(p[0]); 3])
                .collect(),
        ),
        // Floating-point formats (HDR, EXR) have no 8-bit convention to mirror: the image crate
        // clamps, scales and drops alpha.
        other => other.into_rgb8(),
    }
}

/// OpenCV draws a GIF's first frame on a canvas filled with the background colour (the global
/// colour table's entry at the header's background index; black without a global table), so
/// transparent pixels and pixels outside the frame get that colour, not the palette entry of the
/// transparent index that the image crate leaves under alpha 0.
fn paint_gif_background(bytes: &[u8], canvas: &mut image::RgbaImage) {
    const GLOBAL_TABLE_OFFSET: usize = 13;
    let (Some(&flags), Some(&background_index)) = (bytes.get(10), bytes.get(11)) else {
        return;
    };
    let has_global_table = flags & 0x80 != 0;
    let global_table_len = 1usize << ((flags & 0x07) + 1);
    let background_index = usize::from(background_index);
    let entry = GLOBAL_TABLE_OFFSET + 3 * background_index;
    let background = match bytes.get(entry..entry + 3) {
        Some(rgb) if has_global_table && background_index < global_table_len => {
            [rgb[0], rgb[1], rgb[2], 0]
        }
        _ => [0; 4],
    };
    for pixel in canvas.pixels_mut().filter(|pixel| pixel[3] == 0) {
        pixel.0 = background;
    }
}

fn high_byte(sample: u16) -> u8 {
    (sample >> 8) as u8
}

/// mmcv rescale: scale = min(max_long / long_side, short_side / short_side_of_image) in f64; new = floor(w*scale+0.5), floor(h*scale+0.5) (at least 1).
///
/// Like mmcv, the larger of the two limits bounds the long side and the smaller the short side.
pub fn rescaled_size(width: u32, height: u32, short_side: u32, max_long_side: u32) -> (u32, u32) {
    let long_limit = f64::from(short_side.max(max_long_side));
    let short_limit = f64::from(short_side.min(max_long_side));
    let image_long = f64::from(width.max(height));
    let image_short = f64::from(width.min(height));
    let scale = (long_limit / image_long).min(short_limit / image_short);
    // mmcv truncates with int(), which is floor for these non-negative values.
    let scaled = |side: u32| ((f64::from(side) * scale + 0.5).floor() as u32).max(1);
    (scaled(width), scaled(height))
}

/// One destination coordinate of the separable linear filter: the two source indices it reads
/// (pre-multiplied by the pixel stride for columns) and their 11-bit fixed-point weights.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LinearTap {
    first: usize,
    second: usize,
    first_weight: i32,
    second_weight: i32,
}

/// OpenCV's source coordinate for destination index `dst`: half-pixel centres, computed in double
/// and rounded to float, whose floor and float remainder give the tap and its fraction.
fn source_coordinate(dst: u32, src_per_dst: f64) -> (i64, f32) {
    let position = ((f64::from(dst) + 0.5) * src_per_dst - 0.5) as f32;
    let floor = position.floor();
    (floor as i64, position - floor)
}

/// OpenCV scales `1 - fraction` and `fraction` in float and rounds each half to even
/// (`saturate_cast<short>`); rounding ties up instead moves some outputs by one level.
fn fixed_point_weights(fraction: f32) -> (i32, i32) {
    let first = ((1.0 - fraction) * COEF_SCALE).round_ties_even() as i32;
    let second = (fraction * COEF_SCALE).round_ties_even() as i32;
    (first, second)
}

/// Like OpenCV, the ratio is `1 / (dst / src)`, not `src / dst`: the two differ in the last bit
/// for some sizes, which moves taps.
fn source_per_destination(src_len: u32, dst_len: u32) -> f64 {
    1.0 / (f64::from(dst_len) / f64::from(src_len))
}

/// Horizontal taps: a coordinate left of the first or right of the last source column reads that
/// column alone (fraction forced to 0), as OpenCV's border rule does.
fn column_taps(src_width: u32, dst_width: u32, channels: usize) -> Vec<LinearTap> {
    let src_per_dst = source_per_destination(src_width, dst_width);
    let last = i64::from(src_width) - 1;
    (0..dst_width)
        .map(|dx| {
            let (mut sx, mut fraction) = source_coordinate(dx, src_per_dst);
            if sx < 0 {
                (sx, fraction) = (0, 0.0);
            }
            if sx >= last {
                (sx, fraction) = (last, 0.0);
            }
            let (first_weight, second_weight) = fixed_point_weights(fraction);
            LinearTap {
                first: sx as usize * channels,
                second: (sx + 1).min(last) as usize * channels,
                first_weight,
                second_weight,
            }
        })
        .collect()
}

/// Vertical taps: unlike columns, OpenCV clamps out-of-range row indices but keeps the fraction,
/// so a border row can be weighed twice with the two (rounded) weights.
fn row_taps(src_height: u32, dst_height: u32) -> Vec<LinearTap> {
    let src_per_dst = source_per_destination(src_height, dst_height);
    let last = i64::from(src_height) - 1;
    (0..dst_height)
        .map(|dy| {
            let (sy, fraction) = source_coordinate(dy, src_per_dst);
            let (first_weight, second_weight) = fixed_point_weights(fraction);
            LinearTap {
                first: sy.clamp(0, last) as usize,
                second: (sy + 1).clamp(0, last) as usize,
                first_weight,
                second_weight,
            }
        })
        .collect()
}

/// A source row after the horizontal pass (values scaled by 2048), tagged with its row index so
/// that consecutive destination rows can reuse it.
struct FilteredRow {
    source_row: Option<usize>,
    values: Vec<i32>,
}

impl FilteredRow {
    fn filter(&mut self, source_row: usize, src: &[u8], src_stride: usize, taps: &[LinearTap]) {
        let pixels = &src[source_row * src_stride..(source_row + 1) * src_stride];
        for (out, tap) in self.values.chunks_exact_mut(3).zip(taps) {
            let first = &pixels[tap.first..tap.first + 3];
            let second = &pixels[tap.second..tap.second + 3];
            for channel in 0..3 {
                out[channel] = i32::from(first[channel]) * tap.first_weight
                    + i32::from(second[channel]) * tap.second_weight;
            }
        }
        self.source_row = Some(source_row);
    }
}

/// Bit-exact cv2.resize(src, (w, h), interpolation=INTER_LINEAR) on uint8 3-channel images, including the exact-2x-downscale INTER_AREA special case.
///
/// The vertical pass is OpenCV's SIMD kernel, which every element of a row goes through in the
/// OpenCV builds pip ships (4.10 to 5.0, any x86-64 dispatch level): each filtered row is shifted
/// right by 4, multiplied by its weight keeping the high 16 bits, and the sum is rounded by 2 bits.
/// For an exact 2x downscale OpenCV switches to INTER_AREA, whose `(a + b + c + d + 2) >> 2` is
/// what these formulas give there too (all weights are 1024), so no separate path is needed.
///
/// # Panics
/// If `width` or `height` is 0.
pub fn resize_linear_opencv(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    assert!(
        width > 0 && height > 0,
        "cannot resize to an empty {width}x{height} image"
    );
    // OpenCV copies an unchanged size; the formulas below would give the same bytes, slower.
    if src.dimensions() == (width, height) {
        return src.clone();
    }
    let src_stride = src.width() as usize * 3;
    let columns = column_taps(src.width(), width, 3);
    let rows = row_taps(src.height(), height);
    let dst_stride = width as usize * 3;
    let new_row = || FilteredRow {
        source_row: None,
        values: vec![0; dst_stride],
    };
    let (mut upper, mut lower) = (new_row(), new_row());
    let mut dst = vec![0u8; dst_stride * height as usize];
    let src_samples = src.as_raw();
    for (out, row) in dst.chunks_exact_mut(dst_stride).zip(&rows) {
        if upper.source_row != Some(row.first) {
            if lower.source_row == Some(row.first) {
                std::mem::swap(&mut upper, &mut lower);
            } else {
                upper.filter(row.first, src_samples, src_stride, &columns);
            }
        }
        if lower.source_row != Some(row.second) {
            lower.filter(row.second, src_samples, src_stride, &columns);
        }
        for ((value, &top), &bottom) in out.iter_mut().zip(&upper.values).zip(&lower.values) {
            let weighted_top = ((top >> 4) * row.first_weight) >> 16;
            let weighted_bottom = ((bottom >> 4) * row.second_weight) >> 16;
            *value = ((weighted_top + weighted_bottom + 2) >> 2).clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(width, height, dst).expect("buffer sized from the dimensions")
}

/// Per-channel normalisation on the 0..255 scale, mean (122.771, 116.746, 104.094), std (68.501, 66.632, 70.323), RGB; output planar CHW f32, len 3*h*w.
pub fn normalize_chw(img: &RgbImage) -> Vec<f32> {
    let plane = img.width() as usize * img.height() as usize;
    let mut planes = vec![0f32; 3 * plane];
    for (index, pixel) in img.pixels().enumerate() {
        for channel in 0..3 {
            // (v - mean) / std in f32, as the reference does on a float tensor: a division, not a
            // multiplication by a rounded reciprocal.
            planes[channel * plane + index] =
                (f32::from(pixel[channel]) - PIXEL_MEAN[channel]) / PIXEL_STD[channel];
        }
    }
    planes
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Luma, LumaA, Rgb, Rgba};

    /// A deterministic, non-separable test pattern; the expected resizes below were produced by
    /// `cv2.resize(pattern, (w, h), interpolation=cv2.INTER_LINEAR)` (OpenCV 4.14.0 and 5.0.0 agree).
    fn pattern(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([0, 1, 2].map(|c| ((x * 37 + y * 91 + c * 53 + x * y * 11) % 256) as u8))
        })
    }

    fn decode(bytes: &[u8]) -> Result<RgbImage> {
        decode_image(bytes, DEFAULT_MAX_PIXELS).map(|decoded| decoded.image)
    }

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn rescaled_size_follows_mmcv() {
        assert_eq!(rescaled_size(500, 375, 336, MAX_LONG_SIDE), (448, 336));
        assert_eq!(rescaled_size(375, 500, 336, MAX_LONG_SIDE), (336, 448));
        assert_eq!(rescaled_size(1920, 1080, 336, MAX_LONG_SIDE), (597, 336));
        assert_eq!(rescaled_size(4032, 3024, 336, MAX_LONG_SIDE), (448, 336));
        assert_eq!(rescaled_size(333, 500, 336, MAX_LONG_SIDE), (336, 505));
        assert_eq!(rescaled_size(2048, 1024, 560, MAX_LONG_SIDE), (1120, 560));
    }

    #[test]
    fn rescaled_size_upscales_small_images() {
        assert_eq!(rescaled_size(100, 75, 336, MAX_LONG_SIDE), (448, 336));
        assert_eq!(rescaled_size(224, 224, 336, MAX_LONG_SIDE), (336, 336));
    }

    #[test]
    fn rescaled_size_caps_the_long_side() {
        assert_eq!(rescaled_size(8000, 1000, 336, MAX_LONG_SIDE), (2048, 256));
        assert_eq!(rescaled_size(6000, 1000, 1024, MAX_LONG_SIDE), (2048, 341));
        // mmcv would produce a zero width here; a side is never less than one pixel.
        assert_eq!(rescaled_size(1, 10000, 336, MAX_LONG_SIDE), (1, 2048));
        assert_eq!(rescaled_size(10000, 1, 336, MAX_LONG_SIDE), (2048, 1));
    }

    #[test]
    fn resize_downscale_5x7_to_3x4_matches_opencv() {
        let expected = [
            48, 101, 154, 116, 169, 126, 121, 142, 195, 181, 160, 63, 58, 111, 132, 137, 180, 83,
            123, 176, 154, 32, 85, 106, 143, 185, 89, 97, 150, 139, 198, 91, 144, 138, 159, 106,
        ];
        assert_eq!(
            resize_linear_opencv(&pattern(5, 7), 3, 4).as_raw(),
            &expected
        );
    }

    #[test]
    fn resize_upscale_8x6_to_13x11_matches_opencv() {
        // 61 of these values would come out one level off with exact rounding of the vertical
        // pass ((S0*b0 + S1*b1 + 2^21) >> 22) instead of OpenCV's truncating SIMD kernel.
        let expected = [
            0, 53, 106, 16, 69, 122, 38, 91, 144, 61, 114, 167, 84, 137, 190, 107, 160, 213, 129,
            182, 235, 152, 205, 229, 175, 228, 94, 198, 162, 48, 220, 27, 71, 95, 40, 93, 3, 56,
            109, 29, 82, 135, 46, 99, 152, 71, 124, 174, 96, 149, 148, 121, 152, 145, 146, 127,
            170, 130, 142, 195, 114, 167, 200, 139, 192, 118, 164, 157, 95, 189, 74, 120, 113, 92,
            98, 56, 109, 81, 79, 131, 184, 98, 151, 204, 127, 180, 224, 155, 208, 117, 184, 177,
            69, 213, 70, 97, 131, 73, 126, 49, 102, 151, 77, 130, 158, 106, 147, 177, 135, 154,
            206, 143, 181, 107, 148, 201, 33, 128, 181, 129, 150, 159, 152, 179, 131, 178, 146,
            163, 117, 142, 155, 97, 175, 94, 129, 131, 109, 109, 88, 129, 89, 120, 97, 122, 117,
            101, 154, 84, 133, 186, 113, 166, 131, 135, 188, 90, 178, 231, 39, 203, 152, 64, 229,
            47, 100, 115, 83, 128, 66, 116, 161, 102, 145, 197, 132, 180, 110, 162, 187, 24, 199,
            73, 60, 150, 43, 96, 36, 79, 132, 62, 115, 161, 87, 140, 181, 100, 153, 78, 127, 126,
            105, 161, 91, 139, 122, 131, 100, 118, 136, 96, 157, 97, 135, 133, 122, 111, 109, 147,
            87, 149, 108, 127, 144, 113, 122, 105, 153, 83, 140, 119, 118, 167, 92, 145, 21, 74,
            127, 51, 104, 152, 94, 147, 179, 130, 183, 72, 169, 157, 31, 213, 50, 74, 134, 65, 112,
            54, 107, 150, 90, 143, 193, 130, 183, 152, 174, 227, 45, 217, 129, 72, 247, 56, 97, 71,
            124, 177, 103, 156, 145, 144, 197, 101, 98, 151, 83, 93, 118, 94, 140, 100, 141, 135,
            135, 113, 112, 165, 84, 66, 119, 131, 72, 125, 142, 119, 172, 125, 167, 159, 80, 199,
            147, 49, 120, 173, 191, 140, 193, 133, 163, 215, 56, 77, 130, 107, 51, 95, 148, 102,
            125, 177, 136, 171, 114, 143, 196, 54, 58, 111, 105, 49, 90, 143, 100, 120, 172, 131,
            169, 94, 151, 204, 36, 170, 223, 101, 134, 187, 104, 84, 137, 112, 88, 141, 166, 115,
            121, 174, 169, 68, 121, 136, 102, 114, 94, 147, 128, 99, 151, 183, 131, 124, 177, 185,
            71, 124, 139, 118, 124, 103, 156, 127, 199, 252, 49, 129, 182, 88, 39, 92, 144, 95,
            148, 201, 152, 136, 189, 208, 35, 88, 137, 62, 115, 65, 118, 171, 122, 175, 228, 179,
            143, 196, 235, 42, 95, 144, 89, 142, 75, 128, 181,
        ];
        assert_eq!(
            resize_linear_opencv(&pattern(8, 6), 13, 11).as_raw(),
            &expected
        );
    }

    #[test]
    fn resize_exact_half_is_rounded_2x2_mean() {
        let src = pattern(6, 4);
        let expected = [
            67, 120, 173, 152, 141, 130, 109, 162, 151, 132, 121, 110, 133, 122, 111, 134, 123, 112,
        ];
        let resized = resize_linear_opencv(&src, 3, 2);
        assert_eq!(resized.as_raw(), &expected);
        for (x, y, pixel) in resized.enumerate_pixels() {
            for c in 0..3 {
                let sum: u32 = [(0, 0), (1, 0), (0, 1), (1, 1)]
                    .iter()
                    .map(|&(dx, dy)| u32::from(src.get_pixel(2 * x + dx, 2 * y + dy)[c]))
                    .sum();
                assert_eq!(u32::from(pixel[c]), (sum + 2) >> 2);
            }
        }
    }

    #[test]
    fn resize_one_pixel_wide_source_matches_opencv() {
        let expected = [
            0, 53, 106, 0, 53, 106, 0, 53, 106, 40, 93, 146, 40, 93, 146, 40, 93, 146, 97, 150,
            187, 97, 150, 187, 97, 150, 187, 153, 207, 84, 153, 207, 84, 153, 207, 84, 130, 183,
            60, 130, 183, 60, 130, 183, 60, 27, 80, 117, 27, 80, 117, 27, 80, 117, 68, 121, 174,
            68, 121, 174, 68, 121, 174, 108, 161, 214, 108, 161, 214, 108, 161, 214,
        ];
        assert_eq!(
            resize_linear_opencv(&pattern(1, 5), 3, 8).as_raw(),
            &expected
        );
    }

    #[test]
    fn resize_rounds_tied_weights_half_to_even() {
        // Stretching two pixels to 4096 puts fractions on odd multiples of 1/4096, where the
        // weights tie; rounding ties up instead would give 1 at x = 1028 and 2 at x = 1036.
        let src = RgbImage::from_raw(2, 1, vec![0, 0, 0, 255, 255, 255]).unwrap();
        let resized = resize_linear_opencv(&src, 4096, 1);
        let red: Vec<u8> = (1024..1040).map(|x| resized.get_pixel(x, 0)[0]).collect();
        assert_eq!(red, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn resize_to_same_size_is_identity() {
        let src = pattern(7, 5);
        assert_eq!(resize_linear_opencv(&src, 7, 5), src);
    }

    #[test]
    fn fixed_point_weights_round_half_to_even() {
        assert_eq!(fixed_point_weights(0.0), (2048, 0));
        assert_eq!(fixed_point_weights(0.25), (1536, 512));
        assert_eq!(fixed_point_weights(1.0 / 4096.0), (2048, 0));
        assert_eq!(fixed_point_weights(3.0 / 4096.0), (2046, 2));
    }

    #[test]
    fn column_taps_clamp_with_zero_fraction_and_rows_keep_it() {
        // Upscaling 2 -> 4: source coordinates -0.25, 0.25, 0.75, 1.25.
        let columns = column_taps(2, 4, 3);
        let rows = row_taps(2, 4);
        let tap = |first, second, first_weight, second_weight| LinearTap {
            first,
            second,
            first_weight,
            second_weight,
        };
        assert_eq!(columns[0], tap(0, 3, 2048, 0));
        assert_eq!(columns[1], tap(0, 3, 1536, 512));
        assert_eq!(columns[3], tap(3, 3, 2048, 0));
        assert_eq!(rows[0], tap(0, 0, 512, 1536));
        assert_eq!(rows[3], tap(1, 1, 1536, 512));
    }

    #[test]
    fn normalize_chw_is_planar_and_uses_the_clip_statistics() {
        let img = RgbImage::from_raw(2, 1, vec![0, 128, 255, 122, 117, 104]).unwrap();
        let expected: [f32; 6] = [
            -1.792_251_2,
            -0.011_255_365,
            0.168_897_78,
            0.003_811_949,
            2.145_898_3,
            -0.001_336_714_5,
        ];
        assert_eq!(normalize_chw(&img), expected);
    }

    #[test]
    fn decode_keeps_the_high_byte_of_16_bit_samples() {
        let rgb16 = image::ImageBuffer::from_pixel(2, 2, Rgb([0x12ff_u16, 0x80ff, 0x0080]));
        let decoded = decode(&encode(DynamicImage::ImageRgb16(rgb16), ImageFormat::Png));
        assert_eq!(decoded.unwrap().get_pixel(1, 1), &Rgb([0x12, 0x80, 0x00]));

        let grey16 = image::ImageBuffer::from_pixel(1, 1, Luma([0xfeff_u16]));
        let decoded = decode(&encode(DynamicImage::ImageLuma16(grey16), ImageFormat::Png));
        assert_eq!(decoded.unwrap().get_pixel(0, 0), &Rgb([0xfe; 3]));
    }

    #[test]
    fn decode_drops_alpha_without_compositing() {
        let rgba = image::RgbaImage::from_pixel(2, 1, Rgba([200, 100, 50, 0]));
        let decoded = decode(&encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png));
        assert_eq!(decoded.unwrap().as_raw(), &[200, 100, 50, 200, 100, 50]);

        let grey_alpha = image::GrayAlphaImage::from_pixel(1, 1, LumaA([77, 10]));
        let png = encode(DynamicImage::ImageLumaA8(grey_alpha), ImageFormat::Png);
        assert_eq!(decode(&png).unwrap().as_raw(), &[77, 77, 77]);
    }

    #[test]
    fn decode_expands_grey_to_rgb() {
        let grey = image::GrayImage::from_raw(2, 1, vec![9, 250]).unwrap();
        let decoded = decode(&encode(DynamicImage::ImageLuma8(grey), ImageFormat::Png));
        assert_eq!(decoded.unwrap().as_raw(), &[9, 9, 9, 250, 250, 250]);
    }

    /// A little-endian TIFF block holding only the EXIF orientation tag.
    fn exif_with_orientation(orientation: u8) -> Vec<u8> {
        let mut exif = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        exif.extend_from_slice(&[orientation, 0, 0, 0, 0, 0, 0, 0]);
        exif
    }

    fn jpeg_with_orientation(img: &RgbImage, orientation: Option<u8>) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
        if let Some(orientation) = orientation {
            encoder
                .set_exif_metadata(exif_with_orientation(orientation))
                .unwrap();
        }
        encoder
            .write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        bytes
    }

    #[test]
    fn images_over_the_pixel_limit_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        std::fs::write(
            &path,
            encode(DynamicImage::ImageRgb8(pattern(40, 30)), ImageFormat::Png),
        )
        .unwrap();
        let error = load_image(&path, 1199).unwrap_err();
        let refusal = error.downcast_ref::<TooManyPixels>().expect("typed");
        assert_eq!(
            (refusal.width, refusal.height, refusal.limit),
            (40, 30, 1199)
        );
        assert!(format!("{error:#}").contains("40x30"), "{error:#}");
        assert_eq!(
            load_image(&path, 1200).unwrap().image.dimensions(),
            (40, 30)
        );

        let empty = dir.path().join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        let message = format!("{:#}", load_image(&empty, 1200).unwrap_err());
        assert!(message.contains("empty (0 bytes)"), "{message}");
    }

    /// Where marker `marker` starts in a JPEG written by the image crate.
    fn marker_position(jpeg: &[u8], marker: u8) -> usize {
        jpeg.windows(2)
            .position(|pair| pair == [0xFF, marker])
            .unwrap_or_else(|| panic!("no marker {marker:02X}"))
    }

    #[test]
    fn a_jpeg_frame_over_the_limit_is_refused_behind_fill_and_junk_bytes() {
        const START_OF_FRAME: u8 = 0xC0;
        let mut jpeg = jpeg_with_orientation(&pattern(24, 16), None);
        let frame = marker_position(&jpeg, START_OF_FRAME);
        // Height, then width, after the length and the sample precision: 240x160 claimed for
        // a 24x16 scan, which libjpeg would decode as damaged data.
        jpeg[frame + 5..frame + 9].copy_from_slice(&[0, 160, 0, 240]);
        for padding in [&[0xFF][..], &[0xFF, 0xFF, 0xFF], &[0x00], &[0x12, 0xFF]] {
            let mut padded = jpeg.clone();
            padded.splice(frame..frame, padding.iter().copied());
            let error = decode_image(&padded, 240 * 160 - 1).unwrap_err();
            let refusal = error.downcast_ref::<TooManyPixels>().expect("typed");
            assert_eq!((refusal.width, refusal.height), (240, 160), "{padding:?}");
        }
    }

    #[test]
    fn exif_orientation_is_found_behind_fill_and_junk_bytes() {
        const APP1: u8 = 0xE1;
        let src = pattern(24, 16);
        let jpeg = jpeg_with_orientation(&src, Some(6));
        let exif = marker_position(&jpeg, APP1);
        for padding in [&[0xFF][..], &[0xFF, 0xFF], &[0x00, 0x00]] {
            let mut padded = jpeg.clone();
            padded.splice(exif..exif, padding.iter().copied());
            let decoded = decode_image(&padded, DEFAULT_MAX_PIXELS).unwrap();
            assert_eq!(decoded.image.dimensions(), (16, 24), "{padding:?}");
        }
    }

    #[test]
    fn damaged_jpeg_data_decodes_with_warnings() {
        let jpeg = jpeg_with_orientation(&pattern(64, 48), None);
        let intact = decode_image(&jpeg, DEFAULT_MAX_PIXELS).unwrap();
        assert!(intact.warnings.is_empty(), "{:?}", intact.warnings);

        let assert_decoded_with_a_corruption_warning = |damaged: &[u8]| {
            let decoded = decode_image(damaged, DEFAULT_MAX_PIXELS).unwrap();
            assert_eq!(decoded.image.dimensions(), (64, 48));
            let warned = decoded
                .warnings
                .iter()
                .any(|w| w.contains("Corrupt JPEG data"));
            assert!(warned, "{:?}", decoded.warnings);
        };
        // Cut inside the scan and closed with an end-of-image marker, as a copy that stopped
        // early and was "repaired" can be.
        let mut cut = jpeg[..jpeg.len() * 2 / 3].to_vec();
        cut.extend_from_slice(&[0xFF, 0xD9]);
        assert_decoded_with_a_corruption_warning(&cut);
        // Flipped bits in the scan: the rows use up less of it than there is, which libjpeg
        // finds on its way to the end-of-image marker.
        let mut flipped = jpeg.clone();
        let scan = marker_position(&jpeg, 0xDA);
        flipped[(scan + jpeg.len()) / 2] ^= 0x55;
        assert_decoded_with_a_corruption_warning(&flipped);

        // Junk between two segments: libjpeg skips it and says so.
        let mut junk = jpeg.clone();
        junk.splice(
            marker_position(&jpeg, 0xC0)..marker_position(&jpeg, 0xC0),
            [1, 2, 3],
        );
        let decoded = decode_image(&junk, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(decoded.image, intact.image);
        assert_eq!(
            decoded.warnings,
            ["Corrupt JPEG data: 3 extraneous bytes before marker 0xc0"]
        );
    }

    #[test]
    fn only_regular_files_within_the_size_bound_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("sparse.png");
        let file = File::create(&sparse).unwrap();
        // Sparse: no disk space, and none of it is ever read.
        file.set_len(max_file_bytes(1000) + 1).unwrap();
        let error = load_image(&sparse, 1000).unwrap_err();
        let refusal = error.downcast_ref::<FileTooLarge>().expect("typed");
        assert_eq!(refusal.limit, 8000 + (64 << 20));
        assert_eq!(refusal.pixels_needed(), 1001);
        assert!(format!("{error:#}").contains("sparse.png"), "{error:#}");
        assert!(load_image(&sparse, 1001)
            .unwrap_err()
            .downcast_ref::<FileTooLarge>()
            .is_none());

        let folder = format!("{:#}", load_image(dir.path(), 1000).unwrap_err());
        assert!(
            folder.contains("it is a folder, not an image file"),
            "{folder}"
        );
        #[cfg(unix)]
        {
            let zero = format!(
                "{:#}",
                load_image(Path::new("/dev/zero"), 1000).unwrap_err()
            );
            assert!(zero.contains("a character device"), "{zero}");
            let fifo = dir.path().join("pipe.jpg");
            let status = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(status.success());
            let message = format!("{:#}", load_image(&fifo, 1000).unwrap_err());
            assert!(message.contains("a named pipe (FIFO)"), "{message}");
        }
    }

    #[test]
    fn decode_applies_exif_orientation() {
        let src = pattern(24, 16);
        let upright = decode(&jpeg_with_orientation(&src, None)).unwrap();
        let rotated = |orientation| decode(&jpeg_with_orientation(&src, Some(orientation)));
        assert_eq!(rotated(3).unwrap(), image::imageops::rotate180(&upright));
        assert_eq!(rotated(6).unwrap(), image::imageops::rotate90(&upright));
        assert_eq!(rotated(8).unwrap(), image::imageops::rotate270(&upright));
        assert_eq!(rotated(6).unwrap().dimensions(), (16, 24));
    }

    #[test]
    fn decode_paints_transparent_gif_pixels_with_the_background_colour() {
        // 2x1 GIF: global palette [(10, 20, 30), (200, 150, 100)], background index 1,
        // transparent index 0, pixels [0, 1]. OpenCV gives the background colour for both.
        let gif = [
            b'G', b'I', b'F', b'8', b'9', b'a', 2, 0, 1, 0, 0x80, 1, 0, 10, 20, 30, 200, 150, 100,
            0x21, 0xf9, 4, 0x01, 0, 0, 0, 0, 0x2c, 0, 0, 0, 0, 2, 0, 1, 0, 0, 2, 2, 0x44, 0x0a, 0,
            0x3b,
        ];
        let decoded = decode(&gif).unwrap();
        assert_eq!(decoded.as_raw(), &[200, 150, 100, 200, 150, 100]);
    }

    #[test]
    fn decode_rejects_unknown_bytes_and_load_names_the_path() {
        assert!(decode(b"definitely not an image").is_err());
        let missing = Path::new("/nonexistent/sclip-test-image.png");
        let message = format!("{:#}", load_image(missing, DEFAULT_MAX_PIXELS).unwrap_err());
        assert!(
            message.contains("/nonexistent/sclip-test-image.png"),
            "{message}"
        );
    }
}
