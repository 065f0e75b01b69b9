//! Overlays: the photo blended with its mask's class colours, with a legend strip below it that
//! names each class present.
//!
//! The legend text uses the public-domain 8x8 bitmap font from `font8x8`, drawn at an integer
//! scale, so no font file ships with the program and the output is the same on every machine.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use font8x8::legacy::{BASIC_LEGACY, LATIN_LEGACY};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::RgbImage;

use crate::atomic_write::Staged;
use crate::output::voc_palette;
use crate::{ClassList, PostprocessParams};

/// One legend entry: a class present in the mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegendEntry<'a> {
    pub name: &'a str,
    pub colour: [u8; 3],
}

/// Class 0's colour in overlays and legends when it is an object, not background (see
/// [`overlay_palette`]): orange. No VOC palette entry has a channel above 224, so it is told
/// apart from every other class's colour.
pub const OBJECT_CLASS_ZERO_COLOUR: [u8; 3] = [255, 128, 0];

/// A class 0 named like this (any of its names, ignoring case) is background whatever the
/// thresholds.
const BACKGROUND_NAME: &str = "background";

/// Whether class 0 is background, which VOC draws black: when the thresholds in force can put
/// pixels in it (`prob_thd` above 0 sends unsure pixels to class 0, and `area_thd` removes small
/// classes other than 0, as the benchmark presets with a background do), or when one of its
/// names is "background". Otherwise it is an object like the others ("person" of
/// `person,car,road`), and black would hide it.
pub fn class_zero_is_background(classes: &ClassList, postprocess: &PostprocessParams) -> bool {
    let thresholds_fill_it = postprocess.prob_thd > 0.0 || postprocess.area_thd.is_some();
    let (names, owners) = classes.queries();
    thresholds_fill_it
        || names
            .iter()
            .zip(owners)
            .any(|(name, class)| class == 0 && name.trim().eq_ignore_ascii_case(BACKGROUND_NAME))
}

/// The colours overlays and legends draw each class in: the label PNGs' [`voc_palette`], so a
/// class looks the same in both, except that class 0, when it is not background, is drawn in
/// [`OBJECT_CLASS_ZERO_COLOUR`] rather than VOC's background black. The label values and the
/// PNG palette stay standard; only what people look at changes.
pub fn overlay_palette(class_zero_is_background: bool) -> [[u8; 3]; 256] {
    let mut palette = voc_palette();
    if !class_zero_is_background {
        palette[0] = OBJECT_CLASS_ZERO_COLOUR;
    }
    palette
}

const STRIP_BACKGROUND: [u8; 3] = [255, 255, 255];
/// Text and swatch borders: dark grey rather than black, so the border still outlines a black
/// swatch (VOC's background colour).
const INK: [u8; 3] = [32, 32, 32];

// The legend's geometry, in font pixels: each is multiplied by the glyph scale, so the whole strip
// keeps its proportions from thumbnails to full-size photos.
const GLYPH_SIZE: u32 = 8;
const STRIP_PADDING: u32 = 4;
/// Taller than a glyph so the colour stays visible around the border even at scale 1.
const SWATCH_SIZE: u32 = 10;
const SWATCH_BORDER: u32 = 1;
const SWATCH_TO_NAME: u32 = 3;
const BETWEEN_ENTRIES: u32 = 12;
const BETWEEN_ROWS: u32 = 4;
const ELLIPSIS: &str = "...";

/// Image pixels per glyph scale step along the longer side. A glyph is then about 1/50 of that
/// side, so text keeps roughly the same size on screen when a viewer fits the image to the window.
const PIXELS_PER_SCALE: u32 = 400;
/// Beyond this, glyphs (128 px) are legible on any photo and larger ones only waste space.
const MAX_SCALE: u32 = 16;
/// A narrow image gets a smaller scale, so that one legend row still holds names this long.
const MIN_NAME_CHARS_PER_ROW: u32 = 12;

/// Drawn for characters the font lacks: an empty box, like a "tofu" glyph in other text renderers.
const MISSING_GLYPH: [u8; 8] = [0x7E, 0x42, 0x42, 0x42, 0x42, 0x42, 0x7E, 0x00];

