//! Errors as the command line tells them: one line, and the library's typed errors in the words
//! of the flags that set what was wrong.

use std::error::Error;

use sclip::preprocess::{FileTooLarge, TooManyPixels};
use sclip::{ClassListError, DeviceError, Setting, SettingsError};

use crate::args::CLASSES_EXAMPLE;

/// An error and its causes on one line. Some library errors (candle's, with RUST_BACKTRACE set)
/// carry a backtrace on later lines, which is noise to a user.
pub fn one_line(err: &anyhow::Error) -> String {
    err.chain()
        .map(|cause| {
            let message = in_cli_words(cause).unwrap_or_else(|| cause.to_string());
            message.lines().next().unwrap_or_default().to_string()
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// The flag that sets a setting.
pub fn flag(setting: Setting) -> &'static str {
    match setting {
        Setting::ShortSide => "--short-side",
        Setting::Window => "--window",
        Setting::Stride => "--stride",
        Setting::BatchSize => "--batch-size",
        Setting::LogitScale => "--logit-scale",
        Setting::AreaThd => "--area-thd",
    }
}

fn in_cli_words(cause: &(dyn Error + 'static)) -> Option<String> {
    if let Some(error) = cause.downcast_ref::<SettingsError>() {
        return Some(settings_message(error));
    }
    if let Some(error) = cause.downcast_ref::<DeviceError>() {
        return Some(match error {
            DeviceError::Unknown { .. } => error.to_string(),
            DeviceError::NoCudaSupport { spec } => format!(
                "--device {spec}: this sclip was built without CUDA support; rebuild with \
                 `cargo install --path . --features cuda` (needs the CUDA toolkit) or use --device cpu"
            ),
            DeviceError::NoGpu { spec, ordinal, .. } => format!(
                "--device {spec}: no usable CUDA GPU {ordinal}; check nvidia-smi, or use --device cpu"
            ),
        });
    }
    if let Some(ClassListError::Empty) = cause.downcast_ref::<ClassListError>() {
        return Some(format!(
            "the class list is empty; name at least one class, e.g. --classes {CLASSES_EXAMPLE:?}"
        ));
    }
    if let Some(error) = cause.downcast_ref::<TooManyPixels>() {
        let (declared, limit) = error.megapixels();
        return Some(format!(
            "it declares {}x{} = {declared:.1} megapixels, over the --max-pixels limit of \
             {limit:.1}; raise --max-pixels if the image is genuine",
            error.width, error.height
        ));
    }
    if let Some(error) = cause.downcast_ref::<FileTooLarge>() {
        return Some(format!(
            "the file is {} bytes, over the {}-byte limit that --max-pixels sets (8 bytes a \
             pixel and 64 MiB); pass --max-pixels {} or more if the image is genuine",
            error.size,
            error.limit,
            error.pixels_needed()
        ));
    }
    if let Some(error) = cause.downcast_ref::<sclip::model::NotCached>() {
        return Some(format!(
            "{} (revision {}) has no cached {} in {} and HF_HUB_OFFLINE=1 forbids downloading; \
             unset HF_HUB_OFFLINE to download it once, point HF_HOME/HF_HUB_CACHE at the cache \
             that has it, or pass --model DIR with a local copy",
            error.repo_id,
            error.revision,
            error.file,
            error.cache_dir.display()
        ));
    }
    None
}

fn settings_message(error: &SettingsError) -> String {
    let flag = flag(error.setting());
    match error {
        SettingsError::NotPositive(_) => format!("{flag} must be positive"),
        SettingsError::StrideOutsideWindow { stride, window } => format!(
            "{flag} {stride} must be between 1 and --window {window}: a longer stride leaves \
             pixels no window sees"
        ),
        SettingsError::NotFinite(_) => format!("{flag} must be a finite number"),
        SettingsError::NotAFraction(_) => format!("{flag} must be between 0 and 1"),
        SettingsError::WindowBelowPatch { window, patch } => {
            format!("{flag} {window} is smaller than the model's {patch}-pixel patch")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_causes_are_told_in_flags_and_the_chain_stays_one_line() {
        let error = anyhow::Error::new(SettingsError::StrideOutsideWindow {
            stride: 300,
            window: 224,
        })
        .context("cannot segment");
        assert_eq!(
            one_line(&error),
            "cannot segment: --stride 300 must be between 1 and --window 224: a longer stride \
             leaves pixels no window sees"
        );
        let error = anyhow::Error::new(ClassListError::Empty).context("bad --classes");
        assert_eq!(
            one_line(&error),
            "bad --classes: the class list is empty; name at least one class, e.g. --classes \
             \"dog,boat,water\""
        );
        let error = anyhow::anyhow!("first line\nstack backtrace:\n  0: main").context("outer");
        assert_eq!(one_line(&error), "outer: first line");
    }
}
