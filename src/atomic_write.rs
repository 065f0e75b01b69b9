//! Writing a file so that readers only ever see it whole: the one way sclip writes outputs and
//! cache files.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

/// Creates a hidden temporary sibling of `path`, lets `write` fill it through a buffered writer,
/// flushes and fsyncs it, then renames it over `path`.
///
/// The rename is atomic, so readers see either the old file or the complete new one. The
/// temporary file is removed whenever this returns an error or `write` panics. Its name is
/// `.<file name>.<random>.tmp` (a digest of the name stands in for one too long for NAME_MAX),
/// created with exclusive create and retried with fresh random names on collision, so concurrent
/// threads or processes writing into one directory never share a temporary file (whichever
/// rename comes last wins, and it is always a complete file). The leading dot and the `.tmp` suffix keep it out of globs such
/// as `*.png`. A process killed mid-write can leave such a hidden file behind, but never a partial
/// `path`; [`remove_temporaries_in_flight`] removes them for a process about to exit abruptly.
///
/// Errors name the step and the file that failed; callers add context saying what the file is.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    Staged::write(path, write)?.commit()
}

/// Refuses a `path` that exists as something other than a regular file: the rename would put a
/// file in place of a device such as `/dev/full`, a named pipe or a folder, and a write into one
/// that cannot fail would not say so. A symbolic link is refused too, whatever it leads to: the
/// rename replaces the link itself, not its target, and `/dev/stdout` is such a link. The user's
/// outputs are checked with it (before a long run, where they are known then); sclip's own cache
/// files are not, so that whatever took a cache file's place is replaced.
pub fn check_replaceable(path: &Path) -> Result<()> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        // Missing: the rename puts a new file there.
        return Ok(());
    };
    if metadata.file_type().is_symlink() {
        let target = std::fs::read_link(path)
            .map(|target| format!(" (to {})", target.display()))
            .unwrap_or_default();
        anyhow::bail!(
            "{} is a symbolic link{target}, which sclip would replace with a file rather than \
             write through; name the file itself",
            path.display()
        );
    }
    if !metadata.is_file() {
        anyhow::bail!(
            "{} is {}, which sclip does not write into: it writes a file whole and renames it into \
             place; name a regular file",
            path.display(),
            crate::preprocess::file_kind(&metadata.file_type())
        );
    }
    Ok(())
}

/// A file written whole to its temporary sibling, flushed to disk, and not yet renamed into
/// place: several outputs of one item can be staged and then committed together, so that an
/// error in the last one leaves none of them (see [`commit_all`]). Dropping it removes the
/// temporary file.
#[derive(Debug)]
#[must_use = "a staged file is removed unless committed"]
pub struct Staged {
    temp_file: NamedTempFile,
    path: PathBuf,
}

