//! The files an image's result becomes: its label PNG, and the scores and overlay when asked;
//! or, with `-o -`, the one image stdout gets.

use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use sclip::atomic_write::{check_replaceable, commit_all};
use sclip::output::overlay::{render_overlay, stage_overlay, write_overlay, LegendEntry};
use sclip::output::thumbnail::stage_thumbnail;
use sclip::output::{stage_label_png_as, stage_npy_f32, write_label_png, LabelFormat};
use sclip::stream::ImageResult;
use sclip::ClassList;

use crate::html_report::THUMBNAIL_LONG_SIDE;
use crate::jobs::{Job, StdoutImage};

/// How every image of a run is written.
pub struct OutputStyle<'a> {
    pub classes: &'a ClassList,
    pub label_format: LabelFormat,
    /// The class colours of overlays and their legends
    /// ([`overlay_palette`](sclip::output::overlay::overlay_palette)).
    pub overlay_colours: [[u8; 3]; 256],
    pub overlay_alpha: f32,
}

/// Writes `job`'s outputs from `result`, all of them or none: each is staged whole first, and the
/// mask, which `--skip-existing` takes as the sign of a finished image, is renamed into place
/// last. Output folders under `out` are created without following symlinks that lead out of it.
/// `thumbnail`: also a thumbnail of the overlay there (`--report`), drawn even without `--overlay`.
pub fn write_outputs(
    job: &Job,
    result: &ImageResult,
    style: &OutputStyle,
    out: Option<&Path>,
    thumbnail: Option<&Path>,
) -> Result<()> {
    for dir in job.outputs().filter_map(|path| path.parent()) {
        match out {
            Some(out) => create_folder_inside(out, dir)?,
            None if dir.as_os_str().is_empty() => {}
            None => std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create output folder {}", dir.display()))?,
        }
    }
    for path in job.outputs() {
        check_replaceable(path)?;
    }
    let segmentation = &result.segmentation;
    let (width, height) = (segmentation.width, segmentation.height);
    let mut staged = Vec::with_capacity(4);
    if job.overlay.is_some() || thumbnail.is_some() {
        let overlay = overlay(result, style)?;
        if let Some(path) = thumbnail {
            staged.push(stage_thumbnail(
                path,
                &overlay,
                height as u32,
                THUMBNAIL_LONG_SIDE,
            )?);
        }
        if let Some(path) = &job.overlay {
            staged.push(stage_overlay(path, &overlay)?);
        }
    }
    if let (Some(path), Some(probs)) = (&job.probs, &segmentation.probs) {
        let classes = probs.len() / (width * height);
        staged.push(stage_npy_f32(path, &[classes, height, width], probs)?);
    }
    staged.push(stage_label_png_as(
        &job.mask,
        &segmentation.labels,
        width as u32,
        height as u32,
        style.label_format,
    )?);
    commit_all(staged)
}

/// Writes `result`'s mask, or its overlay, to stdout (`-o -`). The whole image is encoded before
/// the first byte goes out, so a failure leaves stdout empty rather than holding part of a PNG.
pub fn write_to_stdout(
    result: &ImageResult,
    style: &OutputStyle,
    image: StdoutImage,
) -> Result<()> {
    let segmentation = &result.segmentation;
    let mut encoded = Vec::new();
    let what = match image {
        StdoutImage::Mask => {
            write_label_png(
                &mut encoded,
                &segmentation.labels,
                segmentation.width as u32,
                segmentation.height as u32,
                style.label_format,
            )?;
            "mask"
        }
        StdoutImage::Overlay(format) => {
            write_overlay(&mut encoded, &overlay(result, style)?, format.encoding())?;
            "overlay"
        }
    };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(&encoded)
        .and_then(|()| stdout.flush())
        .map_err(|error| match error.kind() {
            io::ErrorKind::BrokenPipe => anyhow::anyhow!(
                "cannot write the {what} to stdout: the program reading it closed the pipe"
            ),
            _ => anyhow::Error::new(error).context(format!("cannot write the {what} to stdout")),
        })
}

/// The photo blended with the class colours, and a legend of the classes present.
fn overlay(result: &ImageResult, style: &OutputStyle) -> Result<image::RgbImage> {
    let Some(photo) = &result.image else {
        bail!("the decoded image was not kept for the overlay");
    };
    let segmentation = &result.segmentation;
    let legend: Vec<LegendEntry> = segmentation
        .class_pixels
        .iter()
        .enumerate()
        .filter(|(_, &pixels)| pixels > 0)
        .map(|(class, _)| LegendEntry {
            name: style.classes.display_name(class),
            colour: style.overlay_colours[class],
        })
        .collect();
    Ok(render_overlay(
        photo,
        &segmentation.labels,
        &style.overlay_colours,
        style.overlay_alpha,
        &legend,
    ))
}

/// Creates `dir` (a path under `out`) folder by folder. A symlink on the way is followed only if
/// it leads to a folder inside `out`: one planted there must not send outputs elsewhere.
fn create_folder_inside(out: &Path, dir: &Path) -> Result<()> {
    let below = dir.strip_prefix(out).unwrap_or(dir);
    let mut folder = out.to_path_buf();
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create output folder {}", folder.display()))?;
    let mut out_real: Option<PathBuf> = None;
    for component in below.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        folder.push(name);
        match std::fs::symlink_metadata(&folder) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(metadata) if metadata.file_type().is_symlink() => {
                let out_real = match &out_real {
                    Some(real) => real,
                    None => out_real.insert(real_path(out)?),
                };
                let target = real_path(&folder)?;
                if !target.starts_with(out_real.as_path()) || !target.is_dir() {
                    bail!(
                        "output folder {} is a symbolic link to {}, outside --out {}; remove the \
                         link or write into another --out",
                        folder.display(),
                        target.display(),
                        out.display()
                    );
                }
            }
            Ok(_) => bail!(
                "cannot create output folder {}: a file of that name is in the way",
                folder.display()
            ),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                match std::fs::create_dir(&folder) {
                    // Another process writing into the same tree may have just made it.
                    Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                    result => result.with_context(|| {
                        format!("cannot create output folder {}", folder.display())
                    })?,
                }
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot look at output folder {}", folder.display()))
            }
        }
    }
    Ok(())
}

fn real_path(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn folders_are_created_under_out_and_links_inside_it_are_followed() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        create_folder_inside(&out, &out.join("a/b")).unwrap();
        assert!(out.join("a/b").is_dir());
        std::os::unix::fs::symlink(out.join("a"), out.join("inside")).unwrap();
        create_folder_inside(&out, &out.join("inside/c")).unwrap();
        assert!(out.join("a/c").is_dir());
    }

    #[test]
    fn a_link_leading_out_of_out_is_refused_and_nothing_is_created_there() {
        let root = tempfile::tempdir().unwrap();
        let (out, elsewhere) = (root.path().join("out"), root.path().join("elsewhere"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("planted")).unwrap();
        let error = create_folder_inside(&out, &out.join("planted/sub")).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("planted is a symbolic link to") && message.contains("outside --out"),
            "{message}"
        );
        assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
    }

    #[test]
    fn a_file_in_the_way_is_named() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("a"), b"").unwrap();
        let error = create_folder_inside(&out, &out.join("a/b")).unwrap_err();
        assert!(format!("{error:#}").contains("a file of that name is in the way"));
    }
}
