//! What tells a user about sclip without reading its source: completions, man pages, `--version`,
//! the environment in `--help`, `-v`'s account of the model, `sclip download`, and the header of
//! `sclip presets NAME`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::hub::{sclip_online, start_emulator, untouched, Ranges, COMMIT, REPO};
use common::{fixture_image, fixture_model, json_lines, sclip, sclip_process, segment, summary};
use sclip::presets;
use sclip::{ClassList, Method, Settings};

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeded(output: Output) -> Output {
    assert!(output.status.success(), "{}", stderr(&output));
    output
}

/// The names of sclip's commands, from its own help.
fn commands() -> Vec<String> {
    let help = stdout(&succeeded(sclip().arg("--help").output().unwrap()));
    let listed: Vec<String> = help
        .split("Commands:\n")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    for expected in ["segment", "presets", "download", "completions", "man"] {
        assert!(listed.iter().any(|name| name == expected), "{help}");
    }
    listed
}

#[test]
fn every_shell_gets_a_completion_script_naming_the_commands_and_flags() {
    let markers = [
        ("bash", "complete -F _sclip"),
        ("zsh", "#compdef sclip"),
        ("fish", "complete -c sclip"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[sclip]"),
    ];
    for (shell, marker) in markers {
        let script = stdout(&succeeded(
            sclip().args(["completions", shell]).output().unwrap(),
        ));
        assert!(script.contains(marker), "{shell}: {script}");
        for command in commands() {
            assert!(script.contains(&command), "{shell} lacks {command}");
        }
        assert!(script.contains("classes-file"), "{shell} lacks the flags");
    }
    let output = sclip().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("possible values"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_bash_script_is_valid_bash_and_completes_the_commands() {
    let script = stdout(&succeeded(
        sclip().args(["completions", "bash"]).output().unwrap(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sclip.bash");
    std::fs::write(&path, script).unwrap();
    let completion = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}'; COMP_WORDS=(sclip dow); COMP_CWORD=1; COMP_LINE='sclip dow'; \
             COMP_POINT=9; _sclip sclip dow sclip; echo \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output();
    let Ok(completion) = completion else {
        eprintln!("skipped: bash is not installed");
        return;
    };
    assert_eq!(stdout(&succeeded(completion)).trim(), "download");
}

#[test]
fn the_man_pages_are_roff_for_sclip_and_each_command() {
    let page = stdout(&succeeded(sclip().arg("man").output().unwrap()));
    assert!(page.contains(".TH sclip 1"), "{page}");
    assert!(page.contains(".SH SYNOPSIS"), "{page}");
    for command in commands() {
        assert!(
            page.contains(&format!("sclip\\-{command}(1)")),
            "{command}: {page}"
        );
    }

    let segment_page = stdout(&succeeded(
        sclip().args(["man", "segment"]).output().unwrap(),
    ));
    assert!(
        segment_page.contains(".TH sclip-segment 1"),
        "{segment_page}"
    );
    assert!(
        segment_page.contains("\\-\\-classes\\-file"),
        "{segment_page}"
    );
    assert!(segment_page.contains("HF_HUB_OFFLINE"), "{segment_page}");
    // The after-help's aligned lists are not reflowed as prose.
    assert!(segment_page.contains(".SH EXTRA\n.nf\n"), "{segment_page}");

    let root = tempfile::tempdir().unwrap();
    // Created as needed, as ~/.local/share/man/man1 often is not there yet.
    let dir = root.path().join("man/man1");
    let output = succeeded(
        sclip()
            .args(["man", "--out-dir"])
            .arg(&dir)
            .output()
            .unwrap(),
    );
    let mut expected: Vec<PathBuf> = vec![dir.join("sclip.1")];
    expected.extend(
        commands()
            .iter()
            .map(|command| dir.join(format!("sclip-{command}.1"))),
    );
    let listed: Vec<PathBuf> = stdout(&output).lines().map(PathBuf::from).collect();
    assert_eq!(listed, expected);
    assert_eq!(std::fs::read_to_string(&expected[0]).unwrap(), page);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), expected.len());

    let output = sclip().args(["man", "nope"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("no command \"nope\""), "{text}");
    assert!(text.contains("segment"), "{text}");
}

/// Text on stdout that cannot be written (a full disk) is an error naming the cause, never a
/// silent exit 0; a reader that stops early is not one.
#[test]
#[cfg(target_os = "linux")]
fn output_that_cannot_be_written_is_an_error_and_a_closed_pipe_is_not() {
    for args in [
        &["presets"][..],
        &["presets", "voc21", "--method", "naclip"],
        &["--version"],
        &["--help"],
        &["segment", "--help"],
        &["completions", "bash"],
        &["man"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let output = sclip_process().args(args).stdout(full).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}: {output:?}");
        let text = stderr(&output);
        assert_eq!(text.lines().count(), 1, "{args:?}: {text}");
        assert!(
            text.starts_with("sclip: error: ") && text.contains("No space left on device"),
            "{args:?}: {text}"
        );

        let mut reader = sclip_process()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(reader.stdout.take());
        let output = reader.wait_with_output().unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert!(output.stderr.is_empty(), "{args:?}: {output:?}");
    }
}

#[test]
fn man_out_dir_that_is_a_file_or_a_dangling_link_is_a_usage_error() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("man1");
    std::fs::write(&file, b"").unwrap();
    let mut targets = vec![file];
    #[cfg(unix)]
    {
        let link = root.path().join("link");
        std::os::unix::fs::symlink(root.path().join("nowhere"), &link).unwrap();
        targets.push(link);
    }
    for target in targets {
        let output = sclip()
            .args(["man", "--out-dir"])
            .arg(&target)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let text = stderr(&output);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(&target.display().to_string()), "{text}");
        assert!(text.contains("exists and is not a folder"), "{text}");
    }
}

#[test]
fn the_version_says_the_commit_features_and_this_machines_kernels() {
    let version = env!("CARGO_PKG_VERSION");
    let short = stdout(&succeeded(sclip().arg("-V").output().unwrap()));
    assert!(
        short.starts_with(&format!("sclip {version} (commit ")),
        "{short}"
    );
    assert_eq!(short.lines().count(), 1, "{short}");

    let long = stdout(&succeeded(sclip().arg("--version").output().unwrap()));
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines[0], format!("sclip {version}"), "{long}");
    let commit = lines[1].strip_prefix("commit: ").expect(&long);
    let head = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| stdout(&output).trim().to_string());
    let in_checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists();
    match head.filter(|_| in_checkout) {
        Some(head) => {
            let short_hash = commit.split(',').next().unwrap();
            assert!(short_hash.len() >= 7, "{long}");
            assert!(head.starts_with(short_hash), "{head} vs {long}");
            assert!(short.contains(short_hash), "{short}");
        }
        None => assert!(commit.starts_with("unknown"), "{long}"),
    }
    assert!(lines[2].starts_with("target: "), "{long}");
    let features = if cfg!(feature = "cuda") {
        "features: cuda"
    } else {
        "features: none"
    };
    assert!(lines[3].starts_with(features), "{long}");
    let kernels = sclip::cpu_kernels();
    let vector = kernels.vector;
    let amx = if kernels.amx_bf16 { "yes" } else { "no" };
    assert_eq!(
        lines[4].split(" (").next().unwrap(),
        format!("CPU kernels on this machine: {vector}; AMX-BF16: {amx}"),
        "{long}"
    );
}

