//! `sclip download [MODEL]`: fetches a model into the Hugging Face cache, as `--model` would,
//! and prints its folder on stdout, to prepare a machine that will run with HF_HUB_OFFLINE=1.

use std::process::ExitCode;

use anyhow::{anyhow, Context};

use sclip::model::{looks_like_path, resolve_model_with, ClipConfig, HubOptions, NotCached};

use crate::args::DownloadArgs;
use crate::completions::write_stdout;
use crate::engine::describe_files;
use crate::messages::shown_path;
use crate::Failure;

pub fn run(args: DownloadArgs) -> Result<ExitCode, Failure> {
    if looks_like_path(&args.model) {
        return Err(Failure::Usage(anyhow!(
            "{} is taken for a local folder (it starts with '.', '/' or '~', or its first \
             component exists here), and there is nothing to download for one; name a hub repo \
             id such as {}, or pass the folder to --model as it is",
            args.model,
            sclip::DEFAULT_MODEL
        )));
    }
    let cannot_download = || format!("cannot download model {}", args.model);
    let hub = HubOptions {
        progress: !args.quiet,
    };
    let files = resolve_model_with(&args.model, &args.revision, hub).map_err(|error| {
        match error.downcast_ref::<NotCached>() {
            // Said here in download's terms: the library's words suggest --model, not a flag here.
            Some(absent) => anyhow!(
                "{} (revision {}) is not in the hub cache {} and HF_HUB_OFFLINE=1 forbids \
                 downloading it; unset HF_HUB_OFFLINE, or point HF_HOME/HF_HUB_CACHE at the \
                 cache that has it",
                absent.repo_id,
                absent.revision,
                shown_path(&absent.cache_dir)
            ),
            None => error.context(cannot_download()),
        }
    })?;
    // A repo that is not a CLIP checkpoint is better found now than on the offline machine.
    ClipConfig::from_file(&files.config)
        .context("it is not a CLIP checkpoint that sclip can load")
        .with_context(cannot_download)?;
    if !args.quiet {
        eprintln!("sclip: {}", describe_files(&files));
    }
    // The folder's bytes as they are, so that `$(sclip download)` gives it back whatever it holds.
    let mut line = files.folder().as_os_str().as_encoded_bytes().to_vec();
    line.push(b'\n');
    write_stdout(&line).context("cannot print the model's folder")?;
    Ok(ExitCode::SUCCESS)
}
