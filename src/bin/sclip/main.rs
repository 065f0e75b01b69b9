//! The `sclip` command: a thin layer over the `sclip` library. It parses the command line
//! ([`args`]), finds the images ([`inputs`]) and plans their outputs ([`jobs`]), streams them
//! through the library's segmenter, writes each result ([`writer`]) and tells the user what
//! happened ([`report`], [`messages`]); [`eval`] measures the results against a benchmark's
//! truth.

mod args;
mod engine;
mod eval;
mod html_report;
mod inputs;
mod jobs;
mod messages;
mod presets;
mod report;
mod segment;
mod signals;
mod writer;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use messages::one_line;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Why a command failed, which decides the exit status.
enum Failure {
    /// The command line asks for something impossible (exit 2, as for clap's own errors).
    Usage(anyhow::Error),
    /// Something went wrong while doing it (exit 1).
    Run(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Run(error)
    }
}

const EXIT_USAGE: u8 = 2;
/// A run stopped by signal N exits with 128 + N, as a shell reports a process killed by it.
const EXIT_SIGNALLED: i32 = 128;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Segment(args) => segment::run(*args),
        Command::Eval(args) => eval::run(*args),
        Command::Presets { name, method } => presets::list(name.as_deref(), method),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Usage(err)) => {
            eprintln!("sclip: error: {}", one_line(&err));
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Run(err)) => {
            eprintln!("sclip: error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}
