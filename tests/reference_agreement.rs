//! The binary, run as a user runs it on the fixture model, must give the reference
//! implementation's masks (tests/reference/sclip_ref.py): labels equal on >= 99.9% of pixels
//! and final per-class scores within 1e-4, for every fixture image.

mod common;

use std::path::Path;

use common::{cases, read_label_png, sclip, Case, Npy};

const MIN_LABEL_AGREEMENT: f64 = 0.999;
const MAX_PROB_DIFFERENCE: f32 = 1e-4;

/// Runs `case` with `extra` options; returns the share of its mask's labels that equal
/// `expected_labels` and the largest difference of its scores from `expected_probs`.
fn agreement(
    case: &Case,
    extra: &[&str],
    expected_labels: &Path,
    expected_probs: &Path,
) -> (f64, f32) {
    let out = tempfile::tempdir().unwrap();
    let output = sclip()
        .args(case.args(out.path()))
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} {extra:?}: sclip failed: {}",
        case.name,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("{}x{}", case.width, case.height)),
        "{}: the report line names the size: {stdout}",
        case.name
    );

    let (width, height, labels) = read_label_png(&out.path().join(format!("{}.png", case.stem())));
    assert_eq!(
        (width, height),
        (case.width, case.height),
        "{}: mask size",
        case.name
    );
    let expected_labels = Npy::read(expected_labels);
    assert_eq!(expected_labels.shape, [height, width]);
    let expected_labels = expected_labels.u8s();
    let agreeing = labels
        .iter()
        .zip(&expected_labels)
        .filter(|(a, b)| a == b)
        .count();
    let agreement = agreeing as f64 / labels.len() as f64;

    let probs = Npy::read(&out.path().join(format!("{}.probs.npy", case.stem())));
    let expected_probs = Npy::read(expected_probs);
    assert_eq!(
        probs.shape, expected_probs.shape,
        "{}: probs shape",
        case.name
    );
    assert_eq!(probs.shape, [case.classes.len(), height, width]);
    let max_difference = probs
        .f32s()
        .iter()
        .zip(expected_probs.f32s())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    (agreement, max_difference)
}

