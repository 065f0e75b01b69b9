//! `sclip presets [NAME]`: the benchmark presets as a table, or one preset's class file.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use sclip::presets::{self, Preset, PRESETS};
use sclip::Method;

use crate::completions::write_stdout;
use crate::Failure;

pub fn list(name: Option<&str>, method: Method) -> Result<ExitCode, Failure> {
    match name {
        Some(name) => {
            let preset = presets::find(name).map_err(Failure::Usage)?;
            let class_file = format!("{}{}", settings_header(preset, method), preset.class_file);
            write_stdout(class_file.as_bytes()).context("cannot write the preset's class file")?;
        }
        None => {
            let mut table = String::new();
            let _ = writeln!(
                table,
                "{} settings, from {}:",
                method.name(),
                presets::tuning_source(method)
            );
            let _ = writeln!(
                table,
                "preset           classes  short side  window  stride  logit scale  prob thd  area thd  pamr  dataset"
            );
            for preset in PRESETS {
                let tuning = preset.tuning(method);
                let area = tuning
                    .area_thd
                    .map_or_else(|| "-".to_string(), |a| a.to_string());
                let _ = writeln!(
                    table,
                    "{:<16} {:>7}  {:>10}  {:>6}  {:>6}  {:>11}  {:>8}  {:>8}  {:>4}  {}",
                    preset.name,
                    preset.classes().len(),
                    tuning.short_side,
                    tuning.window,
                    tuning.stride,
                    tuning.logit_scale,
                    tuning.prob_thd,
                    area,
                    tuning.pamr_steps,
                    preset.description
                );
            }
            let _ = writeln!(
                table,
                "\n`sclip presets NAME` prints a preset's class file; `--preset NAME` uses it, with \
                 the --method's settings (`sclip presets --method M` lists them)."
            );
            write_stdout(table.as_bytes()).context("cannot write the presets' table")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The comment block printed above a preset's class file: the settings live in the preset, not
/// in the file, so an edited copy keeps them only when passed along with `--preset`.
fn settings_header(preset: &Preset, method: Method) -> String {
    let tuning = preset.tuning(method);
    let area = tuning
        .area_thd
        .map_or_else(|| "off".to_string(), |area| area.to_string());
    let pamr = match tuning.pamr_steps {
        0 => "off".to_string(),
        steps => format!("{steps} steps"),
    };
    let name = preset.name;
    // The command that keeps them names the method too, unless it is the default.
    let method_flag = match method {
        Method::Sclip => String::new(),
        other => format!(" --method {}", other.name()),
    };
    format!(
        "# `sclip presets {name} --method {method}`: the preset's class file, below. The preset also\n\
         # sets, for --method {method}:\n\
         #   short side {}, window {}, stride {}, logit scale {}, prob thd {}, area thd {area},\n\
         #   PAMR {pamr}\n\
         #   (from {})\n\
         # They come from the preset, not from this file: an edited copy keeps them only when\n\
         # passed with the preset,\n\
         #   sclip segment --preset {name}{method_flag} --classes-file edited.txt ...\n\
         # while --classes-file alone runs with sclip's defaults. Options given explicitly override\n\
         # either.\n\
         #\n",
        tuning.short_side,
        tuning.window,
        tuning.stride,
        tuning.logit_scale,
        tuning.prob_thd,
        presets::tuning_source(method),
        method = method.name(),
    )
}
