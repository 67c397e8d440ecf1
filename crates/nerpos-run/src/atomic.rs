//! Files and folders written whole or not at all: written beside their destination under a temporary
//! name, then renamed into place. A reader (another rank, an array task collecting results, a user
//! after Ctrl-C) never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Result, RunError};

/// The folder `path` goes in (`.` for a bare file name), created if missing.
fn parent_of(path: &Path) -> Result<PathBuf> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| RunError::io(&dir, e))?;
    Ok(dir)
}

/// Writes `bytes` to `path` whole or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| {
        w.write_all(bytes)
            .map_err(|e| RunError::io(path.to_owned(), e))
    })
}

/// Writes `path` through `write` (buffered) whole or not at all: if `write` fails, `path` is untouched.
pub fn write_atomic_with<E: From<RunError>>(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let dir = parent_of(path)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| RunError::io(&dir, e))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut w)?;
        w.flush().map_err(|e| RunError::io(path, e))?;
    }
    tmp.persist(path).map_err(|e| RunError::io(path, e.error))?;
    Ok(())
}

/// An empty temporary folder beside `dest` (same file system, so that [`publish_dir`] is a rename),
/// deleted if dropped unpublished.
pub fn staging_dir(dest: &Path) -> Result<tempfile::TempDir> {
    let parent = parent_of(dest)?;
    let name = dest
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy().into_owned());
    tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(&parent)
        .map_err(|e| RunError::io(&parent, e))
}

/// Moves a finished staging folder to `dest`, replacing what was there only once the new one is
/// complete (the old one is renamed aside first, then deleted).
pub fn publish_dir(staged: tempfile::TempDir, dest: &Path) -> Result<()> {
    let staged = staged.keep();
    let moved = swap_into_place(&staged, dest);
    if moved.is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    moved
}

fn swap_into_place(staged: &Path, dest: &Path) -> Result<()> {
    if !dest.exists() {
        return std::fs::rename(staged, dest).map_err(|e| RunError::io(dest, e));
    }
    let name = dest
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy().into_owned());
    let old = dest.with_file_name(format!(".{name}.old-{}", std::process::id()));
    std::fs::rename(dest, &old).map_err(|e| RunError::io(dest, e))?;
    std::fs::rename(staged, dest).map_err(|e| RunError::io(dest, e))?;
    let removed = if old.is_dir() {
        std::fs::remove_dir_all(&old)
    } else {
        std::fs::remove_file(&old)
    };
    removed.map_err(|e| RunError::io(&old, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/f.txt");
        write_atomic(&p, b"one").unwrap();
        let r: std::result::Result<(), RunError> = write_atomic_with(&p, |w| {
            w.write_all(b"half").unwrap();
            Err(RunError::malformed(&p, "stopped"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        let leftovers = std::fs::read_dir(dir.path().join("sub")).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }

    #[test]
    fn folders_are_swapped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("model");
        for content in ["first", "second"] {
            let s = staging_dir(&dest).unwrap();
            std::fs::write(s.path().join("w"), content).unwrap();
            publish_dir(s, &dest).unwrap();
            assert_eq!(std::fs::read_to_string(dest.join("w")).unwrap(), content);
        }
        // Dropped unpublished: nothing changes, nothing is left.
        let s = staging_dir(&dest).unwrap();
        std::fs::write(s.path().join("w"), "third").unwrap();
        drop(s);
        assert_eq!(std::fs::read_to_string(dest.join("w")).unwrap(), "second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
