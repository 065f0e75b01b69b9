//! Telling the user what happened: a line per image (human text, or a JSON object with
//! `--json`), errors on stderr, a progress bar on a terminal, and a final summary.

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use base64::prelude::{Engine, BASE64_STANDARD};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde_json::{json, Value};

use sclip::memory::peak_rss_mib;
use sclip::text::queries::{CacheUse, TextStats};
use sclip::{ClassList, Settings};

use crate::jobs::Job;
use crate::messages::{escape_controls, one_line, replace_controls, shown_path};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `path WxH 0.84s: dog 41.2%, water 30.0%` on stdout.
    Human,
    /// One JSON object a line on stdout, for scripts.
    Json,
}

/// How each image ended, counted for the summary and the exit code.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub ok: usize,
    /// Of the `ok` ones, those whose decoder warned about damaged data.
    pub warned: usize,
    pub skipped: usize,
    pub failed: usize,
}

/// What became of one image that was segmented and written.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub width: usize,
    pub height: usize,
    /// From the start of its decoding to its last output written (stages of other images
    /// overlap with it, so these add up to more than the run's time).
    pub seconds: f64,
    /// (class index, fraction of the pixels) for every class in the mask, largest first.
    pub present: Vec<(usize, f64)>,
    /// The decoder's warnings: damaged data it decoded past, so the mask may be wrong there.
    pub warnings: Vec<String>,
}

/// Facts about the run that the summary reports besides the counts.
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    /// Images found but not started because the run was stopped (Ctrl-C, `--fail-fast`).
    pub not_started: usize,
    pub interrupted: bool,
    /// Model loading and text queries, before the first image.
    pub setup_seconds: f64,
    pub text: Value,
    /// What the images were segmented with ([`settings_json`]).
    pub settings: Value,
}

pub struct Reporter<'a> {
    format: Format,
    /// Per-image human lines and the summary are left out; errors are still printed.
    quiet: bool,
    classes: &'a ClassList,
    bar: Option<ProgressBar>,
    counts: Counts,
    /// Images written (`counts.ok`), shared with the bar.
    throughput: Throughput,
    /// Per-image lines go to stderr: stdout carries an image (`-o -`).
    stdout_is_data: bool,
}

impl<'a> Reporter<'a> {
    /// `progress`: draw a bar on stderr (the caller decides: a terminal, and not `--quiet`).
    pub fn new(
        format: Format,
        quiet: bool,
        progress: bool,
        total: usize,
        classes: &'a ClassList,
    ) -> Self {
        let throughput = Throughput::start();
        let bar = progress.then(|| progress_bar(total, throughput.clone()));
        Reporter {
            format,
            quiet,
            classes,
            bar,
            counts: Counts::default(),
            throughput,
            stdout_is_data: false,
        }
    }

