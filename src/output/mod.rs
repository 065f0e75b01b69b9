//! Writing segmentation results to disk: colour-mapped label PNGs and NumPy `.npy` arrays.
//!
//! Every file is [`Staged`]: written whole to a hidden temporary sibling, then renamed into place
//! by [`Staged::commit`] (or [`commit_all`](crate::atomic_write::commit_all) for an image's
//! outputs together), so a reader (a viewer, a script polling the output directory) sees either
//! the previous complete file or the new complete file, never a partial one, and a failed or
//! interrupted write never leaves a truncated file at the target.

pub mod overlay;
pub mod thumbnail;

use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::atomic_write::Staged;

/// The PASCAL VOC colour map: index `i` -> `[r, g, b]` for every `i` in `0..256`.
///
/// Bits 0, 1 and 2 of `i` become the most significant bits of red, green and blue, the next three
/// bits the next most significant, and so on. Spreading the low bits to the high end of each
/// channel makes neighbouring class indices visually distinct, and because the 8 bits of `i` map
/// to distinct positions in the 24-bit colour, every index gets a different colour.
pub fn voc_palette() -> [[u8; 3]; 256] {
    let mut palette = [[0u8; 3]; 256];
    for (index, colour) in palette.iter_mut().enumerate() {
        let mut remaining_bits = index;
        for bit_position in (0..8).rev() {
            for (channel, value) in colour.iter_mut().enumerate() {
                let bit = ((remaining_bits >> channel) & 1) as u8;
                *value |= bit << bit_position;
            }
            remaining_bits >>= 3;
        }
    }
    palette
}

/// How a label PNG stores its class indices. Both hold the index itself as each pixel's 8-bit
/// value; they differ in what readers that convert to colour make of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelFormat {
    /// Paletted, with [`voc_palette`], like the PASCAL VOC ground truth: viewers show the class
    /// colours, and PIL's `Image.open` and a `png` reader without transformations give indices.
    /// OpenCV's `imread` converts to colours (even with `IMREAD_UNCHANGED`).
    #[default]
    Palette,
    /// Greyscale: `cv2.imread(path, cv2.IMREAD_UNCHANGED)`, PIL and every other reader give the
    /// indices; a viewer shows near-black shades.
    Grey,
}

impl LabelFormat {
    fn color_type(self) -> png::ColorType {
        match self {
            LabelFormat::Palette => png::ColorType::Indexed,
            LabelFormat::Grey => png::ColorType::Grayscale,
        }
    }

    /// Whether `header`, the start of a file, is an 8-bit PNG in this format. Reads the IHDR
    /// chunk, which the PNG format requires to come first, so 26 bytes are enough.
    pub fn matches_png_header(self, header: &[u8]) -> bool {
        const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
        const IHDR_AT: usize = 12;
        const BIT_DEPTH_AT: usize = 24;
        const COLOR_TYPE_AT: usize = 25;
        header.len() > COLOR_TYPE_AT
            && header.starts_with(SIGNATURE)
            && &header[IHDR_AT..IHDR_AT + 4] == b"IHDR"
            && header[BIT_DEPTH_AT] == png::BitDepth::Eight as u8
            && header[COLOR_TYPE_AT] == self.color_type() as u8
    }
}

/// Stages a [`LabelFormat::Palette`] label PNG: see [`stage_label_png_as`].
pub fn stage_label_png(path: &Path, labels: &[u8], width: u32, height: u32) -> Result<Staged> {
    stage_label_png_as(path, labels, width, height, LabelFormat::Palette)
}

/// Stages an 8-bit PNG whose pixel values are the class indices in `labels` (row-major,
/// `width * height` entries), paletted with [`voc_palette`] or greyscale as `format` says.
///
/// The full 256-entry palette is always written, not just the entries up to the largest label:
/// every possible `u8` label is then a valid palette index (PNG decoders treat an index past the
/// end of PLTE as an error or draw it in an arbitrary colour), every mask from one run carries an
/// identical palette, and the files match the layout of the VOC ground-truth masks, whose void
/// label 255 has its own colour. The cost is at most 765 extra bytes per file.
///
/// No `tRNS` chunk is written, so viewers show every class opaque, and a `png` reader without
/// transformations reads back the raw indices.
pub fn stage_label_png_as(
    path: &Path,
    labels: &[u8],
    width: u32,
    height: u32,
    format: LabelFormat,
) -> Result<Staged> {
    check_label_count(labels.len(), width, height)
        .and_then(|()| {
            Staged::write(path, |out| {
                write_label_png(out, labels, width, height, format)
            })
        })
        .with_context(|| format!("cannot write mask {}", path.display()))
}