#[test]
fn every_fixture_case_matches_the_reference() {
    let cases = cases();
    assert!(
        cases.len() >= 4,
        "the manifest should hold at least 4 cases"
    );
    let mut failures = Vec::new();
    for case in &cases {
        let (agreement, max_difference) = agreement(case, &[], &case.labels, &case.probs);
        println!(
            "{:<14} labels agree on {:.4}% of pixels, max |prob diff| {max_difference:.2e}",
            case.name,
            100.0 * agreement
        );
        if agreement < MIN_LABEL_AGREEMENT || max_difference > MAX_PROB_DIFFERENCE {
            failures.push(format!(
                "{}: label agreement {agreement:.5}, max prob diff {max_difference:.2e}",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "disagreements with the reference:\n{}",
        failures.join("\n")
    );
}

/// Runs every entry of a fixture manifest (`tests/fixtures/<manifest>`, written by
/// `make_fixtures.py`: a case, the reference's labels and probs, and the options that made
/// them) with the options `run` gives for it, and checks the outputs against the reference's
/// within the bounds of SCLIP's own cases. `run` also names the entry in messages. Returns how
/// many entries the manifest has.
fn every_entry_matches_the_reference(
    manifest: &str,
    run: impl Fn(&serde_json::Value) -> (Vec<String>, String),
) -> usize {
    let entries: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join(manifest)).expect(manifest),
    )
    .expect("the manifest is JSON");
    let cases = cases();
    let mut failures = Vec::new();
    for entry in &entries {
        let field = |name: &str| {
            entry[name]
                .as_str()
                .unwrap_or_else(|| panic!("{name} in {entry}"))
        };
        let case = cases
            .iter()
            .find(|case| case.name == field("case"))
            .unwrap_or_else(|| panic!("no case {}", field("case")));
        let (options, label) = run(entry);
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        let (agreement, max_difference) = agreement(
            case,
            &options,
            &common::fixtures().join(field("labels")),
            &common::fixtures().join(field("probs")),
        );
        println!(
            "{label}: labels agree on {:.4}% of pixels, max |prob diff| {max_difference:.2e}",
            100.0 * agreement
        );
        if agreement < MIN_LABEL_AGREEMENT || max_difference > MAX_PROB_DIFFERENCE {
            failures.push(format!(
                "{label}: label agreement {agreement:.5}, max prob diff {max_difference:.2e}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "disagreements with the reference:\n{}",
        failures.join("\n")
    );
    entries.len()
}

/// Every other head (`--method`) and CSA projection (`--csa-proj`) of spec section 8 gives the
/// reference's outputs for it (tests/fixtures/heads/heads.json, written by
/// `make_fixtures.py --heads`), within the same bounds as SCLIP's own.
#[test]
fn every_head_and_csa_projection_matches_the_reference() {
    let heads = every_entry_matches_the_reference("heads/heads.json", |head| {
        let (method, projection) = (&head["method"], &head["csa_proj"]);
        let (method, projection) = (
            method.as_str().expect("method"),
            projection.as_str().expect("csa_proj"),
        );
        (
            ["--method", method, "--csa-proj", projection]
                .map(String::from)
                .to_vec(),
            format!("{method:<9} {projection:<8}"),
        )
    });
    assert_eq!(heads, 7, "four peers and three projections");
}

/// PAMR (`--pamr STEPS --pamr-dilations D,D`, spec section 7) gives the reference's outputs
/// (tests/fixtures/pamr/pamr.json, written by `make_fixtures.py --pamr`), within the same
/// bounds; one case has both thresholds, which then read the refined logits.
#[test]
fn pamr_matches_the_reference() {
    let runs = every_entry_matches_the_reference("pamr/pamr.json", |run| {
        let steps = run["steps"].to_string();
        let dilations: Vec<String> = run["dilations"]
            .as_array()
            .expect("dilations")
            .iter()
            .map(|d| d.to_string())
            .collect();
        let dilations = dilations.join(",");
        let label = format!(
            "{:<14} PAMR {steps} steps at {dilations}",
            run["case"].as_str().expect("case")
        );
        (
            ["--pamr", &steps, "--pamr-dilations", &dilations]
                .map(String::from)
                .to_vec(),
            label,
        )
    });
    assert_eq!(runs, 3);
}

/// `--dtype bf16` may stray from the reference no further than PyTorch's own bf16 autocast does
/// on the same case (recorded by the fixture script in tests/fixtures/bf16.json): scores within
/// twice its largest difference, labels within one point of its agreement.
#[test]
fn bf16_strays_no_further_than_pytorch_autocast() {
    let limits: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("bf16.json")).expect("bf16.json"),
    )
    .expect("bf16.json is JSON");
    let mut failures = Vec::new();
    for case in &cases() {
        let limit = &limits[&case.name];
        let max_allowed = 2.0 * limit["max_prob_diff"].as_f64().expect("max_prob_diff") as f32;
        let min_agreement = limit["label_agreement"].as_f64().expect("label_agreement") - 0.01;
        let out = tempfile::tempdir().unwrap();
        let output = sclip()
            .args(case.args(out.path()))
            .args(["--dtype", "bf16"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}: {output:?}", case.name);
        let (_, _, labels) = read_label_png(&out.path().join(format!("{}.png", case.stem())));
        let expected_labels = Npy::read(&case.labels).u8s();
        let agreement = labels
            .iter()
            .zip(&expected_labels)
            .filter(|(a, b)| a == b)
            .count() as f64
            / labels.len() as f64;
        let probs = Npy::read(&out.path().join(format!("{}.probs.npy", case.stem()))).f32s();
        let max_difference = probs
            .iter()
            .zip(Npy::read(&case.probs).f32s())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{:<14} bf16: labels agree on {:.2}% (limit {:.2}%), max |prob diff| {max_difference:.2e} (limit {max_allowed:.2e})",
            case.name,
            100.0 * agreement,
            100.0 * min_agreement
        );
        if agreement < min_agreement || max_difference > max_allowed {
            failures.push(case.name.clone());
        }
    }
    assert!(failures.is_empty(), "bf16 strays too far on {failures:?}");
}
