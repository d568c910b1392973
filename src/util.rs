//! Small helpers shared across the crate.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where a write to a path lands once symbolic links are followed.
enum Target {
    /// A regular file, or nothing yet: replaced atomically at this path, which is the link's
    /// target when the path was a link (the link stays and sees the new file).
    File(PathBuf),
    /// A FIFO, a device, a terminal: written in place. Renaming a file over it would swap
    /// the pipe or device node for a plain file, which is never what `--output /dev/null`
    /// or a named pipe meant.
    Special(PathBuf),
}

/// Follows `path`'s links (dangling ones included) to the file a write should touch.
fn resolve(path: &Path) -> Result<Target> {
    // Through every link at once first: /dev/fd/N and /dev/stdout end in links whose text
    // ("pipe:[123]") is not a path, so only the kernel can follow them.
    if let Ok(m) = std::fs::metadata(path)
        && !m.is_file()
        && !m.is_dir()
    {
        return Ok(Target::Special(path.to_path_buf()));
    }
    let mut p = path.to_path_buf();
    // Linux's own limit on links in one lookup.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Target::File(p)),
            Err(e) => return Err(Error::io(path, e)),
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
                // A relative link is relative to the link's directory; `join` keeps an
                // absolute one as it is.
                p = p.parent().unwrap_or(Path::new("")).join(link);
            }
            Ok(m) if m.is_dir() => {
                return Err(Error::InvalidInput(format!(
                    "{} is a directory, not a file to write",
                    path.display()
                )));
            }
            Ok(m) if m.is_file() => return Ok(Target::File(p)),
            Ok(_) => return Ok(Target::Special(p)),
        }
    }
    Err(Error::InvalidInput(format!(
        "{}: too many levels of symbolic links",
        path.display()
    )))
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `.{name}.{kind}{pid}` beside `path`: the hidden sibling an atomic write goes through.
fn sibling(path: &Path, kind: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", path.display())))?;
    Ok(parent_dir(path).join(format!(
        ".{}.{kind}{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Writes `bytes` to `path` so a reader sees the old file or the whole new one, never a
/// torn write: a temporary sibling is written, synced, then renamed over the target.
///
/// A symbolic link is written through: its target file is replaced and the link kept (a
/// dangling link gets its target created). A FIFO or a device (`/dev/null`, `/dev/stdout`)
/// is written directly, not atomically: there is no file to replace. A directory is refused.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    match resolve(path)? {
        Target::Special(p) => std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| Error::io(path, e)),
        Target::File(p) => replace_file(&p, bytes),
    }
}

fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, "tmp")?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        // The new file keeps the old one's permissions (a 0600 secret stays 0600).
        if let Ok(m) = std::fs::metadata(path) {
            f.set_permissions(m.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Checks, before any long work, that `write_atomic(path, …)` will be able to write there:
/// creates missing parent directories and proves the directory takes a new file (the
/// temporary sibling an atomic write needs). A FIFO or device is only checked to exist:
/// opening a FIFO would wait for its reader.
pub fn prepare_output(path: &Path) -> Result<()> {
    let Target::File(p) = resolve(path)? else {
        return Ok(());
    };
    let dir = parent_dir(&p);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let probe = sibling(&p, "probe")?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| Error::io(path, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// `prepare_output` for a directory that files will be written into.
pub fn prepare_output_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    prepare_output(&dir.join("write-test"))
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC), for dating reports
/// without a calendar dependency.
pub fn format_utc(secs: u64) -> String {
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let (mut days, rem) = (secs / 86_400, secs % 86_400);
    let mut year = 1970;
    while days >= if leap(year) { 366 } else { 365 } {
        days -= if leap(year) { 366 } else { 365 };
        year += 1;
    }
    let february = if leap(year) { 29 } else { 28 };
    let mut month = 1;
    for len in [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    format!(
        "{year:04}-{month:02}-{:02}T{:02}:{:02}:{:02}Z",
        days + 1,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The current time, as `format_utc` writes it.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// A file written in pieces that appears at its path whole or not at all, as
/// `write_atomic`'s does, and follows links and special files the same way: the pieces go
/// to a temporary sibling of the link's target, which `commit` syncs and renames over it; a
/// FIFO or device is written in place. Dropped without `commit` (an error on the way), the
/// temporary is removed and the target is left as it was.
pub struct AtomicFile {
    path: PathBuf,
    /// Where the rename lands, and the temporary written first; None for a special file.
    replace: Option<(PathBuf, PathBuf)>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let (replace, open) = match resolve(path)? {
            Target::File(target) => {
                let tmp = sibling(&target, "part")?;
                // As in `replace_file`: the new file keeps the old one's permissions.
                let f = std::fs::File::create(&tmp).and_then(|f| {
                    if let Ok(m) = std::fs::metadata(&target) {
                        f.set_permissions(m.permissions())?;
                    }
                    Ok(f)
                });
                (Some((target, tmp)), f)
            }
            Target::Special(p) => (None, std::fs::OpenOptions::new().write(true).open(&p)),
        };
        let file = open.map_err(|e| Error::io(path, e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            replace,
            file: Some(std::io::BufWriter::new(file)),
        })
    }

    /// `row` as one JSON line.
    pub fn write_json_line<S: serde::Serialize>(&mut self, row: &S) -> Result<()> {
        let io = |e| Error::io(&self.path, e);
        let Some(w) = self.file.as_mut() else {
            return Err(io(std::io::Error::other("already committed")));
        };
        serde_json::to_writer(&mut *w, row)?;
        w.write_all(b"\n").map_err(io)
    }

    /// Flushes, syncs and renames the temporary over the target.
    pub fn commit(mut self) -> Result<()> {
        let Some(w) = self.file.take() else {
            return Ok(());
        };
        let finish = || -> std::io::Result<()> {
            let f = w.into_inner().map_err(|e| e.into_error())?;
            match &self.replace {
                Some((target, tmp)) => {
                    f.sync_all()?;
                    std::fs::rename(tmp, target)
                }
                None => Ok(()),
            }
        };
        // On error, Drop removes the temporary.
        finish().map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // After a successful commit the temporary is gone and this fails harmlessly.
        if let Some((_, tmp)) = &self.replace {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn write_atomic_writes_through_a_symlink_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.json");
        let link = dir.path().join("link.json");
        std::fs::write(&target, "old").unwrap();
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
    }

    #[test]
    fn write_atomic_creates_a_dangling_links_target() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(dir.path().join("later.json"), &link).unwrap();
        write_atomic(&link, b"made").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let made = std::fs::read_to_string(dir.path().join("later.json")).unwrap();
        assert_eq!(made, "made");
    }

    #[test]
    fn write_atomic_writes_into_a_fifo_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        write_atomic(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), "through the pipe");
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo(), "the FIFO is still a FIFO");
        // Devices take the same path; the real /dev/null is left out of the test, since a
        // regression run as root would replace it for the whole machine.
        prepare_output(&fifo).unwrap();
    }

    #[test]
    fn write_atomic_refuses_a_directory_and_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(dir.path(), b"x").unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&secret, b"b").unwrap();
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn prepare_output_makes_parents_and_fails_early_where_nothing_can_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/out.jsonl");
        prepare_output(&deep).unwrap();
        assert!(dir.path().join("a/b").is_dir());
        assert!(!deep.exists(), "the check leaves no file behind");
        assert_eq!(
            std::fs::read_dir(dir.path().join("a/b")).unwrap().count(),
            0
        );
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(prepare_output(&file.join("sub/out.jsonl")).is_err());
        assert!(prepare_output_dir(&file.join("svg")).is_err());
    }

    #[test]
    fn utc_dates_across_leap_days_and_centuries() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_786_061), "2000-02-29T01:01:01Z");
        assert_eq!(format_utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(format_utc(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn an_atomic_file_appears_whole_on_commit_and_not_at_all_without() {
        let dir = std::env::temp_dir().join(format!("asyncthink-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rows.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        let mut f = super::AtomicFile::create(&path).unwrap();
        f.write_json_line(&[1, 2]).unwrap();
        drop(f);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        let mut f = super::AtomicFile::create(&path).unwrap();
        f.write_json_line(&[1, 2]).unwrap();
        f.write_json_line(&"x").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[1,2]\n\"x\"\n");
        // No temporary left behind either way.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_atomic_file_writes_through_a_symlink_and_into_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.jsonl");
        let link = dir.path().join("link.jsonl");
        std::fs::write(&target, "old\n").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut f = AtomicFile::create(&link).unwrap();
        f.write_json_line(&1).unwrap();
        f.commit().unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "1\n");

        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_json_line(&2).unwrap();
        f.commit().unwrap();
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a 0600 file stays 0600");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "2\n");

        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            return;
        }
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        let mut f = AtomicFile::create(&fifo).unwrap();
        f.write_json_line(&"x").unwrap();
        f.commit().unwrap();
        assert_eq!(reader.join().unwrap(), "\"x\"\n");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }
}
