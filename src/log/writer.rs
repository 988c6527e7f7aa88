//! One node's message log on disk: `DIR/NODE/NNNNNN_YYYY-MM-DD.jsonl`,
//! the counter giving the order, the date the local day the file was
//! opened. One writer thread owns the open file; the roles hand it their
//! events and wait for the answer.
//!
//! - **Group commit**: the thread takes every batch waiting, writes them
//!   and calls `fdatasync` once; each caller hears back only then. A
//!   failed write or sync truncates the file to its last good length and
//!   answers the error to every caller of that batch (they answer 4xx).
//! - **Once per event**: an event whose key ([`Event::key`]) is in the
//!   current or the previous file is not written again (an MTA retry).
//! - **Rotation** at local midnight (Europe/Rome), or on [`FileLog::seal`]:
//!   a `chiusura` record ends the file, the next one starts with an
//!   `apertura` naming it and carrying its last hash.
//! - **Restart**: the last file is read back and checked; a last line
//!   torn by a crash (never acknowledged: the answer follows the sync) is
//!   cut off; any other broken line stops the start (tampering or a bad
//!   disk: an operator must look).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Europe::Rome;

use super::chain::{Record, open_line, seal_line};
use super::{Event, EventLog, Evento, LogError};

/// At most this many events are written under one sync.
const MAX_BATCH: usize = 4096;

/// The process that writes the log of `node_dir` now (it holds the
/// directory's lock and wrote its pid there), if one does.
pub fn writer_pid(node_dir: &Path) -> Option<u32> {
    let lock_path = node_dir.join(".lock");
    let lock = File::open(&lock_path).ok()?;
    if lock.try_lock_shared().is_ok() {
        return None; // nobody holds it
    }
    std::fs::read_to_string(&lock_path)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The local day of `t` (the provider's time zone).
pub fn local_date(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&Rome).date_naive()
}

/// `t` in the provider's local time, RFC 3339 with its offset.
pub fn local_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&Rome).to_rfc3339()
}

/// The files of a node directory, in chain order (by their counter).
pub fn chain_files(node_dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(node_dir)? {
        let path = entry?.path();
        if let Some(n) = file_counter(&path) {
            files.push((n, path));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// The counter of a log file name (`000012_2026-12-07.jsonl` → 12).
pub fn file_counter(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".jsonl")?;
    let (n, date) = stem.split_once('_')?;
    NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    n.parse().ok().filter(|_| n.len() == 6)
}

/// The local day in a log file's name (`000012_2026-12-07.jsonl` → that day).
pub fn file_date(path: &Path) -> Option<NaiveDate> {
    let name = path.file_name()?.to_str()?;
    let (_, date) = name.strip_suffix(".jsonl")?.split_once('_')?;
    NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What the writer needs to know.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The log directory; this node writes in `dir/node`.
    pub dir: PathBuf,
    /// This node's name (a directory name: no `/`).
    pub node: String,
}

enum Msg {
    Append(
        Vec<Event>,
        tokio::sync::oneshot::Sender<Result<(), LogError>>,
    ),
    Seal(tokio::sync::oneshot::Sender<Result<PathBuf, LogError>>),
}

/// The message log of this node. Cloning shares the writer.
#[derive(Clone)]
pub struct FileLog {
    tx: mpsc::Sender<Msg>,
    /// The writer's last batch failed (cleared by the next that works).
    failed: Arc<AtomicBool>,
    node_dir: PathBuf,
}

impl FileLog {
    /// Open (or continue) this node's log and start its writer thread.
    pub fn open(opts: &LogOptions) -> Result<FileLog, LogError> {
        let node_dir = opts.dir.join(&opts.node);
        std::fs::create_dir_all(&node_dir).map_err(io_err(&node_dir))?;
        // One writer per node directory: a second process configured with
        // the same [log] dir and node would interleave two chains.
        let lock_path = node_dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if let Err(e) = lock.try_lock() {
            return Err(LogError::Corrupt {
                path: node_dir.display().to_string(),
                reason: format!(
                    "another process writes this node's log ({e}): give each node its own [log] node"
                ),
            });
        }
        // Who holds it: `pec-milter log seal` signals that process.
        let mut lock = lock;
        lock.set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(io_err(&lock_path))?;
        let mut state = Writer::resume(&node_dir, &opts.node, Utc::now())?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let failed = Arc::new(AtomicBool::new(false));
        let failed_w = Arc::clone(&failed);
        std::thread::Builder::new()
            .name("pec-log".into())
            .spawn(move || {
                let _lock = lock; // held while the writer runs
                state.run(rx, &failed_w)
            })
            .map_err(io_err(&node_dir))?;
        Ok(FileLog {
            tx,
            failed,
            node_dir,
        })
    }

    /// This node's directory.
    pub fn node_dir(&self) -> &Path {
        &self.node_dir
    }

    /// Close the current file now and start the next; the closed file's
    /// path (to be timestamped).
    pub async fn seal(&self) -> Result<PathBuf, LogError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Msg::Seal(tx)).map_err(|_| LogError::Stopped)?;
        rx.await.map_err(|_| LogError::Stopped)?
    }
}

