//! Inputs built to break a batch: headers that lie, files that never end or never open, damaged
//! data, names that promise images, images too thin for the model. Each fails (or warns) alone,
//! naming its file, and the rest of the batch goes on.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use image::{ImageEncoder, RgbImage};
use serde_json::Value;

use common::{copy_fixture, fixture_image, json_lines, read_label_png, segment, summary};

/// A JPEG of a simple pattern, with an EXIF orientation when asked.
fn jpeg(width: u32, height: u32, orientation: Option<u8>) -> Vec<u8> {
    let pattern = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    });
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90);
    if let Some(orientation) = orientation {
        // A little-endian TIFF block holding only the orientation tag.
        let mut exif = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        exif.extend_from_slice(&[orientation, 0, 0, 0, 0, 0, 0, 0]);
        encoder.set_exif_metadata(exif).unwrap();
    }
    encoder
        .write_image(
            pattern.as_raw(),
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    bytes
}

fn marker_position(jpeg: &[u8], marker: u8) -> usize {
    jpeg.windows(2)
        .position(|pair| pair == [0xFF, marker])
        .unwrap_or_else(|| panic!("no marker {marker:02X}"))
}

/// The stderr line that names `path`'s file name, which must contain `cause`.
fn error_line_for<'a>(stderr: &'a str, path: &Path, cause: &str) -> &'a str {
    let name = path.file_name().unwrap().to_string_lossy();
    let line = stderr
        .lines()
        .find(|line| line.starts_with("sclip: error: ") && line.contains(&*name))
        .unwrap_or_else(|| panic!("no error for {name}: {stderr}"));
    assert!(line.contains(cause), "{line}");
    line
}

/// The `--json` object of the image at `path`.
fn image_object<'a>(lines: &'a [Value], path: &Path) -> &'a Value {
    let path = path.to_string_lossy();
    lines
        .iter()
        .find(|line| line["type"] == "image" && line["path"] == *path)
        .unwrap_or_else(|| panic!("no object for {path}: {lines:?}"))
}