/// Encodes the label PNG that [`stage_label_png_as`] stages into `out` (a pipe, say), after the
/// same check of the label count.
pub fn write_label_png(
    out: &mut dyn Write,
    labels: &[u8],
    width: u32,
    height: u32,
    format: LabelFormat,
) -> Result<()> {
    check_label_count(labels.len(), width, height)?;
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(format.color_type());
    encoder.set_depth(png::BitDepth::Eight);
    if format == LabelFormat::Palette {
        encoder.set_palette(voc_palette().as_flattened().to_vec());
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(labels)?;
    writer.finish()?;
    Ok(())
}

fn check_label_count(label_count: usize, width: u32, height: u32) -> Result<()> {
    ensure!(
        width > 0 && height > 0,
        "a PNG needs at least one pixel, but the mask is {width}x{height}"
    );
    // Widening to u64 makes the product exact, so a huge width * height cannot wrap around and
    // accidentally equal the label count.
    let pixel_count = u64::from(width) * u64::from(height);
    ensure!(
        label_count as u64 == pixel_count,
        "{label_count} labels given for a {width}x{height} mask ({pixel_count} pixels)"
    );
    Ok(())
}

const NPY_MAGIC_AND_VERSION_1_0: &[u8] = b"\x93NUMPY\x01\x00";
const NPY_HEADER_LENGTH_FIELD_BYTES: usize = 2;
const NPY_DATA_ALIGNMENT: usize = 64;
/// numpy reserves room for the leading axis to grow to this many digits.
const NPY_GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// Stages `data` as a C-ordered little-endian float32 array of the given `shape` in NumPy `.npy`
/// format version 1.0, byte-for-byte as `numpy.save` writes it.
///
/// An empty `shape` is a 0-dimensional array holding exactly one value.
pub fn stage_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<Staged> {
    check_element_count(shape, data.len())
        .and_then(|()| npy_f32_header(shape))
        .and_then(|header| {
            Staged::write(path, |out| {
                out.write_all(&header)?;
                for value in data {
                    out.write_all(&value.to_le_bytes())?;
                }
                Ok(())
            })
        })
        .with_context(|| format!("cannot write array {}", path.display()))
}

fn check_element_count(shape: &[usize], element_count: usize) -> Result<()> {
    let shape_element_count = shape
        .iter()
        .try_fold(1usize, |product, &dim| product.checked_mul(dim))
        .with_context(|| format!("shape {shape:?} has more elements than fit in memory"))?;
    ensure!(
        shape_element_count == element_count,
        "shape {shape:?} holds {shape_element_count} values but {element_count} were given"
    );
    Ok(())
}

/// The magic string, version, header length and header dictionary of a `.npy` file.
fn npy_f32_header(shape: &[usize]) -> Result<Vec<u8>> {
    let mut dictionary = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}",
        python_tuple_repr(shape)
    );
    // numpy leaves spare spaces so the leading dimension can later grow in place (appending rows
    // without rewriting the file); reproducing them makes our files identical to `np.save`'s.
    if let Some(leading_dimension) = shape.first() {
        let digits = leading_dimension.to_string().len();
        let growth_room = NPY_GROWTH_AXIS_MAX_DIGITS.saturating_sub(digits);
        dictionary.push_str(&" ".repeat(growth_room));
    }

    let prefix_length = NPY_MAGIC_AND_VERSION_1_0.len() + NPY_HEADER_LENGTH_FIELD_BYTES;
    let unpadded_length = prefix_length + dictionary.len() + "\n".len();
    // Like numpy, pad by a whole alignment block when already aligned, so files stay identical.
    let padding = NPY_DATA_ALIGNMENT - unpadded_length % NPY_DATA_ALIGNMENT;
    let header_length = dictionary.len() + padding + "\n".len();
    let Ok(header_length_field) = u16::try_from(header_length) else {
        bail!(
            "shape {shape:?} has too many dimensions for a version 1.0 .npy header \
             ({header_length} bytes, at most {})",
            u16::MAX
        );
    };

    let mut header = Vec::with_capacity(prefix_length + header_length);
    header.extend_from_slice(NPY_MAGIC_AND_VERSION_1_0);
    header.extend_from_slice(&header_length_field.to_le_bytes());
    header.extend_from_slice(dictionary.as_bytes());
    header.resize(header.len() + padding, b' ');
    header.push(b'\n');
    Ok(header)
}