/// The photo with each pixel blended towards its class colour,
/// `out = (1 - alpha) * photo + alpha * palette[label]` rounded to the nearest integer, and, when
/// `legend` is not empty, a legend strip appended below the photo (never covering it).
///
/// `labels` holds one class index per photo pixel, row-major; `alpha` is in `[0, 1]`. The legend
/// lists `legend` in order, left to right, wrapping onto more rows when the image is too narrow.
///
/// # Panics
/// If `labels` does not have one entry per photo pixel or `alpha` is outside `[0, 1]`: callers
/// build the labels from the photo and validate alpha, so either is a bug.
pub fn render_overlay(
    photo: &RgbImage,
    labels: &[u8],
    palette: &[[u8; 3]; 256],
    alpha: f32,
    legend: &[LegendEntry],
) -> RgbImage {
    let (width, height) = photo.dimensions();
    assert_eq!(
        labels.len() as u64,
        u64::from(width) * u64::from(height),
        "render_overlay needs one label per pixel of the {width}x{height} photo"
    );
    assert!(
        (0.0..=1.0).contains(&alpha),
        "render_overlay needs alpha in [0, 1], got {alpha}"
    );

    let legend_layout = (!legend.is_empty()).then(|| layout_legend(width, height, legend));
    let strip_height = legend_layout.as_ref().map_or(0, |layout| layout.height);
    let photo_bytes = width as usize * height as usize * 3;
    let strip_bytes = width as usize * strip_height as usize * 3;
    let mut pixels = vec![0; photo_bytes + strip_bytes];
    let (blended, strip) = pixels.split_at_mut(photo_bytes);

    // A lookup of every (colour, photo) channel pair turns the per-pixel work into three table
    // reads, with results identical to evaluating the formula per pixel.
    let blend = blend_table(alpha);
    for ((out, pixel), &label) in blended.chunks_exact_mut(3).zip(photo.pixels()).zip(labels) {
        let colour = palette[usize::from(label)];
        for ((out, &photo_value), colour_value) in out.iter_mut().zip(&pixel.0).zip(colour) {
            *out = blend[usize::from(colour_value)][usize::from(photo_value)];
        }
    }

    if let Some(layout) = legend_layout {
        let mut canvas = Canvas {
            pixels: strip,
            width,
            height: strip_height,
        };
        canvas.draw_legend(&layout);
    }
    RgbImage::from_raw(width, height + strip_height, pixels)
        .expect("the buffer was sized for the photo plus the strip")
}

/// `table[colour][photo]` is one channel of the blend of `photo` towards `colour`.
fn blend_table(alpha: f32) -> Vec<[u8; 256]> {
    let photo_weight = 1.0 - alpha;
    (0..=u8::MAX)
        .map(|colour| {
            let mut row = [0; 256];
            for (photo, out) in (0..=u8::MAX).zip(&mut row) {
                let blended = photo_weight * f32::from(photo) + alpha * f32::from(colour);
                // A convex combination of two bytes stays within 0..=255, so the cast never clamps.
                *out = blended.round() as u8;
            }
            row
        })
        .collect()
}

struct LegendLayout {
    scale: u32,
    entries: Vec<PlacedEntry>,
    /// Of the whole strip, padding included.
    height: u32,
}

/// A legend entry positioned in strip coordinates, its name already shortened to fit.
struct PlacedEntry {
    x: u32,
    y: u32,
    colour: [u8; 3],
    name: String,
}

/// The glyph scale for a `width` x `height` photo: 1 up to about 600 px, growing with the longer
/// side after that, and held down on narrow images so a row can still hold a readable name.
fn glyph_scale(width: u32, height: u32) -> u32 {
    let by_size = width.max(height).saturating_add(PIXELS_PER_SCALE / 2) / PIXELS_PER_SCALE;
    let by_width = width
        / (2 * STRIP_PADDING + SWATCH_SIZE + SWATCH_TO_NAME + MIN_NAME_CHARS_PER_ROW * GLYPH_SIZE);
    by_size.min(by_width).clamp(1, MAX_SCALE)
}

