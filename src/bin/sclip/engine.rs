//! What `sclip segment` and `sclip eval` share: the flags that choose the classes, the model and
//! the method and its settings, and the steps that turn them into a ready [`Segmenter`].

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::Args;

use candle_core::DeviceLocation;
use sclip::model::{resolve_model_with, ClipConfig, HubOptions, ModelFiles};
use sclip::presets::{self, Preset};
use sclip::text::cache::default_cache_dir;
use sclip::{
    parse_device, ClassList, ClassListError, CsaProjection, Device, Method, Model, Overrides,
    QueryCache, QueryEncoder, Segmenter, Settings, DEFAULT_MODEL,
};

use crate::args::{preset_default, Precision, CLASSES_EXAMPLE};
use crate::messages::shown_path;
use crate::report::describe_text;
use crate::Failure;

#[derive(Args)]
pub struct ClassArgs {
    /// Classes, comma-separated; a class's synonyms separated by '|': "person,car|automobile,road".
    /// With thresholds, the first class is the background.
    #[arg(short, long, value_name = "LIST", conflicts_with = "classes_file")]
    pub classes: Option<String>,

    /// File with one class per line, its names comma-separated; '#' starts a comment.
    #[arg(long, value_name = "FILE")]
    pub classes_file: Option<PathBuf>,

    /// A benchmark's classes and its method's published settings (see `sclip presets`); the
    /// options given explicitly override it.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
}

impl ClassArgs {
    pub fn preset(&self) -> Result<Option<&'static Preset>, Failure> {
        self.preset
            .as_deref()
            .map(presets::find)
            .transpose()
            .map_err(Failure::Usage)
    }

    /// The classes named by --classes or --classes-file, else the preset's.
    pub fn class_list(&self, preset: Option<&Preset>) -> Result<ClassList> {
        match (&self.classes, &self.classes_file, preset) {
            (Some(list), _, _) => ClassList::parse_inline(list).map_err(|error| {
                let context = match error {
                    ClassListError::BlankName { .. } => format!("bad --classes {list:?}"),
                    ClassListError::Empty
                    | ClassListError::TooMany { .. }
                    | ClassListError::TooManyNames { .. }
                    | ClassListError::DuplicateName { .. } => "bad --classes".to_string(),
                };
                anyhow::Error::new(error).context(context)
            }),
            (None, Some(path), _) => ClassList::from_file(path),
            (None, None, Some(preset)) => Ok(preset.classes()),
            (None, None, None) => Err(anyhow!(
                "name the classes to find: --classes {CLASSES_EXAMPLE:?}, --classes-file FILE or --preset NAME"
            )),
        }
    }
}

#[derive(Args)]
pub struct EngineArgs {
    /// Hugging Face repo id (downloaded once, then cached) or a local folder holding
    /// config.json, tokenizer.json and model.safetensors (or pytorch_model.bin).
    #[arg(short, long, default_value = DEFAULT_MODEL, value_name = "REPO|DIR")]
    pub model: String,

    /// Hub revision (branch, tag or commit) when --model is a repo id.
    #[arg(long, default_value = "main", value_name = "REV")]
    pub revision: String,

    /// Neither read nor write the on-disk text query cache.
    #[arg(long)]
    pub no_cache: bool,

    /// What the last vision block computes: SCLIP's Correlative Self-Attention, or a peer's
    /// (with --preset, each uses its authors' settings for the benchmark).
    #[arg(long, default_value = Method::Sclip.name(), value_parser = method_parser())]
    pub method: Method,