fn outputs_in(out: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(out)
        .map(|entries| entries.map(|entry| entry.unwrap().path()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// Runs `sclip segment` with `args` on the `bad` inputs and then an intact image, into a fresh
/// folder under `dir`, killed if it runs for a minute; checks that the batch went on (the
/// intact image's mask and nothing else written, each bad input counted as failed, exit 1) and
/// returns its stderr.
fn run_beside_an_intact_image(dir: &Path, bad: &[&Path], args: &[&str]) -> String {
    let good = dir.join("good.png");
    copy_fixture("small_window.png", &good);
    let out = dir.join("masks");
    let output = segment()
        .args(bad)
        .arg(&good)
        .args(args)
        .arg("--out")
        .arg(&out)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let counts = format!("1 ok, 0 skipped, {} failed", bad.len());
    assert!(stderr.contains(&counts), "{stderr}");
    assert_eq!(outputs_in(&out), [out.join("good.png")]);
    stderr
}

#[test]
fn a_jpeg_declaring_65000x65000_behind_a_fill_byte_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let mut bomb = jpeg(32, 32, None);
    let frame = marker_position(&bomb, 0xC0);
    // Height and width, after the length and the sample precision.
    bomb[frame + 5..frame + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    bomb.insert(frame, 0xFF);
    let bomb_path = dir.path().join("bomb.jpg");
    std::fs::write(&bomb_path, bomb).unwrap();
    // Decoding what it declares took 35 s and 10 GB; a run that hangs is killed, and fails.
    let stderr = run_beside_an_intact_image(dir.path(), &[&bomb_path], &[]);
    let line = error_line_for(&stderr, &bomb_path, "65000x65000");
    assert!(line.contains("--max-pixels"), "{line}");
}

#[test]
fn exif_orientation_behind_a_fill_byte_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut rotated = jpeg(48, 32, Some(6));
    rotated.insert(marker_position(&rotated, 0xE1), 0xFF);
    let path = dir.path().join("rotated.jpg");
    std::fs::write(&path, rotated).unwrap();
    let out = dir.path().join("masks");
    let output = segment()
        .arg(&path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let (width, height, _) = read_label_png(&out.join("rotated.png"));
    assert_eq!(
        (width, height),
        (32, 48),
        "the mask is of the upright image"
    );
}

#[test]
fn pipes_devices_and_huge_files_fail_alone_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.png");
    copy_fixture("small_window.png", &good);
    // 20 GiB, sparse: no disk space, and far over the bound --max-pixels 10000 sets.
    let huge = dir.path().join("huge.png");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(20 << 30)
        .unwrap();
    // Nobody ever writes to it: opening it for reading would wait forever.
    let fifo = dir.path().join("pipe.jpg");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let zero = PathBuf::from("/dev/zero");
    let stderr = run_beside_an_intact_image(
        dir.path(),
        &[&huge, &fifo, &zero],
        &["--max-pixels", "10000"],
    );
    let line = error_line_for(&stderr, &huge, "21474836480 bytes");
    assert!(
        line.contains("pass --max-pixels 2675965952 or more"),
        "{line}"
    );
    error_line_for(&stderr, &fifo, "a named pipe (FIFO), not an image file");
    error_line_for(&stderr, &zero, "a character device, not an image file");
}

#[test]
fn damaged_jpegs_are_segmented_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // Cut in the middle of the scan and closed with an end-of-image marker.
    let whole = std::fs::read(fixture_image("astronaut.jpg")).unwrap();
    let mut cut = whole[..whole.len() * 2 / 3].to_vec();
    cut.extend_from_slice(&[0xFF, 0xD9]);
    let damaged = dir.path().join("damaged.jpg");
    std::fs::write(&damaged, cut).unwrap();
    // One byte flipped in the middle of the scan.
    let mut flipped = whole.clone();
    let scan = marker_position(&whole, 0xDA);
    flipped[(scan + whole.len()) / 2] ^= 0x55;
    let flipped_path = dir.path().join("flipped.jpg");
    std::fs::write(&flipped_path, flipped).unwrap();
    let intact = dir.path().join("intact.jpg");
    copy_fixture("astronaut.jpg", &intact);
    let out = dir.path().join("masks");

    let output = segment()
        .args([&damaged, &flipped_path, &intact])
        .arg("--json")
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warning = stderr
        .lines()
        .find(|line| line.starts_with("sclip: warning: "))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(
        warning.contains(&*damaged.to_string_lossy()) && warning.contains("Corrupt JPEG data"),
        "{warning}"
    );
    assert_eq!(stderr.matches("sclip: warning: ").count(), 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "sclip: warning: {}: Corrupt JPEG data: ",
            flipped_path.display()
        )),
        "{stderr}"
    );
    let lines = json_lines(&output);
    let warnings = image_object(&lines, &damaged)["warnings"]
        .as_array()
        .unwrap();
    assert!(
        warnings[0].as_str().unwrap().contains("Corrupt JPEG data"),
        "{warnings:?}"
    );
    assert_eq!(
        image_object(&lines, &intact)["warnings"],
        Value::Array(vec![])
    );
    assert_eq!(summary(&lines)["warned"], 2);
    assert!(out.join("damaged.png").is_file());

    let human = segment()
        .arg(&damaged)
        .arg("--out")
        .arg(dir.path().join("again"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&human.stderr);
    assert!(
        stderr.contains("1 ok (1 with warnings), 0 skipped"),
        "{stderr}"
    );
}

