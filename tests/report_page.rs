//! `sclip segment --report FILE.html`: the page a run writes, read as a browser reads it: its
//! cards, escaping, links that lead to files, no network; and in headless Chromium, its DOM and
//! class filter (`cargo test --release --test report_page -- --ignored`, skipped with a message
//! where no Chromium is installed).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{copy_fixture, fixture_model, sclip_process, segment};

/// Photos with names a page must escape and a URL must encode, a file that is not an image,
/// and (on Unix) a name that is not UTF-8 and one with a control character.
fn hostile_photos(root: &Path) -> PathBuf {
    let photos = root.join("photos");
    copy_fixture("astronaut.jpg", &photos.join("astronaut.jpg"));
    copy_fixture("coffee.png", &photos.join("a <b> & \"c\" 'd'.png"));
    copy_fixture("small_window.png", &photos.join("100% #1?.png"));
    copy_fixture("panorama.png", &photos.join("sub/panorama.png"));
    std::fs::write(photos.join("broken <x>.jpg"), b"not a JPEG").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"caf\xe9 \x1b[31mred.png");
        copy_fixture("coffee.png", &photos.join(odd));
    }
    photos
}

/// How many images [`hostile_photos`] holds, and how many of them fail.
const HOSTILE_IMAGES: usize = if cfg!(unix) { 6 } else { 5 };
const HOSTILE_FAILURES: usize = 1;

fn read_page(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of every `name="..."` attribute in `page`, in order.
fn attribute_values<'a>(page: &'a str, name: &str) -> Vec<&'a str> {
    let marker = format!(" {name}=\"");
    page.match_indices(&marker)
        .map(|(at, _)| {
            let rest = &page[at + marker.len()..];
            &rest[..rest.find('"').expect("a closed attribute")]
        })
        .collect()
}

/// A relative URL's path, percent-decoded to the bytes of the file it names.
fn decoded_url(url: &str) -> Vec<u8> {
    let bytes = url.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            decoded.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    decoded
}

#[cfg(unix)]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8(bytes).unwrap())
}

fn cards(page: &str) -> usize {
    page.matches("<article ").count()
}

fn cards_with_status(page: &str, status: &str) -> usize {
    page.matches(&format!("<article data-s=\"{status}\""))
        .count()
}