#[async_trait::async_trait]
impl EventLog for FileLog {
    async fn record(&self, events: Vec<Event>) -> Result<(), LogError> {
        if events.is_empty() {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Msg::Append(events, tx))
            .map_err(|_| LogError::Stopped)?;
        rx.await.map_err(|_| LogError::Stopped)?
    }

    /// Not ready while the last batch failed and the directory's file
    /// system has less than [`MIN_FREE`] left (a full disk: storing a
    /// message whose receipt cannot be recorded would only make the MTA's
    /// retries store it again and again).
    async fn ready(&self) -> Result<(), LogError> {
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        match rustix::fs::statvfs(&self.node_dir) {
            Ok(st) if st.f_bavail.saturating_mul(st.f_frsize) < MIN_FREE => Err(LogError::Io {
                path: self.node_dir.display().to_string(),
                source: std::io::Error::other(format!(
                    "the last write failed and {} bytes are free",
                    st.f_bavail.saturating_mul(st.f_frsize)
                )),
            }),
            // room again (or unknown): the next write tells
            _ => Ok(()),
        }
    }
}

/// Free space under which a log whose last write failed is not ready.
const MIN_FREE: u64 = 256 * 1024;

/// The open file and the chain's head.
struct Writer {
    node_dir: PathBuf,
    node: String,
    file: File,
    path: PathBuf,
    counter: u64,
    date: NaiveDate,
    seq: u64,
    last_hash: String,
    good_len: u64,
    /// Keys of the events in the current file, and in the previous one.
    keys: HashSet<String>,
    prev_keys: HashSet<String>,
    /// The file has its chiusura but the next one could not be opened yet
    /// (a full disk): nothing is written until it is.
    closed: bool,
}

/// A file read back: its records' keys, last seq and hash, whether it is
/// closed, and the length of its good part.
struct ReadBack {
    keys: HashSet<String>,
    seq: u64,
    last_hash: String,
    closed: bool,
    good_len: u64,
}

fn read_back(path: &Path) -> Result<ReadBack, LogError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(f);
    let mut rb = ReadBack {
        keys: HashSet::new(),
        seq: 0,
        last_hash: String::new(),
        closed: false,
        good_len: 0,
    };
    let mut buf = Vec::new();
    let mut n = 0usize;
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).map_err(io_err(path))?;
        if read == 0 {
            break;
        }
        n += 1;
        let complete = buf.last() == Some(&b'\n');
        let text = std::str::from_utf8(&buf)
            .ok()
            .map(|t| t.trim_end_matches('\n'));
        let opened = text.map(open_line);
        match opened {
            Some(Ok((record, hash))) if complete => {
                if record.seq != rb.seq + 1 {
                    return Err(LogError::Corrupt {
                        path: path.display().to_string(),
                        reason: format!("line {n}: seq {} after {}", record.seq, rb.seq),
                    });
                }
                if record.seq > 1 && record.prev != rb.last_hash {
                    return Err(LogError::Corrupt {
                        path: path.display().to_string(),
                        reason: format!("line {n}: prev does not match the line before"),
                    });
                }
                rb.closed = record.event.event == Evento::Chiusura;
                if !matches!(record.event.event, Evento::Apertura | Evento::Chiusura) {
                    rb.keys.insert(record.event.key());
                }
                rb.seq = record.seq;
                rb.last_hash = hash;
                rb.good_len += read as u64;
            }
            _ => {
                // Only a torn last line (a crash mid-write, never
                // acknowledged: no newline yet) may be cut off.
                let at_end = reader.fill_buf().map_err(io_err(path))?.is_empty();
                if complete || !at_end {
                    return Err(LogError::Corrupt {
                        path: path.display().to_string(),
                        reason: format!("line {n} is not a valid record"),
                    });
                }
                tracing::warn!(file = %path.display(), line = n,
                    "message log: a torn last line (crash while writing, never acknowledged) is cut off");
                break;
            }
        }
    }
    Ok(rb)
}

