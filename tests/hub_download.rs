//! `--model org/name` downloads through the local emulator of the Hugging Face hub in
//! `common::hub`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::hub::{
    dead_endpoint, hub_reply, ranged, repo_files, sclip_online, start_emulator, untouched, HubFile,
    Ranges, Reply, Server, COMMIT, REPO,
};
use common::{fixtures, sclip_process};

const TOKEN: &str = "hf_test_secret";

/// `sclip segment` of the astronaut by repo id, online against `endpoint`, with the hub's
/// variables cleared but for `HF_HOME=home`.
fn segment_online(endpoint: &str, home: &Path, out: &Path) -> Command {
    segment_model_online(REPO, endpoint, home, out)
}

fn segment_model_online(model: &str, endpoint: &str, home: &Path, out: &Path) -> Command {
    let mut command = sclip_online(endpoint, home);
    command
        .args([
            "segment",
            fixtures().join("images/astronaut.jpg").to_str().unwrap(),
        ])
        .args(["--model", model, "--classes", "person,sky,wall", "--out"])
        .arg(out);
    command
}

/// Runs `command`, killing it if it is still running after `limit`.
fn run_within(mut command: Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "sclip still ran after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), started.elapsed())
}

fn run(command: Command) -> Output {
    run_within(command, Duration::from_secs(120)).0
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_success(output: &Output) {
    assert!(output.status.success(), "{}", stderr(output));
}

/// A failure on one line (besides the lines saying what was downloaded or waited for), with
/// nothing written to `out`.
fn assert_one_line_failure(output: &Output, out: &Path) -> String {
    assert_eq!(output.status.code(), Some(1), "{}", stderr(output));
    let text = stderr(output);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("sclip: waiting") && !l.starts_with("sclip: downloading"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(std::fs::read_dir(out).unwrap().count(), 0);
    text
}

fn repo_dir(home: &Path) -> PathBuf {
    home.join("hub")
        .join(format!("models--{}", REPO.replace('/', "--")))
}

/// The mask the local fixture folder gives.
fn local_mask(fixture: &str) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let mut command = sclip_process();
    command
        .args([
            "segment",
            fixtures().join("images/astronaut.jpg").to_str().unwrap(),
        ])
        .args(["--model", fixtures().join(fixture).to_str().unwrap()])
        .args(["--classes", "person,sky,wall", "--out"])
        .arg(out.path());
    assert_success(&run(command));
    std::fs::read(out.path().join("astronaut.png")).unwrap()
}

fn mask(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("astronaut.png")).unwrap()
}

fn blob_names(home: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_dir(home).join("blobs"))
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_download_lays_out_the_hub_cache_as_python_does_and_loads() {
    let emulator = start_emulator("model", Ranges::Honoured, untouched);
    let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let output = run(segment_online(&emulator.hub.url(), home.path(), out.path()));
    assert_success(&output);
    assert_eq!(mask(out.path()), local_mask("model"));

    let repo = repo_dir(home.path());
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let mut expected_blobs = Vec::new();
    for file in &emulator.files {
        let etag = if file.lfs {
            file.sha256()
        } else {
            file.git_etag()
        };
        let pointer = repo.join("snapshots").join(COMMIT).join(file.name);
        assert_eq!(
            std::fs::read_link(&pointer).unwrap(),
            Path::new("../../blobs").join(&etag),
            "{}",
            file.name
        );
        assert_eq!(std::fs::read(&pointer).unwrap(), file.bytes);
        expected_blobs.push(etag);
    }
    expected_blobs.sort();
    assert_eq!(
        blob_names(home.path()),
        expected_blobs,
        "no .incomplete left"
    );
    let lock = home
        .path()
        .join("hub/.locks/models--sclip-tests--tiny-clip");
    assert!(lock
        .join(format!("{}.lock", emulator.files[2].sha256()))
        .exists());
}

