//! The streaming run: decoding and resizing happen on their own thread pool ahead of the model,
//! the model thread fills each forward pass with windows from as many images as it takes
//! (`--batch-size` windows, across image boundaries), and a finishing thread post-processes and
//! writes each image while the model works on the next ones.
//!
//! Every stage hands over through a bounded channel, so however many images a run has, only a
//! few are in memory at once. Images finish, and are reported, in input order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use rayon::prelude::*;

use super::Job;
use crate::output::overlay::{render_overlay, write_overlay, LegendEntry};
use crate::output::{voc_palette, write_label_png, write_npy_f32};
use crate::postprocess::Segmentation;
use crate::preprocess::{load_image, RgbImage};
use crate::segment::{PreparedImage, Segmenter, WindowCrop};
use crate::slide::LogitCanvas;

#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Images whose header declares more pixels are refused before decoding.
    pub max_pixels: u64,
    /// Threads decoding and resizing ahead of the model.
    pub decode_threads: usize,
    /// Opacity of the class colours in overlays.
    pub overlay_alpha: f32,
    /// Stop at the first failure: set `stop`, and write nothing after it.
    pub fail_fast: bool,
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
}

/// Segments `jobs` in order, calling `on_done` for each image as it finishes or fails, in input
/// order, from another thread. Setting `stop` (the caller's Ctrl-C handler) stops feeding the
/// model: images already being written are finished, the others are dropped without a trace.
/// With `fail_fast` the pipeline sets `stop` itself at the first failure and writes nothing more.
pub fn run(
    segmenter: &Segmenter,
    jobs: &[Job],
    options: &PipelineOptions,
    stop: &AtomicBool,
    on_done: &mut (dyn FnMut(&Job, Result<Outcome>) + Send),
) -> Result<()> {
    let decode_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.decode_threads.max(1))
        .thread_name(|i| format!("sclip-decode-{i}"))
        .build()
        .context("cannot start the image decoding threads")?;
    let lookahead = options.decode_threads.max(1);
    std::thread::scope(|scope| {
        let (decoded_tx, decoded_rx) = sync_channel(lookahead);
        let (finished_tx, finished_rx) = sync_channel(2);
        scope.spawn(|| decode_all(segmenter, jobs, options, &decode_pool, stop, decoded_tx));
        scope.spawn(|| finish_all(segmenter, jobs, options, stop, finished_rx, on_done));
        run_model(segmenter, options, decoded_rx, finished_tx, stop);
    });
    Ok(())
}

/// An image ready for the model, with the photo itself kept only when an overlay needs it.
struct Decoded {
    prepared: PreparedImage,
    photo: Option<RgbImage>,
}

/// One image on its way through the pipeline: where it came from, when it started, and its data
/// or the error that stopped it.
struct Tracked<T> {
    index: usize,
    started: Instant,
    state: Result<T>,
}

fn decode_all(
    segmenter: &Segmenter,
    jobs: &[Job],
    options: &PipelineOptions,
    pool: &rayon::ThreadPool,
    stop: &AtomicBool,
    decoded: SyncSender<Tracked<Decoded>>,
) {
    let lookahead = pool.current_num_threads();
    for (chunk_number, chunk) in jobs.chunks(lookahead).enumerate() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let results: Vec<Tracked<Decoded>> = pool.install(|| {
            chunk
                .par_iter()
                .enumerate()
                .map(|(offset, job)| {
                    let started = Instant::now();
                    let state = load_image(&job.image, options.max_pixels).map(|photo| Decoded {
                        prepared: segmenter.prepare(&photo),
                        photo: job.overlay.is_some().then_some(photo),
                    });
                    Tracked {
                        index: chunk_number * lookahead + offset,
                        started,
                        state,
                    }
                })
                .collect()
        });
        for result in results {
            if decoded.send(result).is_err() {
                return;
            }
        }
    }
}

