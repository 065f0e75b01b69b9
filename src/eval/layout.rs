//! Benchmark datasets as their authors' configs read them from disk (spec section 9): where each
//! preset's images and truth PNGs are, which images its split holds, and how a truth PNG's raw
//! class indices are read.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::preprocess::open_without_blocking;

/// Where one benchmark keeps its files, relative to the dataset's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The images' folder; an image is `<images>/ID<image_suffix>`.
    pub images: &'static str,
    pub image_suffix: &'static str,
    /// The truth PNGs' folder; an image's truth is `<truth>/ID<truth_suffix>`.
    pub truth: &'static str,
    pub truth_suffix: &'static str,
    pub split: Split,
    /// The truth's 0 means "unlabelled": it is ignored and the other values move down by one.
    pub reduce_zero_label: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// A file listing the IDs, one a line, in the order evaluated.
    File(&'static str),
    /// Every `<image_suffix>` file under the images' folder (subfolders included, hidden entries
    /// not), sorted by path, as mmseg scans them.
    AllImages,
}

/// The dataset layout of a benchmark preset, by the preset's name.
pub fn for_preset(name: &str) -> Option<Layout> {
    let voc = |reduce_zero_label| Layout {
        images: "JPEGImages",
        image_suffix: ".jpg",
        truth: "SegmentationClass",
        truth_suffix: ".png",
        split: Split::File("ImageSets/Segmentation/val.txt"),
        reduce_zero_label,
    };
    let context = |reduce_zero_label| Layout {
        truth: "SegmentationClassContext",
        split: Split::File("ImageSets/SegmentationContext/val.txt"),
        ..voc(reduce_zero_label)
    };
    let all_jpegs = |images, truth, truth_suffix, reduce_zero_label| Layout {
        images,
        image_suffix: ".jpg",
        truth,
        truth_suffix,
        split: Split::AllImages,
        reduce_zero_label,
    };
    Some(match name {
        "voc21" => voc(false),
        "voc20" => voc(true),
        "context60" => context(false),
        "context59" => context(true),
        "coco_object" => all_jpegs(
            "images/val2017",
            "annotations/val2017",
            "_instanceTrainIds.png",
            false,
        ),
        "coco_stuff164k" => all_jpegs(
            "images/val2017",
            "annotations/val2017",
            "_labelTrainIds.png",
            false,
        ),
        "coco_stuff10k" => all_jpegs(
            "images/test2014",
            "annotations/test2014",
            "_labelTrainIds.png",
            true,
        ),
        "cityscapes" => Layout {
            images: "leftImg8bit/val",
            image_suffix: "_leftImg8bit.png",
            truth: "gtFine/val",
            truth_suffix: "_gtFine_labelTrainIds.png",
            split: Split::AllImages,
            reduce_zero_label: false,
        },
        "ade20k" => all_jpegs("images/validation", "annotations/validation", ".png", true),
        _ => return None,
    })
}

impl Layout {
    /// Where the images and truths are, for errors that say what was expected.
    pub fn describe(&self) -> String {
        format!(
            "images ROOT/{}/ID{} and truths ROOT/{}/ID{}",
            self.images, self.image_suffix, self.truth, self.truth_suffix
        )
    }

    /// The images of the split under `root`, in order, the first `limit` only if given.
    pub fn samples(&self, root: &Path, limit: Option<usize>) -> Result<Vec<Sample>> {
        if !root.is_dir() {
            bail!(
                "the dataset folder {} does not exist or is not a folder",
                root.display()
            );
        }
        let mut ids = match self.split {
            Split::File(file) => read_split_file(&root.join(file))?,
            Split::AllImages => {
                let images = root.join(self.images);
                let mut ids = Vec::new();
                find_images(&images, Path::new(""), self.image_suffix, &mut ids).with_context(
                    || {
                        format!(
                            "cannot list the images of {}, which should hold {}; is --dataset \
                             the dataset's root?",
                            root.display(),
                            self.describe()
                        )
                    },
                )?;
                ids.sort_by(|a: &PathBuf, b| {
                    a.as_os_str()
                        .as_encoded_bytes()
                        .cmp(b.as_os_str().as_encoded_bytes())
                });
                ids
            }
        };
        if let Some(limit) = limit {
            ids.truncate(limit);
        }
        let with_suffix = |folder: &str, id: &Path, suffix: &str| {
            let mut name = root.join(folder).join(id).into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        };
        Ok(ids
            .into_iter()
            .map(|id| Sample {
                image: with_suffix(self.images, &id, self.image_suffix),
                truth: with_suffix(self.truth, &id, self.truth_suffix),
                id,
            })
            .collect())
    }
}

