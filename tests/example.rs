//! `examples/segment.rs`, the library's in-memory path, writes the mask `sclip segment` writes.

mod common;

use std::path::PathBuf;

use common::{fixture_model, fixtures, sclip};

/// `cargo test` builds the examples beside the binaries it tests.
fn example_binary() -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_sclip"))
        .with_file_name("examples")
        .join("segment");
    assert!(
        binary.is_file(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        binary.display()
    );
    binary
}

#[test]
fn the_example_writes_the_mask_sclip_segment_writes() {
    let classes = "person,sky|space,wall";
    // One window, and 18 windows in three forward passes.
    for image in ["astronaut.jpg", "panorama.png"] {
        let image = fixtures().join("images").join(image);
        let out = tempfile::tempdir().unwrap();
        let from_example = out.path().join("example.png");
        let output = std::process::Command::new(example_binary())
            .arg(fixture_model())
            .arg(&image)
            .arg(classes)
            .arg(&from_example)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(stdout.lines().count() >= 1, "it names the classes found");

        let cli_out = out.path().join("cli");
        let output = sclip()
            .arg("segment")
            .arg(&image)
            .args(["--model", fixture_model().to_str().unwrap()])
            .args(["--classes", classes, "--out"])
            .arg(&cli_out)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let stem = image.file_stem().unwrap().to_str().unwrap();
        let from_cli = std::fs::read(cli_out.join(format!("{stem}.png"))).unwrap();
        assert!(
            std::fs::read(&from_example).unwrap() == from_cli,
            "{stem}: the example's mask differs from sclip segment's"
        );
    }
}

#[test]
fn the_example_refuses_bad_arguments_in_one_line() {
    let output = std::process::Command::new(example_binary())
        .arg(fixture_model())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("usage: segment MODEL_DIR"), "{stderr}");
}
