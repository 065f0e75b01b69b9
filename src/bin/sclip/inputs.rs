//! Finding the images of a `sclip segment` run: files and folders from the command line and a
//! `--files-from` list, each with the relative path that places its outputs under `--out` and
//! picks its `--shard`.
//!
//! Paths never go through `String`, so names that are not UTF-8 work on Unix. Folders are read
//! with `std::fs` alone: sorting, hidden entries, symlinks and the output folder each need their
//! own rule, and a walk library would save only the loop.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use image::ImageFormat;

use sclip::preprocess::{decode_image, max_file_bytes, DecodedImage};
use sclip::stream::ImageSource;

/// One image to segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Where to read it: as given, or a folder's path joined with `relative`.
    pub path: PathBuf,
    /// Its place under `--out` and the key `--shard` hashes: the path below the folder it was
    /// found in, the file name of a file argument, or the listed path made relative.
    pub relative: PathBuf,
}

/// What [`discover`] found.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Command-line arguments first, then listed paths, each in the order given; a folder's
    /// images come in the order of their relative paths, compared component by component
    /// (byte order), which is the same on every machine.
    pub inputs: Vec<Input>,
    /// Paths that do not exist or could not be read, with the reason; the rest of the run goes on.
    pub problems: Vec<(PathBuf, String)>,
    /// Subfolders left out because the walk was not recursive, for a "pass -r" hint.
    pub skipped_subfolders: usize,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct WalkOptions<'a> {
    pub recursive: bool,
    /// The folders this run writes into (the output folder, the report's thumbnails), never
    /// searched: files written inside an input tree would otherwise be taken for images by the
    /// next run.
    pub exclude: &'a [&'a Path],
}

/// Collects the inputs named by `arguments` (from the command line) and `listed` (from
/// `--files-from`).
///
/// A file is taken as given, without looking at its content: it was named on purpose, and the
/// decoder's error will say what is wrong with a bad one better than a sniff could. Its relative
/// path is its file name for an argument, and for a listed one the whole path less its root, `.`
/// and `..` parts, so that `find photos -type f` mirrors `photos/a/b.jpg` to `out/photos/a/b.png`.
///
/// A folder is walked, recursively only with `options.recursive`, and keeps the files whose
/// content is an image ([`is_image_file`]) or whose extension is that of a decoded format
/// ([`has_image_extension`]), so that a damaged or empty photo is reported rather than silently
/// left out (a named pipe or device named as an image too, which loading refuses without
/// waiting on it); its images' relative paths start below it. Entries
/// whose names start with `.` are skipped, which also skips sclip's own temporary files.
/// Symlinks to files are followed; symlinks to folders are not, so a walk can never loop.
/// Anything that cannot be read is reported in [`Discovery::problems`] and the walk goes on.
///
/// Sharding and duplicate outputs are left to the caller.
pub fn discover(arguments: &[PathBuf], listed: &[PathBuf], options: &WalkOptions) -> Discovery {
    let mut walk = Walk {
        recursive: options.recursive,
        // A folder that does not exist yet holds nothing to leave out.
        exclude: options
            .exclude
            .iter()
            .filter_map(|folder| fs::canonicalize(folder).ok())
            .collect(),
        found: Discovery::default(),
    };
    for path in arguments {
        walk.add(path, |path| {
            path.file_name()
                .map_or_else(|| clean_relative(path), PathBuf::from)
        });
    }
    for path in listed {
        walk.add(path, clean_relative);
    }
    walk.found
}

struct Walk {
    recursive: bool,
    /// Canonical, so that any spelling of a folder, through symlinks or `..`, is recognised.
    exclude: Vec<PathBuf>,
    found: Discovery,
}

enum EntryKind {
    Folder,
    File,
    Other,
}

