//! `--report FILE.html`: one page to check a run by eye. A card per image of this run (a
//! thumbnail of its overlay linking to the full-size file, its classes and their areas, or its
//! error), the settings and the summary at the top, and a filter by class, status and name.
//!
//! The page is self-contained: inline CSS and plain JS, no fonts, scripts or images from
//! anywhere else (its Content-Security-Policy forbids them), so it opens from disk with no server
//! and no network. Thumbnails are files in `<stem>_files/` beside it (the name browsers give a
//! saved page's folder) and load lazily, so a page of thousands of images opens at once. Every
//! name it shows is HTML-escaped, and every link is a percent-encoded relative path, whatever
//! bytes a file name holds.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

use sclip::atomic_write::{check_replaceable, write_atomically};
use sclip::output::thumbnail::thumbnail_size;
use sclip::ClassList;

use crate::jobs::Job;
use crate::messages::{escape_controls, one_line, shown_path};
use crate::report::{Counts, Outcome, RunFacts};

/// Thumbnails' longer side, in pixels: four or five cards a row on a laptop screen.
pub const THUMBNAIL_LONG_SIDE: u32 = 256;

/// Areas under this are shown as "<0.1%" rather than as a misleading "0.0%".
const SMALLEST_SHOWN_PERCENT: f64 = 0.1;

#[derive(Debug)]
pub struct PageReport<'a> {
    page: PathBuf,
    thumbnails: PathBuf,
    /// The page's folder, absolute and without `.` or `..`: links are relative to it, as the
    /// browser resolves them against the page's own address.
    base: PathBuf,
    classes: &'a ClassList,
    /// The class colours of the overlays, for the swatches beside each class's name.
    colours: [[u8; 3]; 256],
    /// Each image's card, in the order the run reported them.
    cards: Vec<String>,
    /// For each class, how many of this run's images it is found in.
    images_with_class: Vec<usize>,
}

