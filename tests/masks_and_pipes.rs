//! Masks every tool reads (`--label-format`, overlay colours) and pipes (`sclip segment - -o -`),
//! run through the binary the way users type them.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use common::{fixture_image, json_lines, read_8_bit_png, read_label_png, segment, segment_process};

const PHOTO: &str = "astronaut.jpg";

/// The class indices of a `--label-format grey` mask, with its size.
fn read_grey_png(path: &Path) -> (usize, usize, Vec<u8>) {
    read_8_bit_png(path, png::ColorType::Grayscale)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_success(output: &Output) {
    assert!(output.status.success(), "{}", stderr(output));
}

#[test]
fn grey_masks_hold_the_same_indices_as_palette_masks() {
    let dir = tempfile::tempdir().unwrap();
    let (palette_out, grey_out) = (dir.path().join("palette"), dir.path().join("grey"));
    assert_success(
        &segment()
            .arg(fixture_image(PHOTO))
            .arg("-o")
            .arg(&palette_out)
            .output()
            .unwrap(),
    );
    assert_success(
        &segment()
            .arg(fixture_image(PHOTO))
            .args(["--label-format", "grey", "-o"])
            .arg(&grey_out)
            .output()
            .unwrap(),
    );
    let palette = read_label_png(&palette_out.join("astronaut.png"));
    let grey = read_grey_png(&grey_out.join("astronaut.png"));
    assert_eq!(grey, palette);
    // Three classes, each present, so the comparison is not of two blank masks.
    let mut labels = grey.2.clone();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels, [0, 1, 2]);
}

