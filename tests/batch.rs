//! Folders through `sclip segment` the way scripts and schedulers use it: walking, lists on
//! stdin, shards, resuming, bad files in the batch, JSON, overlays and the text query cache.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{
    copy_fixture, fixture_image, fixture_model, json_lines, read_label_png, sclip, sclip_process,
    segment, summary,
};

/// Every file under `dir`, relative to it, as `/`-separated strings.
fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap();
                found.insert(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    found
}

fn image_paths(lines: &[Value], status: &str) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|line| line["type"] == "image" && line["status"] == status)
        .map(|line| line["path"].as_str().unwrap().to_string())
        .collect()
}

fn assert_complete_mask(path: &Path) {
    let (width, height, labels) = read_label_png(path);
    assert_eq!(labels.len(), width * height, "{}", path.display());
    assert!(labels.iter().all(|&label| label < 3), "{}", path.display());
}

/// A folder of photos: nested folders, a PNG with a misleading extension, a text file, a
/// hidden file.
fn photo_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_fixture("astronaut.jpg", &photos.join("top.jpg"));
    copy_fixture("small_window.png", &photos.join("trip/day1/beach.png"));
    copy_fixture("chelsea_grey.png", &photos.join("trip/cat.data"));
    copy_fixture("coffee.png", &photos.join(".hidden.png"));
    std::fs::write(photos.join("trip/notes.txt"), b"not an image at all").unwrap();
    dir
}

#[test]
fn folders_are_walked_and_mirrored_under_out() {
    let dir = photo_tree();
    let out = dir.path().join("masks");
    let output = segment()
        .arg(dir.path().join("photos"))
        .arg("-r")
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let expected: BTreeSet<String> = ["top.png", "trip/day1/beach.png", "trip/cat.png"]
        .map(String::from)
        .into();
    assert_eq!(files_under(&out), expected);
    for mask in &expected {
        assert_complete_mask(&out.join(mask));
    }
    let (width, height, _) = read_label_png(&out.join("trip/day1/beach.png"));
    assert_eq!((width, height), (96, 72), "masks keep the image's size");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("3 ok, 0 skipped, 0 failed"), "{stderr}");

    // Without -r only the folder's own files, and a hint about the rest.
    let shallow = dir.path().join("shallow");
    let output = segment()
        .arg(dir.path().join("photos"))
        .arg("--out")
        .arg(&shallow)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        files_under(&shallow),
        BTreeSet::from(["top.png".to_string()])
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("pass -r"));
}