    /// SCLIP's attention maps (its Table 2 ablation; --method sclip only).
    #[arg(long, default_value = CsaProjection::QueryKey.name(), value_name = "PROJ",
          value_parser = projection_parser())]
    pub csa_proj: CsaProjection,

    #[arg(long, value_name = "X", help = preset_default(
        "Multiplies the cosine similarities before the softmax over class names",
        Settings::DEFAULT.postprocess.logit_scale,
    ))]
    pub logit_scale: Option<f32>,

    #[arg(long, value_name = "Y", help = preset_default(
        "Pixels whose best class score is below this become class 0 (background)",
        Settings::DEFAULT.postprocess.prob_thd,
    ))]
    pub prob_thd: Option<f32>,

    /// Drop non-background classes covering at most this fraction of the non-background area
    /// [default: off, or the preset's].
    #[arg(long, value_name = "Z")]
    pub area_thd: Option<f32>,

    #[arg(long, value_name = "S", help = preset_default(
        "Short side of the resized image (the long side is capped at 2048)",
        Settings::DEFAULT.short_side,
    ))]
    pub short_side: Option<u32>,

    #[arg(long, value_name = "W", help = preset_default(
        "Sliding-window size in pixels",
        Settings::DEFAULT.window,
    ))]
    pub window: Option<usize>,

    #[arg(long, value_name = "T", help = preset_default(
        "Sliding-window stride in pixels",
        Settings::DEFAULT.stride,
    ))]
    pub stride: Option<usize>,

    /// Refine the logits with PAMR for this many steps at the original size (slower; 0 = off)
    /// [default: 0, or the preset's authors' choice].
    #[arg(long, value_name = "STEPS")]
    pub pamr: Option<usize>,

    /// PAMR's neighbourhood dilations, comma-separated [default: 8,16].
    #[arg(long, value_name = "D,D", value_delimiter = ',')]
    pub pamr_dilations: Option<Vec<usize>>,

    /// Windows per forward pass, taken across images (memory grows with it).
    #[arg(long, default_value_t = Settings::DEFAULT.batch_size, value_name = "N")]
    pub batch_size: usize,

    /// Where the model runs: cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu", value_name = "DEV")]
    pub device: String,

    /// Floating-point type of the model's weights and activations.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
}

/// How much a command says on stderr.
#[derive(Clone, Copy)]
pub struct Chatter {
    pub quiet: bool,
    pub verbose: bool,
}

impl EngineArgs {
    /// The settings given on the command line, to apply over a preset's.
    pub fn overrides(&self, keep_probs: bool) -> Overrides {
        Overrides {
            short_side: self.short_side,
            window: self.window,
            stride: self.stride,
            batch_size: Some(self.batch_size),
            logit_scale: self.logit_scale,
            prob_thd: self.prob_thd,
            area_thd: self.area_thd,
            keep_probs: Some(keep_probs),
            method: Some(self.method),
            csa_projection: Some(self.csa_proj),
            pamr_steps: self.pamr,
            pamr_dilations: self.pamr_dilations.clone(),
        }
    }

    /// The settings, and the device they run on; both are usage errors when wrong.
    pub fn settings(
        &self,
        preset: Option<&Preset>,
        keep_probs: bool,
    ) -> Result<(Settings, Device), Failure> {
        let settings = Settings::resolve(preset, &self.overrides(keep_probs))
            .map_err(|error| Failure::Usage(error.into()))?;
        let device = parse_device(&self.device).map_err(|error| Failure::Usage(error.into()))?;
        Ok((settings, device))
    }

    /// The model named by --model, once the settings are known to fit its patch size (read from
    /// its config before the weights, so that a usage error stays one).
    pub fn load_model(
        &self,
        device: &Device,
        settings: &Settings,
        chatter: Chatter,
    ) -> Result<Model, Failure> {
        let files = self.model_files(settings, chatter)?;
        self.load_files(files, device, chatter)
    }

