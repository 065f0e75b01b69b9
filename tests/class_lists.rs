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
    assert_refused(
        &["--classes", "Sky,tree,sky"],
        &["\"Sky\" and \"sky\" are one name to CLIP"],
    );
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

/// The cache file of the run's class list (the only file in `cache`).
fn cache_file(cache: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

#[test]
fn a_damaged_cache_file_is_a_miss_with_a_warning_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let classes = ["--classes", "sky,tree|bush,person"];
    let run = |out: &str| {
        let output = segment(&cache, &dir.path().join(out), &classes);
        assert!(output.status.success(), "{}", stderr(&output));
        let lines = json_lines(&output);
        let text = lines.last().unwrap()["text"]["cache"].clone();
        let mask = std::fs::read(dir.path().join(out).join("small_window.png")).unwrap();
        (text, mask, stderr(&output))
    };
    let (first, mask, _) = run("first");
    assert_eq!(first, "miss");
    let file = cache_file(&cache);
    let good = std::fs::read(&file).unwrap();

    // Same length, the payload garbled: every value doubled (finite, but no longer the
    // queries), then every value NaN.
    let header = good.len() - 4 * 4 * 32;
    let garbles: [fn(f32) -> f32; 2] = [|value| value * 2.0, |_| f32::NAN];
    for (round, garble) in garbles.into_iter().enumerate() {
        let mut bad = good[..header].to_vec();
        for value in good[header..].chunks_exact(4) {
            let value = f32::from_le_bytes(value.try_into().unwrap());
            bad.extend(garble(value).to_le_bytes());
        }
        std::fs::write(&file, &bad).unwrap();
        let (cache_use, again, warning) = run(&format!("damaged{round}"));
        assert_eq!(cache_use, "miss", "a damaged file is never a hit");
        assert_eq!(again, mask, "the mask is the one fresh queries give");
        assert!(
            warning.contains("damaged query cache file")
                && warning.contains(&*file.to_string_lossy()),
            "{warning}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), good, "the file is replaced");
    }
    let (last, again, warning) = run("last");
    assert_eq!(last, "hit");
    assert_eq!(again, mask);
    assert!(!warning.contains("warning"), "{warning}");
}

/// A "class file" that never ends is refused once it is longer than any list can be, and a class
/// file that is a pipe (`--classes-file <(command)`) is read as a file is.
#[cfg(unix)]
#[test]
fn class_files_are_read_with_a_bound_and_pipes_work() {
    let dir = tempfile::tempdir().unwrap();
    let output = segment(
        dir.path(),
        &dir.path().join("out"),
        &["--classes-file", "/dev/zero"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/dev/zero: it is longer than 16 MiB"),
        "{stderr}"
    );

    let output = sclip()
        .arg("segment")
        .arg(image())
        .arg("--model")
        .arg(fixture_model())
        .args(["--classes-file", "/dev/stdin", "--no-cache", "--out"])
        .arg(dir.path().join("piped"))
        .write_stdin("\u{feff}sky\nperson\n")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}