#[test]
fn the_page_escapes_every_name_links_files_that_exist_and_stays_off_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let photos = hostile_photos(dir.path());
    let out = dir.path().join("out");
    let output = segment()
        .arg(&photos)
        .arg("-r")
        .args(["--report", "report.html", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    // One image fails, so the run does; the page is written all the same.
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let page_path = out.join("report.html");
    assert!(
        stderr.contains(&format!("sclip: report: {}", page_path.display())),
        "{stderr}"
    );
    let page = read_page(&page_path);

    assert_eq!(cards(&page), HOSTILE_IMAGES, "{page}");
    assert_eq!(cards_with_status(&page, "failed"), HOSTILE_FAILURES);
    assert_eq!(
        page.matches("<img ").count(),
        HOSTILE_IMAGES - HOSTILE_FAILURES
    );
    assert_eq!(
        page.matches("loading=\"lazy\"").count(),
        HOSTILE_IMAGES - HOSTILE_FAILURES
    );
    assert!(page.contains(&format!(
        "{} ok, 0 skipped, {HOSTILE_FAILURES} failed",
        HOSTILE_IMAGES - HOSTILE_FAILURES
    )));

    // Names are shown, escaped; none of their markup reaches the page.
    assert!(page.contains("a &lt;b&gt; &amp; &quot;c&quot; &#39;d&#39;.png"));
    assert!(page.contains("broken &lt;x&gt;.jpg"));
    assert!(!page.contains("<b>") && !page.contains("<x>") && !page.contains("'d'"));
    if cfg!(unix) {
        assert!(page.contains(r"caf\xe9 \u{1b}[31mred.png"), "{page}");
    }
    assert!(
        !page.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters in the page"
    );

    // Self-contained: nothing fetched from anywhere, no external script, style or font.
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert!(!page.contains("<link") && !page.contains("<script src") && !page.contains("@import"));
    assert!(page.contains("Content-Security-Policy"));

    // Every link is relative and leads to a file the run wrote (or the image itself).
    let links: Vec<&str> = attribute_values(&page, "href")
        .into_iter()
        .chain(attribute_values(&page, "src"))
        .collect();
    assert!(links.len() >= 3 * (HOSTILE_IMAGES - HOSTILE_FAILURES));
    for link in links {
        assert!(!link.starts_with('/') && !link.contains(':'), "{link}");
        let target = out.join(path_from_bytes(decoded_url(link)));
        assert!(target.is_file(), "{link} -> {}", target.display());
    }

    // Thumbnails are small JPEGs of the overlay, linking to the mask without --overlay.
    let thumbnails: Vec<_> = std::fs::read_dir(out.join("report_files"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(thumbnails.len(), HOSTILE_IMAGES - HOSTILE_FAILURES);
    for thumbnail in &thumbnails {
        assert_eq!(thumbnail.extension().unwrap(), "jpg");
        let (width, height) = image::image_dimensions(thumbnail).unwrap();
        assert!(width.max(height) <= 256, "{}", thumbnail.display());
    }
    let (width, height) = image::image_dimensions(
        thumbnails
            .iter()
            .find(|path| path.to_string_lossy().contains("panorama"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!((width, height), (256, 9), "800x28 scaled to 256 wide");
    assert!(page.contains("<a class=\"thumb\" href=\"sub/panorama.png\">"));
}

#[test]
fn a_page_path_is_taken_as_given_and_thumbnails_link_to_overlays() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("astronaut.jpg", &dir.path().join("photos/astronaut.jpg"));
    let output = segment()
        .current_dir(dir.path())
        .args([
            "photos",
            "--overlay",
            "--out",
            "masks",
            "--report",
            "pages/run 1.html",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let page = read_page(&dir.path().join("pages/run 1.html"));
    assert!(dir.path().join("pages/run 1_files").is_dir());
    assert!(page.contains("<a class=\"thumb\" href=\"../masks/astronaut.overlay.jpg\">"));
    assert!(page.contains("href=\"../photos/astronaut.jpg\">image</a>"));
    assert!(page.contains("href=\"../masks/astronaut.png\">mask</a>"));

    // A bare name without --out is a page in the working folder.
    let output = segment()
        .current_dir(dir.path())
        .args(["photos/astronaut.jpg", "--report", "here.html"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let page = read_page(&dir.path().join("here.html"));
    assert!(
        page.contains("href=\"photos/astronaut.png\">mask</a>"),
        "{page}"
    );
    assert!(page.contains("<img src=\"here_files/astronaut-"));
}

#[test]
fn a_rerun_with_skip_existing_lists_the_skipped_images_and_says_the_page_is_this_runs() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_fixture("astronaut.jpg", &photos.join("one.jpg"));
    let out = dir.path().join("out");
    let run = || {
        segment()
            .arg(&photos)
            .args(["--skip-existing", "--report", "r.html", "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    copy_fixture("coffee.png", &photos.join("two.png"));
    let output = run();
    assert!(output.status.success(), "{output:?}");
    let page = read_page(&out.join("r.html"));
    assert_eq!(cards_with_status(&page, "skipped"), 1);
    assert_eq!(cards_with_status(&page, "ok"), 1);
    assert!(page.contains("1 ok, 1 skipped, 0 failed"));
    assert!(page.contains("this run's images only"));
    assert!(page.contains("link to an earlier run's outputs"));
    assert!(page.contains("href=\"one.png\">mask</a>"));
    // The first run's thumbnail is replaced, not joined by a second one.
    assert_eq!(std::fs::read_dir(out.join("r_files")).unwrap().count(), 2);
}

/// A page kept inside the photos' folder: a recursive rerun does not take its thumbnails for
/// photos.
#[test]
fn a_rerun_does_not_take_the_reports_thumbnails_for_images() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    copy_fixture("astronaut.jpg", &photos.join("one.jpg"));
    let run = || {
        let output = segment()
            .arg(&photos)
            .arg("-r")
            .arg("--report")
            .arg(photos.join("report.html"))
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        read_page(&photos.join("report.html"))
    };
    assert_eq!(cards(&run()), 1);
    assert!(photos.join("report_files").is_dir());
    assert_eq!(cards(&run()), 1);
    assert_eq!(
        std::fs::read_dir(photos.join("report_files"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn a_run_stopped_by_fail_fast_says_so_on_its_page() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::write(photos.join("a_broken.jpg"), b"not a JPEG").unwrap();
    for name in ["b.jpg", "c.jpg", "d.jpg"] {
        copy_fixture("astronaut.jpg", &photos.join(name));
    }
    let out = dir.path().join("out");
    let output = segment()
        .arg(&photos)
        .args(["--fail-fast", "--report", "r.html", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let page = read_page(&out.join("r.html"));
    assert_eq!(cards_with_status(&page, "failed"), 1, "{page}");
    assert!(page.contains("Stopped at the first failure"), "{page}");
}

#[test]
fn report_paths_that_cannot_be_a_page_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("folder.html")).unwrap();
    std::fs::write(dir.path().join("taken_files"), b"").unwrap();
    #[cfg(unix)]
    assert!(Command::new("mkfifo")
        .arg(dir.path().join("pipe.html"))
        .status()
        .unwrap()
        .success());
    for (report, expected) in [
        ("notes.txt", "must end in .html"),
        ("-", "cannot be written to stdout"),
        ("./folder.html", "is a folder"),
        ("./taken.html", "exists and is not a folder"),
        ("taken_files/r.html", "taken_files is not a folder"),
        #[cfg(unix)]
        (
            "./pipe.html",
            "is a named pipe (FIFO), which sclip does not write into",
        ),
    ] {
        let output = segment()
            .current_dir(dir.path())
            .arg(common::fixture_image("astronaut.jpg"))
            .args(["--out", "masks", "--report", report])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{report}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.starts_with("sclip: error: --report ") && stderr.contains(expected),
            "{report}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!dir.path().join("masks").exists(), "nothing started");
    }
}

/// A run stopped by Ctrl-C still writes the page of the images that finished, and says so.
#[test]
#[cfg(unix)]
fn an_interrupted_run_writes_the_page_of_what_finished() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    for i in 0..40 {
        copy_fixture("astronaut.jpg", &photos.join(format!("img{i:03}.jpg")));
    }
    let out = dir.path().join("out");
    let child = sclip_process()
        .arg("segment")
        .arg(&photos)
        .arg("--model")
        .arg(fixture_model())
        .args(["--classes", "person,sky|space,wall", "--batch-size", "1"])
        // Large enough (35 windows an image) that the run is still going when the signal lands.
        .args(["--short-side", "672", "--report", "report.html", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.join("img000.png").exists() {
        assert!(Instant::now() < deadline, "no output within two minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    let masks = std::fs::read_dir(&out)
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().path().extension() == Some("png".as_ref()))
        .count();
    assert!((1..40).contains(&masks), "{masks} masks");
    let page = read_page(&out.join("report.html"));
    assert_eq!(cards_with_status(&page, "ok"), masks);
    assert_eq!(cards(&page), masks);
    assert!(page.contains("Interrupted by a signal"), "{page}");
    assert!(page.contains(&format!("{} image(s) not started", 40 - masks)));
}

/// Chromium as Debian packages it, or as named by `SCLIP_CHROMIUM`.
fn chromium() -> Option<PathBuf> {
    if let Some(named) = std::env::var_os("SCLIP_CHROMIUM") {
        return Some(PathBuf::from(named));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|folder| {
            [
                "chromium",
                "chromium-browser",
                "google-chrome",
                "google-chrome-stable",
            ]
            .map(|name| folder.join(name))
        })
        .find(|candidate| candidate.is_file())
}

/// Runs headless Chromium on `url` with `args`, killed if it takes over a minute; its stdout.
fn headless(browser: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(browser)
        // Root in a container has no sandbox to run in; the page is one this test wrote.
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} did not finish within a minute", browser.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}: {output:?}", browser.display());
    String::from_utf8(output.stdout).unwrap()
}

/// The page in a real browser: every card and thumbnail is there and loads from disk, a
/// fragment pre-selects a class filter and the filter hides exactly the cards without it.
#[test]
#[ignore = "needs Chromium: cargo test --release --test report_page -- --ignored"]
fn report_page_in_chromium() {
    let Some(browser) = chromium() else {
        println!(
            "report_page_in_chromium SKIPPED: no chromium, chromium-browser or google-chrome on \
             PATH; install it (Debian: apt-get install chromium) or set SCLIP_CHROMIUM"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let photos = hostile_photos(dir.path());
    let out = dir.path().join("out");
    segment()
        .arg(&photos)
        .args(["-r", "--overlay", "--report", "report.html", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let page_path = std::fs::canonicalize(out.join("report.html")).unwrap();
    let page = read_page(&page_path);
    let url = format!("file://{}", page_path.display());
    let profile = dir.path().join("profile");
    // Time for the thumbnails to load (or fail) before the DOM is dumped.
    let dump = ["--virtual-time-budget=5000", "--dump-dom"];

    let dom = headless(&browser, &profile, &dump, &url);
    assert_eq!(cards(&dom), HOSTILE_IMAGES, "{dom}");
    assert_eq!(
        dom.matches("<img ").count(),
        HOSTILE_IMAGES - HOSTILE_FAILURES
    );
    assert!(
        !dom.contains("hidden=\"\""),
        "no filter, nothing hidden: {dom}"
    );
    assert!(
        !dom.contains("thumb missing"),
        "every thumbnail loads: {dom}"
    );
    assert!(dom.contains(&format!("{HOSTILE_IMAGES} of {HOSTILE_IMAGES} shown")));

    // Which cards hold "sky" (class 1), from the page as written.
    let with_sky = attribute_values(&page, "data-c")
        .iter()
        .filter(|classes| classes.split(' ').any(|class| class == "1"))
        .count();
    assert!(with_sky > 0);
    let dom = headless(&browser, &profile, &dump, &format!("{url}#class=sky"));
    assert_eq!(cards(&dom), HOSTILE_IMAGES);
    assert_eq!(
        dom.matches("hidden=\"\"").count(),
        HOSTILE_IMAGES - with_sky,
        "{dom}"
    );
    assert!(dom.contains(&format!("{with_sky} of {HOSTILE_IMAGES} shown")));
    let dom = headless(&browser, &profile, &dump, &format!("{url}#status=failed"));
    assert!(dom.contains(&format!("{HOSTILE_FAILURES} of {HOSTILE_IMAGES} shown")));

    let screenshot = dir.path().join("report.png");
    headless(
        &browser,
        &profile,
        &[
            "--window-size=1200,900",
            &format!("--screenshot={}", screenshot.display()),
        ],
        &url,
    );
    let (width, height) = image::image_dimensions(&screenshot).unwrap();
    assert_eq!((width, height), (1200, 900));

    // The page moved without its _files folder says so on each thumbnail.
    std::fs::rename(out.join("report_files"), out.join("elsewhere")).unwrap();
    let dom = headless(&browser, &profile, &dump, &url);
    assert_eq!(
        dom.matches("thumb missing").count(),
        HOSTILE_IMAGES - HOSTILE_FAILURES
    );
}
