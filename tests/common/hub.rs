//! A local emulator of the Hugging Face hub, started by each test on 127.0.0.1: `HEAD/GET
//! /{repo}/resolve/{revision}/{file}` answer as huggingface.co does (`X-Repo-Commit`, quoted
//! `ETag`s, `X-Linked-Etag`/`X-Linked-Size` and a 302 to a CDN on another origin for LFS files,
//! `X-Error-Code` on errors), and the CDN serves the LFS blobs.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::{fixtures, sclip_process};

pub const REPO: &str = "sclip-tests/tiny-clip";
pub const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Reply {
        self.body = body;
        self
    }
}

pub type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1 that records every request and answers with `handler`, one
/// connection per request.
pub struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, recorded) = (Arc::clone(&handler), Arc::clone(&recorded));
                std::thread::spawn(move || serve(stream, &*handler, &recorded));
            }
        });
        Server { port, requests }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, handler: &Handler, recorded: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((key, value)) = line.split_once(':') {
            headers.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    let request = Request {
        method,
        path,
        headers,
    };
    recorded.lock().unwrap().push(request.clone());
    let reply = handler(&request);
    let mut head = format!(
        "HTTP/1.1 {} Emulated\r\nConnection: close\r\n",
        reply.status
    );
    let has_length = reply
        .headers
        .iter()
        .any(|(key, _)| key.eq_ignore_ascii_case("content-length"));
    if !has_length {
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    for (key, value) in &reply.headers {
        head.push_str(&format!("{key}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    if request.method != "HEAD" {
        let _ = stream.write_all(&reply.body);
    }
    let _ = stream.flush();
}

/// A port nothing listens on: a hub that is down.
pub fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[derive(Clone)]
pub struct HubFile {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub lfs: bool,
}

impl HubFile {
    pub fn sha256(&self) -> String {
        hex(&Sha256::digest(&self.bytes))
    }

    /// Any 40 hex digits do for the git blob hash: only LFS blobs are named by their sha256.
    pub fn git_etag(&self) -> String {
        self.sha256()[..40].to_string()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The files of a fixture folder as a hub repo: weights in LFS, the rest in git.
pub fn repo_files(fixture: &str) -> Vec<HubFile> {
    let dir = fixtures().join(fixture);
    [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "pytorch_model.bin",
    ]
    .into_iter()
    .filter(|name| dir.join(name).exists())
    .map(|name| HubFile {
        name,
        bytes: std::fs::read(dir.join(name)).unwrap(),
        lfs: name != "config.json" && name != "tokenizer.json",
    })
    .collect()
}

/// How the CDN answers a `Range` request.
#[derive(Clone, Copy)]
pub enum Ranges {
    Honoured,
    /// A proxy that drops the header: 200 and the whole file.
    Ignored,
    /// 206, but not with the range asked for.
    Misreported,
}

/// The CDN serving `/blobs/{sha256}`, with `tamper` applied to what it sends.
pub fn start_cdn(files: &[HubFile], ranges: Ranges, tamper: fn(Vec<u8>) -> Vec<u8>) -> Server {
    let files = files.to_vec();
    Server::start(move |request| {
        let Some(file) = files
            .iter()
            .find(|f| request.path == format!("/blobs/{}", f.sha256()))
        else {
            return Reply::new(404);
        };
        ranged(tamper(file.bytes.clone()), request, ranges)
    })
}

/// The whole file, or the part a `Range: bytes=START-[END]` asks for, as `ranges` says.
pub fn ranged(bytes: Vec<u8>, request: &Request, ranges: Ranges) -> Reply {
    let asked = request
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(start, end)| {
            let start: usize = start.parse().ok()?;
            let end = match end {
                "" => None,
                end => Some(end.parse::<usize>().ok()?),
            };
            Some((start, end))
        });
    let size = bytes.len();
    match (asked, ranges) {
        (Some((start, end)), Ranges::Honoured) if start < size => {
            let last = end.unwrap_or(size - 1).min(size - 1);
            Reply::new(206)
                .header("Content-Range", format!("bytes {start}-{last}/{size}"))
                .body(bytes[start..=last].to_vec())
        }
        (Some(_), Ranges::Misreported) => Reply::new(206)
            .header("Content-Range", format!("bytes 0-{}/{size}", size - 1))
            .body(bytes),
        _ => Reply::new(200).body(bytes),
    }
}

/// The hub's resolve endpoint for `REPO` at `main` or `COMMIT`, sending LFS files to `cdn`.
pub fn hub_reply(files: &[HubFile], cdn: &str, request: &Request) -> Reply {
    let Some(rest) = request.path.strip_prefix(&format!("/{REPO}/resolve/")) else {
        return Reply::new(401)
            .header("X-Error-Code", "RepoNotFound")
            .header("X-Error-Message", "Repository not found");
    };
    let (revision, name) = rest.split_once('/').unwrap();
    if revision != "main" && revision != COMMIT {
        return Reply::new(404)
            .header("X-Error-Code", "RevisionNotFound")
            .header("X-Error-Message", "Invalid rev id");
    }
    let Some(file) = files.iter().find(|f| f.name == name) else {
        return Reply::new(404)
            .header("X-Error-Code", "EntryNotFound")
            .header("X-Repo-Commit", COMMIT);
    };
    if file.lfs {
        let sha = file.sha256();
        Reply::new(302)
            .header("X-Repo-Commit", COMMIT)
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", file.bytes.len().to_string())
            .header("ETag", format!("\"{}\"", file.git_etag()))
            .header("Location", format!("{cdn}/blobs/{sha}"))
    } else {
        let reply = ranged(file.bytes.clone(), request, Ranges::Honoured);
        reply
            .header("X-Repo-Commit", COMMIT)
            .header("ETag", format!("\"{}\"", file.git_etag()))
    }
}

pub struct Emulator {
    pub hub: Server,
    pub cdn: Server,
    pub files: Vec<HubFile>,
}

pub fn start_emulator(fixture: &str, ranges: Ranges, tamper: fn(Vec<u8>) -> Vec<u8>) -> Emulator {
    let files = repo_files(fixture);
    let cdn = start_cdn(&files, ranges, tamper);
    let (served, cdn_url) = (files.clone(), cdn.url());
    let hub = Server::start(move |request| hub_reply(&served, &cdn_url, request));
    Emulator { hub, cdn, files }
}

pub fn untouched(bytes: Vec<u8>) -> Vec<u8> {
    bytes
}

/// The sclip binary online against `endpoint`, with the hub's variables (and any proxy) cleared
/// but for `HF_HOME=home`.
pub fn sclip_online(endpoint: &str, home: &Path) -> Command {
    let mut command = sclip_process();
    command
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_HUB_ETAG_TIMEOUT")
        .env_remove("HF_HUB_DOWNLOAD_TIMEOUT");
    for proxy in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        command.env_remove(proxy);
    }
    command
}
