//! What tells a user about sclip without reading its source: completions, man pages, `--version`,
//! the environment in `--help`, `-v`'s account of the model, `sclip download`, and the header of
//! `sclip presets NAME`.

mod common;

use std::path::Path;
use std::process::Output;

use common::sclip;

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeded(output: Output) -> Output {
    assert!(output.status.success(), "{}", stderr(&output));
    output
}

#[test]
fn the_version_says_the_commit_features_and_this_machines_kernels() {
    let version = env!("CARGO_PKG_VERSION");
    let short = stdout(&succeeded(sclip().arg("-V").output().unwrap()));
    assert!(
        short.starts_with(&format!("sclip {version} (commit ")),
        "{short}"
    );
    assert_eq!(short.lines().count(), 1, "{short}");

    let long = stdout(&succeeded(sclip().arg("--version").output().unwrap()));
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines[0], format!("sclip {version}"), "{long}");
    let commit = lines[1].strip_prefix("commit: ").expect(&long);
    let head = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| stdout(&output).trim().to_string());
    let in_checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists();
    match head.filter(|_| in_checkout) {
        Some(head) => {
            let short_hash = commit.split(',').next().unwrap();
            assert!(short_hash.len() >= 7, "{long}");
            assert!(head.starts_with(short_hash), "{head} vs {long}");
            assert!(short.contains(short_hash), "{short}");
        }
        None => assert!(commit.starts_with("unknown"), "{long}"),
    }
    assert!(lines[2].starts_with("target: "), "{long}");
    let features = if cfg!(feature = "cuda") {
        "features: cuda"
    } else {
        "features: none"
    };
    assert!(lines[3].starts_with(features), "{long}");
    let kernels = sclip::cpu_kernels();
    let vector = kernels.vector;
    let amx = if kernels.amx_bf16 { "yes" } else { "no" };
    assert_eq!(
        lines[4].split(" (").next().unwrap(),
        format!("CPU kernels on this machine: {vector}; AMX-BF16: {amx}"),
        "{long}"
    );
}

/// The section of `help` from `Environment:` to the next blank line.
fn environment_section(help: &str) -> &str {
    let start = help.find("\nEnvironment:\n").expect(help);
    let section = &help[start + 1..];
    &section[..section.find("\n\n").unwrap_or(section.len())]
}

#[test]
fn help_lists_every_environment_variable_sclip_reads() {
    let hub = [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_ETAG_TIMEOUT",
        "HF_HUB_DOWNLOAD_TIMEOUT",
        "HTTPS_PROXY",
        "NO_PROXY",
    ];
    let local = [
        "SCLIP_CACHE_DIR",
        "XDG_CACHE_HOME",
        "RAYON_NUM_THREADS",
        "NO_COLOR",
    ];
    let help = stdout(&succeeded(
        sclip().args(["segment", "--help"]).output().unwrap(),
    ));
    let section = environment_section(&help);
    for variable in hub.iter().chain(&local) {
        assert!(
            section.contains(variable),
            "{variable} missing from {section}"
        );
    }
    assert!(help.contains("\nExit status:\n"), "{help}");
}
