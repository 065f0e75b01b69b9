//! Files of a Hugging Face hub repo, through the hub's cache as the Python client lays it out:
//! `models--{org}--{name}/blobs/{etag}`, `snapshots/{commit}/{file}` (relative symlinks into
//! `blobs`), `refs/{revision}` (the commit a branch or tag pointed at), `.no_exist/{commit}/{file}`
//! (a file the commit does not have), `blobs/{etag}.incomplete` while downloading, and
//! `.locks/models--{org}--{name}/{etag}.lock` so that concurrent downloads of a blob wait for each
//! other. Python reads what this writes and the other way round.
//!
//! The environment is the hub's own: HF_HUB_CACHE or HF_HOME/hub for the cache, HF_HUB_OFFLINE=1
//! to never touch the network, HF_ENDPOINT for mirrors, HF_TOKEN (or the token saved at
//! HF_TOKEN_PATH, default HF_HOME/token) for private and gated repos, HF_HUB_ETAG_TIMEOUT and
//! HF_HUB_DOWNLOAD_TIMEOUT for how long a silent server is waited for.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use ureq::http::{HeaderMap, Uri};

use super::files::NotCached;
use crate::atomic_write::write_atomically;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The Python client's defaults for the same variables, in seconds.
const DEFAULT_ETAG_TIMEOUT_S: f64 = 10.0;
const DEFAULT_DOWNLOAD_TIMEOUT_S: f64 = 10.0;
/// How long a request may go unanswered before a line on stderr says what sclip waits for.
const WAIT_NOTICE_AFTER: Duration = Duration::from_secs(1);
const MAX_REDIRECTS: usize = 10;

/// How the hub client talks to the user while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubOptions {
    /// Lines on stderr saying what is downloaded or waited for, and a download bar on a terminal.
    pub progress: bool,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions { progress: true }
    }
}

/// One hub repo at one revision, found in the cache or fetched into it file by file.
pub struct HubRepo {
    repo_id: String,
    revision: String,
    cache: RepoCache,
    /// None when HF_HUB_OFFLINE forbids the network.
    remote: Option<Remote>,
    /// The URL the hub was last asked in [`HubRepo::get`], if it was: errors name it.
    last_asked: Option<String>,
    /// The commit the revision names: the revision itself when it is a commit hash, else what
    /// the hub answered this run. Files of a known commit never change, so the cache answers.
    commit: Option<String>,
    options: HubOptions,
}

impl HubRepo {
    /// Reads the hub's environment variables for `repo_id` at `revision`.
    pub fn from_env(repo_id: &str, revision: &str, options: HubOptions) -> Result<Self> {
        check_repo_id(repo_id)?;
        check_revision(revision)?;
        let home = hf_home()?;
        let cache_dir = match non_empty_env("HF_HUB_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => home.join("hub"),
        };
        let remote = if offline() {
            None
        } else {
            Some(Remote::from_env(&home)?)
        };
        Ok(HubRepo {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            cache: RepoCache::new(&cache_dir, repo_id),
            remote,
            last_asked: None,
            commit: is_commit_hash(revision).then(|| revision.to_string()),
            options,
        })
    }

    /// The local path of `file`, or None when the revision has no such file.
    pub fn get(&mut self, file: &str) -> Result<Option<PathBuf>> {
        self.last_asked = None;
        if let Some(commit) = &self.commit {
            match self.cache.lookup(commit, file) {
                Cached::Found(path) => return Ok(Some(path)),
                Cached::Absent => return Ok(None),
                Cached::Unknown => {}
            }
        }
        let Some(remote) = &self.remote else {
            return self.cached_only(file);
        };
        let url = remote.resolve_url(&self.repo_id, self.asked_revision(), file);
        self.last_asked = Some(url.clone());
        let announce = self.options.progress;
        match remote.metadata(&url, announce) {
            Ok(metadata) => {
                self.learn_commit(&metadata.commit)?;
                if let Cached::Found(path) = self.cache.lookup(&metadata.commit, file) {
                    return Ok(Some(path));
                }
                let remote = self.remote.as_ref().expect("checked above");
                let blob = self.cache.blob(
                    remote,
                    &metadata,
                    &BlobName {
                        repo_id: &self.repo_id,
                        file,
                    },
                    self.options,
                )?;
                Ok(Some(self.cache.link(&metadata.commit, file, &blob)?))
            }
            Err(HeadFailure::EntryNotFound { commit }) => {
                if let Some(commit) = commit {
                    self.learn_commit(&commit)?;
                    self.cache.record_absent(&commit, file)?;
                }
                Ok(None)
            }
            Err(HeadFailure::Unreachable(error)) => self.cached_when_unreachable(file, error),
            Err(HeadFailure::Refused(error)) => Err(error),
        }
    }