impl Walk {
    fn add(&mut self, path: &Path, relative: fn(&Path) -> PathBuf) {
        match fs::metadata(path) {
            Ok(metadata) if metadata.is_dir() => {
                if self.is_excluded(path) {
                    self.problem(
                        path,
                        "not searched: it is the output folder or the report's thumbnail folder, \
                         whose files would be taken for images"
                            .into(),
                    );
                } else {
                    self.folder(path, Path::new(""));
                }
            }
            Ok(_) => self.found.inputs.push(Input {
                path: path.to_path_buf(),
                relative: relative(path),
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.problem(path, "no such file or folder".into());
            }
            Err(error) => self.problem(path, error.to_string()),
        }
    }

    fn folder(&mut self, folder: &Path, relative: &Path) {
        let entries =
            fs::read_dir(folder).and_then(|entries| entries.collect::<io::Result<Vec<_>>>());
        let mut entries = match entries {
            Ok(entries) => entries,
            Err(error) => return self.problem(folder, error.to_string()),
        };
        entries.sort_by_cached_key(fs::DirEntry::file_name);
        for entry in entries {
            let name = entry.file_name();
            if name.as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = entry.path();
            match entry_kind(&entry) {
                Ok(EntryKind::Folder) if self.is_excluded(&path) => {}
                Ok(EntryKind::Folder) if self.recursive => self.folder(&path, &relative.join(name)),
                Ok(EntryKind::Folder) => self.found.skipped_subfolders += 1,
                Ok(EntryKind::File) => match is_image_candidate(&path) {
                    Ok(true) => self.found.inputs.push(Input {
                        path,
                        relative: relative.join(name),
                    }),
                    Ok(false) => {}
                    Err(error) => self.problem(&path, error.to_string()),
                },
                // Never opened here; named as an image, it is taken so that loading it says what
                // it is instead of leaving it out without a word.
                Ok(EntryKind::Other) if has_image_extension(&path) => {
                    self.found.inputs.push(Input {
                        path,
                        relative: relative.join(name),
                    });
                }
                Ok(EntryKind::Other) => {}
                // A broken link is reported only when it is named as an image: like any other
                // file, one named otherwise (`notes.bin`) is none of the run's business.
                Err(_) if !has_image_extension(&path) => {}
                Err(error) => self.problem(&path, error.to_string()),
            }
        }
    }

    /// An excluded folder itself, not what is inside it: a walk meets the folder before its
    /// contents, and an input folder named inside it is meant (`sclip segment photos -o .`).
    fn is_excluded(&self, folder: &Path) -> bool {
        !self.exclude.is_empty()
            && fs::canonicalize(folder).is_ok_and(|folder| self.exclude.contains(&folder))
    }

    fn problem(&mut self, path: &Path, message: String) {
        self.found.problems.push((path.to_path_buf(), message));
    }
}

fn entry_kind(entry: &fs::DirEntry) -> io::Result<EntryKind> {
    let file_type = entry.file_type()?;
    Ok(if file_type.is_dir() {
        EntryKind::Folder
    } else if file_type.is_file()
        // A link counts only as a file, never as a folder, so that the walk cannot loop; a
        // broken one is an error, as its target may be an image on a missing disk (unless its
        // name says it is not an image).
        || (file_type.is_symlink() && fs::metadata(entry.path())?.is_file())
    {
        EntryKind::File
    } else {
        // Sockets, devices and pipes: opening a named pipe to sniff it would block.
        EntryKind::Other
    })
}

/// The formats `image::guess_format` recognises and that sclip decodes with the `image` crate's
/// default features. Left out: AVIF (decoding needs the `avif-native` feature), DDS (the crate
/// itself reports no reading support for it), and TGA, which has no signature to recognise.
const DECODED_FORMATS: [ImageFormat; 12] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Gif,
    ImageFormat::WebP,
    ImageFormat::Tiff,
    ImageFormat::Bmp,
    ImageFormat::Ico,
    ImageFormat::Pnm,
    ImageFormat::Qoi,
    ImageFormat::Hdr,
    ImageFormat::OpenExr,
    ImageFormat::Farbfeld,
];

/// Every signature `image::guess_format` checks, and the BMP header size after it, fit in this.
const SNIFF_LENGTH: u64 = 64;

/// The info-header sizes the `image` crate's BMP decoder reads.
const BMP_HEADER_SIZES: [u32; 6] = [12, 40, 52, 56, 108, 124];

/// Whether a walked file is taken as an image: by its name, or else by its content.
fn is_image_candidate(path: &Path) -> io::Result<bool> {
    Ok(has_image_extension(path) || is_image_file(path)?)
}

/// Whether the file name ends in an extension of a format sclip decodes, in any case (`.JPG`).
fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|extension| {
            DECODED_FORMATS
                .into_iter()
                .flat_map(ImageFormat::extensions_str)
                .any(|known| known.eq_ignore_ascii_case(extension))
        })
}

