//! Where each image's outputs go: [`plan_jobs`] turns the images found into jobs, refusing
//! plans that would overwrite an input or write one file twice, before any work is done.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use sclip::output::overlay::OverlayEncoding;
use sclip::output::LabelFormat;

use crate::args::SegmentArgs;
use crate::inputs::{mirrored_output, Input};

/// What `-` means as an image (stdin) and as `--out` (stdout).
pub const STD_STREAM: &str = "-";

/// What to write for every image, and where.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    /// Mirror each input's relative path under this folder; `None` writes beside each image.
    pub out: Option<PathBuf>,
    pub save_probs: bool,
    /// The photo blended with the mask colours, plus a legend; the extension picks the format.
    pub overlay: Option<OverlayFormat>,
    pub label_format: LabelFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayFormat {
    Jpeg,
    Png,
}

impl OverlayFormat {
    pub fn encoding(self) -> OverlayEncoding {
        match self {
            OverlayFormat::Jpeg => OverlayEncoding::Jpeg,
            OverlayFormat::Png => OverlayEncoding::Png,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            OverlayFormat::Jpeg => ".overlay.jpg",
            OverlayFormat::Png => ".overlay.png",
        }
    }
}

/// One input image and the files it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub image: PathBuf,
    pub mask: PathBuf,
    pub probs: Option<PathBuf>,
    pub overlay: Option<PathBuf>,
}

impl Job {
    pub fn outputs(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.mask)
            .chain(self.probs.as_ref())
            .chain(self.overlay.as_ref())
    }

    /// Every output is written atomically, so one that exists is complete: an image whose
    /// outputs all exist was finished by an earlier run. Its mask must also be in
    /// `label_format`: one from a run with the other `--label-format` is redone, so that a folder
    /// never ends up holding both formats.
    pub fn is_done(&self, label_format: LabelFormat) -> bool {
        self.outputs().all(|path| path.is_file()) && is_label_png_in(&self.mask, label_format)
    }

    /// The job of one image whose mask (or overlay) goes to stdout, `-o -`: it has no files, and
    /// its mask is named `-` as the user wrote it.
    pub fn to_stdout(image: PathBuf) -> Job {
        Job {
            image,
            mask: PathBuf::from(STD_STREAM),
            probs: None,
            overlay: None,
        }
    }
}

/// Whether `path` starts as a PNG in `format` and ends as a complete PNG does: a mask cut short
/// (by a copy or a sync that stopped) is not done, yet only its two ends are read.
fn is_label_png_in(path: &Path, format: LabelFormat) -> bool {
    let read_ends = || -> std::io::Result<bool> {
        let mut file = std::fs::File::open(path)?;
        let mut header = Vec::new();
        (&mut file)
            .take(LABEL_PNG_HEADER_BYTES)
            .read_to_end(&mut header)?;
        if !format.matches_png_header(&header) {
            return Ok(false);
        }
        let mut end = [0; PNG_END.len()];
        file.seek(SeekFrom::End(-(PNG_END.len() as i64)))?;
        file.read_exact(&mut end)?;
        Ok(end == *PNG_END)
    };
    read_ends().unwrap_or(false)
}

/// The PNG signature and the IHDR chunk up to its colour type.
const LABEL_PNG_HEADER_BYTES: u64 = 26;
/// The empty IEND chunk (length, type, CRC) that ends every PNG.
const PNG_END: &[u8; 12] = b"\0\0\0\0IEND\xaeB`\x82";

/// The one image `-o -` writes to stdout: its label PNG, or its overlay with `--overlay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutImage {
    Mask,
    Overlay(OverlayFormat),
}

/// What `-` stands for in a run: an image read from stdin, and where stdout gets the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pipes {
    pub stdin: bool,
    pub stdout: Option<StdoutImage>,
}

/// Which of stdin and stdout are terminals.
#[derive(Debug, Clone, Copy)]
pub struct Terminals {
    pub stdin: bool,
    pub stdout: bool,
}

impl Terminals {
    pub fn of_this_process() -> Terminals {
        Terminals {
            stdin: std::io::stdin().is_terminal(),
            stdout: std::io::stdout().is_terminal(),
        }
    }
}

