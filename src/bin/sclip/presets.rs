//! `sclip presets [NAME]`: the benchmark presets as a table, or one preset's class file.

use std::process::ExitCode;

use sclip::presets::{self, PRESETS};

use crate::Failure;

pub fn list(name: Option<&str>) -> Result<ExitCode, Failure> {
    match name {
        Some(name) => {
            let preset = presets::find(name).map_err(Failure::Usage)?;
            print!("{}", preset.class_file);
        }
        None => {
            println!(
                "preset           classes  short side  logit scale  prob thd  area thd  dataset"
            );
            for preset in PRESETS {
                let area = preset
                    .area_thd
                    .map_or_else(|| "-".to_string(), |a| a.to_string());
                println!(
                    "{:<16} {:>7}  {:>10}  {:>11}  {:>8}  {:>8}  {}",
                    preset.name,
                    preset.classes().len(),
                    preset.short_side,
                    preset.logit_scale,
                    preset.prob_thd,
                    area,
                    preset.description
                );
            }
            println!(
                "\n`sclip presets NAME` prints a preset's class file; `--preset NAME` uses it."
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