/// Whether the file starts like an image in a format sclip decodes, whatever its extension.
pub fn is_image_file(path: &Path) -> io::Result<bool> {
    let mut head = Vec::new();
    // The entry was a regular file when listed, but may be a named pipe by now.
    sclip::preprocess::open_without_blocking(path)?
        .take(SNIFF_LENGTH)
        .read_to_end(&mut head)?;
    Ok(is_image_header(&head))
}

fn is_image_header(head: &[u8]) -> bool {
    match image::guess_format(head) {
        // "BM" and "P1".."P7" are two-letter signatures that many text files start with, so the
        // bytes after them must fit too.
        Ok(ImageFormat::Bmp) => matches!(
            head.get(14..18),
            Some(&[a, b, c, d]) if BMP_HEADER_SIZES.contains(&u32::from_le_bytes([a, b, c, d]))
        ),
        Ok(ImageFormat::Pnm) => is_pnm_header(head),
        Ok(format) => DECODED_FORMATS.contains(&format),
        Err(_) => false,
    }
}

/// Netpbm puts whitespace after the magic number, then the width (or a comment) in P1 to P6, or
/// a line of PAM header words in P7.
fn is_pnm_header(head: &[u8]) -> bool {
    let rest = &head[2..];
    let width = rest.trim_ascii_start().first();
    rest.first().is_some_and(u8::is_ascii_whitespace)
        && (head[1] == b'7' || width.is_none_or(|&byte| byte.is_ascii_digit() || byte == b'#'))
}

/// Reads a `--files-from` list: one path a line (a trailing `\r` dropped, for lists written on
/// Windows), or NUL-separated for `find -print0` and `fd -0`, whose paths may hold newlines.
/// Empty entries are skipped. On Unix the bytes are taken as they are, UTF-8 or not.
pub fn read_path_list(mut reader: impl Read, nul_separated: bool) -> io::Result<Vec<PathBuf>> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    let separator = if nul_separated { b'\0' } else { b'\n' };
    bytes
        .split(|&byte| byte == separator)
        .map(|entry| {
            if nul_separated {
                entry
            } else {
                entry.strip_suffix(b"\r").unwrap_or(entry)
            }
        })
        .filter(|entry| !entry.is_empty())
        .map(path_from_bytes)
        .collect()
}

#[cfg(unix)]
fn path_from_bytes(bytes: &[u8]) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    Ok(PathBuf::from(OsStr::from_bytes(bytes)))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: &[u8]) -> io::Result<PathBuf> {
    // Names elsewhere are Unicode: bytes that are not UTF-8 cannot name a file reliably.
    std::str::from_utf8(bytes)
        .map(PathBuf::from)
        .map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a listed path is not UTF-8: {error}"),
            )
        })
}

/// The one image `sclip segment -` reads from stdin, held whole: the stream decodes it like a
/// file's bytes.
pub struct StdinImage {
    bytes: Vec<u8>,
    max_pixels: u64,
}

impl StdinImage {
    /// Reads stdin to its end, refusing an empty stream and more bytes than a file may hold
    /// under `max_pixels` ([`max_file_bytes`]), so that an endless stream (`-` fed by
    /// `/dev/zero`) cannot fill memory.
    pub fn read(max_pixels: u64) -> anyhow::Result<StdinImage> {
        let bytes = read_bounded(io::stdin().lock(), max_file_bytes(max_pixels))?;
        Ok(StdinImage { bytes, max_pixels })
    }
}

fn read_bounded(reader: impl Read, limit: u64) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .context("cannot read the image from stdin")?;
    if bytes.is_empty() {
        anyhow::bail!("stdin is empty (0 bytes); pipe an image into it (< photo.jpg)");
    }
    if bytes.len() as u64 > limit {
        anyhow::bail!(
            "stdin holds more than {limit} bytes, the limit that --max-pixels sets (8 bytes a \
             pixel and 64 MiB); pass a larger --max-pixels if the image is genuine"
        );
    }
    Ok(bytes)
}

impl ImageSource for StdinImage {
    fn len(&self) -> usize {
        1
    }

    fn load(&self, _index: usize) -> anyhow::Result<DecodedImage> {
        decode_image(&self.bytes, self.max_pixels).context("cannot decode the image from stdin")
    }