impl<'a> PageReport<'a> {
    /// Where `--report` puts the page: a bare file name goes into `--out` when given (beside the
    /// outputs); any other path, or a bare name without `--out`, is taken as it is.
    pub fn plan(
        report: &Path,
        out: Option<&Path>,
        classes: &'a ClassList,
        colours: [[u8; 3]; 256],
    ) -> Result<Self> {
        if report.as_os_str() == "-" {
            bail!(
                "--report needs a file name: the page links thumbnails in a folder beside it, so \
                 it cannot be written to stdout"
            );
        }
        let is_html = report.extension().is_some_and(|extension| {
            extension.eq_ignore_ascii_case("html") || extension.eq_ignore_ascii_case("htm")
        });
        if !is_html {
            bail!(
                "--report {}: the page's name must end in .html, which browsers open from disk \
                 as a page",
                report.display()
            );
        }
        let bare_name = report
            .parent()
            .is_some_and(|parent| parent.as_os_str().is_empty());
        let page = match out {
            Some(out) if bare_name => out.join(report),
            _ => report.to_path_buf(),
        };
        if page.is_dir() {
            bail!(
                "--report {} is a folder; name the page's file, e.g. {}",
                page.display(),
                page.join("report.html").display()
            );
        }
        check_replaceable(&page).map_err(|error| anyhow!("--report {error}"))?;
        let blocking = page
            .ancestors()
            .skip(1)
            .find(|path| !path.as_os_str().is_empty() && std::fs::metadata(path).is_ok())
            .filter(|existing| !existing.is_dir());
        if let Some(file) = blocking {
            bail!(
                "--report {}: {} is not a folder; name a page in a folder, or where one can be made",
                page.display(),
                file.display()
            );
        }
        let mut folder_name = page.file_stem().unwrap_or_default().to_os_string();
        folder_name.push("_files");
        let thumbnails = page.with_file_name(folder_name);
        if thumbnails.exists() && !thumbnails.is_dir() {
            bail!(
                "--report {}: its thumbnail folder {} exists and is not a folder; move that file \
                 or name another page",
                page.display(),
                thumbnails.display()
            );
        }
        let folder = page
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty());
        let base = lexically_absolute(folder.unwrap_or(Path::new(".")));
        Ok(PageReport {
            page,
            thumbnails,
            base,
            classes,
            colours,
            cards: Vec::new(),
            images_with_class: vec![0; classes.len()],
        })
    }

    /// The folder of the thumbnails, which no run takes images from.
    pub fn thumbnails(&self) -> &Path {
        &self.thumbnails
    }

    /// Creates the thumbnail folder (and the page's), for the images about to be segmented.
    pub fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.thumbnails).with_context(|| {
            format!(
                "cannot create the report's thumbnail folder {}",
                self.thumbnails.display()
            )
        })
    }

    /// Where `job`'s thumbnail goes: named by a digest of its mask's link from the page, so that
    /// a re-run replaces its earlier thumbnail instead of adding one, and two masks never share
    /// one; a readable part of the stem helps whoever browses the folder.
    pub fn thumbnail_path(&self, job: &Job) -> PathBuf {
        let digest = Sha256::digest(self.href(&job.mask).as_bytes());
        let stem = job.mask.file_stem().unwrap_or_default().to_string_lossy();
        let readable: String = stem
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .take(40)
            .collect();
        let mut name = readable;
        name.push('-');
        for byte in &digest[..8] {
            let _ = write!(name, "{byte:02x}");
        }
        name.push_str(".jpg");
        self.thumbnails.join(name)
    }

    /// A path that never became a job (missing, an unreadable folder), or an image that failed.
    pub fn failed(&mut self, image: &Path, message: &str) {
        let mut card = open_card("failed", "");
        card.push_str("<div class=\"none\">failed</div>");
        self.push_title(&mut card, image);
        let _ = write!(card, "<p class=\"error\">{}</p>", html(message));
        // A path that was not found has nothing to link to.
        if image.exists() {
            let _ = write!(card, "<p class=\"links\">{}</p>", self.link("image", image));
        }
        self.cards.push(card + "</article>");
    }

    /// An image left alone by `--skip-existing`: its outputs are an earlier run's, so the page
    /// links them but shows no thumbnail or areas, which this run did not compute.
    pub fn skipped(&mut self, job: &Job) {
        let mut card = open_card("skipped", "");
        card.push_str("<div class=\"none\">skipped</div>");
        self.push_title(&mut card, &job.image);
        card.push_str("<p class=\"meta\">outputs from an earlier run</p>");
        self.push_links(&mut card, job);
        self.cards.push(card + "</article>");
    }

    pub fn finished(&mut self, job: &Job, outcome: &Result<Outcome>) {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => return self.failed(&job.image, &one_line(error)),
        };
        let present: Vec<String> = outcome
            .present
            .iter()
            .map(|(class, _)| class.to_string())
            .collect();
        for &(class, _) in &outcome.present {
            self.images_with_class[class] += 1;
        }
        let mut card = open_card("ok", &present.join(" "));
        let full = job.overlay.as_ref().unwrap_or(&job.mask);
        let (width, height) = thumbnail_size(
            outcome.width as u32,
            outcome.height as u32,
            THUMBNAIL_LONG_SIDE,
        );
        let _ = write!(
            card,
            "<a class=\"thumb\" href=\"{}\"><img src=\"{}\" width=\"{width}\" height=\"{height}\" \
             loading=\"lazy\" decoding=\"async\" alt=\"\"></a>",
            self.href(full),
            self.href(&self.thumbnail_path(job)),
        );
        self.push_title(&mut card, &job.image);
        let _ = write!(
            card,
            "<p class=\"meta\">{}&times;{} px, {:.2} s</p><ul class=\"classes\">",
            outcome.width, outcome.height, outcome.seconds
        );
        for &(class, fraction) in &outcome.present {
            let _ = write!(
                card,
                "<li>{}{} <span>{}</span></li>",
                swatch(self.colours[class]),
                html(&escape_controls(self.classes.display_name(class))),
                percent(fraction)
            );
        }
        card.push_str("</ul>");
        if !outcome.warnings.is_empty() {
            let _ = write!(
                card,
                "<p class=\"warning\">{}</p>",
                html(&escape_controls(&outcome.warnings.join("; ")))
            );
        }
        self.push_links(&mut card, job);
        self.cards.push(card + "</article>");
    }

    /// Writes the page, atomically; returns its path.
    pub fn write(self, counts: Counts, facts: &RunFacts, seconds: f64) -> Result<PathBuf> {
        let page = self.render(counts, facts, seconds);
        if let Some(folder) = self.page.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).with_context(|| {
                format!("cannot create the report's folder {}", folder.display())
            })?;
        }
        write_atomically(&self.page, |out| Ok(out.write_all(page.as_bytes())?))
            .with_context(|| format!("cannot write the report {}", self.page.display()))?;
        Ok(self.page)
    }

    fn render(&self, counts: Counts, facts: &RunFacts, seconds: f64) -> String {
        let Counts {
            ok,
            warned,
            skipped,
            failed,
        } = counts;
        let mut page =
            String::with_capacity(4096 + self.cards.iter().map(String::len).sum::<usize>());
        let _ = write!(
            page,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
             img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
             <title>sclip: {ok} ok, {skipped} skipped, {failed} failed</title>\
             <style>{STYLE}</style></head><body><header><h1>sclip segment: {ok} ok"
        );
        if warned > 0 {
            let _ = write!(page, " ({warned} with warnings)");
        }
        let _ = write!(page, ", {skipped} skipped, {failed} failed</h1>");
        if facts.interrupted {
            let _ = write!(
                page,
                "<p class=\"stopped\">Interrupted by a signal: {} image(s) not started. The page \
                 shows the images that finished.</p>",
                facts.not_started
            );
        } else if facts.not_started > 0 {
            let _ = write!(
                page,
                "<p class=\"stopped\">Stopped at the first failure (--fail-fast): {} image(s) not \
                 started.</p>",
                facts.not_started
            );
        }
        let _ = write!(
            page,
            "<p>Written {} by sclip {} after {seconds:.1} s (setup {:.1} s). The page shows this \
             run's images only",
            utc_now(),
            env!("CARGO_PKG_VERSION"),
            facts.setup_seconds
        );
        if skipped > 0 {
            page.push_str(
                "; those skipped (--skip-existing) link to an earlier run's outputs, with no \
                 thumbnail or areas",
            );
        }
        page.push_str(".</p>");
        page.push_str("<dl class=\"settings\">");
        if let Value::Object(settings) = &facts.settings {
            for (name, value) in settings {
                let value = match value {
                    Value::String(text) => text.clone(),
                    Value::Null => "none".into(),
                    other => other.to_string(),
                };
                let _ = write!(
                    page,
                    "<div><dt>{}</dt><dd>{}</dd></div>",
                    html(name),
                    html(&escape_controls(&value))
                );
            }
        }
        page.push_str(
            "</dl><form id=\"filters\"><label>Class <select id=\"class\">\
             <option value=\"\">all classes</option>",
        );
        for (class, images) in self.images_with_class.iter().enumerate() {
            let name = html(&escape_controls(self.classes.display_name(class)));
            let _ = write!(
                page,
                "<option value=\"{class}\" data-name=\"{name}\">{name} ({images})</option>"
            );
        }
        page.push_str(
            "</select></label> <label>Status <select id=\"status\"><option value=\"\">all\
             </option><option value=\"ok\">ok</option><option value=\"failed\">failed</option>\
             <option value=\"skipped\">skipped</option></select></label> <label>Name \
             <input id=\"name\" type=\"search\" placeholder=\"part of a path\"></label> \
             <output id=\"shown\"></output></form></header><main id=\"cards\">",
        );
        for card in &self.cards {
            page.push_str(card);
        }
        let _ = writeln!(page, "</main><script>{SCRIPT}</script></body></html>");
        page
    }

    fn push_title(&self, card: &mut String, image: &Path) {
        let shown = html(&shown_path(image));
        let _ = write!(card, "<h2 title=\"{shown}\">{shown}</h2>");
    }

    fn push_links(&self, card: &mut String, job: &Job) {
        let mut links = vec![self.link("mask", &job.mask)];
        links.extend(job.overlay.as_ref().map(|path| self.link("overlay", path)));
        links.extend(job.probs.as_ref().map(|path| self.link("scores", path)));
        links.push(self.link("image", &job.image));
        let _ = write!(card, "<p class=\"links\">{}</p>", links.join(" "));
    }

    fn link(&self, label: &str, path: &Path) -> String {
        format!("<a href=\"{}\">{label}</a>", self.href(path))
    }

    /// `path` as a link from the page: relative, each part percent-encoded.
    fn href(&self, path: &Path) -> String {
        relative_url(&self.base, &lexically_absolute(path))
    }
}

