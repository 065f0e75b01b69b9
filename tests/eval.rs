//! `sclip eval` on small synthetic datasets, one in each benchmark's layout, whose metrics are
//! known by construction: the fixture model's predictions are read first (with `sclip segment`,
//! same preset and settings), and each truth is made from its image's prediction with known
//! edits: a band of ignored pixels, a patch relabelled to a class never predicted, and another
//! class left out of both.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{fixture_model, read_label_png, sclip, sclip_process};

/// Small windows, one window a forward pass, so that each image's prediction is the same
/// whichever images run beside it (cached ones do not).
const SETTINGS: [&str; 8] = [
    "--short-side",
    "64",
    "--window",
    "64",
    "--stride",
    "32",
    "--batch-size",
    "1",
];
const WIDTH: u32 = 56;
const HEIGHT: u32 = 40;
/// The truth's top rows are ignored (255, or 0 under reduce_zero_label).
const IGNORED_ROWS: u32 = 4;
/// The bottom-left corner's truth is relabelled to a class that is never predicted.
const RELABELLED: (u32, u32) = (10, 8);

/// How a benchmark keeps its files, as spec section 9 says (independently of the library's
/// table): (folder, suffix) of images and truths, the split file, reduce_zero_label.
struct Layout {
    preset: &'static str,
    images: (&'static str, &'static str),
    truths: (&'static str, &'static str),
    split: Option<&'static str>,
    reduce_zero_label: bool,
    ids: &'static [&'static str],
}

const VOC_IDS: &[&str] = &["2007_000032", "2007_000039", "2008_000123"];
const COCO_IDS: &[&str] = &["000000000139", "000000000285", "000000000632"];

fn voc(preset: &'static str, reduce_zero_label: bool) -> Layout {
    Layout {
        preset,
        images: ("JPEGImages", ".jpg"),
        truths: ("SegmentationClass", ".png"),
        split: Some("ImageSets/Segmentation/val.txt"),
        reduce_zero_label,
        ids: VOC_IDS,
    }
}

fn context(preset: &'static str, reduce_zero_label: bool) -> Layout {
    Layout {
        truths: ("SegmentationClassContext", ".png"),
        split: Some("ImageSets/SegmentationContext/val.txt"),
        ..voc(preset, reduce_zero_label)
    }
}

fn coco(preset: &'static str, folder: &'static str, truth_suffix: &'static str) -> Layout {
    let (images, truths) = match folder {
        "val2017" => ("images/val2017", "annotations/val2017"),
        _ => ("images/test2014", "annotations/test2014"),
    };
    Layout {
        preset,
        images: (images, ".jpg"),
        truths: (truths, truth_suffix),
        split: None,
        reduce_zero_label: preset == "coco_stuff10k",
        ids: COCO_IDS,
    }
}

fn cityscapes() -> Layout {
    Layout {
        preset: "cityscapes",
        images: ("leftImg8bit/val", "_leftImg8bit.png"),
        truths: ("gtFine/val", "_gtFine_labelTrainIds.png"),
        split: None,
        reduce_zero_label: false,
        ids: &[
            "frankfurt/frankfurt_000000_000294",
            "frankfurt/frankfurt_000000_000576",
            "lindau/lindau_000000_000019",
        ],
    }
}

fn ade20k() -> Layout {
    Layout {
        preset: "ade20k",
        images: ("images/validation", ".jpg"),
        truths: ("annotations/validation", ".png"),
        split: None,
        reduce_zero_label: true,
        ids: &["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"],
    }
}

impl Layout {
    fn image(&self, root: &Path, id: &str) -> PathBuf {
        root.join(self.images.0)
            .join(format!("{id}{}", self.images.1))
    }

    fn truth(&self, root: &Path, id: &str) -> PathBuf {
        root.join(self.truths.0)
            .join(format!("{id}{}", self.truths.1))
    }

    fn classes(&self) -> sclip::ClassList {
        sclip::presets::find(self.preset).unwrap().classes()
    }
}

/// Deterministic noise, so that the model predicts a mix of classes.
fn write_noise_image(path: &Path, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let image = image::RgbImage::from_fn(WIDTH, HEIGHT, |_, _| {
        let mut channel = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        image::Rgb([channel(), channel(), channel()])
    });
    image.save(path).unwrap();
}

