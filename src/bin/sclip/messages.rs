//! Errors as the command line tells them: one line, and the library's typed errors in the words
//! of the flags that set what was wrong.

use std::borrow::Cow;
use std::error::Error;
use std::path::Path;

use sclip::preprocess::{FileTooLarge, TooManyPixels};
use sclip::{ClassListError, DeviceError, Setting, SettingsError};

use crate::args::CLASSES_EXAMPLE;

/// An error and its causes on one line, safe to print on a terminal. Some library errors
/// (candle's, with RUST_BACKTRACE set) carry a backtrace on later lines, which is noise to a user
/// and is left out; any other line break (a file name can hold one) is escaped, not cut.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut messages: Vec<String> = err
        .chain()
        .map(|cause| {
            let message = in_cli_words(cause).unwrap_or_else(|| cause.to_string());
            escape_controls(without_backtrace(&message)).into_owned()
        })
        .collect();
    // Some decoders' errors repeat their source's message as their own.
    messages.dedup();
    messages.join(": ")
}

/// `message` up to the line where a backtrace starts: `stack backtrace:`, a frame such as
/// `   0: main`, or the text a disabled backtrace prints.
fn without_backtrace(message: &str) -> &str {
    let is_backtrace_line = |line: &str| {
        let line = line.trim_start();
        let digits = line.bytes().take_while(u8::is_ascii_digit).count();
        line == "stack backtrace:"
            || line == "disabled backtrace"
            || line == "unsupported backtrace"
            || (digits > 0 && line[digits..].starts_with(": "))
    };
    let mut end = message.len();
    let mut offset = 0;
    for line in message.split_inclusive('\n') {
        if offset > 0 && is_backtrace_line(line.trim_end_matches('\n')) {
            end = offset - 1;
            break;
        }
        offset += line.len();
    }
    &message[..end]
}

/// `text` with control characters (ESC, CR, newlines, C1 controls) escaped as `\n`, `\t`, `\r`
/// or `\u{..}`, so that a file or class name cannot move the cursor, recolour or rewrite the
/// terminal, or split one line of output into two.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    replace_controls(text, |control| match control {
        '\n' => "\\n".to_string(),
        '\t' => "\\t".to_string(),
        '\r' => "\\r".to_string(),
        other => format!("\\u{{{:x}}}", u32::from(other)),
    })
}

/// `text` with each control character replaced by what `escape` writes for it.
pub fn replace_controls(text: &str, escape: impl Fn(char) -> String) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        if character.is_control() {
            escaped.push_str(&escape(character));
        } else {
            escaped.push(character);
        }
    }
    Cow::Owned(escaped)
}

/// A path for people: control characters escaped as [`escape_controls`] does, and bytes that are
/// not UTF-8 as `\xNN`, so that the name shown can be typed back.
pub fn shown_path(path: &Path) -> String {
    let mut shown = String::new();
    for chunk in path.as_os_str().as_encoded_bytes().utf8_chunks() {
        shown.push_str(&escape_controls(chunk.valid()));
        for byte in chunk.invalid() {
            shown.push_str(&format!("\\x{byte:02x}"));
        }
    }
    shown
}

/// The flag that sets a setting.
pub fn flag(setting: Setting) -> &'static str {
    match setting {
        Setting::ShortSide => "--short-side",
        Setting::Window => "--window",
        Setting::Stride => "--stride",
        Setting::BatchSize => "--batch-size",
        Setting::LogitScale => "--logit-scale",
        Setting::ProbThd => "--prob-thd",
        Setting::AreaThd => "--area-thd",
        Setting::CsaProjection => "--csa-proj",
        Setting::PamrSteps => "--pamr",
        Setting::PamrDilations => "--pamr-dilations",
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
    match cause.downcast_ref::<ClassListError>() {
        Some(ClassListError::Empty) => {
            return Some(format!(
            "the class list is empty; name at least one class, e.g. --classes {CLASSES_EXAMPLE:?}"
        ))
        }
        Some(ClassListError::TooManyNames { count }) => {
            return Some(format!(
                "{count} names given (classes and synonyms together), over the limit of {} per \
                 run; drop synonyms, or split the classes over several runs, each with its own \
                 --classes or --classes-file",
                sclip::classes::MAX_NAMES
            ))
        }
        _ => {}
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
        SettingsError::BelowPatch { value, patch, .. } => {
            format!("{flag} {value} is smaller than the model's {patch}-pixel patch")
        }
        SettingsError::ProjectionNotSclip(error) => format!(
            "{flag} changes SCLIP's attention only, not {}'s; drop {flag} {}, or use --method sclip",
            error.method.name(),
            error.projection.name()
        ),
        SettingsError::AboveLimit { value, limit, .. } => {
            format!("{flag} {value} is over the limit of {limit}")
        }
        SettingsError::PamrOff => {
            format!("{flag} needs PAMR on: add --pamr STEPS (10 is the authors' choice)")
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
        let error = anyhow::anyhow!("shape mismatch\n   0: candle_core::error::Error::bt\n");
        assert_eq!(one_line(&error), "shape mismatch");
        let error = anyhow::anyhow!("image truncated")
            .context("image truncated")
            .context("cannot decode a.png");
        assert_eq!(one_line(&error), "cannot decode a.png: image truncated");
    }

    #[test]
    fn a_line_break_in_a_file_name_is_escaped_not_cut() {
        let error = anyhow::anyhow!("the JPEG data is truncated")
            .context("cannot decode image file photos/a\nb.jpg");
        assert_eq!(
            one_line(&error),
            "cannot decode image file photos/a\\nb.jpg: the JPEG data is truncated"
        );
    }

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert_eq!(escape_controls("plain name.jpg"), "plain name.jpg");
        assert_eq!(
            escape_controls("\u{1b}[2J\rred\tx\u{9b}"),
            "\\u{1b}[2J\\rred\\tx\\u{9b}"
        );
        assert_eq!(shown_path(Path::new("a\u{1b}b.jpg")), "a\\u{1b}b.jpg");
    }

    #[cfg(unix)]
    #[test]
    fn names_that_are_not_utf8_are_shown_byte_for_byte() {
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(b"caf\xe9/\xff\x1b.jpg"));
        assert_eq!(shown_path(path), "caf\\xe9/\\xff\\u{1b}.jpg");
    }
}