    /// Sends the per-image lines to stderr: stdout carries the image of `-o -`.
    pub fn keep_stdout_for_data(&mut self) {
        self.stdout_is_data = true;
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// An image left alone by `--skip-existing`: its outputs all exist.
    pub fn skipped(&mut self, job: &Job) {
        self.counts.skipped += 1;
        if self.format == Format::Json {
            let line = json!({
                "type": "image",
                "status": "skipped",
                "outputs": outputs(job),
            });
            let line = with_path(line, "path", &job.image);
            self.print_stdout(&line.to_string());
        }
        self.advance();
    }

    /// A path that could not even become a job: missing, or an unreadable folder.
    pub fn problem(&mut self, path: &Path, problem: &str) {
        self.failed(path, &format!("{}: {problem}", shown_path(path)));
        self.advance();
    }

    pub fn finished(&mut self, job: &Job, result: &Result<Outcome>) {
        match result {
            Ok(outcome) => {
                self.counts.ok += 1;
                self.throughput.add_one();
                if !outcome.warnings.is_empty() {
                    self.counts.warned += 1;
                    // Like errors, on stderr whatever the format and --quiet: the mask was
                    // written, but may be wrong where the data was damaged.
                    self.print_stderr(&format!(
                        "sclip: warning: {}: {}",
                        shown_path(&job.image),
                        outcome.warnings.join("; ")
                    ));
                }
                match self.format {
                    Format::Json => {
                        let classes: Vec<Value> = outcome
                            .present
                            .iter()
                            .map(|&(class, fraction)| {
                                json!({
                                    "class": self.classes.display_name(class),
                                    "index": class,
                                    "fraction": fraction,
                                })
                            })
                            .collect();
                        let line = json!({
                            "type": "image",
                            "status": "ok",
                            "width": outcome.width,
                            "height": outcome.height,
                            "seconds": round_ms(outcome.seconds),
                            "outputs": outputs(job),
                            "classes": classes,
                            "warnings": outcome.warnings,
                        });
                        let line = with_path(line, "path", &job.image);
                        self.print_stdout(&line.to_string());
                    }
                    Format::Human if !self.quiet => {
                        let line = self.human_line(job, outcome);
                        if self.stdout_is_data {
                            self.print_stderr(&line);
                        } else {
                            self.print_stdout(&line);
                        }
                    }
                    Format::Human => {}
                }
            }
            Err(error) => self.failed(&job.image, &one_line(error)),
        }
        self.advance();
    }

    /// Counts a failure and reports it: on stderr always, and as a JSON object with `--json`.
    fn failed(&mut self, path: &Path, message: &str) {
        self.counts.failed += 1;
        if self.format == Format::Json {
            let line = json!({
                "type": "image",
                "status": "failed",
                "error": message,
            });
            let line = with_path(line, "path", path);
            self.print_stdout(&line.to_string());
        }
        self.print_stderr(&format!("sclip: error: {message}"));
    }

    /// Classes under [`SHOWN_FRACTION`] are left out: "0.0%" tells a person nothing (`--json`
    /// keeps every class).
    fn human_line(&self, job: &Job, outcome: &Outcome) -> String {
        let classes = outcome
            .present
            .iter()
            .filter(|&&(_, fraction)| fraction >= SHOWN_FRACTION)
            .map(|&(class, fraction)| {
                format!(
                    "{} {:.1}%",
                    self.classes.display_name(class),
                    100.0 * fraction
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{} {}x{} {:.2}s: {classes}",
            shown_path(&job.image),
            outcome.width,
            outcome.height,
            outcome.seconds
        )
    }

    /// The last word: counts, time and speed, on stderr for people (stdout stays the per-image
    /// lines) or as a final JSON object.
    pub fn summary(self, facts: &RunFacts) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let seconds = self.throughput.elapsed().as_secs_f64();
        let per_second = self.throughput.per_second();
        let Counts {
            ok,
            warned,
            skipped,
            failed,
        } = self.counts;
        match self.format {
            Format::Json => {
                let line = json!({
                    "type": "summary",
                    "ok": ok,
                    "warned": warned,
                    "skipped": skipped,
                    "failed": failed,
                    "not_started": facts.not_started,
                    "interrupted": facts.interrupted,
                    "seconds": round_ms(seconds),
                    "images_per_second": per_second.map(round_ms),
                    "setup_seconds": round_ms(facts.setup_seconds),
                    "text": facts.text,
                    "settings": facts.settings,
                    "peak_rss_mib": peak_rss_mib().map(f64::round),
                });
                self.print_stdout(&line.to_string());
            }
            Format::Human if !self.quiet => {
                let warned = if warned > 0 {
                    format!(" ({warned} with warnings)")
                } else {
                    String::new()
                };
                let mut line = format!(
                    "sclip: {ok} ok{warned}, {skipped} skipped, {failed} failed in {seconds:.1} s ({})",
                    rate_text(per_second)
                );
                if facts.interrupted {
                    line.push_str(&format!("; interrupted, {} not started", facts.not_started));
                } else if facts.not_started > 0 {
                    line.push_str(&format!(
                        "; stopped at the first failure, {} not started",
                        facts.not_started
                    ));
                }
                self.print_stderr(&line);
            }
            Format::Human => {}
        }
    }

    fn advance(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Prints above the progress bar rather than through it, with control characters escaped:
    /// as `\n` or `\u{1b}` for people, and as JSON's `\u007f` in a JSON line, where serde_json
    /// leaves DEL and the C1 controls raw (valid JSON, but raw bytes to a terminal).
    fn print_stdout(&self, line: &str) {
        let line = match self.format {
            Format::Human => escape_controls(line),
            // serde_json escapes the others, and only strings can hold one.
            Format::Json => {
                replace_controls(line, |control| format!("\\u{:04x}", u32::from(control)))
            }
        };
        let print = || {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`sclip ... | head`) must not stop the run: the files are the point.
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        };
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    fn print_stderr(&self, line: &str) {
        let line = escape_controls(line);
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}

/// Images done since a start: the rate that the progress bar and the summary both show.
#[derive(Clone)]
pub struct Throughput {
    done: Arc<AtomicUsize>,
    started: Instant,
}

impl Throughput {
    pub fn start() -> Self {
        Throughput {
            done: Arc::new(AtomicUsize::new(0)),
            started: Instant::now(),
        }
    }

    pub fn add_one(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn per_second(&self) -> Option<f64> {
        images_per_second(self.done.load(Ordering::Relaxed), self.elapsed())
    }
}

/// A bar on stderr over `total` images, with `throughput`'s rate and the time left at it.
pub fn progress_bar(total: usize, throughput: Throughput) -> ProgressBar {
    let bar =
        ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr_with_hz(4));
    // No colours in the template: nothing to switch off for NO_COLOR or dumb terminals.
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} images, {rate_and_eta}",
        )
        .expect("the template is valid")
        .with_key(
            "rate_and_eta",
            move |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let remaining = state.len().unwrap_or(0).saturating_sub(state.pos());
                let _ = write!(
                    out,
                    "{}",
                    rate_and_eta(throughput.per_second(), remaining as usize)
                );
            },
        )
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// The smallest share of an image a class needs to be named on its human line: what rounds to
/// 0.1 % at one decimal.
const SHOWN_FRACTION: f64 = 0.0005;

/// What "images/s" means wherever it is shown, the progress bar and the summary alike: images
/// segmented and written (counted, for eval), per second since the images started, after the
/// model is loaded (skipped, cached and failed images are not counted). `None` until
/// the first image is written: no rate is known.
fn images_per_second(written: usize, elapsed: Duration) -> Option<f64> {
    let seconds = elapsed.as_secs_f64();
    (written > 0 && seconds > 0.0).then(|| written as f64 / seconds)
}

/// "1.25 images/s", or "– images/s" while no rate is known.
fn rate_text(per_second: Option<f64>) -> String {
    match per_second {
        Some(rate) => format!("{rate:.2} images/s"),
        None => "– images/s".to_owned(),
    }
}

/// The bar's "1.25 images/s, ETA 1m 20s" for `remaining` images; "–" for what is not known yet.
fn rate_and_eta(per_second: Option<f64>, remaining: usize) -> String {
    let eta = match per_second {
        Some(rate) => short_duration((remaining as f64 / rate).ceil()),
        None => "–".to_owned(),
    };
    format!("{}, ETA {eta}", rate_text(per_second))
}

/// `45s`, `3m 05s`, `2h 03m`: as precise as an estimate deserves.
fn short_duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0).min(u64::MAX as f64) as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h {:02}m", seconds / 3600, seconds / 60 % 60),
    }
}