impl Staged {
    /// Writes `path`'s new content to its temporary sibling, as [`write_atomically`] does.
    pub fn write(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<Staged> {
        let file_name = path
            .file_name()
            .with_context(|| format!("{} does not name a file", path.display()))?;
        let directory = parent_directory(path);

        // Dropping a NamedTempFile deletes it, which covers every early return below and unwinding.
        let mut temp_file = create_temp_sibling(directory, file_name).with_context(|| {
            format!("cannot create a temporary file in {}", directory.display())
        })?;
        let temp_path = temp_file.path().to_path_buf();
        let in_flight = InFlight::register(&temp_path);

        let mut buffered = BufWriter::new(temp_file.as_file_mut());
        write(&mut buffered)
            .with_context(|| format!("cannot write temporary file {}", temp_path.display()))?;
        let file = buffered
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
            .with_context(|| format!("cannot write temporary file {}", temp_path.display()))?;
        // Without the fsync, a crash soon after the rename could leave `path` naming an empty or
        // partly written file, since the rename can reach the disk before the data does.
        file.sync_all()
            .with_context(|| format!("cannot flush {} to disk", temp_path.display()))?;
        // From here on the file is complete: an abrupt exit may leave it, or rename it.
        drop(in_flight);
        Ok(Staged {
            temp_file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the complete temporary file over the target.
    pub fn commit(self) -> Result<()> {
        let Staged { temp_file, path } = self;
        let temp_path = temp_file.path().to_path_buf();
        temp_file
            .persist(&path)
            .map_err(|error| error.error)
            .with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    temp_path.display(),
                    path.display()
                )
            })?;
        Ok(())
    }
}

/// Commits `staged` in order; if one fails, removes the ones already committed, so that either
/// every target is new and complete or none is left (a target that existed before is then gone:
/// it was already replaced). Commit the file that marks an item done last.
pub fn commit_all(staged: Vec<Staged>) -> Result<()> {
    let mut committed: Vec<PathBuf> = Vec::with_capacity(staged.len());
    for file in staged {
        let path = file.path.clone();
        if let Err(error) = file.commit() {
            for path in &committed {
                let _ = std::fs::remove_file(path);
            }
            return Err(error);
        }
        committed.push(path);
    }
    Ok(())
}

/// Temporary files being written right now, which a process exiting without unwinding (a second
/// Ctrl-C) would otherwise leave behind.
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Keeps a temporary file's path in [`IN_FLIGHT`] while it is written.
struct InFlight(PathBuf);

impl InFlight {
    fn register(path: &Path) -> InFlight {
        lock_in_flight().push(path.to_path_buf());
        InFlight(path.to_path_buf())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut paths = lock_in_flight();
        if let Some(position) = paths.iter().position(|path| *path == self.0) {
            paths.swap_remove(position);
        }
    }
}

fn lock_in_flight() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // The list stays valid whatever a panicking writer was doing.
    IN_FLIGHT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes the temporary files being written, for a process about to exit at once; the writes
/// then fail, which no longer matters.
pub fn remove_temporaries_in_flight() {
    remove_in_flight(|_| true);
}

/// Removes the temporary files being written that `select` picks (tests pick their own, as
/// other tests of the process write at the same time).
fn remove_in_flight(select: impl Fn(&Path) -> bool) {
    for path in lock_in_flight().iter().filter(|path| select(path)) {
        let _ = std::fs::remove_file(path);
    }
}

/// The directory holding `path`; a bare file name such as `mask.png` has an empty parent, which
/// means the current directory.
fn parent_directory(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The longest file name most file systems take (NAME_MAX on Linux, macOS and Windows).
const NAME_MAX: usize = 255;
const TEMP_RANDOM_LENGTH: usize = 6;
const TEMP_SUFFIX: &str = ".tmp";

/// `.<file name>.`, or `.sclip-<digest of the name>.` when the temporary name would be longer
/// than [`NAME_MAX`] (a 250-byte name that fits is still a valid target).
fn temp_prefix(file_name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    if 1 + file_name.len() + 1 + TEMP_RANDOM_LENGTH + TEMP_SUFFIX.len() <= NAME_MAX {
        prefix.push(file_name);
    } else {
        let digest = format!("{:x}", Sha256::digest(file_name.as_encoded_bytes()));
        prefix.push("sclip-");
        prefix.push(&digest[..16]);
    }
    prefix.push(".");
    prefix
}

/// Creates `.<file name>.<random>.tmp` in `directory`.
fn create_temp_sibling(directory: &Path, file_name: &OsStr) -> io::Result<NamedTempFile> {
    let prefix = temp_prefix(file_name);
    let mut builder = tempfile::Builder::new();
    builder
        .prefix(&prefix)
        .rand_bytes(TEMP_RANDOM_LENGTH)
        .suffix(TEMP_SUFFIX);
    // tempfile defaults to owner-only 0o600 because it expects private scratch files; this file
    // becomes the user's output, so give it the permissions `File::create` would (umask applies).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(directory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::directory_entries;
    use anyhow::bail;
    use std::fs;

    #[test]
    fn successful_write_leaves_only_the_target() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("out.bin");
        write_atomically(&path, |out| Ok(out.write_all(b"complete")?)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"complete");
        assert_eq!(directory_entries(directory.path()), vec![path]);
    }

    #[cfg(unix)]
    #[test]
    fn a_named_pipe_or_a_folder_in_the_targets_place_is_not_replaceable() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("file.json");
        check_replaceable(&file).unwrap();
        write_atomically(&file, |out| Ok(out.write_all(b"kept")?)).unwrap();
        check_replaceable(&file).unwrap();
        let pipe = directory.path().join("pipe.json");
        let status = std::process::Command::new("mkfifo")
            .arg(&pipe)
            .status()
            .unwrap();
        assert!(status.success());
        let error = check_replaceable(&pipe).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("is a named pipe (FIFO)"), "{message}");
        assert!(message.contains("name a regular file"), "{message}");
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::metadata(&pipe).unwrap().file_type().is_fifo());

        let folder = directory.path().join("folder.json");
        fs::create_dir(&folder).unwrap();
        let error = check_replaceable(&folder).unwrap_err();
        assert!(format!("{error:#}").contains("is a folder"), "{error:#}");
        assert_eq!(directory_entries(directory.path()).len(), 3);

        // `--json /dev/stdout > file`: the link leads to a regular file, and the rename would
        // have replaced the link.
        for (name, target) in [
            ("link.json", file.as_path()),
            ("dangling.json", Path::new("gone")),
        ] {
            let link = directory.path().join(name);
            std::os::unix::fs::symlink(target, &link).unwrap();
            let message = format!("{:#}", check_replaceable(&link).unwrap_err());
            assert!(message.contains("is a symbolic link"), "{message}");
            assert!(fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink());
        }
    }

    #[test]
    fn failing_writer_leaves_no_target_and_no_temporary_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("out.bin");
        let error = write_atomically(&path, |out| {
            out.write_all(&[7; 100_000])?;
            bail!("model produced NaN")
        })
        .unwrap_err();
        assert!(format!("{error:#}").ends_with("model produced NaN"));
        assert!(directory_entries(directory.path()).is_empty());
    }

    #[test]
    fn failing_writer_keeps_the_previous_target_intact() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("out.bin");
        write_atomically(&path, |out| Ok(out.write_all(b"previous run")?)).unwrap();
        write_atomically(&path, |out| {
            out.write_all(b"partial")?;
            bail!("interrupted")
        })
        .unwrap_err();
        assert_eq!(fs::read(&path).unwrap(), b"previous run");
        assert_eq!(directory_entries(directory.path()), vec![path]);
    }

    #[test]
    fn panicking_writer_leaves_no_temporary_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("out.bin");
        let outcome = std::panic::catch_unwind(|| {
            write_atomically(&path, |out| {
                out.write_all(b"partial")?;
                panic!("writer panicked on purpose")
            })
        });
        assert!(outcome.is_err());
        assert!(directory_entries(directory.path()).is_empty());
    }

    #[test]
    fn existing_target_is_replaced_whole() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("out.bin");
        fs::write(&path, vec![b'x'; 10_000]).unwrap();
        write_atomically(&path, |out| Ok(out.write_all(b"short")?)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"short");
        assert_eq!(directory_entries(directory.path()), vec![path]);
    }

    #[test]
    fn bare_file_name_is_created_in_the_current_directory() {
        assert_eq!(parent_directory(Path::new("mask.png")), Path::new("."));
        assert_eq!(
            parent_directory(Path::new("out/mask.png")),
            Path::new("out")
        );
    }

    #[test]
    fn path_without_a_file_name_is_rejected() {
        let error = write_atomically(Path::new("out/.."), |_| Ok(())).unwrap_err();
        assert_eq!(format!("{error:#}"), "out/.. does not name a file");
    }

    #[test]
    fn concurrent_writers_to_one_path_never_expose_a_partial_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("shared.bin");
        let content_length = 64 * 1024;
        write_atomically(&path, |out| Ok(out.write_all(&vec![0; content_length])?)).unwrap();

        std::thread::scope(|scope| {
            for writer_id in 1..=4u8 {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..20 {
                        write_atomically(path, |out| {
                            Ok(out.write_all(&vec![writer_id; content_length])?)
                        })
                        .unwrap();
                    }
                });
            }
            let path = &path;
            scope.spawn(move || {
                for _ in 0..200 {
                    let contents = fs::read(path).unwrap();
                    assert_eq!(contents.len(), content_length);
                    assert!(contents.iter().all(|&byte| byte == contents[0]));
                }
            });
        });
        assert_eq!(directory_entries(directory.path()), vec![path]);
    }

    #[cfg(unix)]
    #[test]
    fn written_file_gets_the_same_permissions_as_file_create() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let reference = directory.path().join("reference");
        fs::File::create(&reference).unwrap();
        let path = directory.path().join("out.bin");
        write_atomically(&path, |_| Ok(())).unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode(&path), mode(&reference));
    }

    #[test]
    fn names_near_the_length_limit_get_a_short_temporary_name() {
        let directory = tempfile::tempdir().unwrap();
        for length in [240, NAME_MAX] {
            let path = directory.path().join("n".repeat(length));
            write_atomically(&path, |out| Ok(out.write_all(b"long")?)).unwrap();
            assert_eq!(fs::read(&path).unwrap(), b"long");
            fs::remove_file(&path).unwrap();
        }
        assert!(directory_entries(directory.path()).is_empty());
        let prefix = temp_prefix(OsStr::new(&"n".repeat(244)));
        assert!(prefix.len() + TEMP_RANDOM_LENGTH + TEMP_SUFFIX.len() <= NAME_MAX);
        assert_eq!(temp_prefix(OsStr::new("mask.png")), ".mask.png.");
    }

    #[test]
    fn a_failed_commit_takes_back_the_files_committed_before_it() {
        let directory = tempfile::tempdir().unwrap();
        let first = directory.path().join("overlay.jpg");
        // Renaming a file over a folder that is not empty fails.
        let blocked = directory.path().join("mask.png");
        fs::create_dir_all(blocked.join("inside")).unwrap();
        let staged = vec![
            Staged::write(&first, |out| Ok(out.write_all(b"overlay")?)).unwrap(),
            Staged::write(&blocked, |out| Ok(out.write_all(b"mask")?)).unwrap(),
        ];
        let error = commit_all(staged).unwrap_err();
        assert!(format!("{error:#}").contains("mask.png"), "{error:#}");
        assert!(!first.exists(), "no output of a failed item stays");
        assert_eq!(directory_entries(directory.path()), vec![blocked]);
    }

    #[test]
    fn temporaries_in_flight_are_known_until_complete() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("slow.bin");
        write_atomically(&path, |out| {
            let in_flight = lock_in_flight().clone();
            let temporary = in_flight
                .iter()
                .find(|temporary| temporary.parent() == Some(directory.path()))
                .expect("the temporary file is registered while written");
            assert!(temporary.exists());
            Ok(out.write_all(b"done")?)
        })
        .unwrap();
        assert!(lock_in_flight()
            .iter()
            .all(|temporary| temporary.parent() != Some(directory.path())));
    }

    #[test]
    fn removing_temporaries_in_flight_leaves_nothing_behind() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("cut.bin");
        let error = write_atomically(&path, |out| {
            out.write_all(b"partial")?;
            remove_in_flight(|temporary| temporary.starts_with(directory.path()));
            assert!(directory_entries(directory.path()).is_empty());
            anyhow::bail!("the process exits here")
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains("the process exits here"));
        assert!(directory_entries(directory.path()).is_empty());
    }
}
