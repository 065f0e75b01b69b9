//! SCLIP (Wang et al., ECCV 2024): training-free open-vocabulary semantic segmentation with
//! CLIP, whose last vision block runs Correlative Self-Attention.
//!
//! The stages, in the order an image meets them: [`load`] finds and reads a checkpoint,
//! [`classes`] and [`text`] turn class names (or a benchmark's [`presets`]) into queries, [`preprocess`] decodes and resizes,
//! [`slide`] cuts windows and gathers their logits, [`vision`] computes patch features,
//! [`postprocess`] produces the label map, [`output`] writes it, and [`segment`] and [`batch`]
//! drive them per image and per run.

pub mod batch;
pub mod classes;
pub mod interp;
pub mod load;
pub mod output;
pub mod postprocess;
pub mod preprocess;
pub mod presets;
pub mod segment;
pub mod slide;
pub mod text;
pub mod vision;