/// Says where the page went (unless `quiet`), or why it was not written; true if it was.
pub fn tell(written: Result<PathBuf>, quiet: bool) -> bool {
    match written {
        Ok(page) => {
            if !quiet {
                eprintln!("sclip: report: {}", shown_path(&page));
            }
            true
        }
        Err(error) => {
            eprintln!("sclip: error: {}", one_line(&error));
            false
        }
    }
}

fn open_card(status: &str, classes: &str) -> String {
    format!("<article data-s=\"{status}\" data-c=\"{classes}\">")
}

fn swatch([r, g, b]: [u8; 3]) -> String {
    format!("<i style=\"background:#{r:02x}{g:02x}{b:02x}\"></i>")
}

fn percent(fraction: f64) -> String {
    let percent = 100.0 * fraction;
    if percent < SMALLEST_SHOWN_PERCENT {
        format!("&lt;{SMALLEST_SHOWN_PERCENT}%")
    } else {
        format!("{percent:.1}%")
    }
}

/// `text` safe inside an element or a quoted attribute.
fn html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// `path` made absolute against the working folder, with `.` and `..` folded away as a browser
/// folds them in a URL.
fn lexically_absolute(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut clean = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}

/// The URL of `target` relative to the folder `base` (both absolute and clean). Paths with no
/// common root (two Windows drives) get an absolute `file:` URL.
fn relative_url(base: &Path, target: &Path) -> String {
    let base: Vec<Component> = base.components().collect();
    let target: Vec<Component> = target.components().collect();
    let common = base.iter().zip(&target).take_while(|(a, b)| a == b).count();
    let segments = target[common..]
        .iter()
        .filter(|component| matches!(component, Component::Normal(_)))
        .map(|component| percent_encode(component.as_os_str()));
    if common == 0 {
        let prefix: OsString = target
            .iter()
            .take_while(|component| !matches!(component, Component::Normal(_)))
            .filter_map(|component| match component {
                Component::Prefix(prefix) => Some(prefix.as_os_str().to_os_string()),
                _ => None,
            })
            .collect();
        let segments: Vec<String> = segments.collect();
        return format!(
            "file:///{}{}",
            prefix.to_string_lossy(),
            if prefix.is_empty() { "" } else { "/" }
        ) + &segments.join("/");
    }
    let ups = std::iter::repeat_n("..".to_string(), base.len() - common);
    let url: Vec<String> = ups.chain(segments).collect();
    if url.is_empty() {
        ".".into()
    } else {
        url.join("/")
    }
}

