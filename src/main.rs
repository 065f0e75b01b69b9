use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use sclip::batch::inputs::{discover, read_path_list, Shard, WalkOptions};
use sclip::batch::pipeline::{self, PipelineOptions};
use sclip::batch::report::{one_line, Format, Reporter, RunFacts};
use sclip::batch::{plan_jobs, OutputOptions, OverlayFormat};
use sclip::classes::ClassList;
use sclip::load::{device_from_spec, resolve_model, DEFAULT_MODEL};
use sclip::postprocess::PostprocessParams;
use sclip::preprocess::DEFAULT_MAX_PIXELS;
use sclip::presets::{self, Preset, PRESETS};
use sclip::segment::{Segmenter, Settings};
use sclip::text::cache::{default_cache_dir, QueryCache};

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
    /// Segment images and folders of images: writes <stem>.png per image, an 8-bit paletted PNG
    /// whose pixel values are class indices.
    ///
    /// Exit status: 0 when every image was segmented (or skipped), 1 when any failed, 2 for
    /// usage errors, 130 when interrupted.
    Segment(Box<SegmentArgs>),
    /// List the benchmark presets, or print one preset's class file (to copy and edit).
    Presets {
        /// A preset's name, e.g. voc21.
        name: Option<String>,
    },
}

#[derive(Args)]
struct SegmentArgs {
    /// Images and folders of images (folders need --out). Files in folders are kept by content,
    /// whatever their extension: JPEG, PNG, WebP, BMP, TIFF, GIF, ...
    #[arg(value_name = "PATH", required_unless_present = "files_from")]
    images: Vec<PathBuf>,

    /// Walk folders recursively.
    #[arg(short, long)]
    recursive: bool,

    /// Read more paths from FILE ('-' for stdin), one a line.
    #[arg(long, value_name = "FILE")]
    files_from: Option<PathBuf>,

    /// Paths in --files-from are separated by NUL bytes (find -print0, fd -0).
    #[arg(short = '0', long = "null", requires = "files_from")]
    null: bool,

    /// Process only shard K of N (1-based): images are split by a stable hash of their relative
    /// path, so N jobs with K = 1..N cover every image exactly once, with no coordination.
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,

    /// Classes, comma-separated; a class's synonyms separated by '|': "person,car|automobile,road".
    /// With thresholds, the first class is the background.
    #[arg(short, long, value_name = "LIST", conflicts_with = "classes_file")]
    classes: Option<String>,

    /// File with one class per line, its names comma-separated; '#' starts a comment.
    #[arg(long, value_name = "FILE")]
    classes_file: Option<PathBuf>,

    /// A benchmark's classes and settings (see `sclip presets`); the options given explicitly
    /// override it.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,

    /// Hugging Face repo id (downloaded once, then cached) or a local folder holding
    /// config.json, tokenizer.json and model.safetensors (or pytorch_model.bin).
    #[arg(short, long, default_value = DEFAULT_MODEL, value_name = "REPO|DIR")]
    model: String,

    /// Hub revision (branch, tag or commit) when --model is a repo id.
    #[arg(long, default_value = "main", value_name = "REV")]
    revision: String,

    /// Folder for the outputs, mirroring the inputs' folders [default: beside each image].
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Also write <stem>.probs.npy: float32 per-class scores, classes x height x width.
    #[arg(long)]
    save_probs: bool,

    /// Also write <stem>.overlay.jpg (or .png): the photo blended with the mask, and a legend.
    #[arg(long, value_enum, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "jpg")]
    overlay: Option<OverlayKind>,

    /// Opacity of the class colours in overlays, 0 to 1.
    #[arg(long, default_value_t = 0.5, value_name = "A")]
    alpha: f32,

    /// Skip images whose outputs all exist, so an interrupted run resumes where it stopped.
    #[arg(long)]
    skip_existing: bool,

    /// Stop at the first image that fails.
    #[arg(long)]
    fail_fast: bool,

    /// Refuse images whose header declares more pixels than this (decompression bombs).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_name = "N")]
    max_pixels: u64,

    /// One JSON object a line on stdout per image, then a summary object.
    #[arg(long)]
    json: bool,

    /// Print only errors (and --json objects): no per-image lines, progress bar or summary.
    #[arg(short, long)]
    quiet: bool,

    /// Also say where the text queries came from and how long setup took.
    #[arg(short, long, conflicts_with = "quiet")]
    verbose: bool,

    /// Neither read nor write the on-disk text query cache.
    #[arg(long)]
    no_cache: bool,

    /// Multiplies the cosine similarities before the softmax over class names [default: 40, or the preset's].
    #[arg(long, value_name = "X")]
    logit_scale: Option<f32>,