    fn name(&self, _index: usize) -> String {
        "the image from stdin".to_owned()
    }
}

/// `--shard K/N`: the images whose relative path hashes to K - 1 modulo N.
///
/// The hash is FNV-1a (64-bit) over the relative path's bytes, its components joined with `/`
/// whatever the platform (on Unix the raw bytes, elsewhere the path as lossy UTF-8). It is fixed:
/// every version of sclip on every machine puts an image in the same shard, so N jobs with
/// K = 1..N split a folder with no overlap and no coordination, and a rerun of one shard
/// redoes exactly that shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Zero-based: K - 1.
    index: u64,
    count: u64,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let error = |what: &str| format!("--shard {text}: {what}");
        let (k, n) = text
            .split_once('/')
            .ok_or_else(|| error("expected K/N, such as 1/4"))?;
        let k: u64 = k.parse().map_err(|_| error("K must be a whole number"))?;
        let n: u64 = n.parse().map_err(|_| error("N must be a whole number"))?;
        if n == 0 {
            return Err(error("N must be at least 1"));
        }
        if !(1..=n).contains(&k) {
            return Err(error("K must be between 1 and N"));
        }
        Ok(Shard {
            index: k - 1,
            count: n,
        })
    }
}

impl Shard {
    pub fn contains(&self, relative: &Path) -> bool {
        path_hash(relative) % self.count == self.index
    }
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn path_hash(relative: &Path) -> u64 {
    clean_relative(relative)
        .iter()
        .enumerate()
        .fold(FNV_OFFSET_BASIS, |hash, (position, name)| {
            let hash = if position == 0 {
                hash
            } else {
                fnv1a(hash, b"/")
            };
            fnv1a(hash, &name_bytes(name))
        })
}

#[cfg(unix)]
fn name_bytes(name: &OsStr) -> Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    Cow::Borrowed(name.as_bytes())
}

/// `OsStr::as_encoded_bytes` would be unspecified outside Unix, so not stable across versions.
#[cfg(not(unix))]
fn name_bytes(name: &OsStr) -> Cow<'_, [u8]> {
    match name.to_string_lossy() {
        Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
        Cow::Owned(text) => Cow::Owned(text.into_bytes()),
    }
}

/// `out/<relative>` with the extension replaced by `new_extension_suffix` (such as `.png` or
/// `.probs.npy`, a constant of the caller's). The result is always inside `out`: see
/// [`clean_relative`].
pub fn mirrored_output(out: &Path, relative: &Path, new_extension_suffix: &str) -> PathBuf {
    let relative = clean_relative(relative);
    let mut name = relative.file_stem().unwrap_or_default().to_os_string();
    name.push(new_extension_suffix);
    out.join(relative.with_file_name(name))
}