    /// The error for a file that [`HubRepo::get`] just found missing, with the URL that said
    /// so or the cache's record of it.
    pub fn missing(&self, file: &str) -> anyhow::Error {
        let at = match (&self.last_asked, &self.commit) {
            (Some(url), _) => format!(" ({url})"),
            (None, Some(commit)) => format!(
                " (recorded in {})",
                self.cache.absent_marker(commit, file).display()
            ),
            (None, None) => String::new(),
        };
        anyhow!(
            "{} (revision {}) has no file {file} on the hub{at}",
            self.repo_id,
            self.revision
        )
    }

    /// The commit the revision names: what the hub answered, else what the cache recorded.
    pub fn commit(&self) -> Option<String> {
        self.cached_commit()
    }

    /// Once one file answered, the others are asked for at its commit, so that a branch moving
    /// mid-run cannot mix files of two commits.
    fn asked_revision(&self) -> &str {
        self.commit.as_deref().unwrap_or(&self.revision)
    }

    fn learn_commit(&mut self, commit: &str) -> Result<()> {
        if commit != self.revision {
            self.cache.record_ref(&self.revision, commit)?;
        }
        self.commit = Some(commit.to_string());
        Ok(())
    }

    fn cached_commit(&self) -> Option<String> {
        self.commit
            .clone()
            .or_else(|| self.cache.commit_of(&self.revision))
    }

    fn cached_only(&self, file: &str) -> Result<Option<PathBuf>> {
        let lookup = match self.cached_commit() {
            Some(commit) => self.cache.lookup(&commit, file),
            None => Cached::Unknown,
        };
        match lookup {
            Cached::Found(path) => Ok(Some(path)),
            Cached::Absent => Ok(None),
            Cached::Unknown => Err(anyhow::Error::new(NotCached {
                repo_id: self.repo_id.clone(),
                revision: self.revision.clone(),
                file: file.to_string(),
                cache_dir: self.cache.hub_dir.clone(),
            })),
        }
    }

    /// As the Python client does, a hub that cannot be reached is no error when the cache
    /// already has what the revision last pointed at.
    fn cached_when_unreachable(
        &mut self,
        file: &str,
        error: anyhow::Error,
    ) -> Result<Option<PathBuf>> {
        if let Some(commit) = self.cached_commit() {
            let found = match self.cache.lookup(&commit, file) {
                Cached::Found(path) => Some(Some(path)),
                Cached::Absent => Some(None),
                Cached::Unknown => None,
            };
            if let Some(found) = found {
                if self.options.progress {
                    eprintln!(
                        "sclip: warning: {error}; using the cached commit {commit} of {}",
                        self.repo_id
                    );
                }
                self.commit = Some(commit);
                return Ok(found);
            }
        }
        Err(error.context(format!(
            "cannot download {file} of {} (revision {}) and the cache in {} does not have it; \
             check the network, HF_ENDPOINT or the proxy settings",
            self.repo_id,
            self.revision,
            self.cache.hub_dir.display()
        )))
    }
}

enum Cached {
    Found(PathBuf),
    /// The hub said the commit has no such file (`.no_exist`).
    Absent,
    Unknown,
}

/// What a HEAD of `resolve/{revision}/{file}` tells about a file.
struct Metadata {
    commit: String,
    /// The blob's name in the cache: the git blob hash, or the sha256 of an LFS file.
    etag: String,
    size: u64,
    /// Where the bytes are: the CDN for LFS files, the resolve URL otherwise.
    download_url: String,
}

