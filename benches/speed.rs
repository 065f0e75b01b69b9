//! `cargo bench --bench speed`: where the time goes, stage by stage, on a full-size ViT-B/16.
//!
//! Needs a full-size checkpoint (random weights do: speed does not depend on their values):
//! `python3 tests/reference/make_fixtures.py --full-size models/vit-b16-random`, or point
//! SCLIP_BENCH_MODEL at another CLIP folder. Threads follow RAYON_NUM_THREADS; the machines this
//! runs on are often shared and throttle under load, so every figure is a median of several runs
//! and single-thread figures (RAYON_NUM_THREADS=1) are the stable ones.
//!
//! Prints the GEMM peak of this CPU, per-stage times for a 448x336 and a 1000x750 photo, the
//! vision forward's GFLOP/s, text queries (padded as the authors do, trimmed, cached), folder
//! throughput of the `sclip` binary (16 images, the 21 VOC classes, cold and warm text cache)
//! and peak memory. Name stages to run only those: `cargo bench --bench speed -- vision image`
//! (stages: gemm, text, load, vision, image, folder).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use sclip::memory::peak_rss_mib;
use sclip::model::config::VisionConfig;
use sclip::model::{resolve_model, ClipConfig, ModelFiles};
use sclip::output::stage_label_png;
use sclip::preprocess::{load_image, DEFAULT_MAX_PIXELS};
use sclip::presets;
use sclip::segmenter::WindowCrop;
use sclip::text::PromptLayout;
use sclip::{ClassList, Model, Overrides, QueryCache, QueryEncoder, Segmenter, Settings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_MODEL_DIR: &str = "models/vit-b16-random";
const FOLDER_IMAGES: usize = 16;
const STAGES: [&str; 6] = ["gemm", "text", "load", "vision", "image", "folder"];

/// The stages named on the command line (cargo's own `--bench` flag aside), or all of them.
fn selected_stages() -> Result<Vec<String>> {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    if let Some(unknown) = named.iter().find(|name| !STAGES.contains(&name.as_str())) {
        bail!(
            "no bench stage `{unknown}`; the stages are {}",
            STAGES.join(", ")
        );
    }
    Ok(if named.is_empty() {
        STAGES.iter().map(|stage| stage.to_string()).collect()
    } else {
        named
    })
}

fn main() {
    if let Err(error) = run() {
        eprintln!("bench error: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let stages = selected_stages()?;
    let runs = |stage: &str| stages.iter().any(|selected| selected == stage);
    let model_dir = std::env::var_os("SCLIP_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL_DIR));
    if !model_dir.join("config.json").is_file() {
        bail!(
            "no model at {}; make a full-size random ViT-B/16 with \
             `python3 tests/reference/make_fixtures.py --full-size {DEFAULT_MODEL_DIR}` \
             (needs `pip install -r tests/reference/requirements.txt`) or set SCLIP_BENCH_MODEL",
            model_dir.display()
        );
    }
    let threads = rayon::current_num_threads();
    println!(
        "sclip speed bench: {threads} thread(s), model {}",
        model_dir.display()
    );
    let scratch = tempfile::tempdir()?;
    let photos = make_photos(scratch.path())?;

    if runs("gemm") {
        let probe = GemmProbe::new()?;
        probe.gflops()?;
        let rates = (0..7).map(|_| probe.gflops()).collect::<Result<Vec<_>>>()?;
        println!(
            "\nGEMM 1176x768 * 768x3072 (f32): {:.1} GFLOP/s (median of 7)",
            median(rates)
        );
    }

    let files = resolve_model(
        model_dir.to_str().context("model path is not UTF-8")?,
        "main",
    )?;
    let config = ClipConfig::from_file(&files.config)?;
    let voc21 = presets::find("voc21")?;
    let classes = voc21.classes();
    if runs("text") {
        text_bench(&files, &classes)?;
    }

    if runs("load") {
        load_bench(&files)?;
    }
    // Queries kept between bench runs, so that timing the vision forward does not wait for the
    // text tower.
    let cache = QueryCache::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-query-cache"));
    let settings = Settings::resolve(Some(voc21), &Overrides::default())?;
    if runs("vision") || runs("image") {
        let model = Model::load(files.clone(), &Device::Cpu, DType::F32)?;
        let queries = QueryEncoder::new(&model, Some(cache.clone())).encode(&classes)?;
        let segmenter = Segmenter::new(&model, queries, settings)?;
        if runs("vision") {
            vision_bench("f32", &segmenter, &config)?;
            // bf16 on the CPU: AMX products where the CPU has them (f32 otherwise).
            let bf16_model = Model::load(files.clone(), &Device::Cpu, DType::BF16)?;
            println!(
                "\n{}",
                bf16_model.compute_note().unwrap_or("bf16 on the CPU")
            );
            let queries = QueryEncoder::new(&bf16_model, Some(cache.clone())).encode(&classes)?;
            let bf16 = Segmenter::new(&bf16_model, queries, segmenter.settings().clone())?;
            vision_bench("bf16", &bf16, &config)?;
        }
        if runs("image") {
            for (label, path) in &photos {
                image_bench(&segmenter, label, path, scratch.path())?;
            }
        }
    }
    if runs("folder") {
        folder_bench(&model_dir, &photos[1].1, scratch.path())?;
    }
    if let Some(peak) = peak_rss_mib() {
        println!("\npeak RSS of this bench process: {peak:.0} MiB");
    }
    Ok(())
}

/// The model from the page cache: the vision tower ready to run (what a run with cached text
/// queries waits for), and the text tower (what a cache miss adds).
fn load_bench(files: &ModelFiles) -> Result<()> {
    let mut model = None;
    let vision = median_seconds(3, || {
        model = Some(Model::load(files.clone(), &Device::Cpu, DType::F32)?);
        Ok(())
    })?;
    let model = model.context("loaded above")?;
    let text = median_seconds(3, || {
        model.text_encoder()?;
        Ok(())
    })?;
    println!(
        "\nmodel load from the page cache (median of 3): vision tower ready in {vision:.3} s; \
         text tower in {text:.3} s more",
    );
    Ok(())
}

/// A 448x336 and a 1000x750 JPEG made from the sample photo (tiled and scaled, so that the
/// content is photographic), as `(label, path)`.
fn make_photos(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let sample = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/astronaut.jpg"))
        .context("cannot open assets/astronaut.jpg")?
        .into_rgb8();
    let mut photos = Vec::new();
    for (width, height) in [(448, 336), (1000, 750)] {
        let resized: RgbImage = image::imageops::resize(
            &sample,
            width,
            height,
            image::imageops::FilterType::Triangle,
        );
        let path = dir.join(format!("photo{width}x{height}.jpg"));
        resized.save(&path)?;
        photos.push((format!("{width}x{height}"), path));
    }
    Ok(photos)
}

/// Median seconds of `runs` calls after one warm-up call.
fn median_seconds(runs: usize, mut work: impl FnMut() -> Result<()>) -> Result<f64> {
    work()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        work()?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[runs / 2])
}

/// The GEMM shape of ViT-B/16's MLP over six windows' tokens, 1176x768 * 768x3072: what this
/// CPU's matmul reaches at best, the yardstick for the vision forward.
struct GemmProbe {
    a: Tensor,
    b: Tensor,
}

impl GemmProbe {
    const M: usize = 1176;
    const K: usize = 768;
    const N: usize = 3072;

    fn new() -> Result<Self> {
        Ok(GemmProbe {
            a: Tensor::randn(0f32, 1.0, (Self::M, Self::K), &Device::Cpu)?,
            b: Tensor::randn(0f32, 1.0, (Self::K, Self::N), &Device::Cpu)?,
        })
    }

    fn gflops(&self) -> Result<f64> {
        let started = Instant::now();
        self.a.matmul(&self.b)?;
        let seconds = started.elapsed().as_secs_f64();
        Ok(2.0 * (Self::M * Self::K * Self::N) as f64 / seconds / 1e9)
    }
}

/// Text queries from a cold start: the text tower's load, then 3 names and every name of the
/// VOC preset (56) with prefixes shared (sclip's way), with whole prompts, and (3 names only,
/// it is slow) padded to 77 tokens as the authors' code does.
fn text_bench(files: &ModelFiles, classes: &ClassList) -> Result<()> {
    let model = Model::load(files.clone(), &Device::Cpu, DType::F32)?;
    let started = Instant::now();
    let encoder = model.text_encoder()?;
    println!(
        "\ntext queries (cold): text tower loaded in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let few: Vec<String> = ["dog", "boat", "water"].map(String::from).to_vec();
    let voc = classes.queries().0;
    let templates = sclip::text::templates().len();
    for (names, runs) in [(&few, 3), (&voc, 1)] {
        let time = |layout| -> Result<f64> {
            let started = Instant::now();
            encoder.name_queries(names, layout)?;
            Ok(started.elapsed().as_secs_f64())
        };
        let shared = median(
            (0..runs)
                .map(|_| time(PromptLayout::SharedPrefix))
                .collect::<Result<Vec<_>>>()?,
        );
        let whole = time(PromptLayout::Whole)?;
        let tokens = |layout| encoder.tokens_computed(names, layout);
        let (computed, all) = (
            tokens(PromptLayout::SharedPrefix)?,
            tokens(PromptLayout::Whole)?,
        );
        let prompts = names.len() * templates;
        println!(
            "  {} names x {templates} = {prompts} prompts: {shared:.3} s with shared prefixes \
             (median of {runs}, {:.2} ms a prompt, {computed} of {all} tokens computed, {:.0}% \
             saved); {whole:.3} s with whole prompts",
            names.len(),
            1000.0 * shared / prompts as f64,
            100.0 * (1.0 - computed as f64 / all as f64)
        );
        if names.len() == few.len() {
            let padded = time(PromptLayout::PaddedToContext)?;
            println!(
                "  {prompts} prompts padded to 77 tokens (the authors' way): {padded:.3} s, {:.1}x \
                 slower than shared prefixes",
                padded / shared
            );
        }
    }
    Ok(())
}

/// Multiply-adds of one window through the vision tower with the CSA last block, counted as
/// two FLOPs each: patch embedding, every layer's projections, attention and MLP, and the final
/// projection (the CSA block has two attention maps instead of one).
fn window_flops(vision: &VisionConfig, projection_dim: usize, grid: usize) -> f64 {
    let tower = &vision.tower;
    let (d, m) = (tower.hidden_size as f64, tower.intermediate_size as f64);
    let patches = (grid * grid) as f64;
    let tokens = patches + 1.0;
    let patch_embedding =
        patches * (vision.num_channels * vision.patch_size * vision.patch_size) as f64 * d;
    let projections = tokens * d * 4.0 * d;
    let mlp = 2.0 * tokens * d * m;
    let attention = 2.0 * tokens * tokens * d;
    let layers = tower.num_layers as f64;
    let multiply_adds = patch_embedding
        + layers * (projections + mlp + attention)
        + tokens * tokens * d
        + patches * d * projection_dim as f64;
    2.0 * multiply_adds
}

/// The vision forward against the GEMM peak, measured interleaved (GEMM, forward, GEMM, ...)
/// so that both see the same clock speed on a machine that throttles under load.
fn vision_bench(label: &str, segmenter: &Segmenter, config: &ClipConfig) -> Result<()> {
    let image = RgbImage::from_fn(448, 336, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    let prepared = segmenter.prepare(&image)?;
    let grid = segmenter.settings().window / config.vision.patch_size;
    let flops = window_flops(&config.vision, config.projection_dim, grid);
    let gemm = GemmProbe::new()?;
    println!(
        "\nvision forward in {label}, 224x224 windows ({:.1} GFLOP each), interleaved with the \
         f32 GEMM probe:",
        flops / 1e9
    );
    for batch in [1, prepared.windows.len()] {
        let crops: Vec<WindowCrop> = prepared.windows[..batch]
            .iter()
            .map(|window| WindowCrop {
                image: &prepared,
                window,
            })
            .collect();
        segmenter.window_logits(&crops)?;
        let (mut forward_times, mut gemm_rates) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            gemm_rates.push(gemm.gflops()?);
            let started = Instant::now();
            segmenter.window_logits(&crops)?;
            forward_times.push(started.elapsed().as_secs_f64() / batch as f64);
        }
        let seconds = median(forward_times);
        let peak = median(gemm_rates);
        let gflops = flops / seconds / 1e9;
        println!(
            "  {label} batch {batch}: {seconds:.3} s per window, {gflops:.1} GFLOP/s = {:.0}% of the f32 GEMM peak ({peak:.1} GFLOP/s meanwhile)",
            100.0 * gflops / peak
        );
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn image_bench(segmenter: &Segmenter, label: &str, path: &Path, scratch: &Path) -> Result<()> {
    println!("\n{label} photo ({}):", path.display());
    let decode = median_seconds(5, || {
        let photo = load_image(path, DEFAULT_MAX_PIXELS)?.image;
        segmenter.prepare(&photo)?;
        Ok(())
    })?;
    let photo = load_image(path, DEFAULT_MAX_PIXELS)?.image;
    let prepared = segmenter.prepare(&photo)?;
    let crops: Vec<WindowCrop> = prepared
        .windows
        .iter()
        .map(|window| WindowCrop {
            image: &prepared,
            window,
        })
        .collect();
    let windows = median_seconds(3, || {
        segmenter.window_logits(&crops)?;
        Ok(())
    })?;
    let logits = segmenter.window_logits(&crops)?;
    let canvas = || {
        let mut canvas = segmenter.canvas_for(&prepared);
        for (window, window_logits) in prepared.windows.iter().zip(logits.per_window()) {
            canvas.add_window(window, window_logits, logits.grid_h, logits.grid_w);
        }
        canvas
    };
    let post = median_seconds(5, || {
        segmenter.finish(canvas(), &prepared);
        Ok(())
    })?;
    let segmentation = segmenter.finish(canvas(), &prepared);
    let mask = scratch.join("mask.png");
    let (width, height) = (segmentation.width as u32, segmentation.height as u32);
    let encode = median_seconds(5, || {
        stage_label_png(&mask, &segmentation.labels, width, height)?.commit()
    })?;
    let end_to_end = median_seconds(3, || {
        let photo = load_image(path, DEFAULT_MAX_PIXELS)?.image;
        let segmentation = segmenter.segment(&photo)?;
        stage_label_png(&mask, &segmentation.labels, width, height)?.commit()
    })?;
    println!("  decode + resize: {decode:.4} s");
    println!("  {} windows: {windows:.3} s", prepared.windows.len());
    println!("  upsample + post-process: {post:.4} s");
    println!("  PNG encode + write: {encode:.4} s");
    println!("  end to end (model loaded, text cached): {end_to_end:.3} s per image");
    Ok(())
}

/// The `sclip` binary on a folder, as users run it: process start, model load, text queries
/// (cold: an empty cache; warm: the cache the cold run filled) and every image.
fn folder_bench(model_dir: &Path, photo: &Path, scratch: &Path) -> Result<()> {
    let folder = scratch.join("folder");
    std::fs::create_dir_all(&folder)?;
    for i in 0..FOLDER_IMAGES {
        std::fs::copy(photo, folder.join(format!("img{i:02}.jpg")))?;
    }
    println!(
        "\nsclip segment on a folder of {FOLDER_IMAGES} {} photos, --preset voc21:",
        photo.file_stem().unwrap_or_default().to_string_lossy()
    );
    let cache = scratch.join("folder-cache");
    for run in ["cold text cache", "warm text cache"] {
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_sclip"))
            .arg("segment")
            .arg(&folder)
            .arg("--model")
            .arg(model_dir)
            .args(["--preset", "voc21", "--json", "--quiet", "--out"])
            .arg(scratch.join("folder-out"))
            .env("SCLIP_CACHE_DIR", &cache)
            .output()?;
        let wall = started.elapsed().as_secs_f64();
        if !output.status.success() {
            bail!("sclip failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let stdout = String::from_utf8(output.stdout)?;
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().context("sclip printed no summary")?)?;
        println!(
            "  {run}: {:.2} images/s whole process ({wall:.1} s), {} images/s after a {} s setup (text {} s), peak RSS {} MiB",
            FOLDER_IMAGES as f64 / wall,
            summary["images_per_second"],
            summary["setup_seconds"],
            summary["text"]["seconds"],
            summary["peak_rss_mib"],
        );
    }
    Ok(())
}