    /// The files of the model named by --model (downloaded if need be), checked to fit the
    /// settings' patch size: all that identifies the model, without reading its weights.
    pub fn model_files(
        &self,
        settings: &Settings,
        chatter: Chatter,
    ) -> Result<ModelFiles, Failure> {
        let hub = HubOptions {
            progress: !chatter.quiet,
        };
        let files = resolve_model_with(&self.model, &self.revision, hub)
            .with_context(|| self.cannot_load())?;
        let config = ClipConfig::from_file(&files.config).with_context(|| self.cannot_load())?;
        settings
            .validate_for_patch(config.vision.patch_size)
            .map_err(|error| Failure::Usage(error.into()))?;
        Ok(files)
    }

    /// The model of [`EngineArgs::model_files`], on `device` in --dtype.
    pub fn load_files(
        &self,
        files: ModelFiles,
        device: &Device,
        chatter: Chatter,
    ) -> Result<Model, Failure> {
        let model =
            Model::load(files, device, self.dtype.into()).with_context(|| self.cannot_load())?;
        if chatter.verbose {
            eprintln!("sclip: {}", describe_files(model.files()));
            eprintln!(
                "sclip: device {}, dtype {}: {}",
                device_name(device),
                sclip::DType::from(self.dtype).as_str(),
                model.kernels()
            );
        }
        if let (true, Some(note)) = (chatter.verbose, model.compute_note()) {
            eprintln!("sclip: {note}");
        }
        Ok(model)
    }

    fn cannot_load(&self) -> String {
        format!("cannot load model {}", self.model)
    }

    /// The class queries (from the cache unless --no-cache) joined with the model and settings.
    pub fn segmenter<'m>(
        &self,
        model: &'m Model,
        classes: &ClassList,
        settings: Settings,
        chatter: Chatter,
    ) -> Result<Segmenter<'m>> {
        let cache = (!self.no_cache)
            .then(default_cache_dir)
            .flatten()
            .map(QueryCache::new);
        // The encoder, and the text tower with it, is dropped here: its memory goes to the windows.
        let queries = QueryEncoder::new(model, cache).encode(classes)?;
        let text_stats = queries.stats();
        if chatter.verbose {
            eprintln!("sclip: {}", describe_text(text_stats));
        } else if let (Some(error), false) = (&text_stats.store_error, chatter.quiet) {
            eprintln!("sclip: warning: the text queries could not be cached: {error}");
        }
        if let (Some(file), false) = (&text_stats.damaged_file, chatter.quiet) {
            eprintln!("sclip: warning: the damaged query cache file {file} was not used; encoded the queries again");
        }
        Segmenter::new(model, queries, settings)
    }
}

/// Which files a model was loaded from: the hub repo, revision and commit, or the local folder.
pub fn describe_files(files: &ModelFiles) -> String {
    let weights = files
        .weights
        .path()
        .file_name()
        .map_or_else(String::new, |name| format!(" ({})", name.to_string_lossy()));
    let folder = shown_path(files.folder());
    match &files.hub {
        Some(hub) => format!(
            "model {} at commit {} (revision {}), files in {folder}{weights}",
            hub.repo_id, hub.commit, hub.revision
        ),
        None => format!("model files in the local folder {folder}{weights}"),
    }
}

/// A device as --device names it.
fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".to_string(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Threads decoding and resizing images ahead of the model: up to 4, and no more than the
/// model's own (RAYON_NUM_THREADS), so that a job given one core keeps to it.
pub fn decode_threads() -> usize {
    rayon::current_num_threads().min(4)
}

/// The methods by name, each with its paper in `--help`.
pub fn method_parser() -> impl TypedValueParser<Value = Method> {
    let names = Method::ALL.map(|method| PossibleValue::new(method.name()).help(method.summary()));
    PossibleValuesParser::new(names)
        .map(|name| Method::from_name(&name).expect("clap only passes the names it was given"))
}

fn projection_parser() -> impl TypedValueParser<Value = CsaProjection> {
    let names = CsaProjection::ALL
        .map(|projection| PossibleValue::new(projection.name()).help(projection.summary()));
    PossibleValuesParser::new(names).map(|name| {
        CsaProjection::from_name(&name).expect("clap only passes the names it was given")
    })
}
