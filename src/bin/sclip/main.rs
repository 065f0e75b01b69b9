//! The `sclip` command: a thin layer over the `sclip` library. It parses the command line
//! ([`args`]), finds the images ([`inputs`]) and plans their outputs ([`jobs`]), streams them
//! through the library's segmenter, writes each result ([`writer`]) and tells the user what
//! happened ([`report`], [`messages`]); [`eval`] measures the results against a benchmark's
//! truth.

mod args;
mod completions;
mod download;
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

use clap::{CommandFactory, FromArgMatches};

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
    let mut command = Cli::command();
    // Read from this machine's CPU, so only when asked for: detecting AMX asks the kernel for
    // the tile state, which no other command needs unless it runs in bf16.
    if std::env::args_os().skip(1).any(|arg| arg == "--version") {
        command = command.long_version(args::long_version());
    }
    let matches = match command.try_get_matches() {
        Ok(matches) => matches,
        Err(error) => exit_for_clap(&error),
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let result = match cli.command {
        Command::Segment(args) => segment::run(*args),
        Command::Eval(args) => eval::run(*args),
        Command::Presets { name, method } => presets::list(name.as_deref(), method),
        Command::Download(args) => download::run(args),
        Command::Completions { shell } => completions::completions(shell),
        Command::Man { command, out_dir } => completions::man(command.as_deref(), out_dir),
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

/// Prints clap's help, version or usage error and exits as clap would, except that help or a
/// version that cannot be written (`sclip --help > /dev/full`) is an error, not a silent exit 0;
/// a reader that stops early (`sclip --help | head`) is not.
fn exit_for_clap(error: &clap::Error) -> ! {
    if let Err(write_error) = error.print() {
        if write_error.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("sclip: error: cannot write to stdout: {write_error}");
            std::process::exit(1);
        }
    }
    std::process::exit(error.exit_code())
}
