//! `sclip eval`: settle everything that needs no model (usage errors exit 2 before any
//! download), list the split, add what the cache already counted, segment the rest through the
//! library's evaluation, and print (and with `--json`, write) the metrics only if every image
//! of the split was counted.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use sclip::atomic_write::{check_replaceable, write_atomically};
use sclip::eval::cache::{EvalCache, RunKey, RunSettings};
use sclip::eval::confusion::Metrics;
use sclip::eval::layout::{self, Sample, Split};
use sclip::eval::{Evaluation, ImageEnd};
use sclip::presets::PRESETS;
use sclip::stream::StreamOptions;
use sclip::text::cache::default_cache_dir;
use sclip::ClassList;

use crate::args::ENVIRONMENT_HELP;
use crate::engine::{decode_threads, Chatter, ClassArgs, EngineArgs};
use crate::messages::{escape_controls, one_line, shown_path};
use crate::report::{progress_bar, settings_json, Throughput};
use crate::signals::stop_on_signals;
use crate::{Failure, EXIT_SIGNALLED};

#[derive(Args)]
pub struct EvalArgs {
    /// The dataset's root folder, laid out as the benchmark of --preset (which eval needs) is:
    /// see the layouts below.
    #[arg(long, value_name = "ROOT")]
    pub dataset: PathBuf,

    /// Evaluate the first N images of the split only (in the split file's order, or sorted).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,

    /// Also write the metrics to FILE as JSON (percent; null for a class left out of a mean).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Folder of the per-image counts that let an interrupted eval resume
    /// [default: $SCLIP_CACHE_DIR/eval, else $XDG_CACHE_HOME/sclip/eval, else ~/.cache/sclip/eval].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Print only errors and the metrics: no progress bar or notes.
    #[arg(short, long)]
    pub quiet: bool,

