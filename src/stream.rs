//! Many images through one [`Segmenter`], as a stream: decoding and resizing happen on their own
//! thread pool ahead of the model, the model thread fills each forward pass with windows from as
//! many images as it takes (the batch size, across image boundaries), and a finishing thread
//! post-processes each image and hands it to the caller's sink while the model works on the
//! next ones.
//!
//! Every stage hands over through a bounded channel, so however many images a stream has, only
//! a few are in memory at once. Images reach the sink in input order.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use rayon::prelude::*;

use crate::postprocess::Segmentation;
use crate::preprocess::{load_image, DecodedImage, RgbImage};
use crate::segmenter::{PreparedImage, Segmenter, WindowCrop};
use crate::slide::LogitCanvas;

/// Where a stream's images come from, by index: files on disk ([`ImageFiles`]), a dataset's
/// split, images already in memory.
pub trait ImageSource: Sync {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image `index`, decoded, with its decoder's warnings; called from the decoding threads.
    fn load(&self, index: usize) -> Result<DecodedImage>;

    /// How errors about image `index` name it.
    fn name(&self, index: usize) -> String {
        format!("image {index}")
    }
}

/// Image files, read with [`load_image`].
pub struct ImageFiles<P> {
    pub paths: Vec<P>,
    /// Files whose header declares more pixels are refused before decoding, and files larger
    /// than [`max_file_bytes`](crate::preprocess::max_file_bytes) of it before reading.
    pub max_pixels: u64,
}

impl<P: AsRef<Path> + Sync> ImageSource for ImageFiles<P> {
    fn len(&self) -> usize {
        self.paths.len()
    }

    fn load(&self, index: usize) -> Result<DecodedImage> {
        load_image(self.paths[index].as_ref(), self.max_pixels)
    }

    fn name(&self, index: usize) -> String {
        self.paths[index].as_ref().display().to_string()
    }
}

#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Threads decoding and resizing ahead of the model.
    pub decode_threads: usize,
    /// Hand each decoded image to the sink with its result (to draw overlays, say).
    pub keep_images: bool,
    /// Stop at the first failure: set `stop`, and hand over no success after it.
    pub fail_fast: bool,
}

/// One image's result.
#[derive(Debug, Clone)]
pub struct ImageResult {
    pub segmentation: Segmentation,
    /// The decoded image, with [`StreamOptions::keep_images`].
    pub image: Option<RgbImage>,
    /// What the decoder warned about: damaged data it decoded past, so the mask may be wrong
    /// where the data was.
    pub warnings: Vec<String>,
    /// When its decoding started (stages of other images overlap with it).
    pub started: Instant,
}

/// What the sink made of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Succeeded,
    /// It failed in the stream or in the sink (an output that could not be written, say).
    Failed,
}

/// Segments `source`'s images in order, handing each one's index and result (or the error that
/// stopped it) to `sink` in input order, from another thread. Setting `stop` (a Ctrl-C
/// handler, say) stops feeding the model: images already finished are still handed over, the
/// others are dropped without a trace. With `fail_fast` the stream sets `stop` itself at the
/// first failure, the sink's included, and hands over no success after it.
pub fn run(
    segmenter: &Segmenter,
    source: &dyn ImageSource,
    options: &StreamOptions,
    stop: &AtomicBool,
    sink: &mut (dyn FnMut(usize, Result<ImageResult>) -> Ending + Send),
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
        scope.spawn(|| decode_all(segmenter, source, options, &decode_pool, stop, decoded_tx));
        scope.spawn(|| finish_all(segmenter, options, stop, finished_rx, sink));
        run_model(segmenter, options, decoded_rx, finished_tx, stop);
    });
    Ok(())
}

/// An image ready for the model, with the decoded image kept only when the sink wants it.
struct Decoded {
    prepared: PreparedImage,
    image: Option<RgbImage>,
    warnings: Vec<String>,
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
    source: &dyn ImageSource,
    options: &StreamOptions,
    pool: &rayon::ThreadPool,
    stop: &AtomicBool,
    decoded: SyncSender<Tracked<Decoded>>,
) {
    let lookahead = pool.current_num_threads();
    for chunk_start in (0..source.len()).step_by(lookahead) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let chunk_end = (chunk_start + lookahead).min(source.len());
        let results: Vec<Tracked<Decoded>> = pool.install(|| {
            (chunk_start..chunk_end)
                .into_par_iter()
                .map(|index| {
                    let started = Instant::now();
                    let state = source.load(index).and_then(|decoded| {
                        let prepared = segmenter
                            .prepare(&decoded.image)
                            .with_context(|| format!("cannot segment {}", source.name(index)))?;
                        Ok(Decoded {
                            prepared,
                            image: options.keep_images.then_some(decoded.image),
                            warnings: decoded.warnings,
                        })
                    });
                    Tracked {
                        index,
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
    options: &StreamOptions,
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
    options: &StreamOptions,
    stop: &AtomicBool,
    finished: Receiver<Finished>,
    sink: &mut (dyn FnMut(usize, Result<ImageResult>) -> Ending + Send),
) {
    for image in finished {
        if options.fail_fast && stop.load(Ordering::SeqCst) && image.state.is_ok() {
            continue;
        }
        let result = image.state.map(|(decoded, canvas)| ImageResult {
            segmentation: segmenter.finish(canvas, &decoded.prepared),
            image: decoded.image,
            warnings: decoded.warnings,
            started: image.started,
        });
        if sink(image.index, result) == Ending::Failed && options.fail_fast {
            stop.store(true, Ordering::SeqCst);
        }
    }
}