impl Metadata {
    /// The hub names LFS blobs by their sha256; git blob hashes are 40 hex digits.
    fn sha256(&self) -> Option<&str> {
        (self.etag.len() == 64 && self.etag.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(self.etag.as_str())
    }
}

enum HeadFailure {
    /// The hub answered that the revision has no such file, at this commit when it said so.
    EntryNotFound { commit: Option<String> },
    /// No answer: the network, DNS, a timeout, or a server error.
    Unreachable(anyhow::Error),
    /// An answer that settles it: no such repo or revision, no access, a malformed reply.
    Refused(anyhow::Error),
}

/// A file of a repo, for messages.
struct BlobName<'a> {
    repo_id: &'a str,
    file: &'a str,
}

struct RepoCache {
    hub_dir: PathBuf,
    repo_dir: PathBuf,
    locks_dir: PathBuf,
}

impl RepoCache {
    fn new(hub_dir: &Path, repo_id: &str) -> Self {
        let folder = format!("models--{}", repo_id.replace('/', "--"));
        RepoCache {
            hub_dir: hub_dir.to_path_buf(),
            repo_dir: hub_dir.join(&folder),
            locks_dir: hub_dir.join(".locks").join(folder),
        }
    }

    fn lookup(&self, commit: &str, file: &str) -> Cached {
        let pointer = self.repo_dir.join("snapshots").join(commit).join(file);
        if pointer.is_file() {
            Cached::Found(pointer)
        } else if self.absent_marker(commit, file).exists() {
            Cached::Absent
        } else {
            Cached::Unknown
        }
    }

