//! `sclip completions SHELL` and `sclip man`: shell completions and man pages generated from the
//! command line's own definitions, so they never lag behind the flags.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::CommandFactory;
use clap_mangen::Man;

use sclip::atomic_write::{check_replaceable, write_atomically};

use crate::args::Cli;
use crate::messages::shown_path;
use crate::Failure;

pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode, Failure> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "sclip", &mut script);
    write_stdout(&script).context("cannot write the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// sclip's page, one command's (`sclip-segment(1)`, as the pages' SUBCOMMANDS sections name
/// them), or all of them written into `out_dir`.
pub fn man(command: Option<&str>, out_dir: Option<PathBuf>) -> Result<ExitCode, Failure> {
    let pages = pages();
    if let Some(dir) = out_dir {
        // create_dir_all would say only "File exists" of a file or a link that leads nowhere.
        if std::fs::symlink_metadata(&dir).is_ok() && !dir.is_dir() {
            return Err(Failure::Usage(anyhow!(
                "--out-dir {} exists and is not a folder (a file, or a link that leads to none); \
                 name a folder",
                shown_path(&dir)
            )));
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the folder {}", shown_path(&dir)))?;
        let mut written = String::new();
        for page in &pages {
            let path = dir.join(page.get_filename());
            check_replaceable(&path)?;
            write_atomically(&path, |out| Ok(out.write_all(&render(page))?))
                .with_context(|| format!("cannot write the man page {}", shown_path(&path)))?;
            written.push_str(&format!("{}\n", shown_path(&path)));
        }
        write_stdout(written.as_bytes()).context("cannot list the man pages written")?;
        return Ok(ExitCode::SUCCESS);
    }
    let file_name = match command {
        Some(command) => format!("sclip-{command}.1"),
        None => "sclip.1".to_string(),
    };
    let page = pages
        .iter()
        .find(|page| page.get_filename() == file_name)
        .ok_or_else(|| {
            let commands: Vec<String> = pages
                .iter()
                .filter_map(|page| {
                    page.get_filename()
                        .strip_prefix("sclip-")
                        .map(str::to_string)
                })
                .map(|name| name.trim_end_matches(".1").to_string())
                .collect();
            Failure::Usage(anyhow!(
                "sclip has no command {:?}; man pages exist for sclip itself and for {}",
                command.unwrap_or_default(),
                commands.join(", ")
            ))
        })?;
    write_stdout(&render(page)).context("cannot write the man page")?;
    Ok(ExitCode::SUCCESS)
}

/// sclip's page, then one per command (`help` excepted), each headed with sclip's version.
fn pages() -> Vec<Man> {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let source = format!("sclip {}", env!("CARGO_PKG_VERSION"));
    let subcommands: Vec<Man> = command
        .get_subcommands()
        .filter(|subcommand| !subcommand.is_hide_set())
        .map(|subcommand| Man::new(subcommand.clone()).source(source.clone()))
        .collect();
    let mut pages = vec![Man::new(command).source(source)];
    pages.extend(subcommands);
    pages
}

/// A page in roff. clap_mangen fills the after-help (the EXTRA section) like prose, which
/// reflows its aligned lists of limits, variables and exit statuses: it is kept as written.
fn render(page: &Man) -> Vec<u8> {
    let mut roff = Vec::new();
    page.render(&mut roff)
        .expect("rendering into memory cannot fail");
    let roff = String::from_utf8(roff).expect("clap_mangen writes UTF-8");
    let Some((before, extra)) = roff.split_once("\n.SH EXTRA\n") else {
        return roff.into_bytes();
    };
    let (extra, after) = match extra.find("\n.SH ") {
        Some(end) => extra.split_at(end + 1),
        None => (extra, ""),
    };
    format!("{before}\n.SH EXTRA\n.nf\n{extra}.fi\n{after}").into_bytes()
}

/// Writes `bytes` to stdout. A reader that stops early (`sclip man | head`) is not an error;
/// any other failure (a full disk behind `> file`) is, so that nothing is silently cut short.
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(error).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}