/// Places entries left to right, starting a new row whenever the next entry would cross the
/// right padding.
fn layout_legend(width: u32, height: u32, legend: &[LegendEntry]) -> LegendLayout {
    let scale = glyph_scale(width, height);
    let left = STRIP_PADDING * scale;
    let right = width.saturating_sub(STRIP_PADDING * scale);
    let name_room = right.saturating_sub(left + (SWATCH_SIZE + SWATCH_TO_NAME) * scale);
    let max_name_chars = name_room / (GLYPH_SIZE * scale);

    let mut entries = Vec::with_capacity(legend.len());
    let (mut x, mut y) = (left, STRIP_PADDING * scale);
    for entry in legend {
        let name = fit_name(entry.name, max_name_chars as usize);
        let name_chars = name.chars().count() as u32;
        let entry_width = if name_chars == 0 {
            SWATCH_SIZE * scale
        } else {
            (SWATCH_SIZE + SWATCH_TO_NAME + name_chars * GLYPH_SIZE) * scale
        };
        if x > left && x + entry_width > right {
            x = left;
            y += (SWATCH_SIZE + BETWEEN_ROWS) * scale;
        }
        entries.push(PlacedEntry {
            x,
            y,
            colour: entry.colour,
            name,
        });
        x += entry_width + BETWEEN_ENTRIES * scale;
    }
    LegendLayout {
        scale,
        entries,
        height: y + (SWATCH_SIZE + STRIP_PADDING) * scale,
    }
}

/// `name` if it has at most `max_chars` characters, else its start followed by "...".
fn fit_name(name: &str, max_chars: usize) -> String {
    if name.chars().count() <= max_chars {
        return name.to_owned();
    }
    let kept: String = name
        .chars()
        .take(max_chars.saturating_sub(ELLIPSIS.len()))
        .collect();
    // "traffic..." reads better than "traffic ...", and on very narrow images even the ellipsis
    // is cut to the room left.
    kept.trim_end()
        .chars()
        .chain(ELLIPSIS.chars())
        .take(max_chars)
        .collect()
}

/// The font covers printable ASCII and Latin-1, which includes most accented Latin class names.
fn glyph(character: char) -> [u8; 8] {
    match u32::from(character) {
        code @ 0x20..=0x7E => BASIC_LEGACY[code as usize],
        code @ 0xA0..=0xFF => LATIN_LEGACY[(code - 0xA0) as usize],
        _ => MISSING_GLYPH,
    }
}

/// A mutable RGB pixel buffer whose drawing calls clip at its edges.
struct Canvas<'a> {
    pixels: &'a mut [u8],
    width: u32,
    height: u32,
}

impl Canvas<'_> {
    fn draw_legend(&mut self, layout: &LegendLayout) {
        let scale = layout.scale;
        self.fill_rect(0, 0, self.width, self.height, STRIP_BACKGROUND);
        for entry in &layout.entries {
            let side = SWATCH_SIZE * scale;
            let border = SWATCH_BORDER * scale;
            self.fill_rect(entry.x, entry.y, side, side, INK);
            self.fill_rect(
                entry.x + border,
                entry.y + border,
                side - 2 * border,
                side - 2 * border,
                entry.colour,
            );
            let name_x = entry.x + (SWATCH_SIZE + SWATCH_TO_NAME) * scale;
            let name_y = entry.y + (SWATCH_SIZE - GLYPH_SIZE) / 2 * scale;
            self.draw_text(name_x, name_y, &entry.name, scale);
        }
    }

    fn draw_text(&mut self, x: u32, y: u32, text: &str, scale: u32) {
        let advance = GLYPH_SIZE * scale;
        for (glyph_x, character) in (0..).map(|index| x + index * advance).zip(text.chars()) {
            for (row, bits) in (0..).zip(glyph(character)) {
                // Bit 0 is the leftmost pixel of a font8x8 glyph row.
                for column in (0..GLYPH_SIZE).filter(|column| (bits >> column) & 1 == 1) {
                    self.fill_rect(glyph_x + column * scale, y + row * scale, scale, scale, INK);
                }
            }
        }
    }

    fn fill_rect(&mut self, x: u32, y: u32, width: u32, height: u32, colour: [u8; 3]) {
        let x_end = x.saturating_add(width).min(self.width);
        let y_end = y.saturating_add(height).min(self.height);
        if x >= x_end {
            return;
        }
        for row in y..y_end {
            let row_start = row as usize * self.width as usize;
            let span = (row_start + x as usize) * 3..(row_start + x_end as usize) * 3;
            for pixel in self.pixels[span].chunks_exact_mut(3) {
                pixel.copy_from_slice(&colour);
            }
        }
    }
}