#[test]
fn a_folder_needs_out_and_other_usage_errors_exit_2() {
    let dir = photo_tree();
    let photos = dir.path().join("photos");
    let cases: [(&[&str], &str); 4] = [
        (&[], "folders need --out"),
        (&["--out", "x", "--shard", "0/3"], "--shard"),
        (&["--out", "x", "--alpha", "1.5"], "--alpha"),
        (&["--out", "x", "--preset", "voc22"], "unknown preset"),
    ];
    for (extra, expected) in cases {
        let output = segment().arg(&photos).args(extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    assert!(!photos.join("top.png").exists());
}

#[test]
fn paths_come_from_stdin_one_a_line_or_nul_separated() {
    let dir = photo_tree();
    let photos = dir.path().join("photos");
    let list = format!(
        "{}\n{}\n",
        photos.join("top.jpg").display(),
        photos.join("trip/day1/beach.png").display()
    );
    let out = dir.path().join("listed");
    let output = segment()
        .args(["--files-from", "-", "--json", "--out"])
        .arg(&out)
        .write_stdin(list.clone())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines = json_lines(&output);
    assert_eq!(summary(&lines)["ok"], 2);
    // Listed paths are mirrored whole (less their root), so they can never collide or escape.
    let inside = |name: &str| {
        photos
            .join(name)
            .strip_prefix("/")
            .unwrap()
            .with_extension("png")
            .to_string_lossy()
            .into_owned()
    };
    let expected = BTreeSet::from([inside("top.jpg"), inside("trip/day1/beach.png")]);
    assert_eq!(files_under(&out), expected);

    let out = dir.path().join("nul");
    let output = segment()
        .args(["--files-from", "-", "-0", "--out"])
        .arg(&out)
        .write_stdin(list.replace('\n', "\0"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(files_under(&out), expected);
}

#[test]
fn shards_partition_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    for i in 0..12 {
        copy_fixture("small_window.png", &photos.join(format!("img{i:02}.png")));
    }
    let mut seen: Vec<BTreeSet<String>> = Vec::new();
    for k in 1..=3 {
        let output = segment()
            .arg(&photos)
            .args(["--json", "--shard", &format!("{k}/3"), "--out"])
            .arg(dir.path().join("masks"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        seen.push(image_paths(&json_lines(&output), "ok"));
    }
    let union: BTreeSet<String> = seen.iter().flatten().cloned().collect();
    assert_eq!(union.len(), 12, "every image in some shard");
    assert_eq!(
        seen.iter().map(BTreeSet::len).sum::<usize>(),
        12,
        "no image in two shards"
    );
    assert_eq!(files_under(&dir.path().join("masks")).len(), 12);
}

/// Copies of one image, enough that a run takes a while.
fn many_photos(dir: &Path, count: usize) -> PathBuf {
    let photos = dir.join("photos");
    for i in 0..count {
        copy_fixture("astronaut.jpg", &photos.join(format!("img{i:03}.jpg")));
    }
    photos
}

/// Starts a run, waits for its first mask, then sends `signal`; returns the exit status and
/// what the run printed on stderr.
fn interrupt_mid_run(
    photos: &Path,
    out: &Path,
    signal: &str,
) -> (std::process::ExitStatus, String) {
    let child = sclip_process()
        .arg("segment")
        .arg(photos)
        .arg("--model")
        .arg(fixture_model())
        .args([
            "--classes",
            "person,sky|space,wall",
            "--batch-size",
            "1",
            "--overlay",
        ])
        // Large enough (35 windows an image) that the run is still going when the signal lands.
        .args(["--short-side", "672"])
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.join("img000.overlay.jpg").exists() {
        assert!(Instant::now() < deadline, "no output within two minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Visible outputs are complete masks and overlays; a killed run may leave only hidden
/// temporary files (`.name.random.tmp`) besides them.
fn assert_no_partial_outputs(out: &Path) -> usize {
    let mut masks = 0;
    for name in files_under(out) {
        if name.starts_with('.') {
            assert!(name.ends_with(".tmp"), "{name}");
        } else if name.ends_with(".overlay.jpg") {
            image::open(out.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            assert_complete_mask(&out.join(&name));
            masks += 1;
        }
    }
    masks
}

#[test]
#[cfg(unix)]
fn a_killed_run_resumes_with_skip_existing() {
    let dir = tempfile::tempdir().unwrap();
    let photos = many_photos(dir.path(), 40);
    let out = dir.path().join("masks");
    let (status, _) = interrupt_mid_run(&photos, &out, "-KILL");
    assert!(!status.success(), "the run was killed before finishing");
    let done_before = assert_no_partial_outputs(&out);
    assert!((1..40).contains(&done_before), "{done_before} masks");

    let output = segment()
        .arg(&photos)
        .args(["--skip-existing", "--overlay", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines = json_lines(&output);
    let totals = summary(&lines);
    // An image whose mask was written but whose overlay was not is redone.
    let skipped = totals["skipped"].as_u64().unwrap() as usize;
    assert!(
        skipped == done_before || skipped + 1 == done_before,
        "{totals}"
    );
    assert_eq!(totals["ok"].as_u64().unwrap() as usize + skipped, 40);
    assert_eq!(assert_no_partial_outputs(&out), 40);
}

/// Ctrl-C, and SIGTERM and SIGHUP as Slurm, Kubernetes and `timeout` send them, let the writes in
/// flight finish, print the summary and exit with 128 + the signal's number.
#[test]
#[cfg(unix)]
fn signals_stop_cleanly_with_a_summary_and_status_128_plus_the_signal() {
    for (signal, name, code) in [
        ("-INT", "SIGINT", 130),
        ("-TERM", "SIGTERM", 143),
        ("-HUP", "SIGHUP", 129),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let photos = many_photos(dir.path(), 40);
        let out = dir.path().join("masks");
        let (status, stderr) = interrupt_mid_run(&photos, &out, signal);
        assert_eq!(status.code(), Some(code), "{signal}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {name}")),
            "{stderr}"
        );
        assert!(stderr.contains("; interrupted, "), "the summary: {stderr}");
        let done = assert_no_partial_outputs(&out);
        assert!((1..40).contains(&done), "{done} masks");
        let temporaries = files_under(&out)
            .into_iter()
            .filter(|name| name.starts_with('.'))
            .count();
        assert_eq!(
            temporaries, 0,
            "{signal} lets every write finish or clean up"
        );
    }
}

#[test]
fn bad_files_fail_alone_and_the_batch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.png");
    copy_fixture("small_window.png", &good);
    let truncated = dir.path().join("truncated.jpg");
    let jpeg = std::fs::read(fixture_image("astronaut.jpg")).unwrap();
    std::fs::write(&truncated, &jpeg[..jpeg.len() / 2]).unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.path().join("text.jpg");
    std::fs::write(&text, b"hello").unwrap();
    let huge = dir.path().join("huge.png");
    copy_fixture("coffee.png", &huge);
    let missing = dir.path().join("missing.png");
    let out = dir.path().join("masks");
    let output = segment()
        .args([&good, &truncated, &empty, &text, &huge, &missing])
        .args(["--json", "--max-pixels", "10000", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines = json_lines(&output);
    let totals = summary(&lines);
    assert_eq!(
        (&totals["ok"], &totals["failed"], &totals["skipped"]),
        (&1.into(), &5.into(), &0.into()),
        "{totals}"
    );
    assert_eq!(files_under(&out), BTreeSet::from(["good.png".to_string()]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for (path, cause) in [
        (&truncated, "truncated"),
        (&empty, "empty"),
        (&text, "not an image"),
        (&huge, "--max-pixels"),
        (&missing, "no such file"),
    ] {
        let name = path.file_name().unwrap().to_string_lossy();
        let line = stderr
            .lines()
            .find(|line| line.contains(&*name))
            .unwrap_or_else(|| panic!("no error for {name}: {stderr}"));
        assert!(line.to_lowercase().contains(cause), "{line}");
    }

    let output = segment()
        .args([&truncated, &good])
        .args(["--fail-fast", "--json", "--out"])
        .arg(dir.path().join("fast"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let lines = json_lines(&output);
    assert_eq!(summary(&lines)["failed"], 1);
    assert!(!dir.path().join("fast/good.png").exists(), "stopped first");
}

#[test]
fn an_output_that_cannot_be_written_fails_that_image_only() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_fixture("small_window.png", &photos.join("blocked/a.png"));
    copy_fixture("small_window.png", &photos.join("free/b.png"));
    let out = dir.path().join("masks");
    std::fs::create_dir_all(&out).unwrap();
    // A file where the mirrored folder would go.
    std::fs::write(out.join("blocked"), b"in the way").unwrap();
    let output = segment()
        .arg(&photos)
        .args(["-r", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot create output folder"), "{stderr}");
    assert!(stderr.contains("1 ok, 0 skipped, 1 failed"), "{stderr}");
    assert_complete_mask(&out.join("free/b.png"));
}

#[test]
fn json_reports_every_image_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = segment()
        .arg(fixture_image("astronaut.jpg"))
        .arg(fixture_image("small_window.png"))
        .args(["--json", "--save-probs", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 3);
    let image = &lines[0];
    assert_eq!(image["type"], "image");
    assert_eq!(image["status"], "ok");
    assert!(image["path"].as_str().unwrap().ends_with("astronaut.jpg"));
    assert_eq!(
        (&image["width"], &image["height"]),
        (&128.into(), &96.into())
    );
    assert!(image["seconds"].as_f64().unwrap() > 0.0);
    let mask = image["outputs"]["mask"].as_str().unwrap();
    assert_complete_mask(Path::new(mask));
    assert!(Path::new(image["outputs"]["probs"].as_str().unwrap()).exists());
    let fractions: f64 = image["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|class| class["fraction"].as_f64().unwrap())
        .sum();
    assert!((fractions - 1.0).abs() < 1e-9, "{fractions}");
    let summary = summary(&lines);
    assert_eq!(
        (&summary["ok"], &summary["failed"], &summary["skipped"]),
        (&2.into(), &0.into(), &0.into())
    );
    assert!(summary["images_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn overlays_blend_the_photo_and_add_a_legend() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    for (format, name) in [
        (None, "astronaut.overlay.jpg"),
        (Some("png"), "astronaut.overlay.png"),
    ] {
        let mut cmd = segment();
        cmd.arg(fixture_image("astronaut.jpg"))
            .arg("--out")
            .arg(&out);
        match format {
            Some(format) => cmd.args(["--overlay", format]),
            None => cmd.arg("--overlay"),
        };
        let output = cmd.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let overlay = image::open(out.join(name)).unwrap().into_rgb8();
        assert_eq!(overlay.width(), 128);
        assert!(overlay.height() > 96, "a legend strip below the photo");
    }
}

#[test]
fn the_second_run_reads_the_text_queries_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = |out: &str| {
        let output = segment()
            .env("SCLIP_CACHE_DIR", &cache)
            .arg(fixture_image("small_window.png"))
            .args(["--json", "--out"])
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        summary(&json_lines(&output))["text"].clone()
    };
    assert_eq!(run("first")["cache"], "miss");
    assert_eq!(run("second")["cache"], "hit");
    assert_eq!(
        std::fs::read(dir.path().join("first/small_window.png")).unwrap(),
        std::fs::read(dir.path().join("second/small_window.png")).unwrap(),
        "cached queries give the same mask"
    );
    let output = segment()
        .env("SCLIP_CACHE_DIR", &cache)
        .arg(fixture_image("small_window.png"))
        .args(["--json", "--no-cache", "--out"])
        .arg(dir.path().join("third"))
        .output()
        .unwrap();
    assert_eq!(summary(&json_lines(&output))["text"]["cache"], "off");
}

#[test]
fn two_processes_share_an_out_folder_safely() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    for i in 0..6 {
        copy_fixture("small_window.png", &photos.join(format!("img{i}.png")));
    }
    let out = dir.path().join("masks");
    let start = || {
        sclip_process()
            .env("SCLIP_CACHE_DIR", dir.path().join("cache"))
            .arg("segment")
            .arg(&photos)
            .arg("--model")
            .arg(fixture_model())
            .args(["--classes", "person,sky|space,wall", "--quiet", "--out"])
            .arg(&out)
            .spawn()
            .unwrap()
    };
    let (mut first, mut second) = (start(), start());
    assert!(first.wait().unwrap().success());
    assert!(second.wait().unwrap().success());
    assert_eq!(files_under(&out).len(), 6);
    assert_eq!(assert_no_partial_outputs(&out), 6);
}

#[test]
#[cfg(unix)]
fn file_names_need_not_be_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
    copy_fixture("small_window.png", &photos.join(name));
    let out = dir.path().join("masks");
    let output = segment()
        .arg(&photos)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_complete_mask(&out.join(name));
}

#[test]
fn presets_are_listed_printed_and_used() {
    let output = sclip().arg("presets").output().unwrap();
    assert!(output.status.success());
    let listing = String::from_utf8_lossy(&output.stdout);
    for name in [
        "voc21",
        "voc20",
        "context60",
        "context59",
        "coco_object",
        "coco_stuff164k",
        "coco_stuff10k",
        "cityscapes",
        "ade20k",
    ] {
        assert!(listing.contains(name), "{name} missing from {listing}");
    }
    let output = sclip().args(["presets", "cityscapes"]).output().unwrap();
    let class_file = String::from_utf8(output.stdout).unwrap();
    let classes = class_file
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .count();
    assert_eq!(classes, 19);

    // A user's edited copy of the preset's file, with its settings.
    let dir = tempfile::tempdir().unwrap();
    let edited = dir.path().join("classes.txt");
    std::fs::write(&edited, class_file.replace("road", "street")).unwrap();
    let output = sclip()
        .arg("segment")
        .arg(fixture_image("small_window.png"))
        .arg("--model")
        .arg(fixture_model())
        .args(["--preset", "cityscapes", "--classes-file"])
        .arg(&edited)
        .args(["--short-side", "112", "--json", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines = json_lines(&output);
    assert_eq!(summary(&lines)["text"]["names"], 19);
}

/// With `--preset`, each method runs with its authors' settings for the benchmark, flags given
/// explicitly win, and the `--json` summary says what was in force.
#[test]
fn a_preset_gives_each_method_its_authors_settings() {
    let dir = tempfile::tempdir().unwrap();
    let settings_of = |extra: &[&str]| {
        let output = sclip()
            .arg("segment")
            .arg(fixture_image("small_window.png"))
            .arg("--model")
            .arg(fixture_model())
            .args(["--preset", "voc21", "--json", "--out"])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        summary(&json_lines(&output))["settings"].clone()
    };
    let sclip_settings = settings_of(&[]);
    assert_eq!(sclip_settings["method"], "sclip");
    assert_eq!(sclip_settings["logit_scale"], 65.0);
    assert_eq!(sclip_settings["area_thd"], 0.1);
    assert_eq!(sclip_settings["pamr"], 0);
    let naclip = settings_of(&["--method", "naclip"]);
    assert_eq!(naclip["logit_scale"], 40.0);
    assert_eq!(naclip["prob_thd"], 0.1);
    assert_eq!(naclip["area_thd"], serde_json::Value::Null);
    assert_eq!(naclip["pamr"], 10);
    assert_eq!(naclip["pamr_dilations"], serde_json::json!([8, 16]));
    let clearclip = settings_of(&[
        "--method",
        "clearclip",
        "--short-side",
        "112",
        "--pamr",
        "2",
    ]);
    assert_eq!(clearclip["short_side"], 112);
    assert_eq!(
        (&clearclip["window"], &clearclip["stride"]),
        (&448.into(), &224.into())
    );
    assert_eq!(clearclip["prob_thd"], 0.5);
    assert_eq!(clearclip["pamr"], 2);
    assert_eq!(settings_of(&["--method", "clip"])["logit_scale"], 65.0);

    let output = sclip()
        .args(["presets", "--method", "clearclip"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(listing.contains("mc-lan/ClearCLIP"), "{listing}");
    let cityscapes = listing
        .lines()
        .find(|line| line.starts_with("cityscapes"))
        .unwrap();
    let columns: Vec<&str> = cityscapes.split_whitespace().collect();
    assert_eq!(columns[1..5], ["19", "448", "224", "224"], "{cityscapes}");
}

/// `x/../y/z.jpg` is `y/z.jpg`: it mirrors to `out/y/z.png`, not onto the place of `x/y/z.jpg`.
#[test]
fn listed_paths_with_dot_dot_mirror_to_the_file_they_name() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("small_window.png", &dir.path().join("y/z.png"));
    copy_fixture("astronaut.jpg", &dir.path().join("x/y/z.jpg"));
    let output = segment()
        .current_dir(dir.path())
        .args(["--files-from", "-", "--out", "masks"])
        .write_stdin("x/../y/z.png\nx/y/z.jpg\n")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let masks = dir.path().join("masks");
    assert_eq!(
        files_under(&masks),
        BTreeSet::from(["x/y/z.png".to_string(), "y/z.png".to_string()])
    );
    let (width, _, _) = read_label_png(&masks.join("y/z.png"));
    let (source_width, _) = image::image_dimensions(fixture_image("small_window.png")).unwrap();
    assert_eq!(
        width, source_width as usize,
        "y/z.png's mask is small_window's"
    );
}

/// A symlink planted inside `--out` that leads out of it is not followed: that image fails,
/// nothing is written where the link points, and the batch goes on.
#[test]
#[cfg(unix)]
fn a_symlinked_folder_inside_out_does_not_take_outputs_out_of_it() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("small_window.png", &dir.path().join("photos/planted/a.png"));
    copy_fixture("small_window.png", &dir.path().join("photos/b.png"));
    let (out, elsewhere) = (dir.path().join("masks"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("planted")).unwrap();
    let output = segment()
        .arg(dir.path().join("photos"))
        .args(["-r", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("outside --out"), "{stderr}");
    assert!(stderr.contains("1 ok, 0 skipped, 1 failed"), "{stderr}");
    assert!(out.join("b.png").is_file());
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
}

/// A 245-byte stem gives a 249-byte mask name, which fits; its temporary name must fit too.
#[test]
#[cfg(unix)]
fn names_near_the_length_limit_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let stem = "n".repeat(245);
    copy_fixture(
        "small_window.png",
        &dir.path().join(format!("photos/{stem}.png")),
    );
    let out = dir.path().join("masks");
    let output = segment()
        .arg(dir.path().join("photos"))
        .args(["--overlay", "png", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The overlay's name, 245 + 12 bytes, is one no file system takes: that is the error.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(".overlay.png"), "{stderr}");
    assert!(
        files_under(&out).is_empty(),
        "neither output is left: {:?}",
        files_under(&out)
    );

    let output = segment()
        .arg(dir.path().join("photos"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(files_under(&out), BTreeSet::from([format!("{stem}.png")]));
}

/// When the overlay cannot be written the image fails and leaves no mask either, so that
/// `--skip-existing` does it again.
#[test]
fn an_image_whose_overlay_fails_leaves_no_mask() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("small_window.png", &dir.path().join("photos/a.png"));
    let out = dir.path().join("masks");
    // A folder that is not empty cannot be replaced by the overlay's file.
    std::fs::create_dir_all(out.join("a.overlay.jpg/in-the-way")).unwrap();
    let run = || {
        segment()
            .arg(dir.path().join("photos"))
            .args(["--overlay", "--skip-existing", "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let output = run();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a.overlay.jpg"), "{stderr}");
    assert!(!out.join("a.png").exists(), "no mask for a failed image");
    std::fs::remove_dir_all(out.join("a.overlay.jpg")).unwrap();
    let output = run();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 ok, 0 skipped"));
    assert!(out.join("a.png").is_file() && out.join("a.overlay.jpg").is_file());
}

/// Control characters in a name cannot reach the terminal raw, and a name that is not UTF-8 is
/// given byte for byte in `--json`.
#[test]
#[cfg(unix)]
fn names_with_control_bytes_are_escaped_and_json_keeps_their_bytes() {
    use base64::prelude::{Engine, BASE64_STANDARD};
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let hostile = dir.path().join("a\u{1b}[2Jb\nc.png");
    copy_fixture("small_window.png", &hostile);
    let output = segment()
        .arg(&hostile)
        .arg("--out")
        .arg(dir.path().join("masks"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(stdout.contains("a\\u{1b}[2Jb\\nc.png"), "{stdout:?}");

    let latin1 = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    copy_fixture("small_window.png", &latin1);
    let output = segment()
        .arg(&latin1)
        .args(["--json", "--out"])
        .arg(dir.path().join("masks"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines = json_lines(&output);
    let bytes = |value: &Value| BASE64_STANDARD.decode(value.as_str().unwrap()).unwrap();
    assert_eq!(
        bytes(&lines[0]["path_bytes"]),
        latin1.as_os_str().as_bytes()
    );
    let mask = bytes(&lines[0]["outputs"]["mask_bytes"]);
    assert!(Path::new(std::ffi::OsStr::from_bytes(&mask)).is_file());
    assert!(lines[0].get("path_bytes").is_some() && summary(&lines)["ok"] == 1);

    // serde_json leaves DEL and the C1 controls raw; they are escaped as JSON escapes are.
    let del = dir.path().join("del\u{7f}\u{9b}.png");
    copy_fixture("small_window.png", &del);
    let output = segment()
        .arg(&del)
        .args(["--json", "--out"])
        .arg(dir.path().join("masks"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert!(!stdout.contains(['\u{7f}', '\u{9b}']), "{stdout:?}");
    let lines = json_lines(&output);
    assert_eq!(lines[0]["path"], del.to_str().unwrap());
}

/// A signal before the images start (here while the list is still being read from stdin) has
/// nothing to let finish: the run says so and exits with 128 + the signal at once.
#[test]
#[cfg(unix)]
fn a_signal_before_the_images_start_ends_the_run_at_once() {
    let mut child = sclip_process()
        .args(["segment", "--files-from", "-", "--out"])
        .arg(tempfile::tempdir().unwrap().path())
        .args(["--classes", "a,b", "--model"])
        .arg(fixture_model())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for the handlers to be in place even on a loaded machine.
    std::thread::sleep(Duration::from_millis(1500));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stdin = child.stdin.take();
    let output = child.wait_with_output().unwrap();
    drop(stdin);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGTERM before any image started"),
        "{stderr}"
    );
}