/// Which `-` the command line uses, refusing the combinations that have no one meaning: stdin
/// holds one image and stdout one file, so each goes with exactly one image, and nothing else
/// may need either. A terminal is refused on either side, as `gzip` does: a binary PNG would
/// garble it, and an image would never come from it.
pub fn check_pipes(args: &SegmentArgs, terminals: Terminals) -> Result<Pipes> {
    let is_std_stream = |path: &PathBuf| path.as_os_str() == STD_STREAM;
    let stdin = args.images.iter().any(is_std_stream);
    let stdout = args.out.as_ref().is_some_and(is_std_stream);
    if stdin {
        if args
            .images
            .iter()
            .filter(|path| is_std_stream(path))
            .count()
            > 1
        {
            bail!("- (stdin) is given twice; stdin holds one image");
        }
        if args.images.len() > 1 || args.files_from.is_some() {
            bail!(
                "- reads one image from stdin and cannot be mixed with other images; segment the \
                 files in a separate run"
            );
        }
        if !stdout {
            bail!(
                "the image read from stdin has no file name for its outputs; add -o - to write \
                 its mask to stdout (a file named - is ./-)"
            );
        }
        if terminals.stdin {
            bail!(
                "- reads an image from stdin, which is a terminal; pipe or redirect one \
                 (< photo.jpg)"
            );
        }
    }
    if !stdout {
        return Ok(Pipes::default());
    }
    let one_image = "-o - writes one image's mask to stdout; give one image";
    match args.images.as_slice() {
        _ if args.files_from.is_some() => bail!("{one_image}, not --files-from"),
        [image] if !stdin && image.is_dir() => {
            bail!("{one_image}, not a folder ({})", image.display())
        }
        [_] => {}
        _ => bail!("{one_image}, not {} images", args.images.len()),
    }
    if args.save_probs {
        bail!(
            "--save-probs writes a second file and stdout holds one; drop it, or write into a \
             folder with -o DIR"
        );
    }
    if args.skip_existing {
        bail!("--skip-existing looks for outputs on disk, and -o - writes none; drop it");
    }
    if args.json {
        bail!(
            "--json writes to stdout, which -o - fills with the image; drop --json (errors still \
             go to stderr)"
        );
    }
    if args.shard.is_some() {
        bail!("--shard splits a batch, and -o - takes one image; drop it");
    }
    if args.report.is_some() {
        bail!(
            "--report shows the files of a run, and -o - writes none; drop it, or write into a \
             folder with -o DIR"
        );
    }
    if terminals.stdout {
        bail!(
            "-o - writes a binary image to stdout, which is a terminal; redirect it \
             (> mask.png) or pipe it into another program"
        );
    }
    let image = match args.output_options().overlay {
        Some(format) => StdoutImage::Overlay(format),
        None => StdoutImage::Mask,
    };
    Ok(Pipes {
        stdin,
        stdout: Some(image),
    })
}

/// `photos/a/cat.jpg` found under `photos` gives `<out>/a/cat.png` (plus `cat.probs.npy`,
/// `cat.overlay.jpg` when asked for); without `out`, the outputs go beside the image.
/// Refuses plans where an output would overwrite any input or two images would share an output,
/// before any work is done.
pub fn plan_jobs(inputs: &[Input], options: &OutputOptions) -> Result<Vec<Job>> {
    let output_path = |input: &Input, suffix: &str| match &options.out {
        Some(out) => mirrored_output(out, &input.relative, suffix),
        None => {
            let mut name = input.path.file_stem().unwrap_or_default().to_os_string();
            name.push(suffix);
            input.path.with_file_name(name)
        }
    };
    let images: HashMap<PathBuf, &Path> = inputs
        .iter()
        .map(|input| (normalized(&input.path), input.path.as_path()))
        .collect();
    let mut owners: HashMap<PathBuf, &Path> = HashMap::new();
    let mut jobs = Vec::with_capacity(inputs.len());
    for input in inputs {
        let job = Job {
            image: input.path.clone(),
            mask: output_path(input, ".png"),
            probs: options.save_probs.then(|| output_path(input, ".probs.npy")),
            overlay: options
                .overlay
                .map(|format| output_path(input, format.suffix())),
        };
        for output in job.outputs() {
            let key = normalized(output);
            if let Some(image) = images.get(&key) {
                bail!(
                    "an output of {} would overwrite the image {}; pass --out DIR to write the outputs elsewhere",
                    input.path.display(),
                    image.display()
                );
            }
            if let Some(other) = owners.insert(key, &input.path) {
                bail!(
                    "{} and {} would both write {}; segment them in separate runs or into different --out folders",
                    other.display(),
                    input.path.display(),
                    output.display()
                );
            }
        }
        jobs.push(job);
    }
    Ok(jobs)
}