/// One path segment of a URL: every byte but the unreserved ASCII ones as `%XX`, so `?`, `#`,
/// `%`, `:` (a scheme, first in a relative URL), quotes, spaces and bytes that are not UTF-8
/// all reach the file system as they are.
fn percent_encode(segment: &OsStr) -> String {
    let mut encoded = String::new();
    for &byte in segment.as_encoded_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// The time now, as `2026-12-02 02:40 UTC`.
fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (year, month, day) = civil_date(seconds / 86_400);
    let minutes = seconds % 86_400 / 60;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minutes / 60,
        minutes % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

const STYLE: &str = "\
:root{color-scheme:light dark;font:14px/1.4 system-ui,sans-serif}\
body{margin:0 1.5em 2em}\
h1{font-size:1.4em;margin:.8em 0 .3em}\
.stopped{font-weight:bold;color:#b35900}\
dl.settings{display:flex;flex-wrap:wrap;gap:.2em 1.4em;margin:.5em 0}\
dl.settings div{display:flex;gap:.4em}\
dl.settings dt{color:#888}\
dl.settings dd{margin:0;font-family:ui-monospace,monospace}\
#filters{position:sticky;top:0;z-index:1;padding:.5em 0;background:Canvas;\
border-bottom:1px solid #8884;margin-bottom:1em}\
#filters label{margin-right:1em}\
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(272px,1fr));gap:12px}\
#cards>article{border:1px solid #8886;border-radius:6px;padding:8px;overflow-wrap:anywhere;\
content-visibility:auto;contain-intrinsic-size:auto 380px}\
#cards>article[hidden]{display:none}\
.thumb img{display:block;width:100%;height:192px;object-fit:contain;background:#8882}\
.thumb{display:block;position:relative}\
.thumb.missing::after{content:\"thumbnail not found: keep the page's _files folder beside it\";\
position:absolute;inset:0;display:flex;align-items:center;justify-content:center;\
text-align:center;padding:1em;color:#888;background:Canvas}\
.none{height:192px;display:flex;align-items:center;justify-content:center;background:#8882;\
color:#888;text-transform:uppercase;letter-spacing:.1em}\
article[data-s=failed] .none{color:#c33}\
h2{font-size:1em;margin:.4em 0 .2em;font-weight:600}\
.meta{color:#888;margin:0}\
.classes{list-style:none;padding:0;margin:.3em 0}\
.classes i{display:inline-block;width:.9em;height:.9em;border:1px solid #444;margin-right:.4em;\
vertical-align:-.1em}\
.classes span{color:#888}\
.error{color:#c33;font-family:ui-monospace,monospace;font-size:.9em}\
.warning{color:#b35900;font-size:.9em}\
.links a{margin-right:.6em}";

/// The filter: one pass over the cards per change, each card's classes a Set built once, so a
/// page of thousands stays quick. The state lives in the address's fragment
/// (`#class=dog&status=ok&name=2024`), which also pre-selects a filter when the page opens.
const SCRIPT: &str = r##"
(function () {
  "use strict";
  var byClass = document.getElementById("class");
  var byStatus = document.getElementById("status");
  var byName = document.getElementById("name");
  var shown = document.getElementById("shown");
  var cards = Array.prototype.map.call(document.querySelectorAll("#cards > article"), function (card) {
    return {
      card: card,
      classes: new Set(card.dataset.c ? card.dataset.c.split(" ") : []),
      status: card.dataset.s,
      name: card.querySelector("h2").textContent.toLowerCase()
    };
  });
  var classByName = {};
  Array.prototype.forEach.call(byClass.options, function (option) {
    if (option.value) classByName[option.dataset.name] = option.value;
  });
  function apply() {
    var wanted = byClass.value, status = byStatus.value, name = byName.value.toLowerCase();
    var count = 0;
    for (var i = 0; i < cards.length; i++) {
      var item = cards[i];
      var keep = (!wanted || item.classes.has(wanted)) &&
        (!status || item.status === status) &&
        (!name || item.name.indexOf(name) !== -1);
      if (item.card.hidden === keep) item.card.hidden = !keep;
      if (keep) count++;
    }
    shown.textContent = count + " of " + cards.length + " shown";
  }
  function fromFragment() {
    var fields = new URLSearchParams(location.hash.slice(1));
    var wanted = fields.get("class");
    byClass.value = wanted !== null && classByName.hasOwnProperty(wanted) ? classByName[wanted] : "";
    byStatus.value = fields.get("status") || "";
    if (byStatus.selectedIndex < 0) byStatus.value = "";
    byName.value = fields.get("name") || "";
    apply();
  }
  function toFragment() {
    var fields = new URLSearchParams();
    if (byClass.value) fields.set("class", byClass.selectedOptions[0].dataset.name);
    if (byStatus.value) fields.set("status", byStatus.value);
    if (byName.value) fields.set("name", byName.value);
    try {
      history.replaceState(null, "", "#" + fields.toString());
    } catch (error) {
      // Some browsers refuse to change a file: page's address; the filter works all the same.
    }
    apply();
  }
  // A page copied without its _files folder says so instead of showing broken images.
  function markMissing(image) {
    image.parentNode.classList.add("missing");
  }
  Array.prototype.forEach.call(document.querySelectorAll(".thumb img"), function (image) {
    if (image.complete && image.naturalWidth === 0) markMissing(image);
    else image.addEventListener("error", function () { markMissing(image); });
  });
  byClass.addEventListener("change", toFragment);
  byStatus.addEventListener("change", toFragment);
  byName.addEventListener("input", toFragment);
  window.addEventListener("hashchange", fromFragment);
  fromFragment();
})();
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use sclip::output::voc_palette;

    #[test]
    fn markup_quotes_and_ampersands_are_escaped() {
        assert_eq!(
            html(r#"<img src=x onerror="a&b">'"#),
            "&lt;img src=x onerror=&quot;a&amp;b&quot;&gt;&#39;"
        );
    }

    #[test]
    fn links_are_relative_and_every_odd_byte_is_percent_encoded() {
        let base = Path::new("/runs/out");
        assert_eq!(
            relative_url(base, Path::new("/runs/out/a/cat.png")),
            "a/cat.png"
        );
        assert_eq!(
            relative_url(base, Path::new("/runs/photos/cat.jpg")),
            "../photos/cat.jpg"
        );
        assert_eq!(relative_url(base, Path::new("/runs/out")), ".");
        assert_eq!(
            relative_url(base, Path::new("/runs/out/a b?#%:\"<.png")),
            "a%20b%3F%23%25%3A%22%3C.png"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_name_that_is_not_utf8_is_linked_byte_for_byte() {
        use std::os::unix::ffi::OsStrExt;
        let name = OsStr::from_bytes(b"caf\xe9.png");
        assert_eq!(percent_encode(name), "caf%E9.png");
    }

    #[test]
    fn dot_and_dot_dot_are_folded_as_a_browser_folds_them() {
        let folded = lexically_absolute(Path::new("/runs/./out/../photos/cat.jpg"));
        assert_eq!(folded, Path::new("/runs/photos/cat.jpg"));
    }

    #[test]
    fn days_since_1970_become_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(59), (1970, 3, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_789), (2026, 12, 2));
    }

    #[test]
    fn a_bare_name_goes_into_out_and_a_path_is_taken_as_it_is() {
        let classes = ClassList::parse_inline("dog,cat").unwrap();
        let bare = PageReport::plan(
            Path::new("r.html"),
            Some(Path::new("masks")),
            &classes,
            voc_palette(),
        );
        let bare = bare.unwrap();
        assert_eq!(bare.page, Path::new("masks/r.html"));
        assert_eq!(bare.thumbnails, Path::new("masks/r_files"));
        let given = PageReport::plan(
            Path::new("./r.html"),
            Some(Path::new("masks")),
            &classes,
            voc_palette(),
        );
        assert_eq!(given.unwrap().page, Path::new("./r.html"));
        let alone = PageReport::plan(Path::new("r.HTM"), None, &classes, voc_palette()).unwrap();
        assert_eq!(alone.page, Path::new("r.HTM"));
    }

    #[test]
    fn a_page_name_that_is_not_html_or_stdout_is_refused() {
        let classes = ClassList::parse_inline("dog").unwrap();
        let error =
            PageReport::plan(Path::new("report"), None, &classes, voc_palette()).unwrap_err();
        assert!(error.to_string().contains("must end in .html"), "{error}");
        let error = PageReport::plan(Path::new("-"), None, &classes, voc_palette()).unwrap_err();
        assert!(
            error.to_string().contains("cannot be written to stdout"),
            "{error}"
        );
    }

    #[test]
    fn thumbnails_are_named_by_their_mask_and_stay_the_same_across_runs() {
        let classes = ClassList::parse_inline("dog").unwrap();
        let page =
            PageReport::plan(Path::new("out/r.html"), None, &classes, voc_palette()).unwrap();
        let job = |mask: &str| Job {
            image: PathBuf::from("photos/x.jpg"),
            mask: PathBuf::from(mask),
            probs: None,
            overlay: None,
        };
        let first = page.thumbnail_path(&job("out/a/cat <1>.png"));
        assert_eq!(first, page.thumbnail_path(&job("out/a/cat <1>.png")));
        assert_ne!(first, page.thumbnail_path(&job("out/b/cat <1>.png")));
        let name = first.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("cat1-") && name.ends_with(".jpg"),
            "{name}"
        );
        assert_eq!(first.parent().unwrap(), Path::new("out/r_files"));
    }
}
