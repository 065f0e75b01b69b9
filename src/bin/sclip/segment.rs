//! `sclip segment`: settle everything that needs no model (usage errors exit 2 before any
//! download), find the images and plan their outputs, load the model only if there is work,
//! then stream the images through it, writing each one's files and reporting as they finish.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use sclip::output::overlay::{class_zero_is_background, overlay_palette};
use sclip::stream::{self, Ending, ImageFiles, ImageSource, StreamOptions};

use crate::args::SegmentArgs;
use crate::engine::{decode_threads, Chatter};
use crate::html_report::{self, PageReport};
use crate::inputs::{discover, read_path_list, Discovery, Input, StdinImage, WalkOptions};
use crate::jobs::{check_pipes, plan_jobs, Job, Terminals};
use crate::report::{settings_json, text_json, Format, Outcome, Reporter, RunFacts};
use crate::signals::stop_on_signals;
use crate::writer::{write_outputs, write_to_stdout, OutputStyle};
use crate::{Failure, EXIT_SIGNALLED};

pub fn run(args: SegmentArgs) -> Result<ExitCode, Failure> {
    let setup_started = Instant::now();
    // `stop` ends the run early (a signal or --fail-fast); `signal` is the signal's number, or 0.
    let stop = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicI32::new(0));
    // Until the images start, a signal has nothing to let finish and quits at once.
    let streaming = Arc::new(AtomicBool::new(false));
    stop_on_signals(&stop, &signal, &streaming);
    let preset = args.classes.preset()?;
    let classes = args.classes.class_list(preset).map_err(Failure::Usage)?;
    let (settings, device) = args.engine.settings(preset, args.save_probs)?;
    if !(0.0..=1.0).contains(&args.alpha) {
        return Err(Failure::Usage(anyhow!("--alpha must be between 0 and 1")));
    }
    let pipes = check_pipes(&args, Terminals::of_this_process()).map_err(Failure::Usage)?;
    // With -o -, no folder is written to, and none named `-` is made.
    let out = args.out.as_deref().filter(|_| pipes.stdout.is_none());
    if let Some(out) = out {
        check_out_folder(out).map_err(Failure::Usage)?;
    }
    let overlay_colours =
        overlay_palette(class_zero_is_background(&classes, &settings.postprocess));
    let mut page = args
        .report
        .as_deref()
        .map(|report| PageReport::plan(report, out, &classes, overlay_colours))
        .transpose()
        .map_err(Failure::Usage)?;

    let listed = match &args.files_from {
        Some(list) => read_listed_paths(list, args.null).map_err(Failure::Usage)?,
        None => Vec::new(),
    };
    if args.out.is_none() && args.images.iter().chain(&listed).any(|p| p.is_dir()) {
        return Err(Failure::Usage(anyhow!(
            "folders need --out DIR: masks written beside the images would be taken for images by the next run"
        )));
    }
    let stdin_image = if pipes.stdin {
        Some(StdinImage::read(args.max_pixels)?)
    } else {
        None
    };
    let written_folders: Vec<&Path> = out
        .into_iter()
        .chain(page.as_ref().map(PageReport::thumbnails))
        .collect();
    let discovery = match &stdin_image {
        Some(_) => Discovery {
            inputs: vec![Input {
                path: args.images[0].clone(),
                relative: args.images[0].clone(),
            }],
            ..Discovery::default()
        },
        None => discover(
            &args.images,
            &listed,
            &WalkOptions {
                recursive: args.recursive,
                exclude: &written_folders,
            },
        ),
    };
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
    let output_options = args.output_options();
    let jobs = match pipes.stdout {
        Some(_) => inputs
            .iter()
            .map(|input| Job::to_stdout(input.path.clone()))
            .collect(),
        None => plan_jobs(&inputs, &output_options).map_err(Failure::Usage)?,
    };
    let (done, to_run): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|job| args.skip_existing && job.is_done(output_options.label_format));
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
    let mut facts = RunFacts {
        settings: settings_json(&settings),
        ..RunFacts::default()
    };

    let style = OutputStyle {
        classes: &classes,
        label_format: output_options.label_format,
        overlay_colours,
        overlay_alpha: args.alpha,
    };
    // Everything that needs no model is settled; the model is loaded only if there is work.
    let chatter = Chatter {
        quiet: args.quiet,
        verbose: args.verbose,
    };
    let model = if to_run.is_empty() {
        None
    } else {
        Some(args.engine.load_model(&device, &settings, chatter)?)
    };
    let segmenter = match &model {
        Some(model) => {
            let segmenter = args.engine.segmenter(model, &classes, settings, chatter)?;
            facts.text = text_json(segmenter.queries().stats());
            Some(segmenter)
        }
        None => None,
    };
    facts.setup_seconds = setup_started.elapsed().as_secs_f64();
    if args.verbose {
        eprintln!("sclip: ready in {:.2} s", facts.setup_seconds);
    }

    let mut reporter = Reporter::new(format, args.quiet, show_progress, total, &classes);
    if pipes.stdout.is_some() {
        reporter.keep_stdout_for_data();
    }
    for (path, problem) in &discovery.problems {
        reporter.problem(path, problem);
        page.iter_mut().for_each(|page| page.failed(path, problem));
    }
    for job in &done {
        reporter.skipped(job);
        page.iter_mut().for_each(|page| page.skipped(job));
    }
    let failed_early = args.fail_fast && !discovery.problems.is_empty();
    if let (Some(segmenter), false) = (&segmenter, failed_early) {
        streaming.store(true, Ordering::SeqCst);
        page.iter().try_for_each(PageReport::prepare)?;
        let options = StreamOptions {
            decode_threads: decode_threads(),
            // Thumbnails for --report are drawn from the overlay, with or without --overlay.
            keep_images: args.overlay.is_some() || page.is_some(),
            fail_fast: args.fail_fast,
        };
        let files = ImageFiles {
            paths: to_run.iter().map(|job| job.image.as_path()).collect(),
            max_pixels: args.max_pixels,
        };
        let source: &dyn ImageSource = match &stdin_image {
            Some(image) => image,
            None => &files,
        };
        stream::run(segmenter, source, &options, &stop, &mut |index, result| {
            let job = &to_run[index];
            let thumbnail = page.as_ref().map(|page| page.thumbnail_path(job));
            let outcome = result.and_then(|result| {
                match pipes.stdout {
                    Some(image) => write_to_stdout(&result, &style, image)?,
                    None => write_outputs(job, &result, &style, out, thumbnail.as_deref())?,
                }
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
            page.iter_mut()
                .for_each(|page| page.finished(job, &outcome));
            ending
        })?;
    }
    let counts = reporter.counts();
    facts.not_started = total - counts.ok - counts.skipped - counts.failed;
    let signal = signal.load(Ordering::SeqCst);
    facts.interrupted = signal != 0;
    let page_written =
        page.map(|page| page.write(counts, &facts, setup_started.elapsed().as_secs_f64()));
    reporter.summary(&facts);
    let page_failed = page_written.is_some_and(|written| !html_report::tell(written, args.quiet));
    Ok(if facts.interrupted {
        ExitCode::from(u8::try_from(EXIT_SIGNALLED + signal).unwrap_or(u8::MAX))
    } else if counts.failed > 0 || page_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `--out` must be a folder, or a path where one can be made.
fn check_out_folder(out: &Path) -> Result<()> {
    let Some(existing) = out
        .ancestors()
        .find(|path| !path.as_os_str().is_empty() && std::fs::symlink_metadata(path).is_ok())
    else {
        return Ok(());
    };
    if !existing.is_dir() {
        if existing == out {
            bail!(
                "--out {} exists and is not a folder; name a folder for the outputs",
                out.display()
            );
        }
        bail!(
            "--out {}: {} exists and is not a folder; name a folder for the outputs",
            out.display(),
            existing.display()
        );
    }
    Ok(())
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