#[test]
fn the_token_goes_to_the_hub_but_not_to_the_cdn() {
    let emulator = start_emulator("model", Ranges::Honoured, untouched);
    let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut command = segment_online(&emulator.hub.url(), home.path(), out.path());
    command.env("HF_TOKEN", TOKEN);
    assert_success(&run(command));
    let bearer = format!("Bearer {TOKEN}");
    let hub = emulator.hub.requests();
    assert!(!hub.is_empty());
    assert!(
        hub.iter()
            .all(|r| r.header("authorization") == Some(&bearer)),
        "{hub:?}"
    );
    let cdn = emulator.cdn.requests();
    assert_eq!(cdn.len(), 1, "{cdn:?}");
    assert!(cdn[0].header("authorization").is_none(), "{cdn:?}");
}

/// `hf auth login` saves the token in HF_HOME/token, whatever HF_HUB_CACHE says; HF_TOKEN_PATH
/// moves it.
#[test]
fn the_saved_token_is_read_from_hf_home_or_hf_token_path() {
    for token_path in [None, Some("elsewhere/my-token")] {
        let emulator = start_emulator("model", Ranges::Honoured, untouched);
        let (home, cache, out) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let saved = match token_path {
            Some(path) => home.path().join(path),
            None => home.path().join("token"),
        };
        std::fs::create_dir_all(saved.parent().unwrap()).unwrap();
        std::fs::write(&saved, format!("{TOKEN}\n")).unwrap();
        let mut command = segment_online(&emulator.hub.url(), home.path(), out.path());
        command.env("HF_HUB_CACHE", cache.path());
        if token_path.is_some() {
            command.env("HF_TOKEN_PATH", &saved);
        }
        assert_success(&run(command));
        let first = &emulator.hub.requests()[0];
        assert_eq!(
            first.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{token_path:?}"
        );
    }
}

/// A leftover `.incomplete` of the right blob, with its first bytes wrong.
fn plant_leftover(home: &Path, file: &HubFile) -> PathBuf {
    let blobs = repo_dir(home).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let leftover = blobs.join(format!("{}.incomplete", file.sha256()));
    let mut bytes = file.bytes[..file.bytes.len() / 2].to_vec();
    bytes[..64].fill(0xAB);
    std::fs::write(&leftover, bytes).unwrap();
    leftover
}

#[test]
fn a_resumed_download_is_right_whatever_the_server_does_with_the_range() {
    for ranges in [Ranges::Ignored, Ranges::Misreported, Ranges::Honoured] {
        let emulator = start_emulator("model", ranges, untouched);
        let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let weights = &emulator.files[2];
        let leftover = plant_leftover(home.path(), weights);
        assert_success(&run(segment_online(
            &emulator.hub.url(),
            home.path(),
            out.path(),
        )));
        let blob = repo_dir(home.path()).join("blobs").join(weights.sha256());
        assert_eq!(std::fs::read(&blob).unwrap(), weights.bytes);
        assert!(!leftover.exists());
        assert_eq!(mask(out.path()), local_mask("model"));
        let asked: Vec<_> = emulator
            .cdn
            .requests()
            .iter()
            .map(|r| r.header("range").map(str::to_string))
            .collect();
        let half = weights.bytes.len() / 2;
        assert_eq!(asked[0], Some(format!("bytes={half}-")), "it resumes");
    }
}

fn flip_one_byte(mut bytes: Vec<u8>) -> Vec<u8> {
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    bytes
}

fn drop_last_byte(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.pop();
    bytes
}

#[test]
fn a_download_of_the_wrong_hash_or_size_is_refused_and_not_kept() {
    for (tamper, words) in [
        (flip_one_byte as fn(Vec<u8>) -> Vec<u8>, "sha256"),
        (drop_last_byte, "bytes where the hub said"),
    ] {
        let emulator = start_emulator("model", Ranges::Honoured, tamper);
        let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let output = run(segment_online(&emulator.hub.url(), home.path(), out.path()));
        let text = assert_one_line_failure(&output, out.path());
        let weights = &emulator.files[2];
        assert!(text.contains(words), "{text}");
        assert!(
            text.contains(&format!(
                "{}/blobs/{}",
                emulator.cdn.url(),
                weights.sha256()
            )),
            "{text}"
        );
        assert!(
            !blob_names(home.path())
                .iter()
                .any(|name| name.starts_with(&weights.sha256())),
            "{:?}",
            blob_names(home.path())
        );
        let pointer = repo_dir(home.path())
            .join("snapshots")
            .join(COMMIT)
            .join(weights.name);
        assert!(std::fs::symlink_metadata(pointer).is_err());
    }
}