#[test]
fn skip_existing_redoes_masks_written_in_the_other_label_format() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = |format: &str| {
        let output = segment()
            .arg(fixture_image(PHOTO))
            .args(["--skip-existing", "--json", "--label-format", format, "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert_success(&output);
        json_lines(&output)[0]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(run("palette"), "ok");
    assert_eq!(run("palette"), "skipped");
    assert_eq!(
        run("grey"),
        "ok",
        "a palette mask is not a finished grey one"
    );
    read_grey_png(&out.join("astronaut.png"));
    assert_eq!(run("grey"), "skipped");
}

/// The overlay pixels (at alpha 1, the class colours themselves) where the mask is class 0.
fn class_zero_overlay_colours(extra_args: &[&str]) -> Vec<[u8; 3]> {
    let dir = tempfile::tempdir().unwrap();
    let output = segment()
        .arg(fixture_image(PHOTO))
        .args(["--overlay", "png", "--alpha", "1"])
        .args(extra_args)
        .arg("-o")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_success(&output);
    let (width, height, labels) = read_label_png(&dir.path().join("astronaut.png"));
    let overlay = image::open(dir.path().join("astronaut.overlay.png"))
        .unwrap()
        .into_rgb8();
    assert_eq!(overlay.width() as usize, width);
    assert!(
        overlay.height() as usize > height,
        "a legend below the photo"
    );
    let mut colours: Vec<[u8; 3]> = labels
        .iter()
        .enumerate()
        .filter(|(_, &label)| label == 0)
        .map(|(pixel, _)| {
            overlay
                .get_pixel((pixel % width) as u32, (pixel / width) as u32)
                .0
        })
        .collect();
    assert!(!colours.is_empty(), "the mask has class 0 pixels");
    colours.sort_unstable();
    colours.dedup();
    colours
}

#[test]
fn class_zero_is_visible_in_overlays_unless_it_is_background() {
    // person,sky,wall with no thresholds: class 0 is a person, drawn orange, not black.
    assert_eq!(class_zero_overlay_colours(&[]), [[255, 128, 0]]);
    // A probability threshold sends unsure pixels to class 0, which is then background.
    assert_eq!(
        class_zero_overlay_colours(&["--prob-thd", "0.2"]),
        [[0, 0, 0]]
    );
}

/// `sclip segment - -o -` with `stdin` as its input and the given extra arguments.
fn pipe(stdin: &[u8], extra_args: &[&str]) -> Output {
    segment()
        .args(["-", "-o", "-"])
        .args(extra_args)
        .write_stdin(stdin)
        .output()
        .unwrap()
}

#[test]
fn stdin_to_stdout_gives_the_file_segment_writes() {
    let photo = std::fs::read(fixture_image(PHOTO)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (extra, written) in [
        (&[][..], "astronaut.png"),
        (&["--label-format", "grey"][..], "astronaut.png"),
        (&["--overlay", "png"][..], "astronaut.overlay.png"),
        (&["--overlay"][..], "astronaut.overlay.jpg"),
    ] {
        let out = dir.path().join(extra.join("_"));
        assert_success(
            &segment()
                .arg(fixture_image(PHOTO))
                .args(extra)
                .arg("-o")
                .arg(&out)
                .output()
                .unwrap(),
        );
        let piped = pipe(&photo, extra);
        assert_success(&piped);
        assert_eq!(
            piped.stdout,
            std::fs::read(out.join(written)).unwrap(),
            "{extra:?}"
        );
        // The per-image line moved to stderr, out of the image's way.
        assert!(
            stderr(&piped).starts_with("- 128x96 "),
            "{}",
            stderr(&piped)
        );
    }

    // A file may go to stdout too.
    let from_file = segment()
        .arg(fixture_image(PHOTO))
        .args(["-o", "-"])
        .output()
        .unwrap();
    assert_success(&from_file);
    assert_eq!(
        from_file.stdout,
        std::fs::read(dir.path().join("astronaut.png")).unwrap()
    );
}

#[test]
fn ambiguous_pipes_are_refused_with_one_line_and_nothing_written() {
    let photo = fixture_image(PHOTO);
    let photo = photo.to_str().unwrap();
    let folder = fixture_image("");
    let folder = folder.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["-", "-", "-o", "-"], "- (stdin) is given twice"),
        (
            &["-", photo, "-o", "-"],
            "cannot be mixed with other images",
        ),
        (&["-", "--files-from", "-", "-o", "-"], "cannot be mixed"),
        (&["-"], "add -o - to write its mask to stdout"),
        (&["-", "-o", "out"], "add -o - to write its mask to stdout"),
        (&[folder, "-o", "-"], "give one image, not a folder"),
        (&[photo, photo, "-o", "-"], "give one image, not 2 images"),
        (&["--files-from", "list.txt", "-o", "-"], "not --files-from"),
        (
            &[photo, "-o", "-", "--save-probs"],
            "--save-probs writes a second file",
        ),
        (
            &[photo, "-o", "-", "--skip-existing"],
            "--skip-existing looks for outputs",
        ),
        (&["-", "-o", "-", "--json"], "--json writes to stdout"),
        (
            &[photo, "-o", "-", "--shard", "1/2"],
            "--shard splits a batch",
        ),
        (
            &["-", "-o", "-", "--report", "page.html"],
            "--report shows the files of a run",
        ),
    ];
    let photo_bytes = std::fs::read(photo).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    for (args, message) in cases {
        let output = segment()
            .args(*args)
            .current_dir(cwd.path())
            .write_stdin(photo_bytes.clone())
            .output()
            .unwrap();
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("sclip: error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(
            std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
            "{args:?} wrote into the working folder (a folder named - ?)"
        );
    }
}

#[test]
fn an_empty_stdin_or_one_that_is_no_image_is_one_line_and_exit_1() {
    let empty = pipe(b"", &[]);
    assert_eq!(empty.status.code(), Some(1), "{}", stderr(&empty));
    assert_eq!(
        stderr(&empty).trim_end(),
        "sclip: error: stdin is empty (0 bytes); pipe an image into it (< photo.jpg)"
    );
    assert!(empty.stdout.is_empty());

    let garbage = pipe(b"not an image at all", &[]);
    assert_eq!(garbage.status.code(), Some(1), "{}", stderr(&garbage));
    assert!(
        stderr(&garbage).starts_with("sclip: error: cannot decode the image from stdin: "),
        "{}",
        stderr(&garbage)
    );
    assert!(garbage.stdout.is_empty());
}

#[test]
fn stdin_longer_than_max_pixels_allows_is_refused_before_decoding() {
    // 1 pixel allows 8 bytes and 64 MiB: one byte more is refused.
    let too_long = vec![0; (64 << 20) + 9];
    let output = pipe(&too_long, &["--max-pixels", "1"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("stdin holds more than 67108872 bytes"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_closed_stdout_is_an_error_exit_without_a_panic() {
    let mut child = segment_process()
        .args(["-", "-o", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reading end closes before sclip has loaded its model, so its write finds no reader.
    drop(child.stdout.take());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(fixture_image(PHOTO)).unwrap())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "sclip: error: cannot write the mask to stdout: the program reading it closed the pipe"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A pseudo-terminal's (master, slave) ends: the slave is a terminal to whoever holds it.
#[cfg(target_os = "linux")]
fn pseudo_terminal() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors it opened into the given integers, which are then
    // owned here alone; the name, termios and window size pointers may be null.
    unsafe {
        let result = libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        );
        assert_eq!(result, 0, "openpty: {}", std::io::Error::last_os_error());
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    }
}

#[cfg(target_os = "linux")]
#[test]
fn no_binary_image_is_written_to_a_terminal_nor_read_from_one() {
    let (_master, slave) = pseudo_terminal();
    let to_terminal = segment_process()
        .arg(fixture_image(PHOTO))
        .args(["-o", "-"])
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(to_terminal.status.code(), Some(2));
    assert!(
        stderr(&to_terminal).contains("writes a binary image to stdout, which is a terminal"),
        "{}",
        stderr(&to_terminal)
    );

    let from_terminal = segment_process()
        .args(["-", "-o", "-"])
        .stdin(Stdio::from(slave))
        .output()
        .unwrap();
    assert_eq!(from_terminal.status.code(), Some(2));
    assert!(
        stderr(&from_terminal).contains("reads an image from stdin, which is a terminal"),
        "{}",
        stderr(&from_terminal)
    );
}

/// A named pipe where a mask goes fails that image, naming it, and is left as it is (a rename
/// would put a file in its place); the batch goes on.
#[test]
#[cfg(unix)]
fn a_named_pipe_in_a_masks_place_fails_its_image_only_and_is_left_alone() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let pipe = out.join("astronaut.png");
    assert!(std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .unwrap()
        .success());
    let output = segment()
        .arg(fixture_image("astronaut.jpg"))
        .arg(fixture_image("coffee.png"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr
        .lines()
        .find(|line| line.starts_with("sclip: error: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(error.contains(&pipe.display().to_string()), "{error}");
    assert!(error.contains("is a named pipe (FIFO)"), "{error}");
    assert!(std::fs::metadata(&pipe).unwrap().file_type().is_fifo());
    assert!(out.join("coffee.png").is_file(), "the batch goes on");
}