    /// Also say where the text queries came from and where the counts are cached.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    #[command(flatten)]
    pub classes: ClassArgs,

    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The layouts, the cache and the exit statuses, after the options of `sclip eval --help`.
pub fn after_help() -> String {
    let mut help = String::from(
        "Dataset layouts (ROOT = --dataset; ID = an image's name, with its city's folder for \
         cityscapes):\n",
    );
    for preset in PRESETS {
        let layout = layout::for_preset(preset.name).expect("every preset has a layout");
        let split = match layout.split {
            Split::File(file) => format!("the IDs in ROOT/{file}"),
            Split::AllImages => "every image, sorted".to_string(),
        };
        // Under the preset's name, past its column.
        let indent = " ".repeat(18);
        help.push_str(&format!(
            "  {:<15} ROOT/{}/ID{}\n{indent}truth ROOT/{}/ID{}\n{indent}split: {split}\n",
            preset.name, layout.images, layout.image_suffix, layout.truth, layout.truth_suffix
        ));
        if layout.reduce_zero_label {
            help.push_str(&format!(
                "{indent}reduce_zero_label: truth 0 is ignored, the rest minus 1\n"
            ));
        }
    }
    help.push_str(
        "
A truth PNG holds a class index a pixel (8-bit grey or paletted: palette indices, not colours);
255 is ignored. Metrics as mmseg's IoUMetric: counts over the whole split at each image's own
size; a class never predicted nor true is left out of mIoU (n/a, null in JSON); mAcc is over the
classes with truth pixels.

Resuming:
  Each image's counts are cached in --cache DIR, under a folder named by a digest of the model
  files, dtype, device, every setting, the classes and the preset (its key.txt says which), and
  keyed by the image's ID and its image and truth files' path, size and modification time. An
  interrupted eval (Ctrl-C, SIGTERM) run again counts the cached images without segmenting them;
  a damaged cache file is detected and its image segmented again. --no-cache concerns the text
  queries only; delete the folder to forget the counts.
",
    );
    help.push('\n');
    help.push_str(ENVIRONMENT_HELP);
    help.push_str(
        "
Exit status:
  0 every image of the split counted, metrics printed; 1 any image failed (no metrics: a mean
  over fewer images is not the split's; the others are cached, so a rerun resumes); 2 usage
  error, nothing started; 128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).",
    );
    help
}

pub fn run(args: EvalArgs) -> Result<ExitCode, Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicI32::new(0));
    let streaming = Arc::new(AtomicBool::new(false));
    stop_on_signals(&stop, &signal, &streaming);
    let Some(preset) = args.classes.preset()? else {
        return Err(Failure::Usage(anyhow!(
            "sclip eval needs --preset NAME: the benchmark whose layout --dataset has, and whose \
             classes and settings are used (see `sclip presets`)"
        )));
    };
    let layout = layout::for_preset(preset.name).expect("every preset has a layout");
    let classes = args
        .classes
        .class_list(Some(preset))
        .map_err(Failure::Usage)?;
    let (settings, device) = args.engine.settings(Some(preset), false)?;
    let method = settings.method.name();
    let settings_record = settings_json(&settings);
    let limit = args.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let samples = layout
        .samples(&args.dataset, limit)
        .map_err(Failure::Usage)?;
    if samples.is_empty() {
        return Err(Failure::Usage(anyhow!(
            "the split of {} has no images; {} expects {}",
            shown_path(&args.dataset),
            preset.name,
            layout.describe()
        )));
    }
    if let Some(json) = &args.json {
        check_json_target(json, &args.dataset, &layout, &samples).map_err(Failure::Usage)?;
    }

    let chatter = Chatter {
        quiet: args.quiet,
        verbose: args.verbose,
    };
    // The weights are read only if some image is not cached: the key needs the files alone.
    let model_files = args.engine.model_files(&settings, chatter)?;
    let cache_root = args
        .cache
        .clone()
        .or_else(|| default_cache_dir().map(|dir| dir.join("eval")));
    let cache = match cache_root {
        Some(root) => {
            let run = RunSettings {
                settings: &settings,
                classes: &classes,
                preset: preset.name,
                reduce_zero_label: layout.reduce_zero_label,
            };
            let run = RunKey::new(&model_files, args.engine.dtype.into(), &device, &run)
                .context("cannot name the eval's cache")?;
            Some(EvalCache::new(&root, &run, classes.len()))
        }
        None => {
            if !args.quiet {
                eprintln!(
                    "sclip: warning: no cache folder (no --cache, SCLIP_CACHE_DIR, \
                     XDG_CACHE_HOME or HOME): an interrupted eval will start over"
                );
            }
            None
        }
    };
    if let (Some(cache), true) = (&cache, args.verbose) {
        eprintln!("sclip: counts cached in {}", shown_path(cache.dir()));
    }
    let cache_dir = cache.as_ref().map(|cache| cache.dir().to_path_buf());
    let mut evaluation = Evaluation::new(&samples, classes.len(), layout.reduce_zero_label, cache);
    let resumed = evaluation.resume();
    if !args.quiet {
        if resumed.cached > 0 {
            eprintln!(
                "sclip: {} of {} images counted from the cache",
                resumed.cached,
                samples.len()
            );
        }
        if resumed.damaged > 0 {
            let (files, images) = match resumed.damaged {
                1 => ("1 damaged cache file was".to_string(), "its image is"),
                n => (format!("{n} damaged cache files were"), "their images are"),
            };
            eprintln!("sclip: warning: {files} not used; {images} segmented again");
        }
    }

    let throughput = Throughput::start();
    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = progress_bar(samples.len(), throughput.clone());
        bar.set_position(resumed.cached as u64);
        bar.reset_eta();
        bar
    });
    let say = |line: &str| match &bar {
        Some(bar) => bar.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    };
    let (mut counted, mut failed) = (resumed.cached, 0);
    if !resumed.pending.is_empty() {
        let model = args.engine.load_files(model_files, &device, chatter)?;
        let segmenter = args.engine.segmenter(&model, &classes, settings, chatter)?;
        let options = StreamOptions {
            decode_threads: decode_threads(),
            keep_images: false,
            fail_fast: false,
        };
        let mut cache_warned = false;
        streaming.store(true, Ordering::SeqCst);
        evaluation.run(
            &segmenter,
            &resumed.pending,
            &options,
            &stop,
            &mut |sample, end| {
                match end {
                    ImageEnd::Counted { not_cached } => {
                        counted += 1;
                        throughput.add_one();
                        if let (Some(error), false) = (not_cached, cache_warned) {
                            cache_warned = true;
                            say(&format!(
                                "sclip: warning: {}; an interrupted eval will segment the images \
                                 not cached again",
                                one_line(&error)
                            ));
                        }
                    }
                    ImageEnd::Failed(error) => {
                        failed += 1;
                        say(&format!(
                            "sclip: error: {}: {}",
                            shown_path(&sample.id),
                            one_line(&error)
                        ));
                    }
                }
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            },
        )?;
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }

    let total = samples.len();
    let resume_hint = match &cache_dir {
        Some(dir) => format!(
            "the images counted are cached in {}, so the same command segments only the others",
            shown_path(dir)
        ),
        None => "nothing is cached (no cache folder), so running it again starts over".to_string(),
    };
    let signal = signal.load(Ordering::SeqCst);
    if signal != 0 {
        eprintln!(
            "sclip: interrupted with {counted} of {total} images counted and {failed} failed; \
             no metrics; {resume_hint}"
        );
        return Ok(ExitCode::from(
            u8::try_from(EXIT_SIGNALLED + signal).unwrap_or(u8::MAX),
        ));
    }
    if failed > 0 {
        eprintln!(
            "sclip: {failed} of {total} images failed; no metrics, since a mean over fewer images \
             is not the split's; fix them and run again: {resume_hint}"
        );
        return Ok(ExitCode::FAILURE);
    }

    let metrics = evaluation.metrics();
    print_table(&classes, &metrics, total, preset.name, method);
    if let Some(path) = &args.json {
        let run = RunRecord {
            preset: preset.name,
            method,
            images: total,
            settings: &settings_record,
        };
        write_json(path, &classes, &metrics, &run)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--json` file is written at the end: its folder must exist from the start, and it must
/// be a file that can be replaced, none of the dataset's.
fn check_json_target(
    path: &Path,
    dataset: &Path,
    layout: &layout::Layout,
    samples: &[Sample],
) -> Result<()> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        bail!(
            "--json {}: the folder {} does not exist; create it or name a file in an existing folder",
            shown_path(path),
            shown_path(folder)
        );
    }
    if path.is_dir() {
        bail!(
            "--json {} is a folder; name a file to write the metrics to",
            shown_path(path)
        );
    }
    check_replaceable(path).map_err(|error| anyhow!("--json {error}"))?;
    // Only an existing file can be one of the dataset's.
    if let Ok(target) = path.canonicalize() {
        let split_file = match layout.split {
            Split::File(file) => Some(dataset.join(file)),
            Split::AllImages => None,
        };
        let same = samples
            .iter()
            .flat_map(|sample| [&sample.image, &sample.truth])
            .chain(&split_file)
            .find(|file| file.canonicalize().is_ok_and(|file| file == target));
        if let Some(file) = same {
            bail!(
                "--json {} is the dataset's file {}, which the metrics would replace; name a \
                 file of its own",
                shown_path(path),
                shown_path(file)
            );
        }
    }
    Ok(())
}

fn percent(value: Option<f64>) -> Option<f64> {
    value.map(|value| 100.0 * value)
}

fn shown_percent(value: Option<f64>) -> String {
    match percent(value) {
        Some(value) => format!("{value:.2}"),
        None => "n/a".to_string(),
    }
}

/// The per-class table and the means, on stdout.
fn print_table(classes: &ClassList, metrics: &Metrics, images: usize, preset: &str, method: &str) {
    let names: Vec<String> = (0..classes.len())
        .map(|class| escape_controls(classes.display_name(class)).into_owned())
        .collect();
    let width = names
        .iter()
        .map(|name| name.chars().count())
        .max()
        .unwrap_or(0)
        .max("class".len());
    let mut table = format!("{:<width$}  {:>6}  {:>6}\n", "class", "IoU", "Acc");
    for (name, class) in names.iter().zip(&metrics.classes) {
        table.push_str(&format!(
            "{name:<width$}  {:>6}  {:>6}\n",
            shown_percent(class.iou),
            shown_percent(class.acc)
        ));
    }
    table.push_str(&format!(
        "mIoU {}  aAcc {}  mAcc {}  ({images} images, {preset}, {method})\n",
        shown_percent(metrics.miou),
        shown_percent(metrics.aacc),
        shown_percent(metrics.macc)
    ));
    // A closed pipe (`sclip eval ... | head`) must not keep the --json file from being written.
    let _ = std::io::stdout().lock().write_all(table.as_bytes());
}

/// What was evaluated, with what.
struct RunRecord<'a> {
    preset: &'a str,
    method: &'a str,
    images: usize,
    settings: &'a Value,
}

/// The `--json` file, in percent; `None` (null) where a mean leaves a class out.
#[derive(Serialize)]
struct Report<'a> {
    preset: &'a str,
    method: &'a str,
    images: usize,
    /// Every setting in force, as `sclip segment --json` reports them.
    settings: &'a Value,
    #[serde(rename = "mIoU")]
    miou: Option<f64>,
    #[serde(rename = "aAcc")]
    aacc: Option<f64>,
    #[serde(rename = "mAcc")]
    macc: Option<f64>,
    classes: Vec<ClassReport<'a>>,
}

#[derive(Serialize)]
struct ClassReport<'a> {
    name: &'a str,
    #[serde(rename = "IoU")]
    iou: Option<f64>,
    #[serde(rename = "Acc")]
    acc: Option<f64>,
}

fn write_json(path: &Path, classes: &ClassList, metrics: &Metrics, run: &RunRecord) -> Result<()> {
    let report = Report {
        preset: run.preset,
        method: run.method,
        images: run.images,
        settings: run.settings,
        miou: percent(metrics.miou),
        aacc: percent(metrics.aacc),
        macc: percent(metrics.macc),
        classes: metrics
            .classes
            .iter()
            .enumerate()
            .map(|(class, class_metrics)| ClassReport {
                name: classes.display_name(class),
                iou: percent(class_metrics.iou),
                acc: percent(class_metrics.acc),
            })
            .collect(),
    };
    write_atomically(path, |out| {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        out.write_all(b"\n")?;
        Ok(())
    })
    .with_context(|| format!("cannot write the --json file {}", shown_path(path)))
}