#[test]
fn files_named_as_images_in_a_walked_folder_fail_when_they_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_fixture("small_window.png", &photos.join("good.png"));
    std::fs::write(photos.join("photo.jpg"), b"").unwrap();
    std::fs::write(
        photos.join("notes.PNG"),
        b"a text file with an image's name",
    )
    .unwrap();
    std::fs::write(
        photos.join("README.txt"),
        b"not an image, and not named as one",
    )
    .unwrap();
    std::fs::write(photos.join(".DS_Store"), b"\0\0\0\x01Bud1").unwrap();
    let made = Command::new("mkfifo")
        .arg(photos.join("stream.jpg"))
        .status()
        .unwrap();
    assert!(made.success());
    let out = dir.path().join("masks");

    let output = segment()
        .arg(&photos)
        .arg("--out")
        .arg(&out)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    error_line_for(&stderr, &photos.join("photo.jpg"), "empty (0 bytes)");
    error_line_for(&stderr, &photos.join("notes.PNG"), "not an image");
    error_line_for(&stderr, &photos.join("stream.jpg"), "a named pipe (FIFO)");
    assert!(
        !stderr.contains("README") && !stderr.contains("DS_Store"),
        "{stderr}"
    );
    assert!(stderr.contains("1 ok, 0 skipped, 3 failed"), "{stderr}");
    assert_eq!(outputs_in(&out), [out.join("good.png")]);
}

#[test]
fn an_image_too_thin_for_one_patch_fails_alone_before_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let thin = dir.path().join("thin.png");
    RgbImage::new(10, 100_000).save(&thin).unwrap();
    let stderr = run_beside_an_intact_image(dir.path(), &[&thin], &[]);
    let line = error_line_for(&stderr, &thin, "too thin to segment");
    assert!(
        line.contains("10x100000 resizes to 1x2048") && line.contains("16-pixel patch"),
        "{line}"
    );
    assert!(!line.contains("the model failed"), "{line}");
}

/// A zlib stream that inflates to `length` zero bytes (a multiple of 258, plus one): one fixed
/// Huffman block of a literal 0 and then copies of the 258 bytes before, 13 bits each.
fn zlib_of_zeros(length: usize) -> Vec<u8> {
    struct Bits {
        bytes: Vec<u8>,
        used: u32,
    }
    impl Bits {
        /// Huffman codes go most significant bit first, into a least-significant-first stream.
        fn code(&mut self, code: u32, width: u32) {
            for bit in (0..width).rev() {
                if self.used.is_multiple_of(8) {
                    self.bytes.push(0);
                }
                let last = self.bytes.last_mut().unwrap();
                *last |= (((code >> bit) & 1) as u8) << (self.used % 8);
                self.used += 1;
            }
        }
    }
    let mut bits = Bits {
        bytes: vec![0x78, 0x01],
        used: 16,
    };
    bits.code(0b1, 1); // the last block
    bits.code(0b10, 2); // fixed Huffman codes (BTYPE 01, least significant bit first)
    bits.code(0x30, 8); // literal 0
    for _ in 0..(length - 1) / 258 {
        bits.code(0xC5, 8); // length 258
        bits.code(0, 5); // distance 1
    }
    bits.code(0, 7); // end of block
    let adler = ((length % 65521) as u32) << 16 | 1;
    bits.bytes.extend_from_slice(&adler.to_be_bytes());
    bits.bytes
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG's header metadata is bounded apart from its pixels: an ICC profile that inflates to a
/// gigabyte from a few megabytes neither takes that memory nor stops the batch.
#[test]
fn a_zlib_bomb_in_a_png_profile_stays_within_the_metadata_bound() {
    let dir = tempfile::tempdir().unwrap();
    let png = std::fs::read(fixture_image("small_window.png")).unwrap();
    let after_header = 8 + 25;
    let mut chunk = b"iCCP".to_vec();
    chunk.extend_from_slice(b"bomb\0\0");
    chunk.extend_from_slice(&zlib_of_zeros(258 * (1 << 22) + 1));
    let mut bomb = png[..after_header].to_vec();
    bomb.extend_from_slice(&((chunk.len() - 4) as u32).to_be_bytes());
    bomb.extend_from_slice(&chunk);
    bomb.extend_from_slice(&crc32(&chunk).to_be_bytes());
    bomb.extend_from_slice(&png[after_header..]);
    let path = dir.path().join("profile_bomb.png");
    std::fs::write(&path, &bomb).unwrap();

    let output = segment()
        .arg(&path)
        .args(["--json", "--out"])
        .arg(dir.path().join("masks"))
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines = json_lines(&output);
    let peak = summary(&lines)["peak_rss_mib"].as_f64().unwrap();
    assert!(peak < 600.0, "a 1 GiB profile took the run to {peak} MiB");
}