fn outputs(job: &Job) -> Value {
    let mut outputs = with_path(json!({}), "mask", &job.mask);
    if let Some(probs) = &job.probs {
        outputs = with_path(outputs, "probs", probs);
    }
    if let Some(overlay) = &job.overlay {
        outputs = with_path(outputs, "overlay", overlay);
    }
    outputs
}

/// `object` with `path` under `key`. JSON strings are Unicode, so a name that is not UTF-8 is
/// given with replacement characters there, and byte for byte, base64-encoded, under
/// `<key>_bytes`, for scripts that must open the file.
fn with_path(mut object: Value, key: &str, path: &Path) -> Value {
    let text = path.to_string_lossy();
    if let Cow::Owned(_) = text {
        object[format!("{key}_bytes")] = BASE64_STANDARD
            .encode(path.as_os_str().as_encoded_bytes())
            .into();
    }
    object[key] = text.into_owned().into();
    object
}

/// Three decimals: milliseconds for seconds, and as much for rates.
fn round_ms(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// `--verbose`'s line on the text queries.
pub fn describe_text(stats: &TextStats) -> String {
    let origin = match stats.cache {
        CacheUse::Hit => "read from the cache",
        CacheUse::Miss if stats.store_error.is_none() => "encoded and cached",
        CacheUse::Miss | CacheUse::Off => "encoded",
    };
    let mut line = format!(
        "text queries for {} names {origin} in {:.2} s",
        stats.names, stats.seconds
    );
    if let Some(error) = &stats.store_error {
        line.push_str(&format!(" (not cached: {error})"));
    }
    line
}

/// The settings in force, once a preset and the flags are resolved, as the flags name them:
/// what a result was computed with, for scripts and for anyone comparing runs.
pub fn settings_json(settings: &Settings) -> Value {
    let post = &settings.postprocess;
    json!({
        "method": settings.method.name(),
        "csa_proj": settings.csa_projection.name(),
        "short_side": settings.short_side,
        "window": settings.window,
        "stride": settings.stride,
        "logit_scale": as_written(post.logit_scale),
        "prob_thd": as_written(post.prob_thd),
        "area_thd": post.area_thd.map(as_written),
        "pamr": settings.pamr.as_ref().map_or(0, |pamr| pamr.steps),
        "pamr_dilations": settings.pamr.as_ref().map(|pamr| &pamr.dilations),
    })
}

/// `0.1`, not the f32's exact `0.10000000149011612`.
fn as_written(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::NAN)
}