/// An image whose windows are going through the model.
struct InProgress {
    decoded: Decoded,
    canvas: LogitCanvas,
    /// Windows handed to a forward pass so far (they are added to the canvas in the same pass).
    windows_done: usize,
}

impl InProgress {
    fn windows_left(&self) -> usize {
        self.decoded.prepared.windows.len() - self.windows_done
    }
}

type Finished = Tracked<(Decoded, LogitCanvas)>;

fn run_model(
    segmenter: &Segmenter,
    options: &PipelineOptions,
    decoded: Receiver<Tracked<Decoded>>,
    finished: SyncSender<Finished>,
    stop: &AtomicBool,
) {
    let batch_size = segmenter.settings().batch_size;
    let mut active: VecDeque<Tracked<InProgress>> = VecDeque::new();
    let mut more_coming = true;
    while !stop.load(Ordering::Relaxed) {
        // (position in `active`, first window, window count) of each image in the next pass.
        let mut members: Vec<(usize, usize, usize)> = Vec::new();
        let mut taken = 0;
        let mut window_size = None;
        while taken < batch_size {
            let next = active
                .iter()
                .position(|image| matches!(&image.state, Ok(image) if image.windows_left() > 0));
            let Some(position) = next else {
                if !more_coming {
                    break;
                }
                match decoded.recv() {
                    Ok(image) => {
                        if image.state.is_err() && options.fail_fast {
                            stop.store(true, Ordering::SeqCst);
                        }
                        active.push_back(start_image(segmenter, image));
                    }
                    Err(_) => more_coming = false,
                }
                continue;
            };
            let Ok(image) = &active[position].state else {
                unreachable!("only images still in progress have windows left")
            };
            let first = image.windows_done;
            let size = {
                let window = &image.decoded.prepared.windows[first];
                (window.height, window.width)
            };
            // One pass holds windows of one size; an image of another size starts the next pass.
            if *window_size.get_or_insert(size) != size {
                break;
            }
            let count = image.windows_left().min(batch_size - taken);
            members.push((position, first, count));
            taken += count;
            if let Ok(image) = &mut active[position].state {
                image.windows_done += count;
            }
        }
        if !members.is_empty() && !forward(segmenter, &mut active, &members) && options.fail_fast {
            stop.store(true, Ordering::SeqCst);
        }
        while active.front().is_some_and(|front| match &front.state {
            Ok(image) => image.windows_left() == 0,
            Err(_) => true,
        }) {
            let done = active.pop_front().expect("checked above");
            let state = done.state.map(|image| (image.decoded, image.canvas));
            let handed_over = finished.send(Tracked {
                index: done.index,
                started: done.started,
                state,
            });
            if handed_over.is_err() {
                return;
            }
        }
        if members.is_empty() && !more_coming && active.is_empty() {
            return;
        }
    }
    // Stopped: images in progress are dropped unwritten, but failures are still reported.
    for image in active {
        if let Err(error) = image.state {
            let report = Tracked {
                index: image.index,
                started: image.started,
                state: Err(error),
            };
            if finished.send(report).is_err() {
                return;
            }
        }
    }
}

fn start_image(segmenter: &Segmenter, image: Tracked<Decoded>) -> Tracked<InProgress> {
    Tracked {
        index: image.index,
        started: image.started,
        state: image.state.map(|decoded| InProgress {
            canvas: segmenter.canvas_for(&decoded.prepared),
            decoded,
            windows_done: 0,
        }),
    }
}