impl Writer {
    /// Continue the node's last file, or start the first / next one.
    fn resume(node_dir: &Path, node: &str, now: DateTime<Utc>) -> Result<Writer, LogError> {
        let files = chain_files(node_dir).map_err(io_err(node_dir))?;
        let Some(last) = files.last() else {
            return Writer::create(node_dir, node, 1, now, None, String::new(), HashSet::new());
        };
        let prev_keys = match files.len().checked_sub(2).and_then(|i| files.get(i)) {
            Some(p) => read_back(p)?.keys,
            None => HashSet::new(),
        };
        let rb = read_back(last)?;
        let counter = file_counter(last).unwrap_or(0);
        let date = file_date(last).unwrap_or_else(|| local_date(now));
        if rb.closed || rb.seq == 0 {
            let name = file_name_of(last);
            return Writer::create(
                node_dir,
                node,
                counter + 1,
                now,
                Some(name),
                rb.last_hash,
                rb.keys,
            );
        }
        let file = OpenOptions::new()
            .append(true)
            .open(last)
            .map_err(io_err(last))?;
        file.set_len(rb.good_len).map_err(io_err(last))?;
        let mut w = Writer {
            node_dir: node_dir.to_path_buf(),
            node: node.to_string(),
            file,
            path: last.clone(),
            counter,
            date,
            seq: rb.seq,
            last_hash: rb.last_hash,
            good_len: rb.good_len,
            keys: rb.keys,
            prev_keys,
            closed: false,
        };
        w.rotate_if_due(now)?;
        Ok(w)
    }

    /// A new file `counter`, opened with its `apertura`.
    fn create(
        node_dir: &Path,
        node: &str,
        counter: u64,
        now: DateTime<Utc>,
        prev_file: Option<String>,
        prev_hash: String,
        prev_keys: HashSet<String>,
    ) -> Result<Writer, LogError> {
        let date = local_date(now);
        let path = node_dir.join(format!("{counter:06}_{date}.jsonl"));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut w = Writer {
            node_dir: node_dir.to_path_buf(),
            node: node.to_string(),
            file,
            path,
            counter,
            date,
            seq: 0,
            last_hash: prev_hash,
            good_len: 0,
            keys: HashSet::new(),
            prev_keys,
            closed: false,
        };
        let apertura = w.marker(Evento::Apertura, now, "ok".into());
        if let Err(e) = w.write_records(vec![(apertura, prev_file)], now) {
            // an empty file would block the next attempt (create_new)
            let _ = std::fs::remove_file(&w.path);
            return Err(e);
        }
        if let Ok(d) = File::open(node_dir) {
            // the new name itself durable
            let _ = d.sync_all();
        }
        tracing::info!(file = %w.path.display(), "message log: file opened");
        Ok(w)
    }

    fn marker(&self, event: Evento, now: DateTime<Utc>, outcome: String) -> Event {
        Event {
            event,
            time: now,
            pec_id: String::new(),
            msgid: None,
            related: vec![],
            sender: String::new(),
            recipients: vec![],
            subject: String::new(),
            provider: String::new(),
            outcome,
            about: None,
        }
    }

