//! `pec-milter log verify`: every chain of every node directory given,
//! checked line by line; the first bad record, or missing file, named.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::Evento;
use super::chain::{Record, open_line};
use super::writer::{chain_files, file_counter};

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct Broken {
    pub path: String,
    /// 1-based line, when the problem is one line.
    pub line: Option<usize>,
    pub reason: String,
}

/// What a good directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub node_dir: PathBuf,
    pub files: usize,
    pub records: usize,
    /// Files closed (a `chiusura` at the end): the ones to be sealed.
    pub closed: Vec<PathBuf>,
}

/// The node directories under `path`: `path` itself when it holds log
/// files, else its subdirectories that do.
pub fn node_dirs(path: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    if !chain_files(path)?.is_empty() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let p = entry?.path();
        if p.is_dir() && !chain_files(&p)?.is_empty() {
            dirs.push(p);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Check one node's chain: each file's lines (hash, seq, prev), each
/// file's `apertura` linking to the file before it, every file but the
/// last closed.
pub fn verify_node(node_dir: &Path) -> Result<Verified, Broken> {
    verify_node_with(node_dir, |_, _| {})
}

/// [`verify_node`], handing each record that holds, and its hash, to
/// `each` as it is read (one pass over the files for a caller that needs
/// the records too, like the extract).
pub fn verify_node_with(
    node_dir: &Path,
    mut each: impl FnMut(Record, String),
) -> Result<Verified, Broken> {
    let broken = |path: &Path, line: Option<usize>, reason: String| Broken {
        path: path.display().to_string(),
        line,
        reason,
    };
    let files = chain_files(node_dir).map_err(|e| broken(node_dir, None, e.to_string()))?;
    let mut out = Verified {
        node_dir: node_dir.to_path_buf(),
        files: files.len(),
        records: 0,
        closed: Vec::new(),
    };
    // (name, last hash, counter) of the file before
    let mut before: Option<(String, String, u64)> = None;
    for (i, path) in files.iter().enumerate() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let counter = file_counter(path).unwrap_or(0);
        if let Some((_, _, c)) = &before
            && counter != c + 1
        {
            return Err(broken(
                path,
                None,
                format!(
                    "file {} missing before it (counter {counter} after {c})",
                    c + 1
                ),
            ));
        }
        let f = std::fs::File::open(path).map_err(|e| broken(path, None, e.to_string()))?;
        let (mut seq, mut hash, mut closed) = (0u64, String::new(), false);
        for (n, line) in BufReader::new(f).lines().enumerate() {
            let n = n + 1;
            let line = line.map_err(|e| broken(path, Some(n), e.to_string()))?;
            let (record, h) = open_line(&line).map_err(|e| broken(path, Some(n), e.to_string()))?;
            if closed {
                return Err(broken(path, Some(n), "a record after the chiusura".into()));
            }
            if record.seq != seq + 1 {
                return Err(broken(
                    path,
                    Some(n),
                    format!(
                        "seq {} where {} was due (a record deleted, inserted or moved)",
                        record.seq,
                        seq + 1
                    ),
                ));
            }
            if n == 1 {
                if record.event.event != Evento::Apertura {
                    return Err(broken(
                        path,
                        Some(1),
                        "the file does not start with its apertura".into(),
                    ));
                }
                let (want_file, want_prev) = match &before {
                    Some((f, h, _)) => (Some(f.as_str()), h.as_str()),
                    None => (record.prev_file.as_deref(), record.prev.as_str()),
                };
                if record.prev_file.as_deref() != want_file || record.prev != want_prev {
                    return Err(broken(
                        path,
                        Some(1),
                        format!(
                            "its apertura names {:?} but the file before it is {:?} (a file removed or replaced)",
                            record.prev_file,
                            want_file.unwrap_or("none")
                        ),
                    ));
                }
                if i == 0 && record.prev_file.is_some() {
                    // The node's first file here links to one not given:
                    // fine for an extract of a longer chain, said once.
                    tracing::info!(file = %path.display(), prev = ?record.prev_file,
                        "log verify: the chain starts at a file whose predecessor is not here");
                }
            } else if record.prev != hash {
                return Err(broken(
                    path,
                    Some(n),
                    "its prev is not the hash of the line before (a record deleted, inserted or moved)".into(),
                ));
            }
            closed = record.event.event == Evento::Chiusura;
            seq = record.seq;
            hash = h.clone();
            out.records += 1;
            each(record, h);
        }
        if seq == 0 {
            return Err(broken(path, None, "an empty log file".into()));
        }
        let last = i + 1 == files.len();
        if closed {
            out.closed.push(path.clone());
        } else if !last {
            return Err(broken(
                path,
                None,
                "not closed, yet a later file exists (its end was cut off)".into(),
            ));
        }
        before = Some((name, hash, counter));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::writer::{FileLog, LogOptions};
    use crate::log::{Destinatario, Event, EventLog};
    use chrono::Utc;

    fn ev(i: usize) -> Event {
        Event {
            event: Evento::Accettazione,
            time: Utc::now(),
            pec_id: format!("opec.{i}@pec.demo.test"),
            msgid: None,
            related: vec![],
            sender: "mario@pec.demo.test".into(),
            recipients: vec![Destinatario {
                address: "anna@pec.other.test".into(),
                tipo: "certificato".into(),
            }],
            subject: format!("n. {i}"),
            provider: "Demo PEC S.p.A.".into(),
            outcome: "ok".into(),
            about: None,
        }
    }

    /// Two files of 4 events each (the first sealed), then the third open.
    async fn node() -> (tempfile::TempDir, PathBuf, Vec<PathBuf>) {
        let dir = tempfile::tempdir().expect("tmp");
        let log = FileLog::open(&LogOptions {
            dir: dir.path().to_path_buf(),
            node: "mx1".into(),
        })
        .expect("open");
        for round in 0..2 {
            for i in 0..4 {
                log.record(vec![ev(round * 10 + i)]).await.expect("rec");
            }
            log.seal().await.expect("seal");
        }
        let node = log.node_dir().to_path_buf();
        let files = chain_files(&node).expect("files");
        (dir, node, files)
    }

    fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(String::from)
            .collect();
        f(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").expect("write");
    }

    #[tokio::test]
    async fn a_good_chain_verifies() {
        let (_d, node, files) = node().await;
        let v = verify_node(&node).expect("good");
        assert_eq!(v.files, 3);
        assert_eq!(v.closed, files[..2].to_vec());
        assert_eq!(v.records, 6 + 6 + 1);
        assert_eq!(
            node_dirs(node.parent().expect("p")).expect("dirs"),
            vec![node.clone()]
        );
    }

    #[tokio::test]
    async fn each_kind_of_tampering_is_named() {
        type Tamper = fn(&[PathBuf]);
        let cases: [(&str, Tamper, &str, Option<usize>); 5] = [
            (
                "one byte changed",
                |f| {
                    rewrite(&f[0], |l| l[2] = l[2].replacen("mario", "maria", 1));
                },
                "000001",
                Some(3),
            ),
            (
                "a record deleted",
                |f| {
                    rewrite(&f[0], |l| {
                        l.remove(2);
                    })
                },
                "000001",
                Some(3),
            ),
            (
                "two records swapped",
                |f| rewrite(&f[1], |l| l.swap(2, 3)),
                "000002",
                Some(3),
            ),
            (
                "a record inserted",
                |f| {
                    rewrite(&f[0], |l| {
                        let copy = l[1].clone();
                        l.insert(2, copy);
                    })
                },
                "000001",
                Some(3),
            ),
            (
                "a whole file removed",
                |f| std::fs::remove_file(&f[1]).expect("rm"),
                "000003",
                None,
            ),
        ];
        for (what, tamper, file, line) in cases {
            let (_d, node, files) = node().await;
            tamper(&files);
            let err = verify_node(&node).expect_err(what);
            assert!(err.path.contains(file), "{what}: {err}");
            assert_eq!(err.line, line, "{what}: {err}");
        }
    }
}
