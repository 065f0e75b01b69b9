//! Writing a file so that readers only ever see it whole: the one way sclip writes outputs and
//! cache files.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

/// Creates a hidden temporary sibling of `path`, lets `write` fill it through a buffered writer,
/// flushes and fsyncs it, then renames it over `path`.
///
/// The rename is atomic, so readers see either the old file or the complete new one. The
/// temporary file is removed whenever this returns an error or `write` panics. Its name is
/// `.<file name>.<random>.tmp`, created with exclusive create and retried with fresh random names
/// on collision, so concurrent threads or processes writing into one directory never share a
/// temporary file (whichever rename comes last wins, and it is always a complete file). The leading
/// dot and the `.tmp` suffix keep it out of globs such as `*.png`. A process killed mid-write
/// (e.g. by Ctrl-C) can leave such a hidden file behind, but never a partial `path`.
///
/// Errors name the step and the file that failed; callers add context saying what the file is.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} does not name a file", path.display()))?;
    let directory = parent_directory(path);

    // Dropping a NamedTempFile deletes it, which covers every early return below and unwinding.
    let mut temp_file = create_temp_sibling(directory, file_name)
        .with_context(|| format!("cannot create a temporary file in {}", directory.display()))?;
    let temp_path = temp_file.path().to_path_buf();

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

    temp_file
        .persist(path)
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

/// The directory holding `path`; a bare file name such as `mask.png` has an empty parent, which
/// means the current directory.
fn parent_directory(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Creates `.<file name>.<random>.tmp` in `directory`.
fn create_temp_sibling(directory: &Path, file_name: &OsStr) -> io::Result<NamedTempFile> {
    let mut prefix = OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
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
}
