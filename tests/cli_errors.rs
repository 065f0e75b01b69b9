//! Mistakes a user can make end in one line on stderr saying what is wrong, a non-zero exit,
//! and no output file.

mod common;

use std::path::Path;

use common::{fixture_model, fixtures, sclip};

/// Runs `sclip segment` with `args` (and RUST_BACKTRACE set) into a fresh out dir; returns the
/// exit code and stderr, after checking that nothing was written and no backtrace printed.
fn run_into_empty_out(args: &[&str]) -> (Option<i32>, String) {
    let out = tempfile::tempdir().unwrap();
    let output = sclip()
        .env("RUST_BACKTRACE", "1")
        .arg("segment")
        .args(args)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("backtrace"), "{stderr}");
    let written: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(written.is_empty(), "{args:?} wrote {written:?}");
    (output.status.code(), stderr)
}

/// The run fails before any image with one line on stderr containing `expected`.
fn assert_refused(args: &[&str], expected: &str) {
    let (code, stderr) = run_into_empty_out(args);
    assert!(code.is_some_and(|code| code != 0), "{args:?} should fail");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in {stderr:?}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line, got {stderr:?}"
    );
}

fn sample_image() -> String {
    fixtures()
        .join("images/astronaut.jpg")
        .display()
        .to_string()
}

fn model() -> String {
    fixture_model().display().to_string()
}

/// An image that cannot be segmented is one failure of the batch: its error line names it, the
/// summary counts it, the exit status is 1, and nothing is written.
fn assert_image_fails(args: &[&str], expected: &str) {
    let (code, stderr) = run_into_empty_out(args);
    assert_eq!(code, Some(1), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(lines.len(), 2, "an error and the summary, got {stderr:?}");
    assert!(
        lines[0].starts_with("sclip: error: ") && lines[0].contains(expected),
        "{stderr}"
    );
    assert!(lines[1].contains("0 ok, 0 skipped, 1 failed"), "{stderr}");
}

#[test]
fn unreadable_image() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("notes.jpg");
    std::fs::write(&fake, b"this is not a JPEG").unwrap();
    assert_image_fails(
        &[
            fake.to_str().unwrap(),
            "--model",
            &model(),
            "--classes",
            "a,b",
        ],
        "notes.jpg",
    );
}

#[test]
fn missing_image() {
    assert_image_fails(
        &["no/such/photo.jpg", "--model", &model(), "--classes", "a,b"],
        "no/such/photo.jpg",
    );
}

#[test]
fn empty_class_list() {
    assert_refused(
        &[&sample_image(), "--model", &model(), "--classes", ""],
        "class list is empty",
    );
    assert_refused(
        &[
            &sample_image(),
            "--model",
            &model(),
            "--classes",
            "dog,,cat",
        ],
        "empty class name",
    );
}

#[test]
fn a_stride_longer_than_the_window() {
    assert_sample_refused(
        &model(),
        &["--stride", "300"],
        "--stride 300 must be between 1 and --window 224",
    );
}

#[test]
fn missing_model_directory() {
    assert_refused(
        &[
            &sample_image(),
            "--model",
            "./no-such-model",
            "--classes",
            "a,b",
        ],
        "./no-such-model: no such folder",
    );
}

/// Segmenting the sample into classes "a,b" with `model` and `extra` options fails, saying `expected`.
fn assert_sample_refused(model: &str, extra: &[&str], expected: &str) {
    let mut args = vec![
        sample_image(),
        "--model".into(),
        model.into(),
        "--classes".into(),
        "a,b".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    assert_refused(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        expected,
    );
}

fn assert_model_refused(dir: &Path, expected: &str) {
    assert_sample_refused(dir.to_str().unwrap(), &[], expected);
}

/// A copy of the fixture model with one file replaced.
fn model_with(file: &str, contents: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_model()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(dir.path().join(file), contents).unwrap();
    dir
}

fn edited_config(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let text = std::fs::read_to_string(fixture_model().join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut config);
    config.to_string()
}

#[test]
fn weights_of_the_wrong_shape_name_the_tensor() {
    let config = edited_config(|c| {
        let mlp = c["vision_config"]["intermediate_size"].as_u64().unwrap();
        c["vision_config"]["intermediate_size"] = (mlp * 2).into();
    });
    let dir = model_with("config.json", &config);
    assert_model_refused(dir.path(), "vision_model.encoder.layers.0.mlp.fc1.weight");
}

#[test]
fn a_config_that_is_not_clip() {
    let dir = model_with(
        "config.json",
        r#"{"model_type": "bert", "hidden_size": 768}"#,
    );
    assert_model_refused(dir.path(), "not \"clip\"");
}

#[test]
fn a_model_folder_without_weights() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture_model().join(file), dir.path().join(file)).unwrap();
    }
    assert_model_refused(dir.path(), "has no model.safetensors or pytorch_model.bin");
}

