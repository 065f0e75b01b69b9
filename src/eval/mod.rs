//! Evaluation on a benchmark's split, as the authors measure it (spec section 9): the split's
//! images go through [`stream::run`], and each result is compared with its
//! truth PNG at the original size and reduced to counts at once, so memory does not grow with
//! the split. [`layout`] finds the images and truths, [`confusion`] counts and computes the
//! metrics, and [`cache`] keeps each image's counts so that an interrupted evaluation resumes.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use sclip::eval::{layout, Evaluation};
//! use sclip::stream::StreamOptions;
//! use sclip::{presets, Device, DType, Model, QueryEncoder, Segmenter, Settings};
//!
//! # fn main() -> anyhow::Result<()> {
//! let preset = presets::find("voc21")?;
//! let model = Model::open("openai/clip-vit-base-patch16", "main", &Device::Cpu, DType::F32)?;
//! let classes = preset.classes();
//! let queries = QueryEncoder::new(&model, None).encode(&classes)?;
//! let settings = Settings::resolve(Some(preset), &Default::default())?;
//! let segmenter = Segmenter::new(&model, queries, settings)?;
//!
//! let voc = layout::for_preset(preset.name).expect("every preset has a layout");
//! let samples = voc.samples("VOCdevkit/VOC2012".as_ref(), None)?;
//! let mut evaluation = Evaluation::new(&samples, classes.len(), voc.reduce_zero_label, None);
//! let pending = evaluation.resume().pending;
//! let options = StreamOptions { decode_threads: 4, keep_images: false, fail_fast: false };
//! evaluation.run(&segmenter, &pending, &options, &AtomicBool::new(false), &mut |_, _| {})?;
//! println!("mIoU {:?}", evaluation.metrics().miou);
//! # Ok(())
//! # }
//! ```

pub mod cache;
pub mod confusion;
pub mod layout;

use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};

use crate::postprocess::Segmentation;
use crate::preprocess::{load_image, DecodedImage, DEFAULT_MAX_PIXELS};
use crate::segmenter::Segmenter;
use crate::stream::{self, Ending, ImageSource, StreamOptions};
use cache::{EvalCache, ImageKey, Lookup};
use confusion::{Confusion, ImageCounts, Metrics};
use layout::{read_truth, truth_size, Sample};

/// One split's evaluation: its counts so far, and where they are cached.
pub struct Evaluation<'a> {
    samples: &'a [Sample],
    classes: usize,
    reduce_zero_label: bool,
    cache: Option<EvalCache>,
    confusion: Confusion,
}

/// An image the cache did not have.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its index in the split.
    pub sample: usize,
    /// `None` when its files cannot be stat'ed (it fails when read, saying why) or nothing is
    /// cached.
    key: Option<ImageKey>,
}

/// What [`Evaluation::resume`] found.
#[derive(Debug, Clone)]
pub struct Resumed {
    /// Images whose counts came from the cache.
    pub cached: usize,
    /// Cache files that did not check out; their images are among the pending ones.
    pub damaged: usize,
    pub pending: Vec<Pending>,
}

/// How one segmented image ended.
#[derive(Debug)]
pub enum ImageEnd {
    /// Its counts were added; `not_cached` says why they could not be cached, if so.
    Counted { not_cached: Option<anyhow::Error> },
    /// It was not counted: its image or truth could not be read, or they disagree.
    Failed(anyhow::Error),
}

impl<'a> Evaluation<'a> {
    /// `classes`: how many the segmenter tells apart, so truth values from 0 to `classes - 1`
    /// (after reduce_zero_label) name one and 255 is ignored.
    pub fn new(
        samples: &'a [Sample],
        classes: usize,
        reduce_zero_label: bool,
        cache: Option<EvalCache>,
    ) -> Self {
        Evaluation {
            samples,
            classes,
            reduce_zero_label,
            cache,
            confusion: Confusion::new(classes),
        }
    }