/// Python's `repr` of a tuple of ints, which numpy evaluates when loading: `()`, `(5,)`, `(2, 3)`.
fn python_tuple_repr(dimensions: &[usize]) -> String {
    match dimensions {
        [single] => format!("({single},)"),
        _ => {
            let items: Vec<String> = dimensions.iter().map(ToString::to_string).collect();
            format!("({})", items.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::directory_entries;
    use std::fs;
    use std::io::Cursor;

    #[test]
    fn palette_matches_the_pascal_voc_class_colours() {
        // Colours of the 21 VOC classes and the void label as published with the VOC devkit.
        let known_colours: [(usize, [u8; 3]); 22] = [
            (0, [0, 0, 0]),         // background
            (1, [128, 0, 0]),       // aeroplane
            (2, [0, 128, 0]),       // bicycle
            (3, [128, 128, 0]),     // bird
            (4, [0, 0, 128]),       // boat
            (5, [128, 0, 128]),     // bottle
            (6, [0, 128, 128]),     // bus
            (7, [128, 128, 128]),   // car
            (8, [64, 0, 0]),        // cat
            (9, [192, 0, 0]),       // chair
            (10, [64, 128, 0]),     // cow
            (11, [192, 128, 0]),    // dining table
            (12, [64, 0, 128]),     // dog
            (13, [192, 0, 128]),    // horse
            (14, [64, 128, 128]),   // motorbike
            (15, [192, 128, 128]),  // person
            (16, [0, 64, 0]),       // potted plant
            (17, [128, 64, 0]),     // sheep
            (18, [0, 192, 0]),      // sofa
            (19, [128, 192, 0]),    // train
            (20, [0, 64, 128]),     // tv monitor
            (255, [224, 224, 192]), // void / object boundary
        ];
        let palette = voc_palette();
        for (index, colour) in known_colours {
            assert_eq!(palette[index], colour, "palette entry {index}");
        }
    }

    #[test]
    fn palette_gives_every_index_its_own_colour() {
        let mut colours = voc_palette().to_vec();
        colours.sort();
        colours.dedup();
        assert_eq!(colours.len(), 256);
    }

    #[test]
    fn label_png_reads_back_as_raw_indices_with_the_voc_palette() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("mask.png");
        let (width, height) = (5u32, 3u32);
        let labels: Vec<u8> = vec![
            0, 1, 2, 3, 4, //
            15, 15, 15, 20, 21, //
            254, 255, 0, 7, 128,
        ];
        stage_label_png(&path, &labels, width, height)
            .unwrap()
            .commit()
            .unwrap();

        let bytes = fs::read(&path).unwrap();
        let mut reader = png::Decoder::new(Cursor::new(&bytes)).read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (width, height));
        assert_eq!(info.color_type, png::ColorType::Indexed);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        assert!(info.trns.is_none(), "masks must be fully opaque");
        let palette = info.palette.as_deref().expect("PLTE chunk");
        assert_eq!(palette, voc_palette().as_flattened());
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(&pixels[..frame.buffer_size()], labels.as_slice());

        let mut expanding_decoder = png::Decoder::new(Cursor::new(&bytes));
        expanding_decoder.set_transformations(png::Transformations::EXPAND);
        let mut expanding_reader = expanding_decoder.read_info().unwrap();
        assert_eq!(
            expanding_reader.output_color_type(),
            (png::ColorType::Rgb, png::BitDepth::Eight)
        );
        let mut rgb = vec![0; expanding_reader.output_buffer_size().unwrap()];
        expanding_reader.next_frame(&mut rgb).unwrap();
        let person_pixel = 5; // row 1, column 0
        assert_eq!(labels[person_pixel], 15);
        assert_eq!(rgb[person_pixel * 3..][..3], [192, 128, 128]);
        let void_pixel = 11; // row 2, column 1
        assert_eq!(labels[void_pixel], 255);
        assert_eq!(rgb[void_pixel * 3..][..3], [224, 224, 192]);
    }

    #[test]
    fn grey_label_png_holds_the_same_indices_without_a_palette() {
        let directory = tempfile::tempdir().unwrap();
        let (palette_path, grey_path) = (
            directory.path().join("palette.png"),
            directory.path().join("grey.png"),
        );
        let labels: Vec<u8> = (0..=255).chain([0, 15, 255, 1]).collect();
        for (path, format) in [
            (&palette_path, LabelFormat::Palette),
            (&grey_path, LabelFormat::Grey),
        ] {
            stage_label_png_as(path, &labels, 26, 10, format)
                .unwrap()
                .commit()
                .unwrap();
        }

        let grey_bytes = fs::read(&grey_path).unwrap();
        let mut reader = png::Decoder::new(Cursor::new(&grey_bytes))
            .read_info()
            .unwrap();
        let info = reader.info();
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        assert!(info.palette.is_none() && info.trns.is_none());
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(&pixels[..frame.buffer_size()], labels.as_slice());
        // The image crate is how most Rust code would read it, and it applies no palette here.
        let decoded = image::load_from_memory(&grey_bytes).unwrap();
        assert_eq!(decoded.as_luma8().unwrap().as_raw(), &labels);

        let palette_bytes = fs::read(&palette_path).unwrap();
        assert!(LabelFormat::Palette.matches_png_header(&palette_bytes));
        assert!(!LabelFormat::Grey.matches_png_header(&palette_bytes));
        assert!(LabelFormat::Grey.matches_png_header(&grey_bytes));
        assert!(!LabelFormat::Palette.matches_png_header(&grey_bytes));
        assert!(!LabelFormat::Grey.matches_png_header(&grey_bytes[..25]));
        assert!(!LabelFormat::Grey.matches_png_header(b"GIF89a not a png at all, no"));
    }

    #[test]
    fn writing_a_label_png_to_a_stream_gives_the_bytes_of_the_staged_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("mask.png");
        let labels = [0, 1, 2, 3, 4, 5];
        for format in [LabelFormat::Palette, LabelFormat::Grey] {
            stage_label_png_as(&path, &labels, 3, 2, format)
                .unwrap()
                .commit()
                .unwrap();
            let mut streamed = Vec::new();
            write_label_png(&mut streamed, &labels, 3, 2, format).unwrap();
            assert_eq!(streamed, fs::read(&path).unwrap(), "{format:?}");
        }
        let error = write_label_png(&mut Vec::new(), &labels, 2, 2, LabelFormat::Grey);
        assert!(format!("{:#}", error.unwrap_err()).contains("6 labels given for a 2x2 mask"));
    }

    #[test]
    fn label_png_with_wrong_label_count_names_the_mask_and_writes_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("mask.png");
        let error = stage_label_png(&path, &[0; 5], 2, 3).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.starts_with(&format!("cannot write mask {}: ", path.display())),
            "{message}"
        );
        assert!(
            message.contains("5 labels given for a 2x3 mask"),
            "{message}"
        );
        assert!(directory_entries(directory.path()).is_empty());
    }

    #[test]
    fn label_png_into_missing_directory_says_which_path_and_why() {
        let directory = tempfile::tempdir().unwrap();
        let missing = directory.path().join("missing");
        let path = missing.join("mask.png");
        let error = stage_label_png(&path, &[0], 1, 1).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.starts_with(&format!(
                "cannot write mask {}: cannot create a temporary file in {}: ",
                path.display(),
                missing.display()
            )),
            "{message}"
        );
        let io_error = error.root_cause().downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io_error.kind(), std::io::ErrorKind::NotFound);
    }

    // The expected headers below are the exact bytes `numpy.save` (numpy 2.4.6) writes for
    // `np.zeros(shape, np.float32)`, printed with Python's `repr`.
    const NUMPY_HEADER_2_BY_3: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                                                          \n";
    const NUMPY_HEADER_5: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }                                                            \n";

    #[test]
    fn npy_matches_numpy_bytes_for_a_2d_array() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("logits.npy");
        let data = [1.0, -2.5, 0.1, 0.0, f32::MAX, -0.0];
        stage_npy_f32(&path, &[2, 3], &data)
            .unwrap()
            .commit()
            .unwrap();

        let bytes = fs::read(&path).unwrap();
        assert_eq!(NUMPY_HEADER_2_BY_3.len(), 128);
        assert_eq!(&bytes[..NUMPY_HEADER_2_BY_3.len()], NUMPY_HEADER_2_BY_3);
        let payload = &bytes[NUMPY_HEADER_2_BY_3.len()..];
        // Little-endian IEEE 754 encodings, as `np.array([...], '<f4').tobytes()` prints them.
        let expected_payload: [u8; 24] = [
            0x00, 0x00, 0x80, 0x3f, // 1.0
            0x00, 0x00, 0x20, 0xc0, // -2.5
            0xcd, 0xcc, 0xcc, 0x3d, // 0.1
            0x00, 0x00, 0x00, 0x00, // 0.0
            0xff, 0xff, 0x7f, 0x7f, // f32::MAX
            0x00, 0x00, 0x00, 0x80, // -0.0
        ];
        assert_eq!(payload, expected_payload);
    }

    #[test]
    fn npy_matches_numpy_bytes_for_a_1d_array() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("scores.npy");
        stage_npy_f32(&path, &[5], &[0.0; 5])
            .unwrap()
            .commit()
            .unwrap();

        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[..NUMPY_HEADER_5.len()], NUMPY_HEADER_5);
        assert_eq!(bytes.len(), NUMPY_HEADER_5.len() + 5 * 4);
    }

    /// Reads the header length field and returns (header text, offset where the data starts).
    fn parse_npy_header(bytes: &[u8]) -> (&str, usize) {
        assert_eq!(&bytes[..8], NPY_MAGIC_AND_VERSION_1_0);
        let header_length = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        let data_offset = 10 + header_length;
        let text = std::str::from_utf8(&bytes[10..data_offset]).unwrap();
        (text, data_offset)
    }

    #[test]
    fn npy_zero_dimensional_array_has_empty_shape_and_one_value() {
        let header = npy_f32_header(&[]).unwrap();
        let (text, data_offset) = parse_npy_header(&header);
        // numpy.save(np.float32(0)) writes a 118-byte header for shape ().
        assert_eq!(data_offset, 128);
        assert!(
            text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (), }"),
            "{text}"
        );
        assert!(check_element_count(&[], 1).is_ok());
        assert!(check_element_count(&[], 0).is_err());
    }

    #[test]
    fn npy_header_keeps_numpy_growth_room_and_full_block_padding() {
        // For shape (1,) * 13 + (100,) the dictionary plus numpy's growth spaces end exactly on a
        // 64-byte boundary; numpy 2.4.6 then still pads a whole block, giving data at 192.
        let shape: Vec<usize> = [1; 13].into_iter().chain([100]).collect();
        let header = npy_f32_header(&shape).unwrap();
        let (text, data_offset) = parse_npy_header(&header);
        assert_eq!(data_offset, 192);
        assert!(text.ends_with(" \n"));
        // For shape (1,) * 16 the growth spaces alone push the data from 128 to 192 in numpy.
        let (_, data_offset) = parse_npy_header(&npy_f32_header(&[1; 16]).unwrap());
        assert_eq!(data_offset, 192);
    }

    #[test]
    fn npy_header_data_offset_is_always_64_byte_aligned() {
        for dimensions in 0..40 {
            for leading in [0, 7, 12_345, usize::MAX] {
                let shape: Vec<usize> = std::iter::once(leading)
                    .chain(std::iter::repeat_n(3, dimensions))
                    .collect();
                let header = npy_f32_header(&shape).unwrap();
                let (text, data_offset) = parse_npy_header(&header);
                assert_eq!(data_offset % 64, 0, "shape {shape:?}");
                assert_eq!(data_offset, header.len());
                assert!(text.ends_with('\n'));
            }
        }
    }

    #[test]
    fn npy_with_mismatched_shape_names_the_array_and_writes_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("logits.npy");
        let error = stage_npy_f32(&path, &[2, 3], &[0.0; 5]).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.starts_with(&format!("cannot write array {}: ", path.display())),
            "{message}"
        );
        assert!(
            message.contains("holds 6 values but 5 were given"),
            "{message}"
        );
        let overflowing = stage_npy_f32(&path, &[usize::MAX, 2], &[]).unwrap_err();
        assert!(format!("{overflowing:#}").contains("more elements than fit"));
        assert!(directory_entries(directory.path()).is_empty());
    }

    #[test]
    fn npy_header_too_long_for_version_1_is_an_error() {
        let error = npy_f32_header(&[1; 30_000]).unwrap_err();
        assert!(
            format!("{error}").contains("too many dimensions"),
            "{error}"
        );
    }
}
