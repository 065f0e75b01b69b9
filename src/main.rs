use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use sclip::batch::{plan_jobs, run_job};
use sclip::classes::ClassList;
use sclip::load::{device_from_spec, resolve_model, DEFAULT_MODEL};
use sclip::postprocess::PostprocessParams;
use sclip::segment::{Segmenter, Settings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sclip",
    version,
    about = "Segment images by free-text class names with CLIP and SCLIP's Correlative Self-Attention (no training)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment images: writes <out>/<stem>.png, an 8-bit paletted PNG whose pixel values are class indices.
    Segment(SegmentArgs),
}

#[derive(Args)]
struct SegmentArgs {
    /// Images to segment (JPEG, PNG, WebP, BMP, TIFF, GIF, ...).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,

    /// Classes, comma-separated; a class's synonyms separated by '|': "person,car|automobile,road".
    /// With thresholds, the first class is the background.
    #[arg(
        short,
        long,
        value_name = "LIST",
        required_unless_present = "classes_file",
        conflicts_with = "classes_file"
    )]
    classes: Option<String>,

    /// File with one class per line, its names comma-separated; '#' starts a comment.
    #[arg(long, value_name = "FILE")]
    classes_file: Option<PathBuf>,

    /// Hugging Face repo id (downloaded once, then cached) or a local folder holding
    /// config.json, tokenizer.json and model.safetensors (or pytorch_model.bin).
    #[arg(short, long, default_value = DEFAULT_MODEL, value_name = "REPO|DIR")]
    model: String,

    /// Hub revision (branch, tag or commit) when --model is a repo id.
    #[arg(long, default_value = "main", value_name = "REV")]
    revision: String,

    /// Folder for the outputs [default: each image's own folder].
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Also write <stem>.probs.npy: float32 per-class scores, classes x height x width.
    #[arg(long)]
    save_probs: bool,

    /// Multiplies the cosine similarities before the softmax over class names.
    #[arg(long, default_value_t = 40.0, value_name = "X")]
    logit_scale: f32,

    /// Pixels whose best class score is below this become class 0 (background).
    #[arg(long, default_value_t = 0.0, value_name = "Y")]
    prob_thd: f32,

    /// Drop non-background classes covering at most this fraction of the non-background area.
    #[arg(long, value_name = "Z")]
    area_thd: Option<f32>,

    /// Short side of the resized image (the long side is capped at 2048).
    #[arg(long, default_value_t = 336, value_name = "S")]
    short_side: u32,

    /// Sliding-window size in pixels.
    #[arg(long, default_value_t = 224, value_name = "W")]
    window: usize,

    /// Sliding-window stride in pixels.
    #[arg(long, default_value_t = 112, value_name = "T")]
    stride: usize,

    /// Windows per forward pass (memory grows with it).
    #[arg(long, default_value_t = 8, value_name = "N")]
    batch_size: usize,

    /// Where the model runs: cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu", value_name = "DEV")]
    device: String,

    /// Floating-point type of the model's weights and activations.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    dtype: Precision,
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    F16,
    Bf16,
}

impl From<Precision> for candle_core::DType {
    fn from(precision: Precision) -> Self {
        match precision {
            Precision::F32 => candle_core::DType::F32,
            Precision::F16 => candle_core::DType::F16,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Segment(args) => segment(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sclip: error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Some library errors (candle's, with RUST_BACKTRACE
/// set) carry a backtrace on later lines, which is noise to a user.
fn one_line(err: &anyhow::Error) -> String {
    err.chain()
        .map(|cause| {
            cause
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(": ")
}

fn segment(args: SegmentArgs) -> Result<ExitCode> {
    let classes = match (&args.classes, &args.classes_file) {
        (Some(list), _) => ClassList::parse_inline(list)?,
        (None, Some(path)) => ClassList::from_file(path)?,
        (None, None) => unreachable!("clap requires --classes or --classes-file"),
    };
    let jobs = plan_jobs(&args.images, args.out.as_deref(), args.save_probs)?;
    for job in &jobs {
        if !job.image.is_file() {
            anyhow::bail!("{} is not a file; check the path", job.image.display());
        }
    }
    let settings = Settings {
        short_side: args.short_side,
        window: args.window,
        stride: args.stride,
        batch_size: args.batch_size,
        postprocess: PostprocessParams {
            logit_scale: args.logit_scale,
            prob_thd: args.prob_thd,
            area_thd: args.area_thd,
        },
        keep_probs: args.save_probs,
    };
    settings.validate()?;
    let device = device_from_spec(&args.device)?;
    let files = resolve_model(&args.model, &args.revision)
        .with_context(|| format!("cannot load model {}", args.model))?;
    let segmenter = Segmenter::new(&files, &device, args.dtype.into(), classes, settings)?;
    let mut failed = 0;
    for job in &jobs {
        match run_job(&segmenter, job) {
            Ok(outcome) => println!("{}", outcome.summary_line(job)),
            Err(err) => {
                failed += 1;
                eprintln!("sclip: error: {}", one_line(&err));
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