/// One image of a split and its truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The image's path under the images' folder, without the suffix (a city's folder included).
    pub id: PathBuf,
    pub image: PathBuf,
    pub truth: PathBuf,
}

/// Far more than any benchmark's split (COCO's 5,000 IDs take 60 kB).
const MAX_SPLIT_FILE_BYTES: u64 = 64 << 20;

/// The IDs of a split file: one a line, surrounding spaces and blank lines ignored. An ID names
/// a file under the dataset's folders, so one that would leave them (absolute, or with `..`) is
/// refused.
fn read_split_file(path: &Path) -> Result<Vec<PathBuf>> {
    let cannot_read = || {
        format!(
            "cannot read the split file {}, which lists the images to evaluate; is --dataset the \
             dataset's root?",
            path.display()
        )
    };
    let file = open_without_blocking(path).with_context(cannot_read)?;
    if !file.metadata().with_context(cannot_read)?.is_file() {
        return Err(anyhow::anyhow!("it is not a regular file")).with_context(cannot_read);
    }
    let mut text = String::new();
    file.take(MAX_SPLIT_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(cannot_read)?;
    if text.len() as u64 > MAX_SPLIT_FILE_BYTES {
        bail!(
            "the split file {} is over {} MiB; is it the split file?",
            path.display(),
            MAX_SPLIT_FILE_BYTES >> 20
        );
    }
    // Editors on Windows start UTF-8 files with a byte order mark, which is no part of an ID.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut ids = Vec::new();
    let mut first_lines = std::collections::HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() {
            continue;
        }
        let inside = Path::new(id)
            .components()
            .all(|part| matches!(part, std::path::Component::Normal(_)));
        if !inside {
            bail!(
                "line {} of the split file {} is {id:?}, which is not a name under the dataset's \
                 folders (no leading /, no ..)",
                number + 1,
                path.display()
            );
        }
        // As components, so that `a/` and `a//b` name the files `a` and `a/b` do.
        let id: PathBuf = Path::new(id).components().collect();
        if let Some(first) = first_lines.insert(id.clone(), number + 1) {
            bail!(
                "line {} of the split file {} repeats the ID {} of line {first}, which would \
                 count that image twice; remove the repeat",
                number + 1,
                path.display(),
                id.display()
            );
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Deeper than this, a folder tree is taken for a symlink loop.
const MAX_DEPTH: usize = 32;

/// Adds to `ids` the path (under `root`, without `suffix`) of every file below `root/relative`
/// whose name ends in `suffix`, skipping hidden entries; symlinks are followed.
fn find_images(root: &Path, relative: &Path, suffix: &str, ids: &mut Vec<PathBuf>) -> Result<()> {
    // Joining an empty path would add a separator to the folder's name in errors.
    let folder = if relative.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(relative)
    };
    if relative.components().count() > MAX_DEPTH {
        bail!(
            "{} is nested over {MAX_DEPTH} folders deep: a symlink loop?",
            folder.display()
        );
    }
    let entries =
        std::fs::read_dir(&folder).with_context(|| format!("cannot read {}", folder.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", folder.display()))?;
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let metadata =
            std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if metadata.is_dir() {
            find_images(root, &relative.join(&name), suffix, ids)?;
        } else if let Some(stem) = name
            .as_encoded_bytes()
            .strip_suffix(suffix.as_bytes())
            .filter(|stem| !stem.is_empty())
        {
            // SAFETY: the bytes come from an OsStr, cut after a UTF-8 suffix, so the cut is at a
            // boundary the platform's encoding allows.
            let stem = unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(stem) };
            ids.push(relative.join(stem));
        }
    }
    Ok(())
}

/// A truth PNG's raw sample values (palette indices for a paletted PNG, never colours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truth {
    pub width: u32,
    pub height: u32,
    /// height x width, row-major.
    pub values: Vec<u8>,
}

/// Reads only the truth PNG's header: its width and height, once its format is known to hold
/// class indices.
pub fn truth_size(path: &Path) -> Result<(u32, u32)> {
    let reader = open_truth(path).with_context(|| cannot_read_truth(path))?;
    let info = reader.info();
    Ok((info.width, info.height))
}

/// Reads a truth PNG: 8-bit or fewer grey or palette samples, as stored.
pub fn read_truth(path: &Path) -> Result<Truth> {
    read_truth_samples(path).with_context(|| cannot_read_truth(path))
}

fn cannot_read_truth(path: &Path) -> String {
    format!("cannot read the truth file {}", path.display())
}

fn read_truth_samples(path: &Path) -> Result<Truth> {
    let mut reader = open_truth(path)?;
    let (width, height) = (reader.info().width, reader.info().height);
    let bits = reader.info().bit_depth as usize;
    let mut packed = vec![
        0;
        reader
            .output_buffer_size()
            .context("the PNG is too large")?
    ];
    reader.next_frame(&mut packed)?;
    if bits == 8 {
        packed.truncate(width as usize * height as usize);
        return Ok(Truth {
            width,
            height,
            values: packed,
        });
    }
    // Rows of 1, 2 or 4-bit samples are packed high bits first, each row padded to a byte.
    let row_bytes = (width as usize * bits).div_ceil(8);
    let per_byte = 8 / bits;
    let mask = (1u8 << bits) - 1;
    let mut values = Vec::with_capacity(width as usize * height as usize);
    for row in packed.chunks_exact(row_bytes).take(height as usize) {
        values.extend((0..width as usize).map(|x| {
            let shift = 8 - bits * (x % per_byte + 1);
            (row[x / per_byte] >> shift) & mask
        }));
    }
    Ok(Truth {
        width,
        height,
        values,
    })
}

/// A reader past the header of a PNG of raw class indices; other PNGs are refused, saying why.
fn open_truth(path: &Path) -> Result<png::Reader<BufReader<File>>> {
    // Without blocking: a named pipe in a truth file's place must not hang the run.
    let file = open_without_blocking(path)?;
    if !file.metadata()?.is_file() {
        bail!("it is not a regular file");
    }
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let reader = decoder.read_info().context("it is not a readable PNG")?;
    let info = reader.info();
    let layout = match info.color_type {
        png::ColorType::Grayscale | png::ColorType::Indexed => None,
        png::ColorType::Rgb => Some("RGB colours"),
        png::ColorType::Rgba => Some("RGBA colours"),
        png::ColorType::GrayscaleAlpha => Some("grey with alpha"),
    };
    if let Some(layout) = layout {
        bail!(
            "it holds {layout}, but a truth PNG holds one class index a pixel (8-bit grey or \
             paletted); convert the colours to class indices first"
        );
    }
    if info.bit_depth == png::BitDepth::Sixteen {
        bail!(
            "it is a 16-bit PNG, but a truth PNG holds 8-bit class indices (0 to 255, 255 \
             ignored); convert it to 8 bits"
        );
    }
    Ok(reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(
        path: &Path,
        color: png::ColorType,
        depth: png::BitDepth,
        size: (u32, u32),
        data: &[u8],
    ) {
        let file = File::create(path).unwrap();
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), size.0, size.1);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if color == png::ColorType::Indexed {
            encoder.set_palette(vec![0; 3 * (1 << depth as usize)]);
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
    }

    #[test]
    fn every_preset_has_a_layout() {
        for preset in crate::presets::PRESETS {
            assert!(for_preset(preset.name).is_some(), "{}", preset.name);
        }
        assert_eq!(for_preset("nonsense"), None);
    }

    #[test]
    fn paletted_truth_is_read_as_indices_not_colours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.png");
        let labels = [0, 1, 2, 255, 20, 7];
        crate::output::stage_label_png(&path, &labels, 3, 2)
            .unwrap()
            .commit()
            .unwrap();
        let truth = read_truth(&path).unwrap();
        assert_eq!((truth.width, truth.height), (3, 2));
        assert_eq!(truth.values, labels);
        assert_eq!(truth_size(&path).unwrap(), (3, 2));
    }

    #[test]
    fn samples_packed_below_eight_bits_are_unpacked_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.png");
        // 4-bit palette, 3 wide: rows are 2 bytes, the last nibble padding.
        write_png(
            &path,
            png::ColorType::Indexed,
            png::BitDepth::Four,
            (3, 2),
            &[0x1f, 0x20, 0x93, 0x40],
        );
        assert_eq!(read_truth(&path).unwrap().values, [1, 15, 2, 9, 3, 4]);
        // 2-bit grey, 5 wide: values 0-3, not scaled to 0-255.
        write_png(
            &path,
            png::ColorType::Grayscale,
            png::BitDepth::Two,
            (5, 1),
            &[0b00_01_10_11, 0b01_000000],
        );
        assert_eq!(read_truth(&path).unwrap().values, [0, 1, 2, 3, 1]);
    }

    #[test]
    fn colour_and_16_bit_truths_are_refused_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truth.png");
        write_png(
            &path,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            (1, 1),
            &[1, 2, 3],
        );
        let error = format!("{:#}", read_truth(&path).unwrap_err());
        assert!(error.contains("truth.png: it holds RGB colours"), "{error}");
        write_png(
            &path,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            (1, 1),
            &[0, 1],
        );
        let error = format!("{:#}", truth_size(&path).unwrap_err());
        assert!(error.contains("truth.png: it is a 16-bit PNG"), "{error}");
        std::fs::write(&path, b"not a png").unwrap();
        let error = format!("{:#}", read_truth(&path).unwrap_err());
        assert!(error.contains("it is not a readable PNG"), "{error}");
    }

    #[test]
    fn all_images_are_found_in_subfolders_sorted_without_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        let layout = for_preset("cityscapes").unwrap();
        let images = dir.path().join(layout.images);
        for name in [
            "zurich/z_1_leftImg8bit.png",
            "aachen/b_leftImg8bit.png",
            "aachen/a_leftImg8bit.png",
            "aachen/notes.txt",
            "aachen/.a_leftImg8bit.png",
            ".hidden/c_leftImg8bit.png",
        ] {
            let path = images.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        let samples = layout.samples(dir.path(), None).unwrap();
        let ids: Vec<_> = samples.iter().map(|s| s.id.clone()).collect();
        assert_eq!(
            ids,
            [
                Path::new("aachen/a"),
                Path::new("aachen/b"),
                Path::new("zurich/z_1")
            ]
        );
        assert_eq!(
            samples[0].truth,
            dir.path()
                .join("gtFine/val/aachen/a_gtFine_labelTrainIds.png")
        );
        assert_eq!(layout.samples(dir.path(), Some(1)).unwrap().len(), 1);
    }

    #[test]
    fn a_split_file_gives_its_order_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let layout = for_preset("voc21").unwrap();
        let error = format!("{:#}", layout.samples(dir.path(), None).unwrap_err());
        assert!(error.contains("ImageSets/Segmentation/val.txt"), "{error}");
        let split = dir.path().join("ImageSets/Segmentation/val.txt");
        std::fs::create_dir_all(split.parent().unwrap()).unwrap();
        std::fs::write(&split, "2007_b\n 2007_a \n\n").unwrap();
        let samples = layout.samples(dir.path(), None).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].image, dir.path().join("JPEGImages/2007_b.jpg"));
        assert_eq!(
            samples[1].truth,
            dir.path().join("SegmentationClass/2007_a.png")
        );
    }

    #[test]
    fn a_byte_order_mark_crlf_and_trailing_slashes_are_no_part_of_the_ids() {
        let dir = tempfile::tempdir().unwrap();
        let layout = for_preset("voc21").unwrap();
        let split = dir.path().join("ImageSets/Segmentation/val.txt");
        std::fs::create_dir_all(split.parent().unwrap()).unwrap();
        std::fs::write(&split, "\u{feff}2007_a\r\n2007_b/\r\n").unwrap();
        let samples = layout.samples(dir.path(), None).unwrap();
        let ids: Vec<&Path> = samples.iter().map(|sample| sample.id.as_path()).collect();
        assert_eq!(ids, [Path::new("2007_a"), Path::new("2007_b")]);
        assert_eq!(samples[1].image, dir.path().join("JPEGImages/2007_b.jpg"));
    }

    #[test]
    fn a_repeated_id_is_refused_naming_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let layout = for_preset("voc21").unwrap();
        let split = dir.path().join("ImageSets/Segmentation/val.txt");
        std::fs::create_dir_all(split.parent().unwrap()).unwrap();
        std::fs::write(&split, "2007_a\n2007_b\n2007_a/\n").unwrap();
        let error = format!("{:#}", layout.samples(dir.path(), None).unwrap_err());
        assert!(
            error.contains("line 3 of the split file")
                && error.contains("val.txt")
                && error.contains("repeats the ID 2007_a of line 1"),
            "{error}"
        );
    }

    #[test]
    fn split_ids_that_leave_the_dataset_and_splits_that_are_not_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = for_preset("voc21").unwrap();
        let split = dir.path().join("ImageSets/Segmentation/val.txt");
        std::fs::create_dir_all(split.parent().unwrap()).unwrap();
        for (line, id) in [
            ("a\n../../etc/passwd\n", "../../etc/passwd"),
            ("/etc/passwd\n", "/etc/passwd"),
        ] {
            std::fs::write(&split, line).unwrap();
            let error = format!("{:#}", layout.samples(dir.path(), None).unwrap_err());
            assert!(
                error.contains(&format!("{id:?}")) && error.contains("val.txt"),
                "{error}"
            );
        }
        std::fs::remove_file(&split).unwrap();
        std::fs::create_dir(&split).unwrap();
        let error = format!("{:#}", layout.samples(dir.path(), None).unwrap_err());
        assert!(error.contains("not a regular file"), "{error}");
        #[cfg(unix)]
        {
            std::fs::remove_dir(&split).unwrap();
            let made = std::process::Command::new("mkfifo").arg(&split).status();
            if made.is_ok_and(|status| status.success()) {
                let error = format!("{:#}", layout.samples(dir.path(), None).unwrap_err());
                assert!(error.contains("not a regular file"), "{error}");
            }
        }
    }
}