/// The section of `help` from `Environment:` to the next blank line.
fn environment_section(help: &str) -> &str {
    let start = help.find("\nEnvironment:\n").expect(help);
    let section = &help[start + 1..];
    &section[..section.find("\n\n").unwrap_or(section.len())]
}

#[test]
fn help_lists_every_environment_variable_sclip_reads() {
    let hub = [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_ETAG_TIMEOUT",
        "HF_HUB_DOWNLOAD_TIMEOUT",
        "HTTPS_PROXY",
        "NO_PROXY",
    ];
    let local = [
        "SCLIP_CACHE_DIR",
        "XDG_CACHE_HOME",
        "RAYON_NUM_THREADS",
        "NO_COLOR",
    ];
    let help = stdout(&succeeded(
        sclip().args(["segment", "--help"]).output().unwrap(),
    ));
    let section = environment_section(&help);
    for variable in hub.iter().chain(&local) {
        assert!(
            section.contains(variable),
            "{variable} missing from {section}"
        );
    }
    assert!(help.contains("\nExit status:\n"), "{help}");

    let help = stdout(&succeeded(
        sclip().args(["download", "--help"]).output().unwrap(),
    ));
    let section = environment_section(&help);
    for variable in hub {
        assert!(
            section.contains(variable),
            "{variable} missing from {section}"
        );
    }
    assert!(!section.contains("RAYON_NUM_THREADS"), "{section}");
}