/// The text queries in the `--json` summary.
pub fn text_json(stats: &TextStats) -> Value {
    let cache = match stats.cache {
        CacheUse::Hit => "hit",
        CacheUse::Miss => "miss",
        CacheUse::Off => "off",
    };
    json!({
        "names": stats.names,
        "cache": cache,
        "seconds": round_ms(stats.seconds),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn no_rate_is_shown_until_an_image_is_written() {
        assert_eq!(images_per_second(0, Duration::from_secs(5)), None);
        assert_eq!(images_per_second(1, Duration::ZERO), None);
        assert_eq!(images_per_second(3, Duration::from_secs(2)), Some(1.5));
        assert_eq!(rate_and_eta(None, 10), "– images/s, ETA –");
        assert_eq!(rate_text(None), "– images/s");
    }

    #[test]
    fn the_eta_is_the_remaining_images_at_the_rate_rounded_up() {
        assert_eq!(rate_and_eta(Some(1.5), 3), "1.50 images/s, ETA 2s");
        assert_eq!(rate_and_eta(Some(0.4), 1), "0.40 images/s, ETA 3s");
        assert_eq!(rate_and_eta(Some(2.0), 0), "2.00 images/s, ETA 0s");
        assert_eq!(rate_and_eta(Some(0.01), 100), "0.01 images/s, ETA 2h 46m");
        assert_eq!(short_duration(59.0), "59s");
        assert_eq!(short_duration(60.0), "1m 00s");
        assert_eq!(short_duration(3599.0), "59m 59s");
        assert_eq!(short_duration(3725.0), "1h 02m");
    }

    #[test]
    fn human_lines_leave_out_classes_under_half_a_permille() {
        let classes = ClassList::parse_inline("person,sky,wall,dog").unwrap();
        let reporter = Reporter::new(Format::Human, false, false, 1, &classes);
        let job = Job {
            image: PathBuf::from("photos/cat.jpg"),
            mask: PathBuf::from("photos/cat.png"),
            probs: None,
            overlay: None,
        };
        let outcome = Outcome {
            width: 64,
            height: 48,
            seconds: 0.5,
            present: vec![(1, 0.9991), (0, 0.0006), (3, 0.000_499), (2, 0.000_001)],
            warnings: Vec::new(),
        };
        assert_eq!(
            reporter.human_line(&job, &outcome),
            "photos/cat.jpg 64x48 0.50s: sky 99.9%, person 0.1%"
        );
    }
}
