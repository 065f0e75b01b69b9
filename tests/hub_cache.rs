//! `--model org/name` resolves through a Hugging Face cache laid out as the hub lays it out
//! (blobs, snapshots/<commit>, refs/main), with HF_HUB_OFFLINE=1 as on a machine without network.

mod common;

use std::path::{Path, PathBuf};

use common::{fixtures, sclip};

const REPO: &str = "sclip-tests/tiny-clip";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Lays out `<home>/hub/models--sclip-tests--tiny-clip` with `files` from `source`, as symlinks
/// from the snapshot into content-addressed blobs, the way the hub's clients store downloads.
fn lay_out_cache(home: &Path, source: &Path, files: &[&str]) -> PathBuf {
    let repo = home
        .join("hub")
        .join(format!("models--{}", REPO.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for (index, file) in files.iter().enumerate() {
        let blob = repo.join("blobs").join(format!("{index:040x}"));
        std::fs::copy(source.join(file), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snapshot.join(file)).unwrap();
    }
    repo
}

fn segment_by_repo_id(home: &Path, out: &Path) -> std::process::Output {
    sclip()
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .args([
            "segment",
            fixtures().join("images/astronaut.jpg").to_str().unwrap(),
        ])
        .args(["--model", REPO, "--classes", "person,sky,wall", "--out"])
        .arg(out)
        .output()
        .unwrap()
}

fn local_mask(model: &Path, out: &Path) -> Vec<u8> {
    let output = sclip()
        .args([
            "segment",
            fixtures().join("images/astronaut.jpg").to_str().unwrap(),
        ])
        .args([
            "--model",
            model.to_str().unwrap(),
            "--classes",
            "person,sky,wall",
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(out.join("astronaut.png")).unwrap()
}

/// The run succeeded, and the mask it wrote into `out` equals the local safetensors fixture's.
fn assert_run_gives_the_local_mask(output: &std::process::Output, out: &Path) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reference = tempfile::tempdir().unwrap();
    assert_eq!(
        std::fs::read(out.join("astronaut.png")).unwrap(),
        local_mask(&fixtures().join("model"), reference.path())
    );
}

/// Caches `files` of the fixture folder `source` as a hub repo, loads it by id, and checks the
/// mask equals the one the local safetensors fixture gives.
fn assert_cached_repo_gives_the_local_mask(source: &str, files: &[&str]) {
    let home = tempfile::tempdir().unwrap();
    lay_out_cache(home.path(), &fixtures().join(source), files);
    let out = tempfile::tempdir().unwrap();
    let output = segment_by_repo_id(home.path(), out.path());
    assert_run_gives_the_local_mask(&output, out.path());
}

#[test]
fn a_cached_repo_loads_offline_by_its_id() {
    assert_cached_repo_gives_the_local_mask(
        "model",
        &["config.json", "tokenizer.json", "model.safetensors"],
    );
}

/// The .bin and .safetensors fixtures hold the same weights.
#[test]
fn a_revision_with_only_pytorch_weights_falls_back_to_them() {
    assert_cached_repo_gives_the_local_mask(
        "model-bin",
        &["config.json", "tokenizer.json", "pytorch_model.bin"],
    );
}

#[test]
fn hf_hub_cache_overrides_hf_home() {
    let cache_home = tempfile::tempdir().unwrap();
    lay_out_cache(
        cache_home.path(),
        &fixtures().join("model"),
        &["config.json", "tokenizer.json", "model.safetensors"],
    );
    let out = tempfile::tempdir().unwrap();
    let empty_home = tempfile::tempdir().unwrap();
    let output = sclip()
        .env("HF_HOME", empty_home.path())
        .env("HF_HUB_CACHE", cache_home.path().join("hub"))
        .args([
            "segment",
            fixtures().join("images/astronaut.jpg").to_str().unwrap(),
        ])
        .args(["--model", REPO, "--classes", "person,sky", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn offline_and_not_cached_says_where_it_looked_and_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = segment_by_repo_id(home.path(), out.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
    assert!(
        stderr.contains(home.path().join("hub").to_str().unwrap()),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

/// Python's `hf_hub_download(revision=<commit>)` writes the snapshot and no ref: the commit
/// names the snapshot folder directly.
#[test]
fn a_revision_given_as_a_commit_finds_its_snapshot_offline() {
    let home = tempfile::tempdir().unwrap();
    let repo = lay_out_cache(
        home.path(),
        &fixtures().join("model"),
        &["config.json", "tokenizer.json", "model.safetensors"],
    );
    std::fs::remove_dir_all(repo.join("refs")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = sclip()
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_CACHE")
        .args([
            "segment",
            fixtures().join("images/astronaut.jpg").to_str().unwrap(),
        ])
        .args(["--model", REPO, "--revision", COMMIT])
        .args(["--classes", "person,sky,wall", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert_run_gives_the_local_mask(&output, out.path());
}