/// `sclip download` with `args` against `endpoint` (or offline without one), its cache in `home`.
fn download(endpoint: Option<&str>, home: &Path, args: &[&str]) -> Output {
    let mut command = match endpoint {
        Some(endpoint) => sclip_online(endpoint, home),
        None => {
            let mut command = sclip_process();
            command.env("HF_HOME", home).env_remove("HF_HUB_CACHE");
            command
        }
    };
    command.arg("download").args(args).output().unwrap()
}

#[test]
fn download_prints_the_snapshot_folder_and_a_second_run_offline_prints_it_again() {
    let emulator = start_emulator("model", Ranges::Honoured, untouched);
    let home = tempfile::tempdir().unwrap();
    let output = succeeded(download(Some(&emulator.hub.url()), home.path(), &[REPO]));
    let printed = stdout(&output);
    assert_eq!(printed.lines().count(), 1, "{printed}");
    let folder = PathBuf::from(printed.trim_end_matches('\n'));
    let snapshot = home
        .path()
        .join("hub/models--sclip-tests--tiny-clip/snapshots")
        .join(COMMIT);
    assert_eq!(folder, snapshot);
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let expected = std::fs::read(fixture_model().join(file)).unwrap();
        assert_eq!(
            std::fs::read(folder.join(file)).unwrap(),
            expected,
            "{file}"
        );
    }
    let said = stderr(&output);
    assert!(said.contains("sclip: downloading"), "{said}");
    assert!(
        said.contains(&format!("model {REPO} at commit {COMMIT} (revision main)")),
        "{said}"
    );

    let asked = emulator.hub.requests().len();
    let offline = succeeded(download(None, home.path(), &[REPO, "--quiet"]));
    assert_eq!(stdout(&offline), printed);
    assert_eq!(stderr(&offline), "", "--quiet says nothing");
    assert_eq!(emulator.hub.requests().len(), asked, "offline asks nothing");

    let by_commit = succeeded(download(
        None,
        home.path(),
        &[REPO, "--revision", COMMIT, "-q"],
    ));
    assert_eq!(stdout(&by_commit), printed);

    // What was downloaded runs offline, named either way, and -v says which files it used.
    let from_hub = format!(
        "sclip: model {REPO} at commit {COMMIT} (revision main), files in {} (model.safetensors)",
        folder.display()
    );
    let from_folder = format!(
        "sclip: model files in the local folder {} (model.safetensors)",
        folder.display()
    );
    for (model, said) in [
        (REPO.to_string(), from_hub),
        (folder.display().to_string(), from_folder),
    ] {
        let out = tempfile::tempdir().unwrap();
        let output = sclip_process()
            .env("HF_HOME", home.path())
            .env_remove("HF_HUB_CACHE")
            .arg("segment")
            .arg(fixture_image("small_window.png"))
            .args([
                "--model",
                &model,
                "--classes",
                "person,sky",
                "--short-side",
                "112",
                "-v",
            ])
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap();
        let text = stderr(&succeeded(output));
        assert!(
            text.lines().any(|line| line == said),
            "{said} not in {text}"
        );
        assert!(out.path().join("small_window.png").is_file(), "{model}");
    }
}

#[test]
fn download_offline_of_an_uncached_model_fails_on_one_line_and_prints_nothing() {
    let home = tempfile::tempdir().unwrap();
    let output = download(None, home.path(), &[REPO]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("HF_HUB_OFFLINE=1 forbids downloading"),
        "{text}"
    );
    assert!(text.contains(REPO), "{text}");
}

#[test]
fn download_of_a_local_folder_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let folder = fixture_model().display().to_string();
    let output = download(None, home.path(), &[&folder]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
    let text = stderr(&output);
    assert!(text.contains("taken for a local folder"), "{text}");
    assert!(text.contains("--model"), "{text}");
}