/// Runs one pass over the members' windows and adds the logits to their canvases; if the pass
/// fails, every image with a window in it fails with that error. Returns whether it succeeded.
fn forward(
    segmenter: &Segmenter,
    active: &mut VecDeque<Tracked<InProgress>>,
    members: &[(usize, usize, usize)],
) -> bool {
    let logits = {
        let crops: Vec<WindowCrop> = members
            .iter()
            .flat_map(|&(position, first, count)| {
                let Ok(image) = &active[position].state else {
                    unreachable!("members are images in progress")
                };
                let prepared = &image.decoded.prepared;
                prepared.windows[first..first + count]
                    .iter()
                    .map(move |window| WindowCrop {
                        image: prepared,
                        window,
                    })
            })
            .collect();
        segmenter.window_logits(&crops)
    };
    match logits {
        Ok(logits) => {
            let mut per_window = logits.per_window();
            for &(position, first, count) in members {
                let Ok(image) = &mut active[position].state else {
                    unreachable!("members are images in progress")
                };
                for window in &image.decoded.prepared.windows[first..first + count] {
                    let window_logits = per_window.next().expect("one result per window");
                    image
                        .canvas
                        .add_window(window, window_logits, logits.grid_h, logits.grid_w);
                }
            }
            true
        }
        Err(error) => {
            let message = format!("{error:#}");
            for &(position, _, _) in members {
                active[position].state = Err(anyhow!("the model failed: {message}"));
            }
            false
        }
    }
}

fn finish_all(
    segmenter: &Segmenter,
    jobs: &[Job],
    options: &PipelineOptions,
    stop: &AtomicBool,
    finished: Receiver<Finished>,
    on_done: &mut (dyn FnMut(&Job, Result<Outcome>) + Send),
) {
    for image in finished {
        if options.fail_fast && stop.load(Ordering::SeqCst) && image.state.is_ok() {
            continue;
        }
        let job = &jobs[image.index];
        let outcome = image.state.and_then(|(decoded, canvas)| {
            let segmentation = segmenter.finish(canvas, &decoded.prepared);
            write_outputs(
                segmenter,
                job,
                &segmentation,
                decoded.photo.as_ref(),
                options,
            )?;
            Ok(Outcome {
                width: segmentation.width,
                height: segmentation.height,
                seconds: image.started.elapsed().as_secs_f64(),
                present: present_classes(&segmentation),
            })
        });
        let failed = outcome.is_err();
        on_done(job, outcome);
        if failed && options.fail_fast {
            stop.store(true, Ordering::SeqCst);
        }
    }
}

fn present_classes(segmentation: &Segmentation) -> Vec<(usize, f64)> {
    let total = (segmentation.width * segmentation.height) as f64;
    let mut present: Vec<(usize, f64)> = segmentation
        .class_pixels
        .iter()
        .enumerate()
        .filter(|(_, &pixels)| pixels > 0)
        .map(|(class, &pixels)| (class, pixels as f64 / total))
        .collect();
    present.sort_by(|a, b| b.1.total_cmp(&a.1));
    present
}

fn write_outputs(
    segmenter: &Segmenter,
    job: &Job,
    segmentation: &Segmentation,
    photo: Option<&RgbImage>,
    options: &PipelineOptions,
) -> Result<()> {
    for dir in job.outputs().filter_map(|path| path.parent()) {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        }
    }
    let (width, height) = (segmentation.width, segmentation.height);
    write_label_png(&job.mask, &segmentation.labels, width as u32, height as u32)?;
    if let (Some(path), Some(probs)) = (&job.probs, &segmentation.probs) {
        let classes = probs.len() / (width * height);
        write_npy_f32(path, &[classes, height, width], probs)?;
    }
    if let (Some(path), Some(photo)) = (&job.overlay, photo) {
        let palette = voc_palette();
        let legend: Vec<LegendEntry> = segmentation
            .class_pixels
            .iter()
            .enumerate()
            .filter(|(_, &pixels)| pixels > 0)
            .map(|(class, _)| LegendEntry {
                name: segmenter.classes().display_name(class),
                colour: palette[class],
            })
            .collect();
        let overlay = render_overlay(
            photo,
            &segmentation.labels,
            &palette,
            options.overlay_alpha,
            &legend,
        );
        write_overlay(path, &overlay)?;
    }
    Ok(())
}