#[test]
fn cuda_without_the_cuda_build() {
    if cfg!(feature = "cuda") {
        return;
    }
    assert_sample_refused(
        &model(),
        &["--device", "cuda"],
        "built without CUDA support",
    );
}

#[test]
fn a_png_mask_never_overwrites_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("photo.png");
    std::fs::copy(fixtures().join("images/chelsea_grey.png"), &image).unwrap();
    let before = std::fs::read(&image).unwrap();
    let output = sclip()
        .args([
            "segment",
            image.to_str().unwrap(),
            "--model",
            &model(),
            "--classes",
            "cat,wall",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--out"));
    assert_eq!(std::fs::read(&image).unwrap(), before);
}

#[test]
fn help_documents_every_option() {
    let output = sclip().args(["segment", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--classes",
        "--classes-file",
        "--model",
        "--revision",
        "--out",
        "--save-probs",
        "--logit-scale",
        "--prob-thd",
        "--area-thd",
        "--short-side",
        "--window",
        "--stride",
        "--batch-size",
        "--device",
        "--dtype",
        "--recursive",
        "--files-from",
        "--null",
        "--shard",
        "--preset",
        "--overlay",
        "--alpha",
        "--skip-existing",
        "--fail-fast",
        "--max-pixels",
        "--json",
        "--quiet",
        "--no-cache",
        "--method",
        "--csa-proj",
    ] {
        assert!(help.contains(option), "--help lacks {option}");
    }
    for documented in [
        "SCLIP_CACHE_DIR",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HF_TOKEN_PATH",
        "HF_HUB_ETAG_TIMEOUT",
        "HF_HUB_DOWNLOAD_TIMEOUT",
        "1024 names",
        "128+N",
    ] {
        assert!(help.contains(documented), "--help lacks {documented}");
    }
    assert!(Path::new(&sample_image()).exists());
}

/// Settings that cannot work are usage errors (exit 2) told before any image is read, whatever
/// depends on the model included: the patch size comes from its config, before its weights.
#[test]
fn impossible_settings_are_usage_errors_found_up_front() {
    for (extra, expected) in [
        (
            &["--window", "8", "--stride", "8"][..],
            "--window 8 is smaller than the model's 16-pixel patch",
        ),
        (
            &["--short-side", "1"][..],
            "--short-side 1 is smaller than the model's 16-pixel patch",
        ),
        (
            &["--prob-thd", "1.5"][..],
            "--prob-thd must be between 0 and 1",
        ),
        (
            &["--prob-thd", "NaN"][..],
            "--prob-thd must be between 0 and 1",
        ),
        (
            &["--logit-scale", "0"][..],
            "--logit-scale must be positive",
        ),
        (&["--logit-scale=-40"][..], "--logit-scale must be positive"),
        (
            &["--logit-scale", "inf"][..],
            "--logit-scale must be a finite number",
        ),
    ] {
        let mut args = vec![sample_image(), "--model".into(), model()];
        args.extend(["--classes".into(), "a,b".into()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&args, expected);
        let (code, _) = run_into_empty_out(&args);
        assert_eq!(code, Some(2), "{extra:?} is a usage error");
    }
}

#[test]
fn an_out_that_is_a_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("masks");
    std::fs::write(&file, b"not a folder").unwrap();
    for out in [file.clone(), file.join("sub")] {
        let output = sclip()
            .args(["segment", &sample_image(), "--model", &model()])
            .args(["--classes", "a,b", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("exists and is not a folder") && stderr.trim_end().lines().count() == 1,
            "{stderr}"
        );
        assert!(!stderr.contains("ok,"), "no image was started: {stderr}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
}

#[test]
fn a_csa_projection_with_another_method_is_a_usage_error() {
    let (code, stderr) = run_into_empty_out(&[
        &sample_image(),
        "--model",
        &model(),
        "--classes",
        "a,b",
        "--method",
        "clip",
        "--csa-proj",
        "q",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--csa-proj changes SCLIP's attention only"),
        "{stderr}"
    );
}

#[test]
fn pamr_settings_that_cannot_work_are_usage_errors() {
    for (extra, expected) in [
        (
            &["--pamr-dilations", "4"][..],
            "--pamr-dilations needs PAMR on",
        ),
        (
            &["--pamr", "5000"][..],
            "--pamr 5000 is over the limit of 1000",
        ),
        (
            &["--pamr", "2", "--pamr-dilations", "8,0"][..],
            "--pamr-dilations must be positive",
        ),
        (
            &["--pamr", "2", "--pamr-dilations", "8,100000"][..],
            "--pamr-dilations 100000 is over the limit of 65536",
        ),
    ] {
        let mut args = vec![
            sample_image(),
            "--model".to_string(),
            model(),
            "--classes".to_string(),
            "a,b".to_string(),
        ];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = run_into_empty_out(&args);
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(expected) && stderr.trim_end().lines().count() == 1,
            "{extra:?}: {stderr}"
        );
    }
}