#[test]
fn verbose_names_the_model_files_the_device_the_dtype_and_the_kernels() {
    let out = tempfile::tempdir().unwrap();
    let output = succeeded(
        segment()
            .arg(fixture_image("small_window.png"))
            .arg("-v")
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap(),
    );
    let text = stderr(&output);
    assert!(
        text.contains(&format!(
            "sclip: model files in the local folder {} (model.safetensors)",
            fixture_model().display()
        )),
        "{text}"
    );
    let vector = sclip::cpu_kernels().vector;
    assert!(
        text.contains(&format!(
            "sclip: device cpu, dtype f32: sclip's f32 CPU kernels ({vector})"
        )),
        "{text}"
    );

    let output = succeeded(
        segment()
            .arg(fixture_image("small_window.png"))
            .args(["-v", "--dtype", "f16", "--out"])
            .arg(out.path())
            .output()
            .unwrap(),
    );
    let text = stderr(&output);
    assert!(
        text.contains("sclip: device cpu, dtype f16: candle's generic CPU ops"),
        "{text}"
    );

    let output = succeeded(
        segment()
            .arg(fixture_image("small_window.png"))
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap(),
    );
    assert!(
        !stderr(&output).contains("sclip: model"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_presets_class_file_says_its_settings_stay_with_the_preset() {
    for (method, flag) in [(Method::Sclip, None), (Method::NaClip, Some("naclip"))] {
        let mut command = sclip();
        command.args(["presets", "voc21"]);
        if let Some(flag) = flag {
            command.args(["--method", flag]);
        }
        let printed = stdout(&succeeded(command.output().unwrap()));
        let preset = presets::find("voc21").unwrap();
        let tuning = preset.tuning(method);
        let header: String = printed
            .lines()
            .take_while(|line| *line != "#")
            .collect::<Vec<_>>()
            .join("\n");
        let keeping = match flag {
            Some(flag) => format!("--preset voc21 --method {flag} --classes-file edited.txt"),
            None => "--preset voc21 --classes-file edited.txt".to_string(),
        };
        assert!(header.contains(&keeping), "{header}");
        assert!(header.contains("--classes-file alone"), "{header}");
        assert!(
            header.contains(&format!(
                "short side {}, window {}, stride {}, logit scale {}, prob thd {}",
                tuning.short_side,
                tuning.window,
                tuning.stride,
                tuning.logit_scale,
                tuning.prob_thd
            )),
            "{header}"
        );
        assert!(
            header.contains(&format!("--method {}", method.name())),
            "{header}"
        );
        assert!(
            printed.ends_with(preset.class_file),
            "the dataset's file follows whole"
        );
        let classes = ClassList::parse_file_contents(&printed).unwrap();
        assert_eq!(classes.len(), preset.classes().len());

        // What the header says is what runs: the edited copy with the preset keeps its settings
        // (but the one given explicitly), and alone runs with the defaults.
        let dir = tempfile::tempdir().unwrap();
        let edited = dir.path().join("edited.txt");
        std::fs::write(&edited, printed.replace("aeroplane", "airplane")).unwrap();
        let settings_of = |with_preset: bool| {
            let mut command = sclip();
            command
                .arg("segment")
                .arg(fixture_image("small_window.png"))
                .arg("--model")
                .arg(fixture_model())
                .arg("--classes-file")
                .arg(&edited)
                .args(["--short-side", "112", "--json", "--out"])
                .arg(dir.path());
            if with_preset {
                command.args(["--preset", "voc21"]);
            }
            if let Some(flag) = flag {
                command.args(["--method", flag]);
            }
            summary(&json_lines(&succeeded(command.output().unwrap())))["settings"].clone()
        };
        let kept = settings_of(true);
        assert_eq!(kept["short_side"], 112);
        assert_eq!(kept["window"], tuning.window);
        assert_eq!(kept["stride"], tuning.stride);
        assert_eq!(kept["logit_scale"], tuning.logit_scale);
        assert_eq!(kept["prob_thd"], tuning.prob_thd);
        assert_eq!(kept["pamr"], tuning.pamr_steps);
        let lost = settings_of(false);
        assert_eq!(
            lost["logit_scale"],
            Settings::DEFAULT.postprocess.logit_scale
        );
        assert_eq!(lost["prob_thd"], Settings::DEFAULT.postprocess.prob_thd);
    }
}