    /// Adds the counts the cache holds, and says which images are still to be segmented.
    pub fn resume(&mut self) -> Resumed {
        let mut resumed = Resumed {
            cached: 0,
            damaged: 0,
            pending: Vec::new(),
        };
        for (index, sample) in self.samples.iter().enumerate() {
            let key = self
                .cache
                .as_ref()
                .and_then(|cache| cache.image_key(sample).ok());
            if let (Some(cache), Some(key)) = (&self.cache, &key) {
                match cache.load(key) {
                    Lookup::Hit(counts) => {
                        self.confusion.add(&counts);
                        resumed.cached += 1;
                        continue;
                    }
                    Lookup::Absent => {}
                    Lookup::Damaged => resumed.damaged += 1,
                }
            }
            resumed.pending.push(Pending { sample: index, key });
        }
        resumed
    }

    /// Segments the `pending` images (of [`Evaluation::resume`]) and adds their counts, caching
    /// each; `on_image` hears of every image as it ends, in order. Setting `stop` stops feeding
    /// the model, as [`stream::run`] does; images it drops are never heard of.
    pub fn run(
        &mut self,
        segmenter: &Segmenter,
        pending: &[Pending],
        options: &StreamOptions,
        stop: &AtomicBool,
        on_image: &mut (dyn FnMut(&Sample, ImageEnd) + Send),
    ) -> Result<()> {
        let source = PendingImages {
            samples: self.samples,
            pending,
        };
        let (samples, classes, reduce_zero_label) =
            (self.samples, self.classes, self.reduce_zero_label);
        let (confusion, cache) = (&mut self.confusion, &self.cache);
        stream::run(segmenter, &source, options, stop, &mut |index, result| {
            let Pending { sample, key } = &pending[index];
            let sample = &samples[*sample];
            let counts = result
                .and_then(|result| count(sample, &result.segmentation, classes, reduce_zero_label));
            match counts {
                Ok(counts) => {
                    confusion.add(&counts);
                    let not_cached = match (cache, key) {
                        (Some(cache), Some(key)) => cache.store(key, &counts).err(),
                        _ => None,
                    };
                    on_image(sample, ImageEnd::Counted { not_cached });
                    Ending::Succeeded
                }
                Err(error) => {
                    on_image(sample, ImageEnd::Failed(error));
                    Ending::Failed
                }
            }
        })
    }

    /// The metrics over every image counted so far.
    pub fn metrics(&self) -> Metrics {
        self.confusion.metrics()
    }
}

/// Compares an image's prediction with its truth.
fn count(
    sample: &Sample,
    segmentation: &Segmentation,
    classes: usize,
    reduce_zero_label: bool,
) -> Result<ImageCounts> {
    let truth = read_truth(&sample.truth)?;
    let size = (segmentation.width as u32, segmentation.height as u32);
    check_same_size(sample, (truth.width, truth.height), size)?;
    ImageCounts::tally(
        &truth.values,
        &segmentation.labels,
        classes,
        reduce_zero_label,
    )
    .with_context(|| format!("bad truth file {}", sample.truth.display()))
}

fn check_same_size(sample: &Sample, truth: (u32, u32), image: (u32, u32)) -> Result<()> {
    if truth != image {
        bail!(
            "the truth file {} is {}x{} but its image {} is {}x{}; a truth PNG has its image's \
             size (is it this image's truth?)",
            sample.truth.display(),
            truth.0,
            truth.1,
            sample.image.display(),
            image.0,
            image.1
        );
    }
    Ok(())
}

/// The pending images, decoded on the stream's threads; a truth that cannot be read or has
/// another size fails its image there, before the model spends time on it.
struct PendingImages<'a> {
    samples: &'a [Sample],
    pending: &'a [Pending],
}

impl PendingImages<'_> {
    fn sample(&self, index: usize) -> &Sample {
        &self.samples[self.pending[index].sample]
    }
}

impl ImageSource for PendingImages<'_> {
    fn len(&self) -> usize {
        self.pending.len()
    }

    fn load(&self, index: usize) -> Result<DecodedImage> {
        let sample = self.sample(index);
        let truth = truth_size(&sample.truth)?;
        let decoded = load_image(&sample.image, DEFAULT_MAX_PIXELS)?;
        check_same_size(sample, truth, decoded.image.dimensions())?;
        Ok(decoded)
    }

    fn name(&self, index: usize) -> String {
        self.sample(index).image.display().to_string()
    }
}
