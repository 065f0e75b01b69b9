//! The command line: one documented field per flag, and how the flags map onto the library's
//! values. Defaults that the library owns are read from it, never restated.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use sclip::output::LabelFormat;
use sclip::{DEFAULT_MAX_PIXELS, DEFAULT_MODEL};

use sclip::Method;

use crate::engine::{method_parser, ClassArgs, EngineArgs};
use crate::eval::EvalArgs;
use crate::jobs::{OutputOptions, OverlayFormat};

/// The class list the usage messages suggest.
pub const CLASSES_EXAMPLE: &str = "dog,boat,water";

/// `sclip -V`: the version and the commit it was built from (`sclip --version` says more).
const SHORT_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SCLIP_COMMIT"),
    ")"
);

/// `sclip --version`: what a bug report needs. The CPU lines are this machine's, detected as the
/// kernels detect them.
pub fn long_version() -> String {
    let commit = match env!("SCLIP_COMMIT") {
        "unknown" => "unknown (not built from a git checkout)".to_string(),
        commit => match commit.strip_suffix("-dirty") {
            Some(clean) => format!("{clean}, with uncommitted changes"),
            None => commit.to_string(),
        },
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let features = if cfg!(feature = "cuda") {
        "cuda"
    } else {
        "none (no CUDA: build with --features cuda for GPUs)"
    };
    let kernels = sclip::cpu_kernels();
    let amx = if kernels.amx_bf16 {
        "yes (used by --dtype bf16)"
    } else {
        "no (--dtype bf16 computes in f32 on the CPU)"
    };
    format!(
        "{}\ncommit: {commit}\ntarget: {} ({profile} build)\nfeatures: {features}\n\
         CPU kernels on this machine: {}; AMX-BF16: {amx}",
        env!("CARGO_PKG_VERSION"),
        env!("SCLIP_TARGET"),
        kernels.vector,
    )
}

#[derive(Parser)]
#[command(
    name = "sclip",
    version = SHORT_VERSION,
    about = "Segment images by free-text class names with CLIP and SCLIP's Correlative Self-Attention (no training)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Segment images and folders of images: writes <stem>.png per image, an 8-bit paletted (or
    /// greyscale) PNG whose pixel values are class indices.
    ///
    /// Exit status: 0 when every image was segmented (or skipped), 1 when any failed, 2 for
    /// usage errors (nothing started), 128+N when stopped by signal N (130 Ctrl-C, 143 SIGTERM,
    /// 129 SIGHUP).
    #[command(after_help = SEGMENT_AFTER_HELP)]
    Segment(Box<SegmentArgs>),
    /// Measure mIoU, aAcc and mAcc on a benchmark's split (PASCAL VOC, Context, COCO, Cityscapes,
    /// ADE20K), laid out as its authors' configs read it; resumes where an interrupted one stopped.
    ///
    /// Exit status: 0 when every image was counted, 1 when any failed (no metrics then), 2 for
    /// usage errors, 128+N when stopped by signal N.
    #[command(after_help = crate::eval::after_help())]
    Eval(Box<EvalArgs>),
    /// List the benchmark presets, or print one preset's class file (to copy and edit).
    Presets {
        /// A preset's name, e.g. voc21.
        name: Option<String>,

        /// The method whose settings are listed: for each benchmark, or in NAME's header.
        #[arg(long, default_value = Method::Sclip.name(), value_parser = method_parser())]
        method: Method,
    },
    /// Download a model into the Hugging Face cache and print its folder.
    ///
    /// Prepares a machine that will run offline (HF_HUB_OFFLINE=1), or gives scripts the folder:
    /// `MODEL_DIR=$(sclip download)`, then `--model "$MODEL_DIR"`.
    #[command(after_help = DOWNLOAD_AFTER_HELP)]
    Download(DownloadArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell or elvish).
    ///
    /// For bash: `sclip completions bash > ~/.local/share/bash-completion/completions/sclip`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page in roff, or write them all.
    ///
    /// `sclip man > sclip.1` prints sclip's, `sclip man segment > sclip-segment.1` a command's;
    /// `sclip man --out-dir ~/.local/share/man/man1` writes every page.
    Man {
        /// The command whose page to print [default: sclip's own].
        command: Option<String>,

        /// Write sclip.1 and one sclip-COMMAND.1 per command into DIR, and print their paths.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct DownloadArgs {
    /// Hugging Face repo id.
    #[arg(default_value = DEFAULT_MODEL, value_name = "REPO")]
    pub model: String,

    /// Hub revision: a branch, tag or commit.
    #[arg(long, default_value = "main", value_name = "REV")]
    pub revision: String,

    /// Print only errors and the folder: no progress on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The variables the hub client reads, in every command that can download a model.
macro_rules! hub_environment_help {
    () => {
        "  HF_HOME          Hugging Face home (default $XDG_CACHE_HOME/huggingface, else
                   ~/.cache/huggingface): cache in $HF_HOME/hub, saved token in $HF_HOME/token
  HF_HUB_CACHE     hub cache folder (default $HF_HOME/hub)
  HF_HUB_OFFLINE=1 use the cache only, never the network
  HF_ENDPOINT      hub mirror (default https://huggingface.co)
  HF_TOKEN         token for gated repos (else the file HF_TOKEN_PATH, default $HF_HOME/token);
                   sent to the hub only, never to the hosts it redirects downloads to
  HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT
                   seconds a silent hub is waited for (default 10 each)
  HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY (or in lower case)
                   proxy for the hub
  Downloads are checked (size, and SHA-256 for the weights) before they enter the cache.
"
    };
}

/// Every variable a command that runs the model reads (`concat!` it into an after-help).
macro_rules! environment_help {
    () => {
        concat!(
            "Environment:\n",
            hub_environment_help!(),
            "  SCLIP_CACHE_DIR  text query cache (default $XDG_CACHE_HOME/sclip, else ~/.cache/sclip)
  XDG_CACHE_HOME   where both caches go by default (must be absolute for sclip's own)
  RAYON_NUM_THREADS
                   threads computing the model (default one per CPU this process may use),
                   and as many (at most 4) decoding images beside them
  NO_COLOR         honoured: help and usage errors are then plain; sclip's own output has no
                   colours
"
        )
    };
}

/// For the commands whose after-help is built at run time.
pub const ENVIRONMENT_HELP: &str = environment_help!();

const DOWNLOAD_AFTER_HELP: &str = concat!(
    "Environment:\n",
    hub_environment_help!(),
    "
Exit status:
  0 the model is in the cache (its folder printed); 1 it could not be fetched; 2 usage error."
);

/// Limits, environment and exit statuses, after the options of `sclip segment --help`.
const SEGMENT_AFTER_HELP: &str = concat!(
    "\
Limits:
  --max-pixels N refuses an image declaring more pixels (as the decoder reads the header), and a
  file larger than 8 bytes a pixel of it plus 64 MiB, before reading it. Pipes, devices and folders
  given as images are refused without reading them; - reads stdin, up to the same size. An image
  whose resized short side is under one patch (16 pixels for ViT-B/16) fails alone. At most 256 classes and 1024 names (synonyms
  included) per run, each name once (case and repeated spaces do not count).

",
    environment_help!(),
    "
Exit status:
  0 every image segmented or skipped; 1 any image failed; 2 usage error, nothing started;
  128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."
);

/// "[default: 40, or the preset's]": a default that a preset may change, read from the library.
pub fn preset_default(help: &str, default: impl std::fmt::Display) -> String {
    format!("{help} [default: {default}, or the preset's]")
}

#[derive(Args)]
pub struct SegmentArgs {
    /// Images and folders of images (folders need --out). Files in folders are kept when their
    /// extension or their content is an image's: JPEG, PNG, WebP, BMP, TIFF, GIF, ... A lone -
    /// reads one image from stdin (with -o -).
    #[arg(value_name = "PATH", required_unless_present = "files_from")]
    pub images: Vec<PathBuf>,

    /// Walk folders recursively.
    #[arg(short, long)]
    pub recursive: bool,

    /// Read more paths from FILE ('-' for stdin), one a line.
    #[arg(long, value_name = "FILE")]
    pub files_from: Option<PathBuf>,

    /// Paths in --files-from are separated by NUL bytes (find -print0, fd -0).
    #[arg(short = '0', long = "null", requires = "files_from")]
    pub null: bool,

    /// Process only shard K of N (1-based): images are split by a stable hash of their relative
    /// path, so N jobs with K = 1..N cover every image exactly once, with no coordination.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::inputs::Shard>,

    #[command(flatten)]
    pub classes: ClassArgs,

    /// Folder for the outputs, mirroring the inputs' folders [default: beside each image]. -
    /// writes one image's mask to stdout (its overlay instead, with --overlay), e.g.
    /// `sclip segment - -c cat,sofa -o - < in.jpg > mask.png`.
    #[arg(short, long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// How masks store the class indices: palette (VOC-style colours; PIL reads indices) or grey
    /// (8-bit greyscale; OpenCV's imread with IMREAD_UNCHANGED reads indices too). With
    /// --skip-existing, a mask in the other format counts as not done and is rewritten.
    #[arg(long, value_enum, default_value = "palette", value_name = "FORMAT")]
    pub label_format: LabelFormatKind,

    /// Also write <stem>.probs.npy: float32 per-class scores, classes x height x width.
    #[arg(long)]
    pub save_probs: bool,

    /// Also write <stem>.overlay.jpg (or .png): the photo blended with the mask, and a legend.
    #[arg(long, value_enum, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "jpg")]
    pub overlay: Option<OverlayKind>,

    /// Opacity of the class colours in overlays, 0 to 1.
    #[arg(long, default_value_t = 0.5, value_name = "A")]
    pub alpha: f32,

    /// Also write an HTML page to check the run by eye: thumbnails of the overlays (in
    /// <FILE stem>_files/ beside it), classes and areas, a class filter, settings and summary.
    /// A bare file name goes into --out when given; any other path is taken as it is.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,

    /// Skip images whose outputs all exist, so an interrupted run resumes where it stopped.
    #[arg(long)]
    pub skip_existing: bool,

    /// Stop at the first image that fails.
    #[arg(long)]
    pub fail_fast: bool,

    /// Refuse images whose header declares more pixels than this (decompression bombs).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_name = "N")]
    pub max_pixels: u64,

    /// One JSON object a line on stdout per image, then a summary object.
    #[arg(long)]
    pub json: bool,

    /// Print only errors (and --json objects): no per-image lines, progress bar or summary.
    #[arg(short, long)]
    pub quiet: bool,

    /// Also say where the text queries came from and how long setup took.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    #[command(flatten)]
    pub engine: EngineArgs,
}

impl SegmentArgs {
    pub fn output_options(&self) -> OutputOptions {
        OutputOptions {
            out: self.out.clone(),
            save_probs: self.save_probs,
            overlay: self.overlay.map(|kind| match kind {
                OverlayKind::Jpg => OverlayFormat::Jpeg,
                OverlayKind::Png => OverlayFormat::Png,
            }),
            label_format: match self.label_format {
                LabelFormatKind::Palette => LabelFormat::Palette,
                LabelFormatKind::Grey => LabelFormat::Grey,
            },
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OverlayKind {
    Jpg,
    Png,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LabelFormatKind {
    Palette,
    Grey,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl From<Precision> for sclip::DType {
    fn from(precision: Precision) -> Self {
        match precision {
            Precision::F32 => sclip::DType::F32,
            Precision::F16 => sclip::DType::F16,
            Precision::Bf16 => sclip::DType::BF16,
        }
    }
}