    /// The commit `revision` pointed at when it was last resolved.
    fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = fs::read_to_string(self.repo_dir.join("refs").join(revision)).ok()?;
        Some(text.trim().to_string()).filter(|commit| is_commit_hash(commit))
    }

    fn absent_marker(&self, commit: &str, file: &str) -> PathBuf {
        self.repo_dir.join(".no_exist").join(commit).join(file)
    }

    fn record_ref(&self, revision: &str, commit: &str) -> Result<()> {
        let path = self.repo_dir.join("refs").join(revision);
        if self.commit_of(revision).as_deref() == Some(commit) {
            return Ok(());
        }
        create_dir(path.parent().expect("refs/ is a parent"))?;
        write_atomically(&path, |out| Ok(out.write_all(commit.as_bytes())?))
            .with_context(|| format!("cannot record the hub's commit in {}", path.display()))
    }

    fn record_absent(&self, commit: &str, file: &str) -> Result<()> {
        let marker = self.absent_marker(commit, file);
        create_dir(
            marker
                .parent()
                .expect("the marker is in .no_exist/<commit>"),
        )?;
        File::create(&marker)
            .map(drop)
            .with_context(|| format!("cannot record a missing file in {}", marker.display()))
    }

    /// `blobs/{etag}`, downloaded and checked unless a blob of the right size is there.
    fn blob(
        &self,
        remote: &Remote,
        metadata: &Metadata,
        name: &BlobName,
        options: HubOptions,
    ) -> Result<PathBuf> {
        let blobs = self.repo_dir.join("blobs");
        let blob = blobs.join(&metadata.etag);
        let has_blob = || fs::metadata(&blob).is_ok_and(|m| m.len() == metadata.size);
        if has_blob() {
            return Ok(blob);
        }
        create_dir(&blobs)?;
        create_dir(&self.locks_dir)?;
        let lock_path = self.locks_dir.join(format!("{}.lock", metadata.etag));
        let lock = File::create(&lock_path)
            .with_context(|| format!("cannot create the lock file {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            if options.progress {
                eprintln!(
                    "sclip: waiting for another download of {} of {} (lock {})",
                    name.file,
                    name.repo_id,
                    lock_path.display()
                );
            }
            lock.lock()
                .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        }
        // The other download may have finished while this one waited.
        if has_blob() {
            return Ok(blob);
        }
        let incomplete = blobs.join(format!("{}.incomplete", metadata.etag));
        let kept_leftover = download(remote, metadata, &incomplete, name, options)?;
        if let Err(error) = verify(&incomplete, metadata) {
            let _ = fs::remove_file(&incomplete);
            if !kept_leftover {
                return Err(error);
            }
            // The bytes an earlier run left may be what is wrong: once more, from the start.
            download(remote, metadata, &incomplete, name, options)?;
            verify(&incomplete, metadata).inspect_err(|_| {
                let _ = fs::remove_file(&incomplete);
            })?;
        }
        fs::rename(&incomplete, &blob).with_context(|| {
            format!(
                "cannot rename {} to {}",
                incomplete.display(),
                blob.display()
            )
        })?;
        Ok(blob)
    }

    /// `snapshots/{commit}/{file}` as a relative symlink to the blob, replaced atomically.
    fn link(&self, commit: &str, file: &str, blob: &Path) -> Result<PathBuf> {
        let snapshot = self.repo_dir.join("snapshots").join(commit);
        let pointer = snapshot.join(file);
        create_dir(pointer.parent().expect("the pointer is in its snapshot"))?;
        let depth = Path::new(file).components().count();
        let mut target = PathBuf::new();
        for _ in 0..depth + 1 {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().expect("a blob has a file name"));
        let temp = pointer.with_file_name(format!(".{file}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&temp);
        symlink(&target, &temp)
            .and_then(|()| fs::rename(&temp, &pointer))
            .with_context(|| format!("cannot link {} to its blob", pointer.display()))?;
        Ok(pointer)
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

/// Without unix symlinks, the pointer is a copy of the blob, as the Python client does on Windows
/// without developer mode.
#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    let blob = link
        .parent()
        .map(|dir| dir.join(target))
        .unwrap_or_default();
    fs::copy(blob, link).map(drop)
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Streams the file into `incomplete`, resuming a leftover only when the server answers the
/// range request with exactly that range. Says whether bytes of an earlier run were kept.
fn download(
    remote: &Remote,
    metadata: &Metadata,
    incomplete: &Path,
    name: &BlobName,
    options: HubOptions,
) -> Result<bool> {
    let leftover = fs::metadata(incomplete).map(|m| m.len()).unwrap_or(0);
    let resume_from = if leftover < metadata.size {
        leftover
    } else {
        0
    };
    if resume_from == 0 && leftover == metadata.size && leftover > 0 {
        // Killed after the last byte and before the rename: the check decides.
        return Ok(true);
    }
    if options.progress {
        eprintln!(
            "sclip: downloading {} of {} ({}) from {}",
            name.file,
            name.repo_id,
            indicatif::HumanBytes(metadata.size),
            metadata.download_url
        );
    }
    let mut response = remote.download(&metadata.download_url, resume_from, options)?;
    let start = match response.status().as_u16() {
        206 if content_range_is(response.headers(), resume_from, metadata.size) => resume_from,
        // A server that ignores (or mangles) the range sends the whole file, or must be asked
        // for it again.
        206 | 416 => {
            response = remote.download(&metadata.download_url, 0, options)?;
            0
        }
        _ => 0,
    };
    let status = response.status().as_u16();
    if status != 200 && !(status == 206 && start > 0) {
        return Err(http_error(
            &metadata.download_url,
            status,
            response.headers(),
        ));
    }
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(start > 0)
        .truncate(start == 0)
        .open(incomplete)
        .with_context(|| format!("cannot create {}", incomplete.display()))?;
    let bar = if options.progress {
        ProgressBar::with_draw_target(Some(metadata.size), ProgressDrawTarget::stderr_with_hz(4))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{wide_bar}] {bytes}/{total_bytes}, {bytes_per_sec}, ETA {eta}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.set_message(name.file.to_string());
    bar.set_position(start);
    // One byte more than the rest of the file is enough to tell a server that sends too much.
    let mut body = response
        .body_mut()
        .as_reader()
        .take(metadata.size - start + 1);
    let mut buffer = vec![0; 1 << 16];
    loop {
        let read = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                bar.abandon();
                return Err(remote.transport_error(
                    &metadata.download_url,
                    ureq::Error::Io(error),
                    TimeoutKind::Download,
                ));
            }
        };
        file.write_all(&buffer[..read])
            .with_context(|| format!("cannot write {}", incomplete.display()))?;
        bar.inc(read as u64);
    }
    bar.finish();
    file.sync_all()
        .with_context(|| format!("cannot flush {} to disk", incomplete.display()))?;
    Ok(start > 0)
}

fn content_range_is(headers: &HeaderMap, start: u64, size: u64) -> bool {
    header(headers, "content-range").as_deref()
        == Some(format!("bytes {start}-{}/{size}", size - 1).as_str())
}

/// The size always; the sha256 when the hub names the blob by it.
fn verify(path: &Path, metadata: &Metadata) -> Result<()> {
    let size = fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size != metadata.size {
        bail!(
            "the download from {} has {size} bytes where the hub said {}; it was not kept, \
             run again to download it afresh",
            metadata.download_url,
            metadata.size
        );
    }
    if let Some(expected) = metadata.sha256() {
        let mut hasher = Sha256::new();
        io::copy(
            &mut File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
            &mut hasher,
        )
        .with_context(|| format!("cannot read {}", path.display()))?;
        let actual = format!("{:x}", hasher.finalize());
        if !actual.eq_ignore_ascii_case(expected) {
            bail!(
                "the download from {} has sha256 {actual} where the hub said {expected}; it was \
                 not kept, run again to download it afresh",
                metadata.download_url
            );
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum TimeoutKind {
    Etag,
    Download,
}

impl TimeoutKind {
    fn variable(self) -> &'static str {
        match self {
            TimeoutKind::Etag => "HF_HUB_ETAG_TIMEOUT",
            TimeoutKind::Download => "HF_HUB_DOWNLOAD_TIMEOUT",
        }
    }
}

struct Remote {
    endpoint: String,
    token: Option<String>,
    etag_timeout: Duration,
    download_timeout: Duration,
    metadata_agent: ureq::Agent,
    download_agent: ureq::Agent,
}

impl Remote {
    fn from_env(home: &Path) -> Result<Self> {
        let endpoint = non_empty_env("HF_ENDPOINT")
            .map(|e| e.to_string_lossy().trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        endpoint
            .parse::<Uri>()
            .ok()
            .filter(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            })
            .ok_or_else(|| {
                anyhow!("HF_ENDPOINT={endpoint:?} is not an http(s) URL such as {DEFAULT_ENDPOINT}")
            })?;
        let etag_timeout = timeout_from_env(TimeoutKind::Etag, DEFAULT_ETAG_TIMEOUT_S)?;
        let download_timeout = timeout_from_env(TimeoutKind::Download, DEFAULT_DOWNLOAD_TIMEOUT_S)?;
        Ok(Remote {
            endpoint,
            token: token(home)?,
            etag_timeout,
            download_timeout,
            metadata_agent: agent(etag_timeout),
            download_agent: agent(download_timeout),
        })
    }

    fn resolve_url(&self, repo_id: &str, revision: &str, file: &str) -> String {
        format!(
            "{}/{repo_id}/resolve/{}/{file}",
            self.endpoint,
            percent_encode(revision)
        )
    }

    /// The token goes to the endpoint only: the hub redirects LFS files to a CDN host, which
    /// must not see it.
    fn authorization(&self, url: &str) -> Option<String> {
        let token = self.token.as_ref()?;
        same_origin(url, &self.endpoint).then(|| format!("Bearer {token}"))
    }

    /// HEAD the resolve URL, following redirects within the endpoint (a renamed repo) but not
    /// to another host, whose answer is where the download goes.
    fn metadata(&self, url: &str, announce: bool) -> Result<Metadata, HeadFailure> {
        let mut current = url.to_string();
        for _ in 0..MAX_REDIRECTS {
            let response = self
                .call(&self.metadata_agent, "HEAD", &current, None, announce)
                .map_err(|error| {
                    HeadFailure::Unreachable(self.transport_error(
                        &current,
                        error,
                        TimeoutKind::Etag,
                    ))
                })?;
            let status = response.status().as_u16();
            let headers = response.headers();
            let location = header(headers, "location").map(|l| join_url(&current, &l));
            match (status, location) {
                (300..=399, Some(next)) if same_origin(&next, &current) => current = next,
                (200..=399, location) => {
                    return metadata_from(headers, location.unwrap_or(current), url)
                        .map_err(HeadFailure::Refused)
                }
                _ => return Err(head_error(url, status, headers)),
            }
        }
        Err(HeadFailure::Refused(anyhow!(
            "{url} redirects more than {MAX_REDIRECTS} times"
        )))
    }

    /// GET the file from `resume_from` on, following redirects; the token is sent only while
    /// the URL is on the endpoint.
    fn download(
        &self,
        url: &str,
        resume_from: u64,
        options: HubOptions,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut current = url.to_string();
        for _ in 0..MAX_REDIRECTS {
            let response = self
                .call(
                    &self.download_agent,
                    "GET",
                    &current,
                    (resume_from > 0).then_some(resume_from),
                    options.progress,
                )
                .map_err(|error| self.transport_error(&current, error, TimeoutKind::Download))?;
            match (
                response.status().as_u16(),
                header(response.headers(), "location"),
            ) {
                (300..=399, Some(location)) => current = join_url(&current, &location),
                _ => return Ok(response),
            }
        }
        bail!("{url} redirects more than {MAX_REDIRECTS} times")
    }

    fn call(
        &self,
        agent: &ureq::Agent,
        method: &str,
        url: &str,
        range_from: Option<u64>,
        announce: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(url)
            // The sizes the hub gives are of the bytes as stored, not compressed.
            .header("Accept-Encoding", "identity");
        if let Some(authorization) = self.authorization(url) {
            request = request.header("Authorization", authorization);
        }
        if let Some(start) = range_from {
            request = request.header("Range", format!("bytes={start}-"));
        }
        let request = request.body(()).map_err(ureq::Error::Http)?;
        notice_if_slow(announce, &format!("{method} {url}"), || agent.run(request))
    }

    fn transport_error(&self, url: &str, error: ureq::Error, kind: TimeoutKind) -> anyhow::Error {
        // Body reads wrap ureq's own errors, timeouts included, in io::Error.
        let error = match error {
            ureq::Error::Io(io) if io.get_ref().is_some_and(|e| e.is::<ureq::Error>()) => *io
                .into_inner()
                .and_then(|inner| inner.downcast::<ureq::Error>().ok())
                .expect("checked to hold a ureq::Error"),
            error => error,
        };
        let timed_out = match &error {
            ureq::Error::Timeout(_) => true,
            ureq::Error::Io(io) => matches!(
                io.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            _ => false,
        };
        if timed_out {
            let seconds = match kind {
                TimeoutKind::Etag => self.etag_timeout,
                TimeoutKind::Download => self.download_timeout,
            }
            .as_secs_f64();
            anyhow!(
                "{url} did not answer within {seconds} s; for a slow network raise {} (seconds)",
                kind.variable()
            )
        } else {
            anyhow!("cannot reach {url}: {error}")
        }
    }
}

/// One agent per kind of request: they differ in how long a silent server is waited for. The
/// timeout bounds connecting and each read, not a whole download.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_resolve(Some(timeout))
        .timeout_connect(Some(timeout))
        .timeout_send_request(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_per_read(Some(timeout))
        .user_agent(concat!("sclip/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Runs `call`; when it takes longer than [`WAIT_NOTICE_AFTER`], says on stderr what it waits for.
fn notice_if_slow<T>(announce: bool, what: &str, call: impl FnOnce() -> T) -> T {
    if !announce {
        return call();
    }
    let (done, wait) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(WAIT_NOTICE_AFTER) {
                eprintln!("sclip: waiting for the hub to answer {what}");
            }
        });
        let result = call();
        drop(done);
        result
    })
}

fn metadata_from(headers: &HeaderMap, download_url: String, url: &str) -> Result<Metadata> {
    let not_a_hub = |what: &str| {
        anyhow!(
            "{url} answered without {what}; is HF_ENDPOINT a Hugging Face hub (or a mirror of one)?"
        )
    };
    let commit = header(headers, "x-repo-commit")
        .filter(|c| is_commit_hash(c))
        .ok_or_else(|| not_a_hub("a commit hash (X-Repo-Commit)"))?;
    let etag = header(headers, "x-linked-etag")
        .or_else(|| header(headers, "etag"))
        .map(|etag| normalize_etag(&etag))
        .filter(|etag| is_safe_blob_name(etag))
        .ok_or_else(|| not_a_hub("a usable ETag"))?;
    let size = header(headers, "x-linked-size")
        .or_else(|| header(headers, "content-length"))
        .and_then(|size| size.trim().parse().ok())
        .ok_or_else(|| not_a_hub("the file's size (X-Linked-Size or Content-Length)"))?;
    Ok(Metadata {
        commit,
        etag,
        size,
        download_url,
    })
}

/// `W/"abc"` and `"abc"` both name blob `abc`.
fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// The blob's file name comes from the server: it must not leave `blobs/`.
fn is_safe_blob_name(etag: &str) -> bool {
    (1..=128).contains(&etag.len())
        && etag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn head_error(url: &str, status: u16, headers: &HeaderMap) -> HeadFailure {
    let code = header(headers, "x-error-code");
    match (status, code.as_deref()) {
        (404, Some("EntryNotFound")) => HeadFailure::EntryNotFound {
            commit: header(headers, "x-repo-commit").filter(|c| is_commit_hash(c)),
        },
        (500..=599, _) => HeadFailure::Unreachable(http_error(url, status, headers)),
        _ => HeadFailure::Refused(http_error(url, status, headers)),
    }
}

/// The hub's error codes in plain words.
fn http_error(url: &str, status: u16, headers: &HeaderMap) -> anyhow::Error {
    let code = header(headers, "x-error-code");
    let server_says = header(headers, "x-error-message")
        .map(|message| format!(" (the hub says: {message})"))
        .unwrap_or_default();
    match code.as_deref() {
        Some("RepoNotFound") => anyhow!(
            "{url}: no such repo on the hub, or it is private{server_says}; check the repo id, and \
             for a private repo set HF_TOKEN to a token that can read it"
        ),
        Some("GatedRepo") => anyhow!(
            "{url}: the repo is gated{server_says}; accept its conditions on its hub page and set \
             HF_TOKEN to a token of the account that did"
        ),
        Some("RevisionNotFound") => anyhow!(
            "{url}: the repo has no such revision{server_says}; name an existing branch, tag or \
             commit"
        ),
        Some("EntryNotFound") => anyhow!("{url}: the repo has no such file{server_says}"),
        _ if status == 401 || status == 403 => anyhow!(
            "{url}: the hub refused access (HTTP {status}){server_says}; set HF_TOKEN to a token \
             that can read the repo"
        ),
        Some(code) => anyhow!("{url}: the hub answered HTTP {status} {code}{server_says}"),
        None => anyhow!("{url}: the hub answered HTTP {status}{server_says}"),
    }
}

/// A header's value as printable text: servers' words end up in one-line messages.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?;
    Some(
        value
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect(),
    )
}

/// `location` taken relative to `base`, as browsers do for absolute, host-relative and
/// path-relative forms.
fn join_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let Ok(uri) = base.parse::<Uri>() else {
        return location.to_string();
    };
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let directory = uri.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{scheme}://{authority}{directory}/{location}")
    }
}

/// Scheme, host and port agree, as the Python client compares them before sending a token on.
fn same_origin(a: &str, b: &str) -> bool {
    let origin = |url: &str| {
        let uri = url.parse::<Uri>().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Some((scheme, uri.host()?.to_ascii_lowercase(), port))
    };
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

/// Like Python's `quote(revision, safe="")`: `refs/pr/1` is one path segment.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// As the Python client's `REGEX_COMMIT_HASH`: snapshot folders are named in lower case.
fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The hub's rule for repo ids (`org/name` or `name`), which also keeps the cache folder
/// name inside the cache.
fn check_repo_id(repo_id: &str) -> Result<()> {
    let valid_part = |part: &str| {
        (1..=96).contains(&part.len())
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let parts: Vec<&str> = repo_id.split('/').collect();
    if parts.len() > 2
        || !parts.iter().all(|part| valid_part(part))
        || repo_id.contains("--")
        || repo_id.contains("..")
    {
        bail!(
            "{repo_id:?} is neither an existing folder nor a hub repo id (org/name, of letters, \
             digits, '-', '_' and '.')"
        );
    }
    Ok(())
}

/// A revision names a file under `refs/`: it must stay there.
fn check_revision(revision: &str) -> Result<()> {
    let valid = !revision.is_empty()
        && !revision.chars().any(char::is_control)
        && revision
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !valid {
        bail!("{revision:?} is not a hub revision (a branch, tag or commit hash)");
    }
    Ok(())
}

fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

fn hf_home() -> Result<PathBuf> {
    if let Some(home) = non_empty_env("HF_HOME") {
        return Ok(PathBuf::from(home));
    }
    let cache = match non_empty_env("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            non_empty_env("HOME").context("neither HF_HOME nor HOME is set; set HF_HOME")?,
        )
        .join(".cache"),
    };
    Ok(cache.join("huggingface"))
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// HF_TOKEN, else the token `hf auth login` saved at HF_TOKEN_PATH (default HF_HOME/token).
fn token(home: &Path) -> Result<Option<String>> {
    let from_env = std::env::var("HF_TOKEN").map(|token| token.trim().to_string());
    if let Some(token) = from_env.ok().filter(|token| !token.is_empty()) {
        return Ok(Some(token));
    }
    let path = match non_empty_env("HF_TOKEN_PATH") {
        Some(path) => PathBuf::from(path),
        None => home.join("token"),
    };
    match fs::read_to_string(&path) {
        Ok(token) => Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => {
            Err(error).with_context(|| format!("cannot read the hub token {}", path.display()))
        }
    }
}

fn timeout_from_env(kind: TimeoutKind, default_s: f64) -> Result<Duration> {
    let name = kind.variable();
    let Some(value) = non_empty_env(name) else {
        return Ok(Duration::from_secs_f64(default_s));
    };
    let text = value.to_string_lossy();
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0 && *seconds < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| anyhow!("{name}={text:?} is not a number of seconds above 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_endpoint_origin_gets_the_token() {
        assert!(same_origin(
            "https://huggingface.co/a/b/resolve/main/x",
            "https://huggingface.co"
        ));
        assert!(same_origin("https://HF.co:443/x", "https://hf.co"));
        assert!(!same_origin(
            "https://cdn-lfs.huggingface.co/x",
            "https://huggingface.co"
        ));
        assert!(!same_origin("http://127.0.0.1:2/x", "http://127.0.0.1:1"));
        assert!(!same_origin(
            "http://huggingface.co/x",
            "https://huggingface.co"
        ));
    }

    #[test]
    fn locations_are_joined_as_browsers_do() {
        let base = "http://h:1/org/m/resolve/main/config.json";
        assert_eq!(join_url(base, "https://cdn/x"), "https://cdn/x");
        assert_eq!(
            join_url(base, "/new/m/resolve/main/config.json"),
            "http://h:1/new/m/resolve/main/config.json"
        );
        assert_eq!(join_url(base, "//cdn:2/y"), "http://cdn:2/y");
        assert_eq!(
            join_url(base, "other.json"),
            "http://h:1/org/m/resolve/main/other.json"
        );
    }

    #[test]
    fn etags_name_blobs_only_when_safe() {
        assert_eq!(normalize_etag("W/\"abc123\""), "abc123");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert!(is_safe_blob_name("0123abcdef"));
        assert!(!is_safe_blob_name("../../evil"));
        assert!(!is_safe_blob_name(""));
    }

    #[test]
    fn repo_ids_and_revisions_stay_inside_the_cache() {
        assert!(check_repo_id("openai/clip-vit-base-patch16").is_ok());
        assert!(check_repo_id("gpt2").is_ok());
        for bad in ["a/b/c", "a/..", "a--b/c", "a/b c", "", "a/"] {
            assert!(check_repo_id(bad).is_err(), "{bad}");
        }
        assert!(check_revision("main").is_ok());
        assert!(check_revision("refs/pr/1").is_ok());
        for bad in ["", "..", "a/../b", "/abs", "a\nb"] {
            assert!(check_revision(bad).is_err(), "{bad:?}");
        }
        assert_eq!(percent_encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_hash("0123456789ABCDEF0123456789ABCDEF01234567"));
    }
}