#[test]
fn a_silent_hub_fails_within_the_timeout_and_says_what_it_waits_for() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accepts and never answers.
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().flatten().collect();
        drop(held);
    });
    let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut command = segment_online(&endpoint, home.path(), out.path());
    command.env("HF_HUB_ETAG_TIMEOUT", "2");
    let (output, took) = run_within(command, Duration::from_secs(30));
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let url = format!("{endpoint}/{REPO}/resolve/main/config.json");
    assert!(
        text.contains(&format!("sclip: waiting for the hub to answer HEAD {url}")),
        "{text}"
    );
    assert!(text.contains("did not answer within 2 s"), "{text}");
    assert!(text.contains("HF_HUB_ETAG_TIMEOUT"), "{text}");
}

/// A CDN that sends the headers and half the file, then nothing.
#[test]
fn a_download_that_stalls_midway_fails_within_the_timeout() {
    let files = repo_files("model");
    let weights = files[2].clone();
    let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
    let cdn_url = format!("http://{}", cdn.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in cdn.incoming().flatten() {
            let mut request = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            while reader.read_line(&mut request).unwrap_or(0) > 2 {}
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                weights.bytes.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&weights.bytes[..weights.bytes.len() / 2]);
            held.push(stream);
        }
    });
    let hub = Server::start(move |request| hub_reply(&files, &cdn_url, request));
    let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut command = segment_online(&hub.url(), home.path(), out.path());
    command.env("HF_HUB_DOWNLOAD_TIMEOUT", "1");
    let (output, took) = run_within(command, Duration::from_secs(30));
    let text = assert_one_line_failure(&output, out.path());
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(text.contains("did not answer within 1 s"), "{text}");
    assert!(text.contains("HF_HUB_DOWNLOAD_TIMEOUT"), "{text}");
}

#[test]
fn bad_hub_settings_are_refused_by_name() {
    for (variable, value) in [
        ("HF_HUB_ETAG_TIMEOUT", "soon"),
        ("HF_HUB_DOWNLOAD_TIMEOUT", "-1"),
        ("HF_ENDPOINT", "ftp://mirror"),
    ] {
        let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut command = segment_online(&dead_endpoint(), home.path(), out.path());
        command.env(variable, value);
        let text = assert_one_line_failure(&run(command), out.path());
        assert!(text.contains(&format!("{variable}={value:?}")), "{text}");
    }
}

#[test]
fn the_hubs_error_codes_are_told_in_plain_words_with_the_url() {
    let cases = [
        (
            401,
            "RepoNotFound",
            "no such repo on the hub, or it is private",
        ),
        (403, "GatedRepo", "the repo is gated"),
        (404, "RevisionNotFound", "the repo has no such revision"),
        (404, "EntryNotFound", "has no file config.json on the hub"),
    ];
    for (status, code, words) in cases {
        let hub = Server::start(move |_| {
            Reply::new(status)
                .header("X-Error-Code", code)
                .header("X-Repo-Commit", COMMIT)
        });
        let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let output = run(segment_online(&hub.url(), home.path(), out.path()));
        let text = assert_one_line_failure(&output, out.path());
        assert!(text.contains(words), "{code}: {text}");
        let url = format!("{}/{REPO}/resolve/main/config.json", hub.url());
        assert!(text.contains(&url), "{code}: {text}");
    }
}

