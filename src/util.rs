//! Small helpers shared across the crate.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` so a reader sees the old file or the whole new one, never a
/// torn write: a temporary sibling is written, synced, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
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
/// `write_atomic`'s does: the pieces go to a temporary sibling, which `commit` syncs and
/// renames over the target. Dropped without `commit` (an error on the way), the temporary
/// is removed and the target is left as it was.
pub struct AtomicFile {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", path.display())))?;
        let tmp = dir.join(format!(
            ".{}.part{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(path, e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
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
            f.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        };
        // On error, Drop removes the temporary.
        finish().map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // After a successful commit the temporary is gone and this fails harmlessly.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::format_utc;

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
}