    /// Pixels whose best class score is below this become class 0 (background) [default: 0, or the preset's].
    #[arg(long, value_name = "Y")]
    prob_thd: Option<f32>,

    /// Drop non-background classes covering at most this fraction of the non-background area
    /// [default: off, or the preset's].
    #[arg(long, value_name = "Z")]
    area_thd: Option<f32>,

    /// Short side of the resized image (the long side is capped at 2048) [default: 336, or the preset's].
    #[arg(long, value_name = "S")]
    short_side: Option<u32>,

    /// Sliding-window size in pixels.
    #[arg(long, default_value_t = 224, value_name = "W")]
    window: usize,

    /// Sliding-window stride in pixels.
    #[arg(long, default_value_t = 112, value_name = "T")]
    stride: usize,

    /// Windows per forward pass, taken across images (memory grows with it).
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
enum OverlayKind {
    Jpg,
    Png,
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

/// Why a command failed, which decides the exit status.
enum Failure {
    /// The command line asks for something impossible (exit 2, as for clap's own errors).
    Usage(anyhow::Error),
    /// Something went wrong while doing it (exit 1).
    Run(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Run(error)
    }
}

const EXIT_USAGE: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Segment(args) => segment(*args),
        Command::Presets { name } => list_presets(name.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Usage(err)) => {
            eprintln!("sclip: error: {}", one_line(&err));
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Run(err)) => {
            eprintln!("sclip: error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

fn list_presets(name: Option<&str>) -> Result<ExitCode, Failure> {
    match name {
        Some(name) => {
            let preset = presets::find(name).map_err(Failure::Usage)?;
            print!("{}", preset.class_file);
        }
        None => {
            println!(
                "preset           classes  short side  logit scale  prob thd  area thd  dataset"
            );
            for preset in PRESETS {
                let area = preset
                    .area_thd
                    .map_or_else(|| "-".to_string(), |a| a.to_string());
                println!(
                    "{:<16} {:>7}  {:>10}  {:>11}  {:>8}  {:>8}  {}",
                    preset.name,
                    preset.classes().len(),
                    preset.short_side,
                    preset.logit_scale,
                    preset.prob_thd,
                    area,
                    preset.description
                );
            }
            println!(
                "\n`sclip presets NAME` prints a preset's class file; `--preset NAME` uses it."
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn segment(args: SegmentArgs) -> Result<ExitCode, Failure> {
    let setup_started = Instant::now();
    let preset = args
        .preset
        .as_deref()
        .map(presets::find)
        .transpose()
        .map_err(Failure::Usage)?;
    let classes = class_list(&args, preset).map_err(Failure::Usage)?;
    let settings = Settings {
        short_side: args
            .short_side
            .or(preset.map(|p| p.short_side))
            .unwrap_or(336),
        window: args.window,
        stride: args.stride,
        batch_size: args.batch_size,
        postprocess: PostprocessParams {
            logit_scale: args
                .logit_scale
                .or(preset.map(|p| p.logit_scale))
                .unwrap_or(40.0),
            prob_thd: args.prob_thd.or(preset.map(|p| p.prob_thd)).unwrap_or(0.0),
            area_thd: args.area_thd.or(preset.and_then(|p| p.area_thd)),
        },
        keep_probs: args.save_probs,
    };
    settings.validate().map_err(Failure::Usage)?;
    if !(0.0..=1.0).contains(&args.alpha) {
        return Err(Failure::Usage(anyhow!("--alpha must be between 0 and 1")));
    }
    let device = device_from_spec(&args.device).map_err(Failure::Usage)?;

    let listed = match &args.files_from {
        Some(list) => read_listed_paths(list, args.null).map_err(Failure::Usage)?,
        None => Vec::new(),
    };
    if args.out.is_none() && args.images.iter().chain(&listed).any(|p| p.is_dir()) {
        return Err(Failure::Usage(anyhow!(
            "folders need --out DIR: masks written beside the images would be taken for images by the next run"
        )));
    }
    let discovery = discover(
        &args.images,
        &listed,
        &WalkOptions {
            recursive: args.recursive,
            exclude: args.out.as_deref(),
        },
    );
    if discovery.skipped_subfolders > 0 && !args.quiet {
        eprintln!(
            "sclip: note: {} subfolder(s) not searched; pass -r to include them",
            discovery.skipped_subfolders
        );
    }
    let inputs: Vec<_> = discovery
        .inputs
        .into_iter()
        .filter(|input| {
            args.shard
                .as_ref()
                .is_none_or(|shard| shard.contains(&input.relative))
        })
        .collect();
    let output_options = OutputOptions {
        out: args.out.clone(),
        save_probs: args.save_probs,
        overlay: args.overlay.map(|kind| match kind {
            OverlayKind::Jpg => OverlayFormat::Jpeg,
            OverlayKind::Png => OverlayFormat::Png,
        }),
    };
    let jobs = plan_jobs(&inputs, &output_options).map_err(Failure::Usage)?;
    let (done, to_run): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|job| args.skip_existing && job.is_done());
    let total = done.len() + to_run.len() + discovery.problems.len();
    if total == 0 && !args.quiet {
        eprintln!("sclip: no images found");
    }

    let format = if args.json {
        Format::Json
    } else {
        Format::Human
    };
    let show_progress = !args.quiet && std::io::stderr().is_terminal();
    let mut facts = RunFacts::default();
    // `stop` ends the run early (Ctrl-C or --fail-fast); `interrupted` tells which.
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));

    // Everything that needs no model is settled; the model is loaded only if there is work.
    let segmenter = if to_run.is_empty() {
        None
    } else {
        let files = resolve_model(&args.model, &args.revision)
            .with_context(|| format!("cannot load model {}", args.model))?;
        let cache = (!args.no_cache)
            .then(default_cache_dir)
            .flatten()
            .map(QueryCache::new);
        let segmenter = Segmenter::new(
            &files,
            &device,
            args.dtype.into(),
            classes.clone(),
            settings,
            cache.as_ref(),
        )?;
        facts.text = segmenter.text_stats().to_json();
        let text_stats = segmenter.text_stats();
        if args.verbose {
            eprintln!("sclip: {text_stats}");
        } else if let (Some(error), false) = (&text_stats.store_error, args.quiet) {
            eprintln!("sclip: warning: the text queries could not be cached: {error}");
        }
        Some(segmenter)
    };
    facts.setup_seconds = setup_started.elapsed().as_secs_f64();
    if args.verbose {
        eprintln!("sclip: ready in {:.2} s", facts.setup_seconds);
    }

    let mut reporter = Reporter::new(format, args.quiet, show_progress, total, &classes);
    for (path, problem) in &discovery.problems {
        reporter.problem(path, problem);
    }
    for job in &done {
        reporter.skipped(job);
    }
    let failed_early = args.fail_fast && !discovery.problems.is_empty();
    if let (Some(segmenter), false) = (&segmenter, failed_early) {
        let (handler_stop, handler_interrupted) = (Arc::clone(&stop), Arc::clone(&interrupted));
        let handler = ctrlc::set_handler(move || {
            if handler_interrupted.swap(true, Ordering::SeqCst) {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
            handler_stop.store(true, Ordering::SeqCst);
            eprintln!(
                "sclip: interrupted; finishing the images being written (Ctrl-C again quits at once)"
            );
        });
        if let Err(err) = handler {
            eprintln!("sclip: warning: Ctrl-C will stop at once: {err}");
        }
        let options = PipelineOptions {
            max_pixels: args.max_pixels,
            decode_threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            overlay_alpha: args.alpha,
            fail_fast: args.fail_fast,
        };
        pipeline::run(segmenter, &to_run, &options, &stop, &mut |job, result| {
            reporter.finished(job, &result);
        })?;
    }
    let counts = reporter.counts();
    facts.not_started = total - counts.ok - counts.skipped - counts.failed;
    facts.interrupted = interrupted.load(Ordering::SeqCst);
    reporter.summary(&facts);
    Ok(if facts.interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if counts.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn class_list(args: &SegmentArgs, preset: Option<&Preset>) -> Result<ClassList> {
    match (&args.classes, &args.classes_file, preset) {
        (Some(list), _, _) => ClassList::parse_inline(list),
        (None, Some(path), _) => ClassList::from_file(path),
        (None, None, Some(preset)) => Ok(preset.classes()),
        (None, None, None) => Err(anyhow!(
            "name the classes to find: --classes \"dog,boat,water\", --classes-file FILE or --preset NAME"
        )),
    }
}

fn read_listed_paths(list: &PathBuf, nul_separated: bool) -> Result<Vec<PathBuf>> {
    if list.as_os_str() == "-" {
        read_path_list(std::io::stdin().lock(), nul_separated)
            .context("cannot read the --files-from list from stdin")
    } else {
        let file = std::fs::File::open(list)
            .with_context(|| format!("cannot open the --files-from list {}", list.display()))?;
        read_path_list(file, nul_separated)
            .with_context(|| format!("cannot read the --files-from list {}", list.display()))
    }
}