/// The path's plain names only, so that it can be joined under any folder without leaving it:
/// `..` takes back the name before it (`x/../y/z.jpg` is `y/z.jpg`, the file it names, not
/// `x/y/z.jpg`, which could be another image's place) and is dropped where there is none; the
/// root, drive and `.` parts are dropped.
fn clean_relative(path: &Path) -> PathBuf {
    let mut names: Vec<&OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => names.push(name),
            Component::ParentDir => {
                names.pop();
            }
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
        }
    }
    names.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR";

    #[test]
    fn stdin_is_read_whole_up_to_the_limit_and_empty_or_longer_is_refused() {
        assert_eq!(read_bounded(&b"abc"[..], 3).unwrap(), b"abc");
        let longer = format!("{:#}", read_bounded(&b"abcd"[..], 3).unwrap_err());
        assert!(
            longer.starts_with("stdin holds more than 3 bytes") && longer.contains("--max-pixels"),
            "{longer}"
        );
        let empty = format!("{:#}", read_bounded(&b""[..], 3).unwrap_err());
        assert!(empty.starts_with("stdin is empty (0 bytes)"), "{empty}");
        // An endless stream stops being read one byte past the limit.
        let endless = read_bounded(io::repeat(0), 1000).unwrap_err();
        assert!(format!("{endless}").contains("more than 1000 bytes"));
    }

    /// Creates each file (parents included) under `root`.
    fn tree(root: &Path, files: &[(&str, &[u8])]) {
        for (relative, content) in files {
            let path = root.join(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
    }

    fn walk(root: &Path, recursive: bool, exclude: Option<&Path>) -> Discovery {
        discover(
            &[root.to_path_buf()],
            &[],
            &WalkOptions {
                recursive,
                exclude: exclude.as_slice(),
            },
        )
    }

    fn relatives(discovery: &Discovery) -> Vec<&str> {
        discovery
            .inputs
            .iter()
            .map(|input| input.relative.to_str().unwrap())
            .collect()
    }

    #[test]
    fn a_folder_is_walked_recursively_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        tree(
            dir.path(),
            &[
                ("a.png", PNG),
                ("b/c.png", PNG),
                ("b/d/e.png", PNG),
                ("f/g.png", PNG),
                ("z.png", PNG),
            ],
        );
        let flat = walk(dir.path(), false, None);
        assert_eq!(relatives(&flat), ["a.png", "z.png"]);
        assert_eq!(flat.skipped_subfolders, 2);
        assert!(flat.problems.is_empty());

        let deep = walk(dir.path(), true, None);
        assert_eq!(
            relatives(&deep),
            ["a.png", "b/c.png", "b/d/e.png", "f/g.png", "z.png"]
        );
        assert_eq!(deep.skipped_subfolders, 0);
        for input in &deep.inputs {
            assert_eq!(input.path, dir.path().join(&input.relative));
        }
    }

    #[test]
    fn entries_are_sorted_by_name_bytes_at_each_level() {
        let dir = tempfile::tempdir().unwrap();
        tree(
            dir.path(),
            &[
                ("b.png", PNG),
                ("a.png", PNG),
                ("a-b.png", PNG),
                ("a/x.png", PNG),
                ("B.png", PNG),
                ("a/W.png", PNG),
            ],
        );
        let found = walk(dir.path(), true, None);
        // Upper case sorts before lower case; the folder `a` before `a-b.png` and `a.png`,
        // whose names it is a prefix of, so its contents come before them.
        assert_eq!(
            relatives(&found),
            ["B.png", "a/W.png", "a/x.png", "a-b.png", "a.png", "b.png"]
        );
        let mut sorted = found.inputs.clone();
        sorted.sort_by(|x, y| x.relative.cmp(&y.relative));
        assert_eq!(sorted, found.inputs);
    }

    #[test]
    fn hidden_files_and_folders_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        tree(
            dir.path(),
            &[
                ("cat.png", PNG),
                (".thumb.png", PNG),
                (".cat.png.x7Yq2.tmp", PNG),
                (".cache/dog.png", PNG),
            ],
        );
        let found = walk(dir.path(), true, None);
        assert_eq!(relatives(&found), ["cat.png"]);
        assert_eq!(walk(dir.path(), false, None).skipped_subfolders, 0);
    }

    #[test]
    fn folder_entries_are_kept_by_content_or_image_extension() {
        let dir = tempfile::tempdir().unwrap();
        tree(
            dir.path(),
            &[
                // Named as images: taken, so that decoding reports what is wrong with them.
                ("notes.jpg", b"just some text"),
                ("empty.png", b""),
                ("SHOUT.TIFF", b""),
                // An image by content, whatever the name.
                ("scan.dat", PNG),
                ("photo.jpeg", b"\xff\xd8\xff\xe0\0\x10JFIF"),
                // Neither: left alone.
                ("README.txt", b"hello"),
                ("Makefile", b"all:"),
                ("png", b"no extension, only a name"),
            ],
        );
        #[cfg(unix)]
        for fifo in ["stream.jpg", "stream"] {
            let made = std::process::Command::new("mkfifo")
                .arg(dir.path().join(fifo))
                .status()
                .unwrap();
            assert!(made.success());
        }
        let found = walk(dir.path(), false, None);
        let mut expected = vec![
            "SHOUT.TIFF",
            "empty.png",
            "notes.jpg",
            "photo.jpeg",
            "scan.dat",
        ];
        if cfg!(unix) {
            // A named pipe is never opened by the walk: taken by its name alone.
            expected.push("stream.jpg");
        }
        assert_eq!(relatives(&found), expected);
        assert!(found.problems.is_empty());
    }

    #[test]
    #[cfg(unix)]
    fn sniffing_a_named_pipe_does_not_wait_for_a_writer() {
        // What a file listed by the walk can have become by the time it is sniffed.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("photo.dat");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(!is_image_file(&fifo).unwrap());
    }

    #[test]
    fn sniffing_knows_the_decoded_formats() {
        let mut bmp = b"BM".to_vec();
        bmp.extend([0; 12]);
        bmp.extend(40u32.to_le_bytes());
        let images: [&[u8]; 15] = [
            PNG,
            b"\xff\xd8\xff\xdb",
            b"GIF89a",
            b"RIFF\x10\0\0\0WEBPVP8 ",
            b"II*\0",
            b"MM\0*",
            &bmp,
            b"\0\0\x01\0\x01\0",
            b"P6\n2 2\n255\n",
            b"P5\n# made by hand\n",
            b"P7\nWIDTH 2\n",
            b"qoif",
            b"#?RADIANCE\n",
            b"\x76\x2f\x31\x01",
            b"farbfeld",
        ];
        for head in images {
            assert!(is_image_header(head), "{:?}", head.escape_ascii());
        }
        let others: [&[u8]; 8] = [
            b"BMW service notes, 2024 and 2025",
            b"P1 of the plan",
            b"P2P networking",
            b"\0\0\0\x1cftypavif",
            b"DDS \x7c\0\0\0",
            b"%PDF-1.7",
            b"",
            b"\x89PN",
        ];
        for head in others {
            assert!(!is_image_header(head), "{:?}", head.escape_ascii());
        }
        for format in DECODED_FORMATS {
            assert!(format.reading_enabled(), "{format:?}");
        }
    }

    #[test]
    fn the_output_folder_is_never_searched() {
        let dir = tempfile::tempdir().unwrap();
        let photos = dir.path().join("photos");
        tree(
            &photos,
            &[("a.png", PNG), ("masks/a.png", PNG), ("masks/b/c.png", PNG)],
        );
        // Another spelling of the same folder.
        let out = photos.join("masks/b/..");
        let found = walk(&photos, true, Some(&out));
        assert_eq!(relatives(&found), ["a.png"]);
        assert!(found.problems.is_empty());
        let flat = walk(&photos, false, Some(&out));
        assert_eq!(flat.skipped_subfolders, 0);

        let itself = walk(&photos.join("masks"), true, Some(&out));
        assert!(itself.inputs.is_empty());
        assert_eq!(itself.problems.len(), 1);
        assert!(itself.problems[0].1.contains("output folder"));

        // `sclip segment -r photos -o .`
        let around = walk(&photos, true, Some(dir.path()));
        assert_eq!(around.inputs.len(), 3);

        let not_yet_made = walk(&photos, true, Some(&dir.path().join("new")));
        assert_eq!(not_yet_made.inputs.len(), 3);
    }

    #[cfg(unix)]
    #[test]
    fn links_to_files_are_followed_and_links_to_folders_are_not() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let photos = dir.path().join("photos");
        tree(
            dir.path(),
            &[("elsewhere/far.png", PNG), ("photos/sub/near.png", PNG)],
        );
        symlink(dir.path().join("elsewhere"), photos.join("linked")).unwrap();
        symlink(dir.path().join("elsewhere/far.png"), photos.join("far.png")).unwrap();
        symlink(&photos, photos.join("sub/loop")).unwrap();
        symlink(dir.path().join("gone.png"), photos.join("broken.png")).unwrap();
        symlink(dir.path().join("gone.bin"), photos.join("broken.bin")).unwrap();

        let found = walk(&photos, true, None);
        assert_eq!(relatives(&found), ["far.png", "sub/near.png"]);
        assert_eq!(found.problems.len(), 1);
        assert_eq!(found.problems[0].0, photos.join("broken.png"));
        // A link to a folder is not a subfolder that -r would search.
        assert_eq!(walk(&photos, false, None).skipped_subfolders, 1);
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_entries_are_problems_with_the_os_reason() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        tree(
            dir.path(),
            &[("locked/a.png", PNG), ("secret.png", PNG), ("ok.png", PNG)],
        );
        let lock = |relative: &str| {
            fs::set_permissions(dir.path().join(relative), fs::Permissions::from_mode(0o000))
                .unwrap()
        };
        lock("locked");
        lock("secret.png");
        // Root reads everything, so there is nothing to check.
        let locked_out = fs::read_dir(dir.path().join("locked")).is_err();
        let found = walk(dir.path(), true, None);
        for relative in ["locked", "secret.png"] {
            fs::set_permissions(dir.path().join(relative), fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        if !locked_out {
            return;
        }
        assert_eq!(relatives(&found), ["ok.png"]);
        let problems: Vec<_> = found.problems.iter().map(|(path, _)| path).collect();
        assert_eq!(
            problems,
            [&dir.path().join("locked"), &dir.path().join("secret.png")]
        );
        for (_, reason) in &found.problems {
            assert!(reason.contains("ermission denied"), "{reason}");
        }
    }

    #[test]
    fn file_arguments_are_taken_as_given_and_missing_ones_reported() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path(), &[("a/notes.jpg", b"text"), ("b/c.png", PNG)]);
        let missing = dir.path().join("nope.jpg");
        let found = discover(
            &[
                dir.path().join("a/notes.jpg"),
                missing.clone(),
                dir.path().join("b"),
            ],
            &[],
            &WalkOptions::default(),
        );
        assert_eq!(relatives(&found), ["notes.jpg", "c.png"]);
        assert_eq!(found.inputs[0].path, dir.path().join("a/notes.jpg"));
        assert_eq!(
            found.problems,
            [(missing, "no such file or folder".to_string())]
        );
    }

    #[test]
    fn listed_files_keep_their_path_less_root_and_dots() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path(), &[("photos/a/b.png", PNG), ("list/c.png", PNG)]);
        let absolute = dir.path().join("photos/a/b.png");
        let roundabout = dir.path().join("photos/./a/../a/b.png");
        let found = discover(
            &[],
            &[absolute.clone(), roundabout, dir.path().join("list")],
            &WalkOptions::default(),
        );
        let expected = clean_relative(&absolute);
        assert!(expected.ends_with("photos/a/b.png") && expected.is_relative());
        assert_eq!(found.inputs[0].relative, expected);
        // `a/../a/b.png` names the same file as `a/b.png`, and mirrors to the same place.
        assert_eq!(found.inputs[1].relative, expected);
        // A listed folder is walked like a folder argument.
        assert_eq!(found.inputs[2].relative, PathBuf::from("c.png"));
        assert_eq!(found.inputs.len(), 3);
        assert_eq!(
            clean_relative(Path::new("photos/a/b.png")),
            PathBuf::from("photos/a/b.png")
        );
        assert_eq!(
            clean_relative(Path::new("./../../x.jpg")),
            PathBuf::from("x.jpg")
        );
    }

    #[test]
    fn path_lists_are_read_by_line_or_by_nul() {
        let read = |bytes: &[u8], nul| read_path_list(bytes, nul).unwrap();
        let paths = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            read(b"a.jpg\nb c.png\n\nsub/d.png", false),
            paths(&["a.jpg", "b c.png", "sub/d.png"])
        );
        assert_eq!(
            read(b"a.jpg\r\nb.png\r\n\r\n", false),
            paths(&["a.jpg", "b.png"])
        );
        assert_eq!(
            read(b"a\nb.jpg\0c.png\r\0\0", true),
            paths(&["a\nb.jpg", "c.png\r"])
        );
        assert!(read(b"", false).is_empty());
        assert!(read(b"\n\n", false).is_empty());
        assert!(read(b"\0", true).is_empty());
    }

    #[test]
    fn shard_parse_errors_say_what_is_wrong() {
        let error = |text: &str| text.parse::<Shard>().unwrap_err();
        assert_eq!(error("0/4"), "--shard 0/4: K must be between 1 and N");
        assert_eq!(error("5/4"), "--shard 5/4: K must be between 1 and N");
        assert_eq!(error("1/0"), "--shard 1/0: N must be at least 1");
        assert_eq!(error("3"), "--shard 3: expected K/N, such as 1/4");
        assert_eq!(error("x/4"), "--shard x/4: K must be a whole number");
        assert_eq!(error("-1/4"), "--shard -1/4: K must be a whole number");
        assert_eq!(error("1/4/2"), "--shard 1/4/2: N must be a whole number");
        assert_eq!("4/4".parse::<Shard>(), Ok(Shard { index: 3, count: 4 }));
        let whole: Shard = "1/1".parse().unwrap();
        assert!(whole.contains(Path::new("anything.png")));
    }

    #[test]
    fn the_shard_hash_is_fnv1a_over_slash_joined_names() {
        // The published FNV-1a 64 test vectors: these values must never change.
        assert_eq!(path_hash(Path::new("")), 0xcbf2_9ce4_8422_2325);
        assert_eq!(path_hash(Path::new("a")), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(path_hash(Path::new("foobar")), 0x8594_4171_f739_67e8);
        let joined = fnv1a(FNV_OFFSET_BASIS, b"2024/may/cat.jpg");
        assert_eq!(path_hash(Path::new("2024/may/cat.jpg")), joined);
        assert_eq!(path_hash(Path::new("./2024//may/cat.jpg")), joined);
        let shard = |k: u64| Shard {
            index: k - 1,
            count: 4,
        };
        let owner = (joined % 4) + 1;
        for k in 1..=4 {
            assert_eq!(shard(k).contains(Path::new("2024/may/cat.jpg")), k == owner);
        }
    }

    #[test]
    fn three_shards_partition_a_thousand_paths() {
        let paths: Vec<PathBuf> = (0..1000)
            .map(|i| PathBuf::from(format!("shoot{}/IMG_{i:04}.jpg", i % 7)))
            .collect();
        let shards: Vec<Shard> = ["1/3", "2/3", "3/3"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        for path in &paths {
            let owners = shards.iter().filter(|shard| shard.contains(path)).count();
            assert_eq!(owners, 1, "{}", path.display());
        }
        for shard in &shards {
            let size = paths.iter().filter(|path| shard.contains(path)).count();
            assert!((250..=420).contains(&size), "{shard:?} has {size}");
        }
    }

    #[test]
    fn mirrored_outputs_stay_inside_out() {
        let out = Path::new("masks");
        let cases = [
            ("cat.jpg", ".png", "masks/cat.png"),
            (
                "2024/may/cat.jpg",
                ".probs.npy",
                "masks/2024/may/cat.probs.npy",
            ),
            ("cat.tar.gz", ".png", "masks/cat.tar.png"),
            ("README", ".png", "masks/README.png"),
            ("../../etc/passwd", ".png", "masks/etc/passwd.png"),
            ("a/../../b.jpg", ".png", "masks/b.png"),
            ("x/../y/z.jpg", ".png", "masks/y/z.png"),
            ("x/y/../../z.jpg", ".png", "masks/z.png"),
            ("/data/x.jpg", ".png", "masks/data/x.png"),
            ("./x.jpg", ".overlay.jpg", "masks/x.overlay.jpg"),
            ("..", ".png", "masks/.png"),
            ("/", ".png", "masks/.png"),
        ];
        for (relative, suffix, expected) in cases {
            let output = mirrored_output(out, Path::new(relative), suffix);
            assert_eq!(output, PathBuf::from(expected), "{relative}");
            assert!(output.starts_with(out));
        }
    }

    #[cfg(unix)]
    #[test]
    fn names_that_are_not_utf8_work_throughout() {
        use std::ffi::OsString;
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join(OsStr::from_bytes(b"caf\xe9"));
        fs::create_dir(&folder).unwrap();
        fs::write(folder.join(OsStr::from_bytes(b"\xffcat.png")), PNG).unwrap();

        let found = walk(dir.path(), true, None);
        assert_eq!(found.inputs.len(), 1);
        let input = &found.inputs[0];
        assert_eq!(
            input.relative.as_os_str().as_bytes(),
            b"caf\xe9/\xffcat.png"
        );
        assert!(input.path.is_file());

        let out = mirrored_output(Path::new("masks"), &input.relative, ".png");
        assert_eq!(out.as_os_str().as_bytes(), b"masks/caf\xe9/\xffcat.png");
        assert_eq!(
            path_hash(&input.relative),
            fnv1a(FNV_OFFSET_BASIS, b"caf\xe9/\xffcat.png")
        );

        let listed = read_path_list(&b"\xff.jpg\n"[..], false).unwrap();
        assert_eq!(
            listed,
            [PathBuf::from(OsString::from_vec(b"\xff.jpg".to_vec()))]
        );
        let listed = read_path_list(&b"dir/\xfe\0"[..], true).unwrap();
        assert_eq!(listed[0].as_os_str().as_bytes(), b"dir/\xfe");
    }
}
