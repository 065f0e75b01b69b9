//! Helpers shared by the integration tests: the fixture manifest, and readers for what sclip writes.

#![allow(dead_code)] // each test binary uses its own subset

pub mod hub;

use std::path::{Path, PathBuf};

use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture_model() -> PathBuf {
    fixtures().join("model")
}

pub fn sclip() -> Command {
    Command::from_std(sclip_process())
}

/// The sclip binary as a plain process, for tests that start it and signal or wait on it.
pub fn sclip_process() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sclip"));
    // Tests must never reach a hub, whatever the developer's environment says, nor fill the
    // user's own query cache; tests of the cache point SCLIP_CACHE_DIR elsewhere.
    cmd.env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_ENDPOINT")
        .env(
            "SCLIP_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("query-cache"),
        );
    cmd
}

/// `sclip segment` with the fixture model and small windows, so that each image takes one or two.
pub fn segment() -> Command {
    Command::from_std(segment_process())
}

/// [`segment`] as a plain process, for tests that choose its stdin and stdout themselves.
pub fn segment_process() -> std::process::Command {
    let mut cmd = sclip_process();
    cmd.arg("segment")
        .arg("--model")
        .arg(fixture_model())
        .args(["--classes", "person,sky|space,wall"])
        .args(["--short-side", "112", "--window", "112", "--stride", "56"]);
    cmd
}

pub fn fixture_image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

pub fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(fixture_image(name), to).unwrap();
}

pub fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

pub fn summary(lines: &[Value]) -> &Value {
    let last = lines.last().expect("a summary line");
    assert_eq!(last["type"], "summary", "{last}");
    last
}

/// One case of `tests/fixtures/cases.json`, written by `tests/reference/make_fixtures.py`.
pub struct Case {
    pub name: String,
    pub image: PathBuf,
    pub classes: Vec<String>,
    pub classes_file: Option<PathBuf>,
    pub logit_scale: f64,
    pub prob_thd: f64,
    pub area_thd: Option<f64>,
    pub short_side: u64,
    pub window: u64,
    pub stride: u64,
    pub width: usize,
    pub height: usize,
    pub labels: PathBuf,
    pub probs: PathBuf,
}

impl Case {
    /// The command line a user would type for this case, writing into `out`.
    pub fn args(&self, out: &Path) -> Vec<String> {
        let mut args = vec![
            "segment".to_string(),
            self.image.display().to_string(),
            "--model".into(),
            fixture_model().display().to_string(),
            "--logit-scale".into(),
            self.logit_scale.to_string(),
            "--prob-thd".into(),
            self.prob_thd.to_string(),
            "--short-side".into(),
            self.short_side.to_string(),
            "--window".into(),
            self.window.to_string(),
            "--stride".into(),
            self.stride.to_string(),
            "--out".into(),
            out.display().to_string(),
            "--save-probs".into(),
        ];
        match &self.classes_file {
            Some(file) => args.extend(["--classes-file".into(), file.display().to_string()]),
            None => args.extend(["--classes".into(), self.classes.join(",")]),
        }
        if let Some(area) = self.area_thd {
            args.extend(["--area-thd".into(), area.to_string()]);
        }
        args
    }

    pub fn stem(&self) -> String {
        self.image
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

pub fn cases() -> Vec<Case> {
    let root = fixtures();
    let text = std::fs::read_to_string(root.join("cases.json")).expect("tests/fixtures/cases.json");
    let manifest: Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let cases = manifest.as_array().expect("cases.json is a list");
    cases
        .iter()
        .map(|c| {
            let path = |key: &str| root.join(c[key].as_str().unwrap_or_else(|| panic!("{key}")));
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                image: path("image"),
                classes: c["classes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_string())
                    .collect(),
                classes_file: c["classes_file"].as_str().map(|f| root.join(f)),
                logit_scale: c["logit_scale"].as_f64().unwrap(),
                prob_thd: c["prob_thd"].as_f64().unwrap(),
                area_thd: c["area_thd"].as_f64(),
                short_side: c["short_side"].as_u64().unwrap(),
                window: c["window"].as_u64().unwrap(),
                stride: c["stride"].as_u64().unwrap(),
                width: c["width"].as_u64().unwrap() as usize,
                height: c["height"].as_u64().unwrap() as usize,
                labels: path("labels"),
                probs: path("probs"),
            }
        })
        .collect()
}

/// A NumPy .npy array: its shape and its data as little-endian values of the given width.
pub struct Npy {
    pub descr: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Npy {
    pub fn read(path: &Path) -> Npy {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not .npy", path.display());
        let (header_len, header_start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            _ => (
                u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
                12,
            ),
        };
        let header = std::str::from_utf8(&bytes[header_start..header_start + header_len]).unwrap();
        assert!(header.contains("'fortran_order': False"), "{header}");
        let descr = header
            .split("'descr': '")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        let shape_text = header
            .split("'shape': (")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap();
        let shape = shape_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        Npy {
            descr: descr.to_string(),
            shape,
            data: bytes[header_start + header_len..].to_vec(),
        }
    }

    pub fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.descr, "<f4");
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn u8s(&self) -> Vec<u8> {
        assert!(self.descr == "|u1" || self.descr == "<u1", "{}", self.descr);
        self.data.clone()
    }
}

/// The raw palette indices of a paletted PNG (no expansion to RGB), with its size.
pub fn read_label_png(path: &Path) -> (usize, usize, Vec<u8>) {
    read_8_bit_png(path, png::ColorType::Indexed)
}

/// The raw 8-bit samples of a one-sample-a-pixel PNG of `color_type` (paletted or greyscale, read
/// without transformations), with its size.
pub fn read_8_bit_png(path: &Path, color_type: png::ColorType) -> (usize, usize, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let info = reader.info();
    assert_eq!(
        info.color_type,
        color_type,
        "{} is not {color_type:?}",
        path.display()
    );
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let (width, height) = (info.width as usize, info.height as usize);
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buffer).unwrap();
    buffer.truncate(frame.buffer_size());
    (width, height, buffer)
}
