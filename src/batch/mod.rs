//! Images in, masks out: plans where each image's outputs go, then segments and writes them
//! one by one, reporting each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::output::{write_label_png, write_npy_f32};
use crate::postprocess::Segmentation;
use crate::preprocess::load_image;
use crate::segment::Segmenter;

/// One input image and the files it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub image: PathBuf,
    pub mask: PathBuf,
    pub probs: Option<PathBuf>,
}

/// `dir/img.jpg` gives `<out>/img.png` (and `<out>/img.probs.npy`); without `out`, the image's own folder.
/// Refuses plans where an output would overwrite an input or two images would share an output.
pub fn plan_jobs(images: &[PathBuf], out: Option<&Path>, save_probs: bool) -> Result<Vec<Job>> {
    let mut jobs = Vec::with_capacity(images.len());
    let mut owners: HashMap<PathBuf, &Path> = HashMap::new();
    for image in images {
        let stem = image
            .file_stem()
            .with_context(|| format!("{} is not a file name", image.display()))?;
        let dir = match out {
            Some(dir) => dir.to_path_buf(),
            None => image.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let with_suffix = |suffix: &str| {
            let mut name = stem.to_os_string();
            name.push(suffix);
            dir.join(name)
        };
        let job = Job {
            image: image.clone(),
            mask: with_suffix(".png"),
            probs: save_probs.then(|| with_suffix(".probs.npy")),
        };
        for output in std::iter::once(&job.mask).chain(job.probs.as_ref()) {
            if same_file(output, image) {
                bail!(
                    "the mask for {} would overwrite the image itself; pass --out DIR to write masks elsewhere",
                    image.display()
                );
            }
            let key = normalized(output);
            if let Some(other) = owners.insert(key, image) {
                bail!(
                    "{} and {} would both write {}; pass them in separate runs or with different --out folders",
                    other.display(),
                    image.display(),
                    output.display()
                );
            }
        }
        jobs.push(job);
    }
    Ok(jobs)
}

fn normalized(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })
        .map(|p| p.join(name))
        .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    normalized(a) == normalized(b)
}

/// What happened to one image, for the per-image report line.
pub struct Outcome {
    pub width: usize,
    pub height: usize,
    pub seconds: f64,
    /// (class name, percent of pixels), largest first, classes absent from the mask left out.
    pub present: Vec<(String, f64)>,
}

impl Outcome {
    pub fn summary_line(&self, job: &Job) -> String {
        let classes = self
            .present
            .iter()
            .map(|(name, percent)| format!("{name} {percent:.1}%"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{} {}x{} {:.2}s: {}",
            job.image.display(),
            self.width,
            self.height,
            self.seconds,
            classes
        )
    }
}

/// Decodes, segments and writes one image; nothing is written unless segmentation succeeded.
pub fn run_job(segmenter: &Segmenter, job: &Job) -> Result<Outcome> {
    let started = Instant::now();
    let image = load_image(&job.image)?;
    let segmentation = segmenter
        .segment(&image)
        .with_context(|| format!("cannot segment {}", job.image.display()))?;
    write_outputs(&segmentation, job)?;
    let total = (segmentation.width * segmentation.height) as f64;
    let mut present: Vec<(String, f64)> = segmentation
        .class_pixels
        .iter()
        .enumerate()
        .filter(|(_, &pixels)| pixels > 0)
        .map(|(class, &pixels)| {
            (
                segmenter.classes().display_name(class).to_string(),
                100.0 * pixels as f64 / total,
            )
        })
        .collect();
    present.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Outcome {
        width: segmentation.width,
        height: segmentation.height,
        seconds: started.elapsed().as_secs_f64(),
        present,
    })
}

fn write_outputs(segmentation: &Segmentation, job: &Job) -> Result<()> {
    if let Some(dir) = job.mask.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    }
    write_label_png(
        &job.mask,
        &segmentation.labels,
        segmentation.width as u32,
        segmentation.height as u32,
    )?;
    if let (Some(path), Some(probs)) = (&job.probs, &segmentation.probs) {
        let classes = probs.len() / (segmentation.width * segmentation.height);
        write_npy_f32(
            path,
            &[classes, segmentation.height, segmentation.width],
            probs,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_go_beside_the_image_or_into_out() {
        let jobs = plan_jobs(&[PathBuf::from("photos/cat.jpg")], None, true).unwrap();
        assert_eq!(jobs[0].mask, PathBuf::from("photos/cat.png"));
        assert_eq!(jobs[0].probs, Some(PathBuf::from("photos/cat.probs.npy")));
        let jobs = plan_jobs(
            &[PathBuf::from("photos/cat.jpg")],
            Some(Path::new("masks")),
            false,
        )
        .unwrap();
        assert_eq!(jobs[0].mask, PathBuf::from("masks/cat.png"));
        assert_eq!(jobs[0].probs, None);
    }

    #[test]
    fn a_png_is_never_overwritten_by_its_own_mask() {
        let err = plan_jobs(&[PathBuf::from("photos/cat.png")], None, false).unwrap_err();
        assert!(err.to_string().contains("overwrite the image itself"));
        assert!(plan_jobs(
            &[PathBuf::from("photos/cat.png")],
            Some(Path::new("masks")),
            false
        )
        .is_ok());
    }

    #[test]
    fn two_images_with_one_stem_are_refused() {
        let images = [PathBuf::from("a/cat.jpg"), PathBuf::from("b/cat.png")];
        let err = plan_jobs(&images, Some(Path::new("masks")), false).unwrap_err();
        assert!(err.to_string().contains("would both write"));
    }
}