/// Raw truth values, as a grey PNG (or paletted, as VOC and Context ship them).
fn write_truth(path: &Path, values: &[u8], width: u32, height: u32, paletted: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if paletted {
        sclip::output::stage_label_png(path, values, width, height)
            .unwrap()
            .commit()
            .unwrap();
        return;
    }
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(values).unwrap();
    writer.finish().unwrap();
}

/// A dataset in `layout` under a temporary root, with truths still to be written.
struct Dataset {
    dir: tempfile::TempDir,
    layout: Layout,
}

impl Dataset {
    fn new(layout: Layout) -> Dataset {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        for (seed, id) in layout.ids.iter().enumerate() {
            write_noise_image(&layout.image(&root, id), seed as u32);
        }
        match layout.split {
            // An image outside the split (with no truth) that the eval must leave alone.
            Some(split) => {
                write_noise_image(&layout.image(&root, "2012_999999"), 99);
                let split = root.join(split);
                std::fs::create_dir_all(split.parent().unwrap()).unwrap();
                std::fs::write(split, layout.ids.join("\n") + "\n").unwrap();
            }
            // Files that are not the layout's images, to be left alone.
            None => {
                let images = root.join(layout.images.0);
                std::fs::write(images.join("README.txt"), "not an image").unwrap();
                write_noise_image(&images.join(format!(".hidden{}", layout.images.1)), 98);
            }
        }
        Dataset { dir, layout }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the fixture model predicts for each image of the split, as `sclip segment` writes it
    /// with `options` besides the tests' settings.
    fn predictions(&self, options: &[&str]) -> Vec<Vec<u8>> {
        let out = self.dir.path().join("predicted");
        let images = self.root().join(self.layout.images.0);
        let output = sclip()
            .arg("segment")
            .arg(&images)
            .arg("-r")
            .arg("-o")
            .arg(&out)
            .arg("--model")
            .arg(fixture_model())
            .args(["--preset", self.layout.preset, "--quiet"])
            .args(SETTINGS)
            .args(options)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        self.layout
            .ids
            .iter()
            .map(|id| {
                let mask =
                    Path::new(&format!("{id}{}", self.layout.images.1)).with_extension("png");
                let (width, height, labels) = read_label_png(&out.join(mask));
                assert_eq!((width, height), (WIDTH as usize, HEIGHT as usize));
                labels
            })
            .collect()
    }

    /// Where [`Dataset::default_eval`] caches its counts and writes its metrics.
    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn json(&self) -> PathBuf {
        self.dir.path().join("metrics.json")
    }

    /// [`Dataset::eval`] with the dataset's own cache and metrics file.
    fn default_eval(&self) -> assert_cmd::Command {
        self.eval(&self.cache(), &self.json())
    }

    /// `sclip eval` on it with the tests' settings, the cache in `cache`, the metrics in `json`.
    fn eval(&self, cache: &Path, json: &Path) -> assert_cmd::Command {
        let mut cmd = sclip();
        cmd.arg("eval")
            .arg("--dataset")
            .arg(self.root())
            .arg("--model")
            .arg(fixture_model())
            .args(["--preset", self.layout.preset])
            .args(SETTINGS)
            .arg("--cache")
            .arg(cache)
            .arg("--json")
            .arg(json);
        cmd
    }
}

/// Metrics in percent, `None` where the eval says null.
#[derive(Debug)]
struct Expected {
    iou: Vec<Option<f64>>,
    acc: Vec<Option<f64>>,
    miou: Option<f64>,
    aacc: Option<f64>,
    macc: Option<f64>,
}

fn is_ignored(_x: u32, y: u32) -> bool {
    y < IGNORED_ROWS
}

fn is_relabelled(x: u32, y: u32) -> bool {
    x < RELABELLED.0 && y >= HEIGHT - RELABELLED.1
}

/// Writes each image's truth: its prediction, but ignored in the top rows (as 255, or as 0 in
/// every other image under reduce_zero_label) and the class `relabelled` in the bottom-left
/// corner; values are shifted up by one under reduce_zero_label. Returns what the eval must
/// find: a class c other than `relabelled` is true exactly where it is predicted outside both
/// edits, so its intersection is its predicted pixels outside them, its truth the same, and its
/// predicted pixels those outside the ignored band; `relabelled` is true in the corners only and
/// never predicted (IoU and Acc 0); a class neither predicted nor relabelled has neither.
fn write_truths(dataset: &Dataset, predictions: &[Vec<u8>], relabelled: u8) -> Expected {
    let layout = &dataset.layout;
    let classes = layout.classes().len();
    let paletted = layout.split.is_some();
    let (mut intersection, mut predicted) = (vec![0u64; classes], vec![0u64; classes]);
    let mut relabelled_pixels = 0u64;
    for (index, (id, prediction)) in layout.ids.iter().zip(predictions).enumerate() {
        let mut truth = Vec::with_capacity(prediction.len());
        for (pixel, &label) in prediction.iter().enumerate() {
            let (x, y) = (pixel as u32 % WIDTH, pixel as u32 / WIDTH);
            let shift = u8::from(layout.reduce_zero_label);
            truth.push(if is_ignored(x, y) {
                if layout.reduce_zero_label && index % 2 == 0 {
                    0
                } else {
                    255
                }
            } else if is_relabelled(x, y) {
                predicted[usize::from(label)] += 1;
                relabelled_pixels += 1;
                relabelled + shift
            } else {
                predicted[usize::from(label)] += 1;
                intersection[usize::from(label)] += 1;
                label + shift
            });
        }
        write_truth(
            &layout.truth(&dataset.root(), id),
            &truth,
            WIDTH,
            HEIGHT,
            paletted,
        );
    }
    let mut truth = intersection.clone();
    truth[usize::from(relabelled)] = relabelled_pixels;
    let percent = |part: u64, whole: u64| (whole > 0).then(|| 100.0 * part as f64 / whole as f64);
    let iou: Vec<_> = (0..classes)
        .map(|c| percent(intersection[c], predicted[c] + truth[c] - intersection[c]))
        .collect();
    let acc: Vec<_> = (0..classes)
        .map(|c| percent(intersection[c], truth[c]))
        .collect();
    let mean = |values: &[Option<f64>]| {
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
    };
    Expected {
        miou: mean(&iou),
        macc: mean(&acc),
        aacc: percent(intersection.iter().sum(), truth.iter().sum()),
        iou,
        acc,
    }
}

/// The classes no image's prediction holds, lowest first.
fn never_predicted(predictions: &[Vec<u8>], classes: usize) -> Vec<u8> {
    (0..classes as u8)
        .filter(|class| predictions.iter().all(|labels| !labels.contains(class)))
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_close(actual: &Value, expected: Option<f64>, what: &str) {
    match expected {
        None => assert!(actual.is_null(), "{what}: {actual} where null was expected"),
        Some(expected) => {
            let actual = actual
                .as_f64()
                .unwrap_or_else(|| panic!("{what}: {actual}"));
            assert!(
                (actual - expected).abs() < 1e-9,
                "{what}: {actual} vs {expected}"
            );
        }
    }
}

fn assert_metrics(report: &Value, expected: &Expected, classes: &sclip::ClassList) {
    assert_close(&report["mIoU"], expected.miou, "mIoU");
    assert_close(&report["aAcc"], expected.aacc, "aAcc");
    assert_close(&report["mAcc"], expected.macc, "mAcc");
    let reported = report["classes"].as_array().unwrap();
    assert_eq!(reported.len(), classes.len());
    for (class, entry) in reported.iter().enumerate() {
        let name = classes.display_name(class);
        assert_eq!(entry["name"], name);
        assert_close(&entry["IoU"], expected.iou[class], &format!("{name} IoU"));
        assert_close(&entry["Acc"], expected.acc[class], &format!("{name} Acc"));
    }
}

/// Builds the dataset, its truths from the predictions, runs the eval and checks every metric.
fn check_layout(layout: Layout) {
    let dataset = Dataset::new(layout);
    let classes = dataset.layout.classes();
    let predictions = dataset.predictions(&[]);
    let absent = never_predicted(&predictions, classes.len());
    assert!(
        absent.len() >= 2,
        "{}: the fixture predicts almost every class",
        dataset.layout.preset
    );
    let (left_out, relabelled) = (absent[0], absent[absent.len() - 1]);
    let expected = write_truths(&dataset, &predictions, relabelled);
    assert_eq!(expected.iou[usize::from(left_out)], None);
    assert_eq!(expected.iou[usize::from(relabelled)], Some(0.0));

    let json = dataset.json();
    let output = dataset.default_eval().arg("--quiet").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let report = read_json(&json);
    assert_eq!(report["preset"], dataset.layout.preset);
    assert_eq!(report["method"], "sclip");
    assert_eq!(report["images"], dataset.layout.ids.len());
    assert_metrics(&report, &expected, &classes);

    // The table says the same, with n/a for the class left out.
    let table = String::from_utf8(output.stdout).unwrap();
    let row = |class: u8| {
        let name = classes.display_name(usize::from(class));
        // A row is the name padded, then two columns of two spaces and six characters.
        table
            .lines()
            .find(|line| line.get(..line.len().saturating_sub(16)).map(str::trim_end) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name} in\n{table}"))
            .to_string()
    };
    assert!(row(left_out).ends_with("n/a     n/a"), "{}", row(left_out));
    assert!(
        row(relabelled).ends_with("0.00    0.00"),
        "{}",
        row(relabelled)
    );
    let last = table.lines().last().unwrap();
    let miou = format!("mIoU {:.2}  ", expected.miou.unwrap());
    assert!(last.starts_with(&miou), "{last}");
    assert!(last.contains("(3 images,"), "{last}");
}

#[test]
fn voc21_with_its_split_file() {
    check_layout(voc("voc21", false));
}

#[test]
fn voc20_reduces_the_zero_label() {
    check_layout(voc("voc20", true));
}

#[test]
fn context60_with_its_split_file() {
    check_layout(context("context60", false));
}

#[test]
fn context59_reduces_the_zero_label() {
    check_layout(context("context59", true));
}

#[test]
fn coco_object_takes_every_image() {
    check_layout(coco("coco_object", "val2017", "_instanceTrainIds.png"));
}

#[test]
fn coco_stuff164k_takes_every_image() {
    check_layout(coco("coco_stuff164k", "val2017", "_labelTrainIds.png"));
}

#[test]
fn coco_stuff10k_reduces_the_zero_label() {
    check_layout(coco("coco_stuff10k", "test2014", "_labelTrainIds.png"));
}

#[test]
fn cityscapes_images_are_found_in_their_city_folders() {
    check_layout(cityscapes());
}

#[test]
fn ade20k_reduces_the_zero_label() {
    check_layout(ade20k());
}

/// A voc21 dataset whose truths are the predictions made with `options`.
fn voc_dataset_predicted_with(options: &[&str]) -> Dataset {
    let dataset = Dataset::new(voc("voc21", false));
    for (id, labels) in dataset.layout.ids.iter().zip(dataset.predictions(options)) {
        let truth = dataset.layout.truth(&dataset.root(), id);
        write_truth(&truth, &labels, WIDTH, HEIGHT, true);
    }
    dataset
}

fn voc_dataset() -> Dataset {
    voc_dataset_predicted_with(&[])
}

#[test]
fn an_interrupted_or_partial_eval_resumes_from_the_cache_with_the_same_result() {
    let dataset = voc_dataset();
    let dir = dataset.dir.path();
    let (cache, json) = (dir.join("cache"), dir.join("metrics.json"));
    let output = dataset
        .eval(&cache, &json)
        .args(["--limit", "2"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(read_json(&json)["images"], 2);

    let output = dataset.eval(&cache, &json).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 of 3 images counted from the cache"),
        "{stderr}"
    );
    let resumed = read_json(&json);
    assert_eq!(resumed["images"], 3);

    let fresh_json = dir.join("fresh.json");
    let output = dataset
        .eval(&dir.join("fresh-cache"), &fresh_json)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("from the cache"));
    assert_eq!(read_json(&fresh_json), resumed, "resumed = uncached");

    // One cache file edited (a count changed): detected, recomputed, same result.
    let run = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(run.join("key.txt").exists());
    let entry = std::fs::read_dir(&run)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "counts"))
        .unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    bytes[45] ^= 1;
    std::fs::write(&entry, bytes).unwrap();
    let output = dataset.eval(&cache, &json).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 of 3 images counted from the cache"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 damaged cache file was not used; its image is segmented again"),
        "{stderr}"
    );
    assert_eq!(read_json(&json), resumed);

    // Another setting is another run: nothing comes from the cache.
    let output = dataset
        .eval(&cache, &json)
        .args(["--logit-scale", "30"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("from the cache"));
    // So is another dtype, though bf16 keeps its weights in f32 (its products run on AMX).
    let output = dataset
        .eval(&cache, &json)
        .args(["--dtype", "bf16"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("from the cache"));

    // A run whose every image is cached prints its metrics without reading the weights.
    let output = dataset.eval(&cache, &json).arg("-v").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("3 of 3 images counted from the cache"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("sclip: device"),
        "the model was loaded: {stderr}"
    );
    assert_eq!(read_json(&json), resumed);
}

#[test]
fn the_json_file_has_the_documented_fields_only() {
    let dataset = voc_dataset_predicted_with(&["--method", "clearclip"]);
    let json = dataset.json();
    let output = dataset
        .default_eval()
        .args(["--method", "clearclip"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report = read_json(&json);
    let keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["aAcc", "classes", "images", "mAcc", "mIoU", "method", "preset", "settings"]
    );
    assert_eq!(report["method"], "clearclip");
    assert_eq!(report["settings"]["method"], "clearclip");
    assert!(report["settings"]["logit_scale"].is_number());
    // The truths are the predictions: every class present is found exactly.
    assert_eq!(report["aAcc"], 100.0);
    for class in report["classes"].as_array().unwrap() {
        let keys: Vec<&str> = class
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 3, "{class}");
        assert!(class["name"].is_string());
        assert!(class["IoU"].is_null() || class["IoU"] == 100.0, "{class}");
        assert_eq!(class["IoU"].is_null(), class["Acc"].is_null(), "{class}");
    }
    assert_eq!(report["mIoU"], 100.0);
    assert_eq!(report["mAcc"], 100.0);
}

/// Runs the eval on `dataset` expecting failure with `status`; returns its stderr, after checking
/// that no metrics were printed or written.
fn failing_eval(dataset: &Dataset, status: i32) -> String {
    let json = dataset.json();
    let output = dataset.default_eval().output().unwrap();
    assert_eq!(output.status.code(), Some(status), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    assert!(!json.exists(), "no metrics written over a partial split");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn bad_truths_fail_their_image_naming_the_file_and_the_rest_is_cached() {
    let dataset = voc_dataset();
    let root = dataset.root();
    let truth = |index: usize| dataset.layout.truth(&root, VOC_IDS[index]);
    let size = (WIDTH * HEIGHT) as usize;
    // A value past voc21's 21 classes, another size, and no truth at all.
    write_truth(&truth(0), &vec![21; size], WIDTH, HEIGHT, true);
    write_truth(&truth(1), &[0; 20 * 10], 20, 10, true);
    std::fs::remove_file(truth(2)).unwrap();
    let stderr = failing_eval(&dataset, 1);
    let lines: Vec<&str> = stderr.lines().collect();
    let line = |id: &str| {
        *lines
            .iter()
            .find(|line| line.starts_with(&format!("sclip: error: {id}: ")))
            .unwrap_or_else(|| panic!("no error for {id} in\n{stderr}"))
    };
    let first = line(VOC_IDS[0]);
    assert!(first.contains(&truth(0).display().to_string()), "{first}");
    assert!(first.contains("holds the value 21"), "{first}");
    let second = line(VOC_IDS[1]);
    assert!(second.contains(&truth(1).display().to_string()), "{second}");
    assert!(second.contains("is 20x10 but its image"), "{second}");
    assert!(second.contains("is 56x40"), "{second}");
    let third = line(VOC_IDS[2]);
    assert!(third.contains(&truth(2).display().to_string()), "{third}");
    assert!(
        stderr.contains("3 of 3 images failed; no metrics"),
        "{stderr}"
    );

    // Fixed, the eval completes.
    for (id, labels) in VOC_IDS.iter().zip(dataset.predictions(&[])) {
        write_truth(
            &dataset.layout.truth(&root, id),
            &labels,
            WIDTH,
            HEIGHT,
            true,
        );
    }
    let output = dataset.default_eval().output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let report = read_json(&dataset.json());
    assert_eq!(
        (report["images"].as_u64(), report["aAcc"].as_f64()),
        (Some(3), Some(100.0))
    );
}

#[test]
fn a_failed_image_does_not_stop_the_others_which_a_rerun_reads_from_the_cache() {
    let dataset = voc_dataset();
    let truth = dataset.layout.truth(&dataset.root(), VOC_IDS[1]);
    let good = std::fs::read(&truth).unwrap();
    // A colour truth is refused, saying why.
    image::RgbImage::new(WIDTH, HEIGHT).save(&truth).unwrap();
    let stderr = failing_eval(&dataset, 1);
    assert!(stderr.contains("it holds RGB colours"), "{stderr}");
    assert!(stderr.contains("1 of 3 images failed"), "{stderr}");
    assert!(
        stderr.contains("the same command segments only the others"),
        "{stderr}"
    );
    std::fs::write(&truth, good).unwrap();
    let output = dataset.default_eval().output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(read_json(&dataset.json())["images"], 3);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 of 3 images counted from the cache"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2_naming_what_is_missing() {
    let dataset = voc_dataset();
    let split = dataset.root().join("ImageSets/Segmentation/val.txt");
    std::fs::remove_file(&split).unwrap();
    let stderr = failing_eval(&dataset, 2);
    assert!(stderr.contains(&split.display().to_string()), "{stderr}");
    assert!(stderr.contains("split file"), "{stderr}");

    let output = sclip()
        .arg("eval")
        .arg("--dataset")
        .arg(dataset.root())
        .arg("--model")
        .arg(fixture_model())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs --preset NAME"));

    let output = sclip()
        .arg("eval")
        .arg("--dataset")
        .arg(dataset.dir.path().join("nowhere"))
        .args(["--preset", "ade20k"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nowhere does not exist"), "{stderr}");
}

/// `--json` naming a truth, the split file or a named pipe is refused before anything runs, and
/// the file is left as it was (a rename would put the metrics in its place).
#[test]
#[cfg(unix)]
fn a_json_file_that_is_the_datasets_own_or_a_pipe_is_refused_and_left_alone() {
    let dataset = Dataset::new(voc("voc21", false));
    let root = dataset.root();
    let truth = dataset.layout.truth(&root, VOC_IDS[0]);
    write_truth(
        &truth,
        &vec![0; (WIDTH * HEIGHT) as usize],
        WIDTH,
        HEIGHT,
        true,
    );
    let split = root.join("ImageSets/Segmentation/val.txt");
    let pipe = dataset.dir.path().join("pipe.json");
    assert!(std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .unwrap()
        .success());
    for (json, expected) in [
        (&truth, "is the dataset's file"),
        (&split, "is the dataset's file"),
        (&pipe, "is a named pipe (FIFO)"),
    ] {
        let before = std::fs::symlink_metadata(json).unwrap();
        let output = dataset.eval(&dataset.cache(), json).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains("--json"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        let after = std::fs::symlink_metadata(json).unwrap();
        assert_eq!(
            (before.file_type(), before.len()),
            (after.file_type(), after.len())
        );
    }
}

/// Starts an eval of many larger images, waits for its first cached image, sends SIGTERM, and
/// expects it to stop without metrics; the same command then finishes from the cache.
#[test]
#[cfg(unix)]
fn a_signal_stops_the_eval_without_metrics_and_a_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let layout = ade20k();
    let ids: Vec<String> = (0..24).map(|i| format!("ADE_val_{i:08}")).collect();
    for (seed, id) in ids.iter().enumerate() {
        write_noise_image(&layout.image(&root, id), seed as u32);
        write_truth(
            &layout.truth(&root, id),
            &vec![1; (WIDTH * HEIGHT) as usize],
            WIDTH,
            HEIGHT,
            false,
        );
    }
    let (cache, json) = (dir.path().join("cache"), dir.path().join("metrics.json"));
    let eval = || {
        let mut cmd = sclip_process();
        cmd.arg("eval")
            .arg("--dataset")
            .arg(&root)
            .arg("--model")
            .arg(fixture_model())
            .args(["--preset", "ade20k", "--batch-size", "1"])
            // Many windows an image, so that the eval is still going when the signal lands.
            .args(["--short-side", "672"])
            .arg("--cache")
            .arg(&cache)
            .arg("--json")
            .arg(&json);
        cmd
    };
    let child = eval()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let counted = || {
        walk_files(&cache)
            .iter()
            .filter(|path| path.extension().is_some_and(|ext| ext == "counts"))
            .count()
    };
    while counted() == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing cached within two minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(143), "{output:?}");
    assert!(output.stdout.is_empty(), "no metrics: {output:?}");
    assert!(!json.exists());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("interrupted with"), "{stderr}");
    let done = counted();
    assert!((1..24).contains(&done), "{done} images cached");

    let output = eval().output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{done} of 24 images counted from the cache")),
        "{stderr}"
    );
    assert_eq!(read_json(&json)["images"], 24);
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                walk_files(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}