const ACCEPTED_EXTENSIONS: &str = ".png, .jpg or .jpeg (any case)";
const JPEG_QUALITY: u8 = 90;

/// The file formats an overlay is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayEncoding {
    /// 8-bit RGB, lossless.
    Png,
    /// Quality 90.
    Jpeg,
}

fn encoding_for(path: &Path) -> Option<OverlayEncoding> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    match extension.as_str() {
        "png" => Some(OverlayEncoding::Png),
        "jpg" | "jpeg" => Some(OverlayEncoding::Jpeg),
        _ => None,
    }
}

/// Stages `overlay` for `path` (see [`Staged`]): `.png` as 8-bit RGB PNG,
/// `.jpg` or `.jpeg` (any case) as JPEG at quality 90. Any other extension is an error that names
/// the path and the accepted extensions, and writes nothing.
pub fn stage_overlay(path: &Path, overlay: &RgbImage) -> Result<Staged> {
    let Some(encoding) = encoding_for(path) else {
        bail!(
            "cannot write overlay {}: the file name must end in {ACCEPTED_EXTENSIONS}",
            path.display()
        );
    };
    Staged::write(path, |out| write_overlay(out, overlay, encoding))
        .with_context(|| format!("cannot write overlay {}", path.display()))
}

/// Encodes `overlay` into `out` (a pipe, say) as [`stage_overlay`] would for the encoding.
pub fn write_overlay(
    out: &mut dyn Write,
    overlay: &RgbImage,
    encoding: OverlayEncoding,
) -> Result<()> {
    match encoding {
        OverlayEncoding::Png => overlay.write_with_encoder(PngEncoder::new(out))?,
        OverlayEncoding::Jpeg => {
            overlay.write_with_encoder(JpegEncoder::new_with_quality(out, JPEG_QUALITY))?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const PERSON: [u8; 3] = [192, 128, 128];
    const CAT: [u8; 3] = [64, 0, 0];

    fn flat_photo(width: u32, height: u32, colour: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(width, height, Rgb(colour))
    }

    fn entries<'a>(names: &[&'a str]) -> Vec<LegendEntry<'a>> {
        let palette = voc_palette();
        (1..)
            .zip(names)
            .map(|(class, &name)| LegendEntry {
                name,
                colour: palette[class],
            })
            .collect()
    }

    /// The strip below the photo, as RGB pixels.
    fn strip_pixels(overlay: &RgbImage, photo_height: u32) -> Vec<[u8; 3]> {
        overlay
            .enumerate_pixels()
            .filter(|(_, y, _)| *y >= photo_height)
            .map(|(_, _, pixel)| pixel.0)
            .collect()
    }

    fn count(pixels: &[[u8; 3]], colour: [u8; 3]) -> usize {
        pixels.iter().filter(|&&pixel| pixel == colour).count()
    }

    fn thresholds(prob_thd: f32, area_thd: Option<f32>) -> PostprocessParams {
        PostprocessParams {
            logit_scale: 40.0,
            prob_thd,
            area_thd,
        }
    }

    #[test]
    fn class_zero_is_background_when_thresholds_fill_it_or_it_is_named_so() {
        let objects = ClassList::parse_inline("person,car,road").unwrap();
        assert!(!class_zero_is_background(&objects, &thresholds(0.0, None)));
        assert!(class_zero_is_background(&objects, &thresholds(0.1, None)));
        assert!(class_zero_is_background(
            &objects,
            &thresholds(0.0, Some(0.1))
        ));
        let named = ClassList::parse_inline("sky|Background,person").unwrap();
        assert!(class_zero_is_background(&named, &thresholds(0.0, None)));
        // Only class 0 decides: a background elsewhere in the list is a class like the others.
        let later = ClassList::parse_inline("person,background").unwrap();
        assert!(!class_zero_is_background(&later, &thresholds(0.0, None)));
    }

    #[test]
    fn an_object_class_zero_is_visible_in_the_overlay_and_the_legend() {
        let palette = overlay_palette(false);
        assert_eq!(palette[0], OBJECT_CLASS_ZERO_COLOUR);
        assert_eq!(palette[1..], voc_palette()[1..]);
        assert!(!voc_palette().contains(&OBJECT_CLASS_ZERO_COLOUR));
        assert_eq!(overlay_palette(true), voc_palette());

        let photo = flat_photo(40, 30, [20, 20, 20]);
        let legend = [LegendEntry {
            name: "person",
            colour: palette[0],
        }];
        let overlay = render_overlay(&photo, &[0; 1200], &palette, 0.5, &legend);
        let person = overlay.get_pixel(10, 10).0;
        assert!(
            person.iter().map(|&v| u32::from(v)).sum::<u32>() > 3 * 64,
            "class 0 is near-black: {person:?}"
        );
        assert_eq!(person, [138, 74, 10]);
        let strip = strip_pixels(&overlay, 30);
        assert!(count(&strip, OBJECT_CLASS_ZERO_COLOUR) > 0, "legend swatch");
    }

    #[test]
    fn alpha_zero_keeps_the_photo_and_alpha_one_paints_the_class_colours() {
        let photo = RgbImage::from_fn(4, 3, |x, y| Rgb([x as u8 * 60, y as u8 * 100, 7]));
        let labels: Vec<u8> = (0..12).collect();
        let palette = voc_palette();

        let unchanged = render_overlay(&photo, &labels, &palette, 0.0, &[]);
        assert_eq!(unchanged, photo);

        let painted = render_overlay(&photo, &labels, &palette, 1.0, &[]);
        for (pixel, &label) in painted.pixels().zip(&labels) {
            assert_eq!(pixel.0, palette[usize::from(label)]);
        }
    }

    #[test]
    fn blending_rounds_to_the_nearest_value_with_halves_away_from_zero() {
        let mut palette = [[0; 3]; 256];
        palette[1] = [201, 1, 255];
        let photo = flat_photo(1, 1, [100, 0, 0]);

        let half = render_overlay(&photo, &[1], &palette, 0.5, &[]);
        // 150.5 -> 151, 0.5 -> 1, 127.5 -> 128.
        assert_eq!(half.get_pixel(0, 0).0, [151, 1, 128]);

        let quarter = render_overlay(&photo, &[1], &palette, 0.25, &[]);
        // 75 + 50.25 -> 125, 0.25 -> 0, 63.75 -> 64.
        assert_eq!(quarter.get_pixel(0, 0).0, [125, 0, 64]);
    }

    #[test]
    fn blend_table_matches_the_formula_for_every_pair() {
        for alpha in [0.0, 0.3, 0.5, 0.77, 1.0] {
            let table = blend_table(alpha);
            for colour in 0..=255u8 {
                for photo in 0..=255u8 {
                    let expected =
                        ((1.0 - alpha) * f32::from(photo) + alpha * f32::from(colour)).round();
                    assert_eq!(
                        f32::from(table[usize::from(colour)][usize::from(photo)]),
                        expected
                    );
                }
            }
        }
    }

    #[test]
    fn empty_legend_adds_no_strip() {
        let photo = flat_photo(50, 40, [10, 20, 30]);
        let overlay = render_overlay(&photo, &[0; 2000], &voc_palette(), 0.5, &[]);
        assert_eq!(overlay.dimensions(), (50, 40));
    }

    #[test]
    fn legend_strip_is_appended_below_the_untouched_blended_photo() {
        let photo = RgbImage::from_fn(120, 90, |x, y| Rgb([x as u8, y as u8, 200]));
        let labels: Vec<u8> = (0..120 * 90).map(|index| (index % 3) as u8).collect();
        let palette = voc_palette();
        let legend = entries(&["aeroplane", "bicycle"]);

        let blended = render_overlay(&photo, &labels, &palette, 0.4, &[]);
        let overlay = render_overlay(&photo, &labels, &palette, 0.4, &legend);
        let strip_height = layout_legend(120, 90, &legend).height;
        assert!(strip_height > 0);
        assert_eq!(overlay.dimensions(), (120, 90 + strip_height));
        let photo_bytes = blended.as_raw().len();
        assert_eq!(
            &overlay.as_raw()[..photo_bytes],
            blended.as_raw().as_slice()
        );
    }

    #[test]
    fn swatches_show_the_class_colours_with_a_dark_border() {
        let photo = flat_photo(200, 100, [255, 255, 255]);
        let legend = [
            LegendEntry {
                name: "person",
                colour: PERSON,
            },
            LegendEntry {
                name: "cat",
                colour: CAT,
            },
        ];
        let overlay = render_overlay(&photo, &[0; 20_000], &voc_palette(), 0.5, &legend);
        let strip = strip_pixels(&overlay, 100);

        let layout = layout_legend(200, 100, &legend);
        let inner_side = ((SWATCH_SIZE - 2 * SWATCH_BORDER) * layout.scale) as usize;
        assert_eq!(count(&strip, PERSON), inner_side * inner_side);
        assert_eq!(count(&strip, CAT), inner_side * inner_side);
        let first = &layout.entries[0];
        let swatch_corner = overlay.get_pixel(first.x, 100 + first.y).0;
        assert_eq!(swatch_corner, INK);
    }

    #[test]
    fn names_are_drawn_as_dark_pixels() {
        let photo = flat_photo(200, 100, [0, 0, 0]);
        let render = |name| {
            let legend = [LegendEntry {
                name,
                colour: PERSON,
            }];
            let overlay = render_overlay(&photo, &[0; 20_000], &voc_palette(), 0.5, &legend);
            count(&strip_pixels(&overlay, 100), INK)
        };
        let border_only = render("");
        let with_text = render("person");
        assert!(
            with_text > border_only + 50,
            "{with_text} dark pixels with text, {border_only} without"
        );
    }

    #[test]
    fn characters_missing_from_the_font_are_drawn_as_boxes() {
        assert_eq!(glyph('猫'), MISSING_GLYPH);
        assert_eq!(glyph('\t'), MISSING_GLYPH);
        assert_eq!(glyph('A'), BASIC_LEGACY[usize::from(b'A')]);
        assert_ne!(glyph('é'), MISSING_GLYPH);
        assert_ne!(glyph('é'), glyph('e'));
    }

    #[test]
    fn narrow_image_with_many_entries_wraps_onto_more_rows() {
        let names = [
            "aeroplane",
            "bicycle",
            "bird",
            "boat",
            "bottle",
            "bus",
            "car",
            "cat",
        ];
        let narrow = layout_legend(96, 72, &entries(&names));
        let rows = |layout: &LegendLayout| {
            let mut ys: Vec<u32> = layout.entries.iter().map(|entry| entry.y).collect();
            ys.dedup();
            ys.len()
        };
        assert!(rows(&narrow) >= 4, "{} rows", rows(&narrow));
        let single = layout_legend(96, 72, &entries(&names[..1]));
        assert!(narrow.height > single.height);

        let wide = layout_legend(1200, 72, &entries(&names[..3]));
        assert_eq!(rows(&wide), 1);
    }

    #[test]
    fn every_entry_stays_inside_the_strip() {
        let names = [
            "a very long class name that cannot fit on one row",
            "sky",
            "",
            "pneumonoultramicroscopicsilicovolcanoconiosis",
        ];
        for (width, height) in [(96, 72), (300, 4000), (640, 480), (4000, 3000), (30, 30)] {
            let layout = layout_legend(width, height, &entries(&names));
            for entry in &layout.entries {
                let name_width = entry.name.chars().count() as u32 * GLYPH_SIZE;
                let right = entry.x + (SWATCH_SIZE + SWATCH_TO_NAME + name_width) * layout.scale;
                assert!(
                    right <= width,
                    "{:?} ends at {right} in a {width}-px image",
                    entry.name
                );
                assert!(entry.y + SWATCH_SIZE * layout.scale <= layout.height);
            }
        }
    }

    #[test]
    fn names_too_long_for_a_row_end_in_an_ellipsis() {
        assert_eq!(fit_name("sky", 9), "sky");
        assert_eq!(fit_name("aeroplane", 9), "aeroplane");
        assert_eq!(fit_name("aeroplanes", 9), "aeropl...");
        assert_eq!(fit_name("traffic light", 11), "traffic...");
        assert_eq!(fit_name("aeroplane", 2), "..");
        assert_eq!(fit_name("café au lait", 7), "café...");

        let layout = layout_legend(96, 72, &entries(&["television monitor"]));
        assert_eq!(layout.entries[0].name, "televi...");
    }

    #[test]
    fn glyph_scale_grows_with_the_image_but_keeps_names_readable_when_narrow() {
        assert_eq!(glyph_scale(96, 72), 1);
        assert_eq!(glyph_scale(640, 480), 2);
        assert_eq!(glyph_scale(4000, 3000), 10);
        assert_eq!(glyph_scale(3000, 4000), 10);
        assert_eq!(glyph_scale(100_000, 50_000), MAX_SCALE);
        assert_eq!(glyph_scale(300, 4000), 2);
        assert_eq!(glyph_scale(0, 0), 1);
    }

    #[test]
    fn zero_width_photo_renders_without_panicking() {
        let legend = entries(&["cat"]);
        let overlay = render_overlay(&RgbImage::new(0, 5), &[], &voc_palette(), 0.5, &legend);
        assert_eq!(overlay.width(), 0);
    }

    #[test]
    #[should_panic(expected = "render_overlay needs one label per pixel of the 4x3 photo")]
    fn wrong_label_count_is_a_bug() {
        render_overlay(&RgbImage::new(4, 3), &[0; 11], &voc_palette(), 0.5, &[]);
    }

    fn sample_overlay() -> RgbImage {
        let photo = RgbImage::from_fn(64, 48, |x, y| Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let labels: Vec<u8> = (0..64 * 48).map(|index| (index / 700) as u8).collect();
        render_overlay(
            &photo,
            &labels,
            &voc_palette(),
            0.5,
            &entries(&["cat", "dog"]),
        )
    }

    #[test]
    fn png_round_trip_is_lossless() {
        let directory = tempfile::tempdir().unwrap();
        let overlay = sample_overlay();
        for name in ["overlay.png", "OVERLAY.PNG"] {
            let path = directory.path().join(name);
            stage_overlay(&path, &overlay).unwrap().commit().unwrap();
            let decoded = image::open(&path).unwrap();
            assert_eq!(decoded.color(), image::ColorType::Rgb8);
            assert_eq!(decoded.into_rgb8(), overlay);
        }
    }

    #[test]
    fn jpeg_round_trip_keeps_the_size_and_roughly_the_pixels() {
        let directory = tempfile::tempdir().unwrap();
        let overlay = sample_overlay();
        for name in ["overlay.jpg", "overlay.jpeg", "overlay.JPG", "overlay.JpEg"] {
            let path = directory.path().join(name);
            stage_overlay(&path, &overlay).unwrap().commit().unwrap();
            assert_eq!(
                image::ImageFormat::from_path(&path).unwrap(),
                image::ImageFormat::Jpeg
            );
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[..2], [0xFF, 0xD8], "JPEG start-of-image marker");
            let decoded = image::load_from_memory(&bytes).unwrap().into_rgb8();
            assert_eq!(decoded.dimensions(), overlay.dimensions());
            let total_error: u64 = decoded
                .as_raw()
                .iter()
                .zip(overlay.as_raw())
                .map(|(&a, &b)| u64::from(a.abs_diff(b)))
                .sum();
            let mean_error = total_error as f64 / overlay.as_raw().len() as f64;
            assert!(mean_error < 8.0, "mean error {mean_error}");
        }
    }

    #[test]
    fn unsupported_extension_names_the_path_and_the_accepted_ones() {
        let directory = tempfile::tempdir().unwrap();
        for name in ["overlay.bmp", "overlay", "overlay.png.txt"] {
            let path = directory.path().join(name);
            assert!(encoding_for(&path).is_none());
            let error = stage_overlay(&path, &sample_overlay()).unwrap_err();
            assert_eq!(
                format!("{error:#}"),
                format!(
                    "cannot write overlay {}: the file name must end in \
                     .png, .jpg or .jpeg (any case)",
                    path.display()
                )
            );
        }
        assert_eq!(std::fs::read_dir(directory.path()).unwrap().count(), 0);
        for name in ["a.png", "a.PNG", "b.jpg", "b.Jpeg", "dir.d/c.jpeg"] {
            assert!(encoding_for(Path::new(name)).is_some(), "{name}");
        }
    }

    #[test]
    fn write_errors_name_the_overlay() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("missing").join("overlay.png");
        let error = stage_overlay(&path, &sample_overlay()).unwrap_err();
        assert!(
            format!("{error:#}").starts_with(&format!("cannot write overlay {}: ", path.display())),
            "{error:#}"
        );
    }
}
