//! A training run's output directory across kills and resumes: the step log cut back to the
//! checkpoint a run continues from, and the hidden temporaries a killed run left behind.

use std::path::Path;

use crate::util::write_atomic;
use crate::{Error, Result};

/// Keeps only the lines of the JSONL step log at `path` whose `"step"` is at most `step`,
/// the checkpoint this run starts from (0 for a fresh run): the steps logged after that
/// checkpoint are trained again and would otherwise appear twice. A line that does not
/// parse (a write cut short by the kill) goes too. Returns how many lines were dropped.
pub fn truncate_log(path: &Path, step: u64) -> Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = String::new();
    let mut dropped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let at = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["step"].as_u64());
        match at {
            Some(s) if s <= step => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => dropped += 1,
        }
    }
    if dropped > 0 {
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(dropped)
}

/// What a training run writes into its output directory: only temporaries of these are
/// ever touched, so `--out .` or `--out ~` cannot lose a user's own `.vimrc.old2`.
fn written_by_a_run(name: &str) -> bool {
    name == "final"
        || name
            .strip_prefix("checkpoint-")
            .is_some_and(|n| n.parse::<u64>().is_ok())
        || matches!(name, "metrics.jsonl" | "grpo_metrics.jsonl")
        || name.ends_with(".svg")
}

/// `.NAME.tmpPID` / `.NAME.oldPID`, as `write_dir_atomic` and `write_atomic` name them, for
/// a NAME a run writes.
fn parse_temporary(file: &str) -> Option<(&str, &'static str, u32)> {
    let rest = file.strip_prefix('.')?;
    for kind in ["tmp", "old"] {
        if let Some((name, pid)) = rest.rsplit_once(&format!(".{kind}"))
            && written_by_a_run(name)
            && let Ok(pid) = pid.parse::<u32>()
        {
            return Some((name, kind, pid));
        }
    }
    None
}

/// Whether process `pid` may still be writing. Where /proc is missing (not Linux), every
/// process counts as alive: a live run's files are never worth the risk.
fn alive(pid: u32) -> bool {
    pid == std::process::id()
        || !Path::new("/proc/self").exists()
        || Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the temporaries a killed run left in `dir` (only those whose process is gone),
/// first moving a `.NAME.oldPID` back to `NAME` when `NAME` is missing: the kill came in the
/// moment between moving the old checkpoint aside and the new one in, where the filesystem
/// cannot swap the two at once. Returns what it did, one line each, for the log.
pub fn clean_stale(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut done = Vec::new();
    let mut stale = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some((name, kind, pid)) = parse_temporary(&file)
            && !alive(pid)
        {
            stale.push((file.clone(), name.to_string(), kind));
        }
    }
    // Restores first, so a `.tmp` of the same name cannot be mistaken for the only copy.
    stale.sort_by_key(|(_, _, kind)| *kind != "old");
    for (file, name, kind) in stale {
        let path = dir.join(&file);
        let target = dir.join(&name);
        if kind == "old" && std::fs::symlink_metadata(&target).is_err() {
            std::fs::rename(&path, &target).map_err(|e| Error::io(&path, e))?;
            done.push(format!(
                "restored {} from {file} (a killed run's swap)",
                target.display()
            ));
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io(&path, e))?;
        done.push(format!("removed {} (left by a killed run)", path.display()));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Above Linux's largest pid_max (2^22): never a live process.
    const DEAD: u32 = 4_194_999;

    #[test]
    fn stale_temporaries_go_live_ones_stay_and_a_lost_final_comes_back() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let me = std::process::id();
        for name in [
            format!(".checkpoint-4.tmp{DEAD}"),
            format!(".final.old{DEAD}"),
            format!(".final.tmp{DEAD}"),
            format!(".checkpoint-2.old{DEAD}"),
            format!(".checkpoint-8.tmp{me}"),
        ] {
            std::fs::create_dir_all(d.join(name).join("inner")).unwrap();
        }
        std::fs::create_dir(d.join("checkpoint-2")).unwrap();
        std::fs::write(d.join(format!(".loss.svg.tmp{DEAD}")), "x").unwrap();
        std::fs::write(d.join(".hidden-but-mine"), "x").unwrap();
        // A user's own dotfiles shaped like temporaries, in an --out of `.` or `~`.
        std::fs::write(d.join(format!(".vimrc.old{DEAD}")), "x").unwrap();
        std::fs::create_dir(d.join(format!(".cache.tmp{DEAD}"))).unwrap();
        let log = clean_stale(d).unwrap();
        assert_eq!(log.len(), 5, "{log:?}");
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let want = [
            format!(".cache.tmp{DEAD}"),
            format!(".checkpoint-8.tmp{me}"),
            ".hidden-but-mine".into(),
            format!(".vimrc.old{DEAD}"),
            "checkpoint-2".into(),
            "final".into(),
        ];
        assert_eq!(left, want);
        assert!(
            d.join("final/inner").is_dir(),
            "final is the old copy, whole"
        );
    }

    #[test]
    fn the_log_is_cut_back_to_the_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("metrics.jsonl");
        assert_eq!(truncate_log(&path, 3).unwrap(), 0, "no log yet");
        let lines: Vec<String> = (1..=5).map(|s| format!("{{\"step\": {s}}}")).collect();
        std::fs::write(&path, lines.join("\n") + "\n{\"step\": 6, \"lo").unwrap();
        assert_eq!(truncate_log(&path, 3).unwrap(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\": 1}\n{\"step\": 2}\n{\"step\": 3}\n");
        assert_eq!(truncate_log(&path, 0).unwrap(), 3);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