/// A revision with only `pytorch_model.bin`: the hub's 404 for `model.safetensors` is kept in
/// `.no_exist`, so later runs need one question to the hub, or none when it is down.
#[test]
fn a_missing_safetensors_is_recorded_and_honoured() {
    let emulator = start_emulator("model-bin", Ranges::Honoured, untouched);
    let home = tempfile::tempdir().unwrap();
    let reference = local_mask("model");
    let first = tempfile::tempdir().unwrap();
    assert_success(&run(segment_online(
        &emulator.hub.url(),
        home.path(),
        first.path(),
    )));
    assert_eq!(mask(first.path()), reference);
    let marker = repo_dir(home.path())
        .join(".no_exist")
        .join(COMMIT)
        .join("model.safetensors");
    assert!(marker.is_file());

    let asked_before = emulator.hub.requests().len();
    let second = tempfile::tempdir().unwrap();
    assert_success(&run(segment_online(
        &emulator.hub.url(),
        home.path(),
        second.path(),
    )));
    let asked: Vec<String> = emulator.hub.requests()[asked_before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        asked,
        [format!("/{REPO}/resolve/main/config.json")],
        "one question for the commit, then the cache"
    );

    let down = tempfile::tempdir().unwrap();
    let output = run(segment_online(&dead_endpoint(), home.path(), down.path()));
    assert_success(&output);
    assert_eq!(mask(down.path()), reference);
    assert!(
        stderr(&output).contains("using the cached commit"),
        "{}",
        stderr(&output)
    );
}

/// Runs `command` under a pseudo-terminal (util-linux `script`) so that bars are drawn, and
/// returns what the terminal showed.
fn terminal_output(command: &Command) -> String {
    // env takes every -u before the first assignment.
    let (mut removed, mut set) = (String::new(), String::new());
    for (key, value) in command.get_envs() {
        let key = key.to_string_lossy();
        match value {
            Some(value) => set.push_str(&format!("{key}='{}' ", value.to_string_lossy())),
            None => removed.push_str(&format!("-u {key} ")),
        }
    }
    let mut shell = format!(
        "env {removed}{set}'{}'",
        command.get_program().to_string_lossy()
    );
    for arg in command.get_args() {
        shell.push_str(&format!(" '{}'", arg.to_string_lossy()));
    }
    let output = Command::new("script")
        .args(["-qec", &shell, "/dev/null"])
        .output()
        .expect("util-linux script runs commands under a pseudo-terminal");
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{shell}: {shown}");
    shown
}

#[cfg(target_os = "linux")]
#[test]
fn quiet_hides_the_download_bars() {
    for quiet in [false, true] {
        let emulator = start_emulator("model", Ranges::Honoured, untouched);
        let (home, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut command = segment_online(&emulator.hub.url(), home.path(), out.path());
        if quiet {
            command.arg("--quiet");
        }
        let terminal = terminal_output(&command);
        let drew_bar = terminal.contains("model.safetensors [");
        let said_download = terminal.contains("sclip: downloading");
        assert_eq!((drew_bar, said_download), (!quiet, !quiet), "{terminal}");
        assert!(out.path().join("astronaut.png").exists(), "{terminal}");
    }
}

#[test]
fn a_missing_folder_whose_parent_exists_is_no_such_folder() {
    let here = tempfile::tempdir().unwrap();
    std::fs::create_dir(here.path().join("models")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut command = segment_model_online("models/x", &dead_endpoint(), here.path(), out.path());
    command.current_dir(here.path());
    let text = assert_one_line_failure(&run(command), out.path());
    assert!(text.contains("models/x: no such folder"), "{text}");
}

/// Jobs of an array starting at once on an empty shared cache: one downloads each blob while the
/// others wait on its lock, then all load it.
#[test]
fn concurrent_runs_download_each_blob_once() {
    let files = repo_files("model");
    let served = files.clone();
    let cdn = Server::start(move |request| {
        std::thread::sleep(Duration::from_millis(500));
        let file = served
            .iter()
            .find(|f| request.path == format!("/blobs/{}", f.sha256()))
            .unwrap();
        ranged(file.bytes.clone(), request, Ranges::Honoured)
    });
    let cdn_url = cdn.url();
    let hub = Server::start(move |request| hub_reply(&files, &cdn_url, request));
    let home = tempfile::tempdir().unwrap();
    let outs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let children: Vec<_> = outs
        .iter()
        .map(|out| {
            segment_online(&hub.url(), home.path(), out.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        assert_success(&child.wait_with_output().unwrap());
    }
    let reference = local_mask("model");
    for out in &outs {
        assert_eq!(mask(out.path()), reference);
    }
    assert_eq!(cdn.requests().len(), 1, "{:?}", cdn.requests());
}
