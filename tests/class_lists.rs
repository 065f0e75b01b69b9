//! Class lists as users write them (files from any editor, long generated lists, slips) and the
//! text query cache they are encoded into: what sclip uses is exactly what was meant, or it
//! says why not.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use common::{fixture_model, fixtures, sclip};

fn image() -> PathBuf {
    fixtures().join("images/small_window.png")
}

/// `sclip segment` of the sample image into `out`, with `--json`, the cache in `cache`.
fn segment(cache: &Path, out: &Path, classes: &[&str]) -> Output {
    sclip()
        .env("SCLIP_CACHE_DIR", cache)
        .arg("segment")
        .arg(image())
        .arg("--model")
        .arg(fixture_model())
        .args(classes)
        .arg("--json")
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The run is refused as a usage error before any model is loaded (the model path does not
/// exist), with one line on stderr containing every `expected` part, and writes nothing.
fn assert_refused(classes: &[&str], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let output = sclip()
        .env("SCLIP_CACHE_DIR", dir.path().join("cache"))
        .arg("segment")
        .arg(image())
        .args(["--model", "/nonexistent/model"])
        .args(classes)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{classes:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for part in expected {
        assert!(stderr.contains(part), "{part:?} not in {stderr:?}");
    }
    assert!(!dir.path().join("out").exists(), "nothing written");
}

#[test]
fn a_byte_order_mark_in_a_class_file_is_not_part_of_the_first_name() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.txt");
    let marked = dir.path().join("marked.txt");
    std::fs::write(&plain, "sky\ntree\nperson\n").unwrap();
    std::fs::write(&marked, "\u{feff}sky\r\ntree\r\nperson\r\n").unwrap();
    let run = |file: &Path, out: &str| {
        let file = file.display().to_string();
        let output = segment(
            &dir.path().join("cache"),
            &dir.path().join(out),
            &["--classes-file", &file],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        json_lines(&output)[0]["classes"].clone()
    };
    let plain_classes = run(&plain, "plain");
    let marked_classes = run(&marked, "marked");
    assert_eq!(plain_classes, marked_classes);
    assert!(
        !marked_classes.to_string().contains('\u{feff}'),
        "{marked_classes}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("plain/small_window.png")).unwrap(),
        std::fs::read(dir.path().join("marked/small_window.png")).unwrap()
    );
}

#[test]
fn a_name_given_twice_is_refused_naming_it() {
    let twice = "\"person\" is named twice";
    assert_refused(&["--classes", "person,person"], &["bad --classes", twice]);
    assert_refused(&["--classes", "sky, person | human,person "], &[twice]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("classes.txt");
    std::fs::write(&file, "sky\nperson, human\n  person  # again\n").unwrap();
    let file = file.display().to_string();
    assert_refused(&["--classes-file", &file], &[&file, twice]);
}

#[test]
fn names_past_the_cap_are_refused_saying_the_cap_and_what_to_do() {
    let names: Vec<String> = (0..4000).map(|i| format!("thing {i}")).collect();
    let limit = ["4000 names", "limit of 1024 per run", "split the classes"];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("classes.txt");
    // One line: one class with 4000 synonyms, under the 256-class cap.
    std::fs::write(&file, names.join(", ")).unwrap();
    let file = file.display().to_string();
    assert_refused(&["--classes-file", &file], &limit);
    assert_refused(&["--classes", &names.join("|")], &limit);
}
