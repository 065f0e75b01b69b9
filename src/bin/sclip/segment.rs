//! `sclip segment`: settle everything that needs no model (usage errors exit 2 before any
//! download), find the images and plan their outputs, load the model only if there is work,
//! then stream the images through it, writing each one's files and reporting as they finish.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use sclip::presets::{self, Preset};
use sclip::stream::{self, Ending, ImageFiles, StreamOptions};
use sclip::text::cache::default_cache_dir;
use sclip::{
    parse_device, ClassList, ClassListError, Device, Model, QueryCache, QueryEncoder, Segmenter,
    Settings,
};

use crate::args::{SegmentArgs, CLASSES_EXAMPLE};
use crate::inputs::{discover, read_path_list, WalkOptions};
use crate::jobs::plan_jobs;
use crate::report::{describe_text, text_json, Format, Outcome, Reporter, RunFacts};
use crate::writer::write_outputs;
use crate::{Failure, EXIT_INTERRUPTED};

pub fn run(args: SegmentArgs) -> Result<ExitCode, Failure> {
    let setup_started = Instant::now();
    let preset = args
        .preset
        .as_deref()
        .map(presets::find)
        .transpose()
        .map_err(Failure::Usage)?;
    let classes = class_list(&args, preset).map_err(Failure::Usage)?;
    let settings = Settings::resolve(preset, &args.overrides())
        .map_err(|error| Failure::Usage(error.into()))?;
    if !(0.0..=1.0).contains(&args.alpha) {
        return Err(Failure::Usage(anyhow!("--alpha must be between 0 and 1")));
    }
    let device = parse_device(&args.device).map_err(|error| Failure::Usage(error.into()))?;

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
    let jobs = plan_jobs(&inputs, &args.output_options()).map_err(Failure::Usage)?;
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
    let model = if to_run.is_empty() {
        None
    } else {
        Some(load_model(&args, &device, &settings)?)
    };
    let segmenter = match &model {
        Some(model) => Some(segmenter(&args, model, &classes, settings, &mut facts)?),
        None => None,
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
        stop_on_ctrl_c(&stop, &interrupted);
        let options = StreamOptions {
            decode_threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            keep_images: args.overlay.is_some(),
            fail_fast: args.fail_fast,
        };
        let source = ImageFiles {
            paths: to_run.iter().map(|job| job.image.as_path()).collect(),
            max_pixels: args.max_pixels,
        };
        stream::run(segmenter, &source, &options, &stop, &mut |index, result| {
            let job = &to_run[index];
            let outcome = result.and_then(|result| {
                write_outputs(job, &result, &classes, args.alpha)?;
                Ok(Outcome {
                    width: result.segmentation.width,
                    height: result.segmentation.height,
                    seconds: result.started.elapsed().as_secs_f64(),
                    present: result.segmentation.present_classes(),
                    warnings: result.warnings,
                })
            });
            let ending = match outcome {
                Ok(_) => Ending::Succeeded,
                Err(_) => Ending::Failed,
            };
            reporter.finished(job, &outcome);
            ending
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

/// The model named by `--model`, once the settings are known to fit its patch size.
fn load_model(args: &SegmentArgs, device: &Device, settings: &Settings) -> Result<Model> {
    let model = Model::open(&args.model, &args.revision, device, args.dtype.into())
        .with_context(|| format!("cannot load model {}", args.model))?;
    settings.validate_for_patch(model.config().vision.patch_size)?;
    if let (true, Some(note)) = (args.verbose, model.compute_note()) {
        eprintln!("sclip: {note}");
    }
    Ok(model)
}

/// The class queries (from the cache unless `--no-cache`) joined with the model and settings;
/// records where the queries came from.
fn segmenter<'m>(
    args: &SegmentArgs,
    model: &'m Model,
    classes: &ClassList,
    settings: Settings,
    facts: &mut RunFacts,
) -> Result<Segmenter<'m>> {
    let cache = (!args.no_cache)
        .then(default_cache_dir)
        .flatten()
        .map(QueryCache::new);
    // The encoder, and the text tower with it, is dropped here: its memory goes to the windows.
    let queries = QueryEncoder::new(model, cache).encode(classes)?;
    let text_stats = queries.stats();
    facts.text = text_json(text_stats);
    if args.verbose {
        eprintln!("sclip: {}", describe_text(text_stats));
    } else if let (Some(error), false) = (&text_stats.store_error, args.quiet) {
        eprintln!("sclip: warning: the text queries could not be cached: {error}");
    }
    Segmenter::new(model, queries, settings)
}

/// The first Ctrl-C stops feeding the model and lets the images being written finish; the
/// second quits at once.
fn stop_on_ctrl_c(stop: &Arc<AtomicBool>, interrupted: &Arc<AtomicBool>) {
    let (stop, interrupted) = (Arc::clone(stop), Arc::clone(interrupted));
    let handler = ctrlc::set_handler(move || {
        if interrupted.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        stop.store(true, Ordering::SeqCst);
        eprintln!(
            "sclip: interrupted; finishing the images being written (Ctrl-C again quits at once)"
        );
    });
    if let Err(err) = handler {
        eprintln!("sclip: warning: Ctrl-C will stop at once: {err}");
    }
}

fn class_list(args: &SegmentArgs, preset: Option<&Preset>) -> Result<ClassList> {
    match (&args.classes, &args.classes_file, preset) {
        (Some(list), _, _) => ClassList::parse_inline(list).map_err(|error| {
            let context = match error {
                ClassListError::BlankName { .. } => format!("bad --classes {list:?}"),
                ClassListError::Empty | ClassListError::TooMany { .. } => {
                    "bad --classes".to_string()
                }
            };
            anyhow::Error::new(error).context(context)
        }),
        (None, Some(path), _) => ClassList::from_file(path),
        (None, None, Some(preset)) => Ok(preset.classes()),
        (None, None, None) => Err(anyhow!(
            "name the classes to find: --classes {CLASSES_EXAMPLE:?}, --classes-file FILE or --preset NAME"
        )),
    }
}

fn read_listed_paths(list: &Path, nul_separated: bool) -> Result<Vec<std::path::PathBuf>> {
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