    /// Write `events` (each with its `prev_file`, for an apertura), sync,
    /// and move the chain's head; on any error the file is cut back and
    /// the head stays.
    fn write_records(
        &mut self,
        events: Vec<(Event, Option<String>)>,
        now: DateTime<Utc>,
    ) -> Result<(), LogError> {
        if self.closed {
            return Err(LogError::Corrupt {
                path: self.path.display().to_string(),
                reason: "the file is closed and the next one is not open".into(),
            });
        }
        let mut buf = String::new();
        let (mut seq, mut hash) = (self.seq, self.last_hash.clone());
        let mut new_keys = Vec::new();
        for (event, prev_file) in events {
            seq += 1;
            let record = Record {
                seq,
                node: self.node.clone(),
                logged: now,
                local: local_time(event.time),
                event,
                prev_file,
                prev: hash.clone(),
            };
            let (line, h) = seal_line(&record).map_err(|e| LogError::Corrupt {
                path: self.path.display().to_string(),
                reason: format!("cannot serialise a record: {e}"),
            })?;
            buf.push_str(&line);
            buf.push('\n');
            hash = h;
            if !matches!(record.event.event, Evento::Apertura | Evento::Chiusura) {
                new_keys.push(record.event.key());
            }
        }
        let written = self
            .file
            .write_all(buf.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            if let Err(cut) = self.file.set_len(self.good_len) {
                tracing::error!(file = %self.path.display(), error = %cut,
                    "message log: cannot cut a failed write back");
            }
            return Err(io_err(&self.path)(e));
        }
        self.good_len += buf.len() as u64;
        self.seq = seq;
        self.last_hash = hash;
        self.keys.extend(new_keys);
        Ok(())
    }

    /// Record the events not recorded yet (one sync for all).
    fn append(&mut self, events: Vec<Event>, now: DateTime<Utc>) -> Result<(), LogError> {
        if self.closed {
            // the next file could not be opened before: try again now
            self.rotate(now)?;
        }
        let mut seen = HashSet::new();
        let fresh: Vec<(Event, Option<String>)> = events
            .into_iter()
            .filter(|e| {
                let k = e.key();
                !self.keys.contains(&k) && !self.prev_keys.contains(&k) && seen.insert(k)
            })
            .map(|e| (e, None))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        self.write_records(fresh, now)
    }

    /// Close the current file and open the next; the closed file's path.
    fn rotate(&mut self, now: DateTime<Utc>) -> Result<PathBuf, LogError> {
        if !self.closed {
            let records = self.seq + 1;
            let chiusura = self.marker(Evento::Chiusura, now, format!("records={records}"));
            self.write_records(vec![(chiusura, None)], now)?;
            self.closed = true;
            tracing::info!(file = %self.path.display(), records, "message log: file closed");
        }
        let closed = self.path.clone();
        // On failure (a full disk) this file stays closed and current:
        // the next batch tries again, and gets an error until it works.
        let next = Writer::create(
            &self.node_dir,
            &self.node,
            self.counter + 1,
            now,
            Some(file_name_of(&closed)),
            self.last_hash.clone(),
            self.keys.clone(),
        )?;
        *self = next;
        Ok(closed)
    }

    fn rotate_if_due(&mut self, now: DateTime<Utc>) -> Result<(), LogError> {
        if self.closed || local_date(now) != self.date {
            self.rotate(now)?;
        }
        Ok(())
    }

    /// Time until the next local midnight (at least 1 s).
    fn until_midnight(now: DateTime<Utc>) -> Duration {
        let next = local_date(now)
            .succ_opt()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .and_then(|t| Rome.from_local_datetime(&t).earliest())
            .map(|t| t.with_timezone(&Utc));
        next.and_then(|n| (n - now).to_std().ok())
            .unwrap_or(Duration::from_secs(60))
            .max(Duration::from_secs(1))
    }

