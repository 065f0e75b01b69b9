//! SCLIP (Wang et al., ECCV 2024): training-free open-vocabulary semantic segmentation with
//! CLIP, whose last vision block runs Correlative Self-Attention.
//!
//! The engine ends at results: a [`Model`] is loaded once, a class list becomes
//! [`ClassQueries`] (from the query cache or the text tower), and a [`Segmenter`] joins the two
//! with the [`Settings`] to turn an [`RgbImage`] into a [`Segmentation`]: a label per pixel,
//! and optionally the per-class scores. [`stream::run`] does the same for many images at once,
//! batching windows across images, and hands each result to a sink of the caller's. Writing
//! files is the caller's choice; [`output`] has the formats the `sclip` command writes.
//!
//! ```no_run
//! use sclip::{ClassList, Device, DType, Model, QueryEncoder, Segmenter, Settings};
//!
//! # fn main() -> anyhow::Result<()> {
//! let model = Model::open("openai/clip-vit-base-patch16", "main", &Device::Cpu, DType::F32)?;
//! let classes = ClassList::parse_inline("dog,boat|ship,water")?;
//! let queries = QueryEncoder::new(&model, None).encode(&classes)?;
//! let segmenter = Segmenter::new(&model, queries, Settings::default())?;
//! let photo = sclip::preprocess::load_image("photo.jpg".as_ref(), sclip::DEFAULT_MAX_PIXELS)?;
//! let segmentation = segmenter.segment(&photo.image)?;
//! for (class, fraction) in segmentation.present_classes() {
//!     println!("{} {:.1}%", classes.display_name(class), 100.0 * fraction);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The stages, in the order an image meets them: [`model`] finds and reads a checkpoint,
//! [`classes`] and [`text`] turn class names (or a benchmark's [`presets`]) into queries,
//! [`preprocess`] decodes and resizes, [`slide`] cuts windows and gathers their logits,
//! [`vision`] computes patch features (its last block a [`LastBlock`], chosen by the
//! [`Method`]), [`postprocess`] produces the label map (refining the logits with [`pamr`] when
//! asked), and [`segmenter`] and [`stream`] drive them per image and per stream. [`eval`]
//! measures the results against a benchmark's truth.

pub mod atomic_write;
pub mod classes;
pub mod eval;
pub mod interp;
pub mod memory;
pub mod methods;
pub mod model;
pub mod output;
pub mod pamr;
pub mod postprocess;
pub mod preprocess;
pub mod presets;
pub mod segmenter;
pub mod settings;
pub mod slide;
pub mod stream;
pub mod text;
mod transformer;
pub mod vision;

#[cfg(test)]
mod test_support;

pub use candle_core::{DType, Device};
pub use classes::{ClassList, ClassListError};
pub use methods::{CsaProjection, Method};
pub use model::{parse_device, DeviceError, Model, DEFAULT_MODEL};
pub use pamr::Pamr;
pub use postprocess::{PostprocessParams, Segmentation};
pub use preprocess::{RgbImage, DEFAULT_MAX_PIXELS};
pub use segmenter::Segmenter;
pub use settings::{Overrides, Setting, Settings, SettingsError};
pub use text::cache::QueryCache;
pub use text::queries::{ClassQueries, QueryEncoder};
pub use transformer::{cpu_kernels, CpuKernels};
pub use vision::LastBlock;
