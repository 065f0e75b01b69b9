//! Tells the binary which commit it is built from, for `sclip --version`: `git rev-parse --short
//! HEAD`, with `-dirty` when tracked files differ from it, or `unknown` outside a git checkout.

use std::path::Path;
use std::process::Command;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let manifest_dir = Path::new(&manifest_dir);
    // What can make the tree dirty or clean again; git's own files are added by `git_commit`.
    for path in ["build.rs", "Cargo.toml", "Cargo.lock", "src", "assets"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = git_commit(manifest_dir).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SCLIP_COMMIT={commit}");
    println!(
        "cargo:rustc-env=SCLIP_TARGET={}",
        std::env::var("TARGET").expect("cargo sets TARGET")
    );
}

fn git_commit(dir: &Path) -> Option<String> {
    // A crates.io tarball unpacked inside some other checkout must not take that one's commit.
    if !dir.join(".git").exists() {
        return None;
    }
    let commit = git(dir, &["rev-parse", "--short", "HEAD"])?;
    let mut watched = vec![
        "HEAD".to_string(),
        "index".to_string(),
        "packed-refs".to_string(),
    ];
    watched.extend(git(dir, &["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        // Worktrees keep HEAD and the index apart from the refs: git knows where each one is.
        let path = git(dir, &["rev-parse", "--git-path", &name]).map(|path| dir.join(path));
        // Cargo reruns a build script on every build while a watched file is missing.
        if let Some(path) = path.filter(|path| path.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    // No index refresh written back: that would change the index and rerun this script.
    let changes = git(
        dir,
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )?;
    Some(if changes.is_empty() {
        commit
    } else {
        format!("{commit}-dirty")
    })
}

/// `git -C dir args`'s output, trimmed, if git ran and succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}
