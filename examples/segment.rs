//! Segments one image held in memory through the `sclip` library and writes its label PNG:
//!
//! ```sh
//! cargo run --release --example segment -- MODEL_DIR IMAGE "cat,dog" OUT.png
//! ```
//!
//! MODEL_DIR is a CLIP checkpoint folder (or a hub repo id); the PNG's pixel values are the
//! class indices, as `sclip segment` writes them.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use sclip::output::stage_label_png;
use sclip::preprocess::decode_image;
use sclip::{
    ClassList, DType, Device, Model, QueryEncoder, Segmenter, Settings, DEFAULT_MAX_PIXELS,
};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The first line of each cause: candle appends backtraces on later lines.
            let causes: Vec<String> = error
                .chain()
                .map(|cause| cause.to_string().lines().next().unwrap_or("").to_string())
                .collect();
            eprintln!("segment: error: {}", causes.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, image, classes, out] = args.as_slice() else {
        bail!("usage: segment MODEL_DIR IMAGE \"cat,dog\" OUT.png");
    };
    let model = Model::open(model, "main", &Device::Cpu, DType::F32)?;
    let classes = ClassList::parse_inline(classes)?;
    // No query cache: the text tower encodes the names, then is dropped with the encoder.
    let queries = QueryEncoder::new(&model, None).encode(&classes)?;
    let segmenter = Segmenter::new(&model, queries, Settings::default())?;

    // Any RgbImage will do; this one is decoded from a file's bytes.
    let bytes = std::fs::read(image).with_context(|| format!("cannot read {image}"))?;
    let decoded = decode_image(&bytes, DEFAULT_MAX_PIXELS)
        .with_context(|| format!("cannot decode {image}"))?;
    for warning in &decoded.warnings {
        eprintln!("segment: warning: {image}: {warning}");
    }
    let segmentation = segmenter.segment(&decoded.image)?;

    let (width, height) = (segmentation.width as u32, segmentation.height as u32);
    stage_label_png(out.as_ref(), &segmentation.labels, width, height)?.commit()?;
    for (class, fraction) in segmentation.present_classes() {
        println!("{} {:.1}%", classes.display_name(class), 100.0 * fraction);
    }
    Ok(())
}
