//! Retention (PEC-RULES §7.1, §11): the message log and the quarantined
//! messages are kept for `[log] retention_months` (30 by default) and
//! then removed — nothing younger, and never a node's newest log file
//! (the open one). A log file's age is the local day in its name; its
//! seal goes with it. A quarantined message's age is its modification
//! time. What is removed is logged, one line per file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Months, NaiveDate, Utc};

use super::seal::tsr_path;
use super::verify::node_dirs;
use super::writer::{chain_files, file_date};

/// The first day that is kept: `today` less `months`.
pub fn cutoff(today: NaiveDate, months: u32) -> NaiveDate {
    today
        .checked_sub_months(Months::new(months))
        .unwrap_or(NaiveDate::MIN)
}

/// What is older than `cutoff`: log files (with their seals) of every
/// node under `log_dir` but each node's newest, and quarantined files
/// last modified before the cutoff (UTC midnight).
pub fn expired(
    log_dir: &Path,
    quarantine_dir: &Path,
    cutoff: NaiveDate,
) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if log_dir.is_dir() {
        for node in node_dirs(log_dir)? {
            let files = chain_files(&node)?;
            let keep_newest = files.len().saturating_sub(1);
            for f in &files[..keep_newest] {
                if file_date(f).is_some_and(|d| d < cutoff) {
                    let tsr = tsr_path(f);
                    if tsr.exists() {
                        out.push(tsr);
                    }
                    out.push(f.clone());
                }
            }
        }
    }
    if quarantine_dir.is_dir() {
        let limit: SystemTime = cutoff
            .and_hms_opt(0, 0, 0)
            .map(|t| DateTime::<Utc>::from_naive_utc_and_offset(t, Utc).into())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for e in std::fs::read_dir(quarantine_dir)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_file() && meta.modified()? < limit {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Remove what [`expired`] lists (unless `dry_run`); the paths removed.
pub fn retain(
    log_dir: &Path,
    quarantine_dir: &Path,
    cutoff: NaiveDate,
    dry_run: bool,
) -> std::io::Result<Vec<PathBuf>> {
    let old = expired(log_dir, quarantine_dir, cutoff)?;
    for p in &old {
        if dry_run {
            tracing::info!(file = %p.display(), %cutoff, "retention: would remove");
        } else {
            std::fs::remove_file(p)?;
            tracing::info!(file = %p.display(), %cutoff, "retention: removed (older than the retention period)");
        }
    }
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, age_days: u64) {
        std::fs::write(p, b"x").expect("write");
        let t = SystemTime::now() - std::time::Duration::from_secs(age_days * 86400);
        std::fs::File::options()
            .write(true)
            .open(p)
            .and_then(|f| f.set_modified(t))
            .expect("mtime");
    }

    #[test]
    fn only_what_is_older_than_the_period_goes() {
        let dir = tempfile::tempdir().expect("tmp");
        let (log, q) = (dir.path().join("log"), dir.path().join("quarantine"));
        let node = log.join("mx1");
        std::fs::create_dir_all(&node).expect("node");
        std::fs::create_dir_all(&q).expect("q");
        let today = NaiveDate::from_ymd_opt(2026, 12, 7).expect("d");
        let c = cutoff(today, 30);
        assert_eq!(c, NaiveDate::from_ymd_opt(2024, 6, 7).expect("d"));
        for (n, day) in [
            (1, "2024-06-05"),
            (2, "2024-06-06"),
            (3, "2024-06-07"),
            (4, "2026-12-07"),
        ] {
            let f = node.join(format!("{n:06}_{day}.jsonl"));
            std::fs::write(&f, b"{}\n").expect("w");
            std::fs::write(tsr_path(&f), b"t").expect("w");
        }
        let removed = retain(&log, &q, c, false).expect("retain");
        let names: Vec<String> = removed
            .iter()
            .map(|p| p.file_name().expect("n").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "000001_2024-06-05.jsonl",
                "000001_2024-06-05.jsonl.tsr",
                "000002_2024-06-06.jsonl",
                "000002_2024-06-06.jsonl.tsr",
            ]
        );
        assert!(
            node.join("000003_2024-06-07.jsonl").exists(),
            "the cutoff day stays"
        );
        // quarantine (by modification time): with the cutoff of the real
        // today, 1000 days old goes, 10 days old stays
        touch(&q.join("old.eml"), 1000);
        touch(&q.join("young.eml"), 10);
        let removed = retain(&log, &q, cutoff(Utc::now().date_naive(), 30), false).expect("q");
        let names: Vec<String> = removed
            .iter()
            .map(|p| p.file_name().expect("n").to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"old.eml".to_string()), "{names:?}");
        assert!(!names.contains(&"young.eml".to_string()), "{names:?}");
        assert!(q.join("young.eml").exists());
    }

    #[test]
    fn a_nodes_newest_file_stays_however_old() {
        let dir = tempfile::tempdir().expect("tmp");
        let node = dir.path().join("log/mx1");
        std::fs::create_dir_all(&node).expect("node");
        std::fs::write(node.join("000001_2020-01-01.jsonl"), b"{}\n").expect("w");
        let today = NaiveDate::from_ymd_opt(2026, 12, 7).expect("d");
        let old = expired(
            &dir.path().join("log"),
            &dir.path().join("q"),
            cutoff(today, 30),
        )
        .expect("expired");
        assert!(old.is_empty(), "{old:?}");
    }
}