/// The path with its folder made absolute and symlink-free, so that two spellings of one file
/// compare equal; the file itself need not exist yet.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file_input(path: &str) -> Input {
        let path = PathBuf::from(path);
        Input {
            relative: PathBuf::from(path.file_name().unwrap()),
            path,
        }
    }

    fn options(
        out: Option<&str>,
        save_probs: bool,
        overlay: Option<OverlayFormat>,
    ) -> OutputOptions {
        OutputOptions {
            out: out.map(PathBuf::from),
            save_probs,
            overlay,
            label_format: LabelFormat::Palette,
        }
    }

    #[test]
    fn outputs_go_beside_the_image_or_into_out() {
        let jobs = plan_jobs(
            &[file_input("photos/cat.jpg")],
            &options(None, true, Some(OverlayFormat::Jpeg)),
        )
        .unwrap();
        assert_eq!(jobs[0].mask, PathBuf::from("photos/cat.png"));
        assert_eq!(jobs[0].probs, Some(PathBuf::from("photos/cat.probs.npy")));
        assert_eq!(
            jobs[0].overlay,
            Some(PathBuf::from("photos/cat.overlay.jpg"))
        );
        let jobs = plan_jobs(
            &[file_input("photos/cat.jpg")],
            &options(Some("masks"), false, None),
        )
        .unwrap();
        assert_eq!(jobs[0].mask, PathBuf::from("masks/cat.png"));
        assert_eq!(jobs[0].probs, None);
        assert_eq!(jobs[0].overlay, None);
    }

    #[test]
    fn folder_inputs_are_mirrored_under_out() {
        let input = Input {
            path: PathBuf::from("photos/2024/may/cat.jpg"),
            relative: PathBuf::from("2024/may/cat.jpg"),
        };
        let jobs = plan_jobs(
            &[input],
            &options(Some("masks"), false, Some(OverlayFormat::Png)),
        )
        .unwrap();
        assert_eq!(jobs[0].mask, PathBuf::from("masks/2024/may/cat.png"));
        assert_eq!(
            jobs[0].overlay,
            Some(PathBuf::from("masks/2024/may/cat.overlay.png"))
        );
    }

    #[test]
    fn no_input_is_ever_overwritten() {
        let err =
            plan_jobs(&[file_input("photos/cat.png")], &options(None, false, None)).unwrap_err();
        assert!(err.to_string().contains("would overwrite the image"));
        // cat.jpg's mask would be cat.png, which is another input.
        let both = [file_input("photos/cat.jpg"), file_input("photos/cat.png")];
        let err = plan_jobs(&both, &options(None, false, None)).unwrap_err();
        assert!(err
            .to_string()
            .contains("would overwrite the image photos/cat.png"));
        assert!(plan_jobs(
            &[file_input("photos/cat.png")],
            &options(Some("masks"), false, None)
        )
        .is_ok());
    }

    #[test]
    fn two_images_with_one_output_are_refused() {
        let images = [file_input("a/cat.jpg"), file_input("b/cat.png")];
        let err = plan_jobs(&images, &options(Some("masks"), false, None)).unwrap_err();
        assert!(err.to_string().contains("would both write"));
    }

    #[test]
    fn a_job_is_done_only_when_every_output_exists() {
        let dir = tempfile::tempdir().unwrap();
        let job = Job {
            image: dir.path().join("cat.jpg"),
            mask: dir.path().join("cat.png"),
            probs: Some(dir.path().join("cat.probs.npy")),
            overlay: None,
        };
        assert!(!job.is_done(LabelFormat::Palette));
        sclip::output::stage_label_png(&job.mask, &[0], 1, 1)
            .unwrap()
            .commit()
            .unwrap();
        assert!(!job.is_done(LabelFormat::Palette));
        std::fs::write(job.probs.as_ref().unwrap(), b"x").unwrap();
        assert!(job.is_done(LabelFormat::Palette));
    }

    #[test]
    fn a_mask_in_the_other_label_format_or_not_a_png_is_not_done() {
        let dir = tempfile::tempdir().unwrap();
        let job = Job {
            image: dir.path().join("cat.jpg"),
            mask: dir.path().join("cat.png"),
            probs: None,
            overlay: None,
        };
        sclip::output::stage_label_png_as(&job.mask, &[0], 1, 1, LabelFormat::Grey)
            .unwrap()
            .commit()
            .unwrap();
        assert!(job.is_done(LabelFormat::Grey));
        assert!(!job.is_done(LabelFormat::Palette));
        std::fs::write(&job.mask, b"x").unwrap();
        assert!(!job.is_done(LabelFormat::Grey));
    }

    #[test]
    fn a_mask_cut_short_is_not_done() {
        let dir = tempfile::tempdir().unwrap();
        let job = Job {
            image: dir.path().join("cat.jpg"),
            mask: dir.path().join("cat.png"),
            probs: None,
            overlay: None,
        };
        sclip::output::stage_label_png(&job.mask, &[3; 64 * 48], 64, 48)
            .unwrap()
            .commit()
            .unwrap();
        assert!(job.is_done(LabelFormat::Palette));
        let whole = std::fs::read(&job.mask).unwrap();
        for kept in [whole.len() - 1, whole.len() / 2, 30] {
            std::fs::write(&job.mask, &whole[..kept]).unwrap();
            assert!(!job.is_done(LabelFormat::Palette), "{kept} bytes");
        }
    }
}