    fn run(&mut self, rx: mpsc::Receiver<Msg>, failed: &AtomicBool) {
        loop {
            let msg = match rx.recv_timeout(Writer::until_midnight(Utc::now())) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.rotate_if_due(Utc::now()) {
                        tracing::error!(error = %e, "message log: rotation failed (retried on the next event)");
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = Vec::new();
            let mut seals = Vec::new();
            let mut take = |m: Msg, batch: &mut Vec<_>| match m {
                Msg::Append(events, done) => batch.push((events, done)),
                Msg::Seal(done) => seals.push(done),
            };
            take(msg, &mut batch);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => take(m, &mut batch),
                    Err(_) => break,
                }
            }
            let now = Utc::now();
            let rotated = self.rotate_if_due(now);
            if !batch.is_empty() {
                let result = match &rotated {
                    Err(e) => Err(LogError::Batch(format!(
                        "the next file cannot be opened: {e}"
                    ))),
                    Ok(()) => {
                        let all: Vec<Event> =
                            batch.iter().flat_map(|(e, _)| e.iter().cloned()).collect();
                        self.append(all, now)
                    }
                };
                if let Err(e) = &result {
                    tracing::error!(error = %e, events = batch.len(),
                        "message log: events not recorded (the messages get 4xx)");
                }
                failed.store(result.is_err(), Ordering::SeqCst);
                for (_, done) in batch {
                    let _ = done.send(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(LogError::Batch(e.to_string())),
                    });
                }
            }
            for done in seals {
                let _ = done.send(self.rotate(Utc::now()));
            }
        }
    }
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Destinatario;

    pub(crate) fn ev(pec_id: &str, event: Evento, about: Option<&str>) -> Event {
        Event {
            event,
            time: Utc::now(),
            pec_id: pec_id.into(),
            msgid: Some(format!("<{pec_id}.orig>")),
            related: vec![],
            sender: "mario@pec.demo.test".into(),
            recipients: vec![Destinatario {
                address: "anna@pec.other.test".into(),
                tipo: "certificato".into(),
            }],
            subject: "Prova".into(),
            provider: "Demo PEC S.p.A.".into(),
            outcome: "ok".into(),
            about: about.map(String::from),
        }
    }

    #[test]
    fn the_writer_names_itself_in_the_lock_while_it_runs() {
        let dir = tempfile::tempdir().expect("tmp");
        let opts = LogOptions {
            dir: dir.path().to_path_buf(),
            node: "mx1".into(),
        };
        let node_dir = dir.path().join("mx1");
        let log = FileLog::open(&opts).expect("open");
        assert_eq!(writer_pid(&node_dir), Some(std::process::id()));
        // a second writer is refused (it would interleave two chains)
        assert!(FileLog::open(&opts).is_err());
        drop(log);
        // the writer thread ends with its last sender, and lets the lock go
        let mut gone = false;
        for _ in 0..200 {
            if writer_pid(&node_dir).is_none() {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone, "the lock is still held after the writer stopped");
    }

    fn lines(path: &Path) -> Vec<Record> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| open_line(l).expect("line").0)
            .collect()
    }

    #[test]
    fn records_chain_and_a_retry_is_recorded_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = Utc::now();
        let mut w = Writer::resume(dir.path(), "mx1", now).expect("open");
        w.append(vec![ev("a", Evento::Accettazione, None)], now)
            .expect("a");
        w.append(
            vec![
                ev("a", Evento::Accettazione, None),
                ev("a", Evento::AvvenutaConsegna, Some("anna@pec.other.test")),
                ev("a", Evento::AvvenutaConsegna, Some("ANNA@pec.other.test")),
            ],
            now,
        )
        .expect("b");
        let recs = lines(&w.path);
        let kinds: Vec<_> = recs.iter().map(|r| r.event.event).collect();
        assert_eq!(
            kinds,
            [
                Evento::Apertura,
                Evento::Accettazione,
                Evento::AvvenutaConsegna
            ]
        );
        // restart: the same events are still known
        let path = w.path.clone();
        drop(w);
        let mut w = Writer::resume(dir.path(), "mx1", now).expect("reopen");
        assert_eq!(w.path, path);
        w.append(vec![ev("a", Evento::Accettazione, None)], now)
            .expect("c");
        assert_eq!(lines(&path).len(), 3);
        // a seal closes the file; the next one links to it
        let closed = w.rotate(now).expect("seal");
        assert_eq!(closed, path);
        let old = lines(&closed);
        assert_eq!(old.last().map(|r| r.event.event), Some(Evento::Chiusura));
        let new = lines(&w.path);
        assert_eq!(new[0].event.event, Evento::Apertura);
        assert_eq!(
            new[0].prev_file.as_deref(),
            closed.file_name().and_then(|n| n.to_str())
        );
        let (_, last_hash) = open_line(
            std::fs::read_to_string(&closed)
                .expect("r")
                .lines()
                .last()
                .expect("line"),
        )
        .expect("ok");
        assert_eq!(new[0].prev, last_hash);
        // still recorded once across the rotation
        w.append(vec![ev("a", Evento::Accettazione, None)], now)
            .expect("d");
        assert_eq!(lines(&w.path).len(), 1);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_a_broken_middle_stops_the_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = Utc::now();
        let mut w = Writer::resume(dir.path(), "mx1", now).expect("open");
        w.append(vec![ev("a", Evento::Accettazione, None)], now)
            .expect("a");
        w.append(vec![ev("b", Evento::Accettazione, None)], now)
            .expect("b");
        let path = w.path.clone();
        drop(w);
        let good = std::fs::read(&path).expect("read");
        // a crash mid-write: half a line at the end
        let mut torn = good.clone();
        torn.extend_from_slice(b"{\"seq\":4,\"node\":\"mx");
        std::fs::write(&path, &torn).expect("write");
        let w = Writer::resume(dir.path(), "mx1", now).expect("resumes");
        assert_eq!(w.seq, 3);
        drop(w);
        assert_eq!(std::fs::read(&path).expect("read"), good);
        // a changed byte in the middle: refused, named
        let mut bad = good.clone();
        let at = bad.iter().position(|&b| b == b'\n').expect("nl") + 20;
        bad[at] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        match Writer::resume(dir.path(), "mx1", now) {
            Err(LogError::Corrupt { reason, .. }) => assert!(reason.contains("line 2"), "{reason}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a broken file was continued"),
        }
    }

    #[test]
    fn a_file_closed_while_the_next_cannot_open_takes_nothing_until_it_does() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = Utc::now();
        let mut w = Writer::resume(dir.path(), "mx1", now).expect("open");
        w.append(vec![ev("a", Evento::Accettazione, None)], now)
            .expect("a");
        // the next file's name is taken by a directory: it cannot be created
        let next = dir.path().join(format!("000002_{}.jsonl", local_date(now)));
        std::fs::create_dir(&next).expect("block");
        assert!(w.rotate(now).is_err());
        assert!(w.closed);
        assert!(
            w.append(vec![ev("b", Evento::Accettazione, None)], now)
                .is_err(),
            "nothing after the chiusura"
        );
        std::fs::remove_dir(&next).expect("unblock");
        w.append(vec![ev("b", Evento::Accettazione, None)], now)
            .expect("b, in the next file");
        assert_eq!(w.path, next);
        let dirs = crate::log::verify::verify_node(dir.path()).expect("the chain holds");
        assert_eq!(dirs.files, 2);
    }

    #[test]
    fn a_new_day_starts_a_new_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let day1 = Utc
            .with_ymd_and_hms(2026, 12, 6, 22, 59, 0)
            .single()
            .expect("t");
        let day2 = Utc
            .with_ymd_and_hms(2026, 12, 6, 23, 1, 0)
            .single()
            .expect("t"); // 00:01 in Rome
        let mut w = Writer::resume(dir.path(), "mx1", day1).expect("open");
        let first = w.path.clone();
        assert!(first.to_string_lossy().ends_with("000001_2026-12-06.jsonl"));
        w.rotate_if_due(day2).expect("rotate");
        assert!(
            w.path
                .to_string_lossy()
                .ends_with("000002_2026-12-07.jsonl")
        );
        assert_eq!(
            lines(&first).last().map(|r| r.event.event),
            Some(Evento::Chiusura)
        );
        assert!(Writer::until_midnight(day1) <= Duration::from_secs(61));
    }

    #[test]
    fn one_writer_per_node_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        let opts = LogOptions {
            dir: dir.path().to_path_buf(),
            node: "mx1".into(),
        };
        let first = FileLog::open(&opts).expect("first");
        match FileLog::open(&opts) {
            Err(LogError::Corrupt { reason, .. }) => {
                assert!(reason.contains("another process"), "{reason}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("two writers on one node directory"),
        }
        let other = FileLog::open(&LogOptions {
            node: "mx2".into(),
            ..opts
        });
        assert!(other.is_ok(), "another node's directory is free");
        drop(first);
    }

    #[tokio::test]
    async fn concurrent_callers_share_syncs_and_all_hear_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = FileLog::open(&LogOptions {
            dir: dir.path().to_path_buf(),
            node: "mx1".into(),
        })
        .expect("open");
        let mut tasks = Vec::new();
        for i in 0..200 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.record(vec![ev(&format!("m{i}"), Evento::Accettazione, None)])
                    .await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("recorded");
        }
        let files = chain_files(log.node_dir()).expect("files");
        assert_eq!(files.len(), 1);
        assert_eq!(lines(&files[0]).len(), 201);
    }
}
