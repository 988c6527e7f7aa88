//! Protocol-level load client for pec-milter (no MTA): drives the milter
//! over the milter protocol (version 6) as Postfix does — negotiate, macros
//! (with `{auth_authen}` for the access point, without it for the reception
//! point), MAIL, RCPT, header fields, body, end of message — with C
//! concurrent connections, one message per connection (as Postfix opens one
//! milter connection per SMTP session), and reads every reply.
//!
//! A raw client (not `indymilter-test`, which writes each command, macros
//! included, in its own write: over TCP the second small write then waits
//! for the delayed ACK of the first, ~40 ms, which measures the client and
//! not the milter). Like Postfix, it writes a command's macros and the
//! command together, and everything it has to say before it reads a reply
//! in one write. Stages the milter negotiated away are not sent.
//!
//! ```text
//! cargo run --release --example milter_load -- --connect inet:127.0.0.1:8891 \
//!     --count 2000 --concurrency 8 --size 10240 --auth mario.rossi@pec.demo.test \
//!     --from mario.rossi@pec.demo.test --to anna.bianchi@pec.other.test
//! milter_load --connect unix:/run/pec.sock --count 500 --messages-dir DIR \
//!     --from posta-certificata@pec.other.test --to mario.rossi@pec.demo.test   # reception
//! ```
//!
//! Options: `--rate R` paces the starts (open loop, R messages/s; 0 = as fast
//! as the milter answers); `--max-seconds S` stops starting new messages
//! after S seconds (every run is bounded in count and time);
//! `--messages-dir DIR` sends the files of DIR (each file is one message,
//! header and body; sent in name order, each once unless `--count` is
//! larger). Without it, each message is generated: unique Message-ID and
//! Subject (the access point treats identical bytes as a retry), a text
//! body of `--size` bytes.
//!
//! `--retry-tempfail N` behaves as an MTA's queue does (the fault matrix,
//! `integration/faults.sh`): a message answered 4xx, or whose connection
//! failed (refused, dropped, timed out), is sent again — the same bytes,
//! the same Message-ID, so the access point recognises the retry by its
//! digest — after `--retry-pause-ms` (default 200), until it gets a final
//! answer or N tries were made. `--record FILE` writes one line per
//! message, tab-separated: index, its Message-ID, the final status
//! (`accept`, `tempfail`, `reject`, `discard`, `error`), tries, how many
//! body-replacement packets the final answer carried (the envelope), and
//! the Message-ID the milter set (`-` when none).
//!
//! Output: one line of `key=value` pairs on stdout: `sent`, `accept`,
//! `tempfail`, `reject`, `discard`, `other`, `errors`, `elapsed_s`,
//! `msgs_per_s`, `eom_p50_ms`, `eom_p90_ms`, `eom_p99_ms`, `eom_max_ms`
//! (end-of-message latency: from sending the end of message to the final
//! reply, i.e. the milter's own work on the message), `tx_p50_ms`,
//! `tx_p99_ms` (the whole transaction from connect), `client_cpu_s`,
//! `retried` (messages sent again, summed over tries; the outcome keys
//! count each message once, by its final answer).
//! Exit status 1 when any message was not accepted.

mod common;

use common::{cpu_seconds, percentile};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Clone, Debug)]
struct Opts {
    connect: String,
    count: usize,
    concurrency: usize,
    size: usize,
    rate: f64,
    max_seconds: f64,
    auth: Option<String>,
    from: String,
    to: Vec<String>,
    messages_dir: Option<PathBuf>,
    timeout: Duration,
    quiet_errors: bool,
    retry_tempfail: usize,
    retry_pause: Duration,
    record: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: milter_load --connect inet:HOST:PORT|unix:PATH [--count N] [--concurrency C] \
         [--size BYTES] [--rate R] [--max-seconds S] [--auth USER] [--from ADDR] \
         [--to A1,A2..] [--messages-dir DIR] [--timeout SECS] [--quiet-errors] \
         [--retry-tempfail N] [--retry-pause-ms MS] [--record FILE]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        connect: String::new(),
        count: 100,
        concurrency: 4,
        size: 10240,
        rate: 0.0,
        max_seconds: 300.0,
        auth: None,
        from: "mario.rossi@pec.demo.test".into(),
        to: vec!["anna.bianchi@pec.other.test".into()],
        messages_dir: None,
        timeout: Duration::from_secs(120),
        quiet_errors: false,
        retry_tempfail: 1,
        retry_pause: Duration::from_millis(200),
        record: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--connect" => o.connect = val(),
            "--count" => o.count = val().parse().unwrap_or_else(|_| usage()),
            "--concurrency" => o.concurrency = val().parse().unwrap_or_else(|_| usage()),
            "--size" => o.size = val().parse().unwrap_or_else(|_| usage()),
            "--rate" => o.rate = val().parse().unwrap_or_else(|_| usage()),
            "--max-seconds" => o.max_seconds = val().parse().unwrap_or_else(|_| usage()),
            "--auth" => o.auth = Some(val()),
            "--from" => o.from = val(),
            "--to" => o.to = val().split(',').map(str::to_string).collect(),
            "--messages-dir" => o.messages_dir = Some(PathBuf::from(val())),
            "--timeout" => {
                o.timeout = Duration::from_secs(val().parse().unwrap_or_else(|_| usage()))
            }
            "--quiet-errors" => o.quiet_errors = true,
            "--retry-tempfail" => {
                o.retry_tempfail = val().parse().unwrap_or_else(|_| usage());
            }
            "--retry-pause-ms" => {
                o.retry_pause = Duration::from_millis(val().parse().unwrap_or_else(|_| usage()))
            }
            "--record" => o.record = Some(PathBuf::from(val())),
            _ => usage(),
        }
    }
    if o.connect.is_empty() || o.concurrency == 0 || o.retry_tempfail == 0 {
        usage();
    }
    o
}

/// One message as the MTA hands it to a milter: header fields (name,
/// value with LF folding, as Postfix passes them) and the CRLF body.
struct Message {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A generated submission: unique per index.
fn generated(o: &Opts, run: &str, i: usize) -> Message {
    let headers = vec![
        ("From".into(), format!("Mario Rossi <{}>", o.from)),
        (
            "To".into(),
            o.to.iter()
                .map(|t| format!("<{t}>"))
                .collect::<Vec<_>>()
                .join(",\n\t"),
        ),
        ("Subject".into(), format!("bench {run} {i}")),
        (
            "Message-ID".into(),
            format!("<bench.{run}.{i}@client.pec.demo.test>"),
        ),
        ("Date".into(), "Mon, 01 Dec 2025 10:00:00 +0100".into()),
        ("MIME-Version".into(), "1.0".into()),
        ("Content-Type".into(), "text/plain; charset=us-ascii".into()),
    ];
    let mut body = Vec::with_capacity(o.size + 80);
    let line =
        format!("{i:08} the quick brown fox jumps over the lazy dog 0123456789 abcdefghijklm");
    while body.len() < o.size {
        body.extend_from_slice(line.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    Message { headers, body }
}

/// A message file (LF or CRLF): header fields unfolded into (name, value)
/// with the folding kept as LF, body in CRLF.
fn from_file(bytes: &[u8]) -> Message {
    let text = bytes.to_vec();
    // split header / body at the first empty line
    let mut i = 0;
    let mut head_end = text.len();
    let mut body_start = text.len();
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with(b"\r\n") {
            head_end = i;
            body_start = i + 2;
            break;
        }
        if rest.starts_with(b"\n") {
            head_end = i;
            body_start = i + 1;
            break;
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(p) => i += p + 1,
            None => break,
        }
    }
    let head = String::from_utf8_lossy(&text[..head_end]).replace("\r\n", "\n");
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push('\n');
                last.1.push_str(line);
            }
        } else if let Some((n, v)) = line.split_once(':') {
            headers.push((n.to_string(), v.trim_start().to_string()));
        }
    }
    let mut body = Vec::with_capacity(text.len() - body_start + 1024);
    let mut prev = 0u8;
    for &b in &text[body_start..] {
        if b == b'\n' && prev != b'\r' {
            body.push(b'\r');
        }
        body.push(b);
        prev = b;
    }
    Message { headers, body }
}

#[derive(Default, Debug)]
struct Tally {
    accept: usize,
    tempfail: usize,
    reject: usize,
    discard: usize,
    other: usize,
    errors: usize,
    retried: usize,
    eom: Vec<Duration>,
    tx: Vec<Duration>,
    records: Vec<String>,
}

/// What the milter asked to change at the end of a message: how many
/// body-replacement packets, and the Message-ID it set (if any).
#[derive(Default, Debug)]
struct Mods {
    body: usize,
    msgid: Option<String>,
}

impl Mods {
    /// Notes one modification request (`cmd`, its data).
    fn note(&mut self, cmd: u8, data: &[u8]) {
        // SMFIR_ADDHEADER 'h': name NUL value NUL; SMFIR_CHGHEADER 'm' and
        // SMFIR_INSHEADER 'i': a 4-byte index first.
        let fields = match cmd {
            b'b' => {
                self.body += 1;
                return;
            }
            b'h' => data,
            b'm' | b'i' if data.len() > 4 => &data[4..],
            _ => return,
        };
        let mut parts = fields.split(|&b| b == 0);
        if let (Some(name), Some(value)) = (parts.next(), parts.next())
            && name.eq_ignore_ascii_case(b"Message-ID")
        {
            self.msgid = Some(String::from_utf8_lossy(value).trim().to_string());
        }
    }
}

// Milter protocol v6 constants (libmilter's mfdef.h).
const SMFIF_ALL: u32 = 0x1ff; // every action an MTA like Postfix offers
const SMFIP_NOCONNECT: u32 = 0x1;
const SMFIP_NOHELO: u32 = 0x2;
const SMFIP_NOMAIL: u32 = 0x4;
const SMFIP_NORCPT: u32 = 0x8;
const SMFIP_NOBODY: u32 = 0x10;
const SMFIP_NOHDRS: u32 = 0x20;
const SMFIP_NOEOH: u32 = 0x40;
const SMFIP_NR_HDR: u32 = 0x80;
const SMFIP_NODATA: u32 = 0x200;
const SMFIP_NR_CONN: u32 = 0x1000;
const SMFIP_NR_HELO: u32 = 0x2000;
const SMFIP_NR_MAIL: u32 = 0x4000;
const SMFIP_NR_RCPT: u32 = 0x8000;
const SMFIP_NR_DATA: u32 = 0x10000;
const SMFIP_NR_EOH: u32 = 0x40000;
const SMFIP_NR_BODY: u32 = 0x80000;
const SMFIP_HDR_LEADSPC: u32 = 0x100000;
const SMFIP_ALL: u32 = 0x1fffff;
const BODY_CHUNK: usize = 65535;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One milter connection: commands are buffered and leave in one write
/// when a reply is awaited (or at the end).
struct Conn {
    io: Box<dyn Io>,
    out: Vec<u8>,
    timeout: Duration,
    proto: u32,
}

/// The milter's answer to a command.
#[derive(Debug, PartialEq)]
enum Answer {
    Continue,
    Accept,
    Discard,
    Reject(String),
    Tempfail(String),
    Skip,
}

impl Conn {
    fn push(&mut self, cmd: u8, data: &[u8]) {
        self.out
            .extend_from_slice(&((data.len() + 1) as u32).to_be_bytes());
        self.out.push(cmd);
        self.out.extend_from_slice(data);
    }

    fn macros(&mut self, stage: u8, pairs: &[(&str, &str)]) {
        let mut d = vec![stage];
        for (k, v) in pairs {
            d.extend_from_slice(k.as_bytes());
            d.push(0);
            d.extend_from_slice(v.as_bytes());
            d.push(0);
        }
        self.push(b'D', &d);
    }

    async fn flush(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.out);
        tokio::time::timeout(self.timeout, self.io.write_all(&buf))
            .await
            .map_err(|_| "write timeout".to_string())?
            .map_err(|e| format!("write: {e}"))
    }

    async fn packet(&mut self) -> Result<(u8, Vec<u8>), String> {
        let mut len = [0u8; 4];
        tokio::time::timeout(self.timeout, self.io.read_exact(&mut len))
            .await
            .map_err(|_| "timeout waiting for the milter".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 || n > 512 << 20 {
            return Err(format!("bad packet length {n}"));
        }
        let mut data = vec![0u8; n];
        tokio::time::timeout(self.timeout, self.io.read_exact(&mut data))
            .await
            .map_err(|_| "timeout waiting for the milter".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        let cmd = data[0];
        data.remove(0);
        Ok((cmd, data))
    }

    /// Flushes, then reads replies up to a final one; modification
    /// requests (end of message) are noted in `mods`.
    async fn answer(&mut self, mods: &mut Mods) -> Result<Answer, String> {
        self.flush().await?;
        loop {
            let (cmd, data) = self.packet().await?;
            let text =
                || String::from_utf8_lossy(data.strip_suffix(&[0]).unwrap_or(&data)).into_owned();
            return Ok(match cmd {
                b'c' => Answer::Continue,
                b'a' => Answer::Accept,
                b'd' => Answer::Discard,
                b's' => Answer::Skip,
                b'r' => Answer::Reject(String::new()),
                b't' => Answer::Tempfail(String::new()),
                b'y' if data.first() == Some(&b'4') => Answer::Tempfail(text()),
                b'y' => Answer::Reject(text()),
                b'p' => continue,
                b'h' | b'm' | b'i' | b'b' | b'+' | b'-' | b'e' | b'2' | b'q' => {
                    mods.note(cmd, &data);
                    continue;
                }
                other => return Err(format!("unexpected reply {:?}", other as char)),
            });
        }
    }

    /// Sends a command; reads its reply unless the milter asked for none.
    async fn step(&mut self, cmd: u8, data: &[u8], no_reply: u32) -> Result<Answer, String> {
        self.push(cmd, data);
        if self.proto & no_reply != 0 {
            return Ok(Answer::Continue);
        }
        self.answer(&mut Mods::default()).await
    }
}

async fn open(o: &Opts) -> Result<Conn, String> {
    let io: Box<dyn Io> = if let Some(addr) = o.connect.strip_prefix("inet:") {
        Box::new(
            tokio::time::timeout(o.timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connect {addr}: timeout"))?
                .map_err(|e| format!("connect {addr}: {e}"))?,
        )
    } else if let Some(path) = o.connect.strip_prefix("unix:") {
        Box::new(
            tokio::time::timeout(o.timeout, tokio::net::UnixStream::connect(path))
                .await
                .map_err(|_| format!("connect {path}: timeout"))?
                .map_err(|e| format!("connect {path}: {e}"))?,
        )
    } else {
        return Err(format!(
            "--connect {}: use inet:HOST:PORT or unix:PATH",
            o.connect
        ));
    };
    let mut c = Conn {
        io,
        out: Vec::new(),
        timeout: o.timeout,
        proto: 0,
    };
    let mut neg = Vec::with_capacity(12);
    neg.extend_from_slice(&6u32.to_be_bytes());
    neg.extend_from_slice(&SMFIF_ALL.to_be_bytes());
    neg.extend_from_slice(&SMFIP_ALL.to_be_bytes());
    c.push(b'O', &neg);
    c.flush().await?;
    let (cmd, data) = c.packet().await?;
    if cmd != b'O' || data.len() < 12 {
        return Err(format!("bad negotiation reply {:?}", cmd as char));
    }
    c.proto = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
    Ok(c)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn status_of(a: Answer) -> Status {
    match a {
        Answer::Continue | Answer::Skip => Status::Continue,
        Answer::Accept => Status::Accept,
        Answer::Discard => Status::Discard,
        Answer::Reject(m) => Status::Reject(m),
        Answer::Tempfail(m) => Status::Tempfail(m),
    }
}

/// The outcome of one transaction.
#[derive(Debug)]
enum Status {
    Continue,
    Accept,
    Discard,
    Reject(String),
    Tempfail(String),
}

/// One transaction: returns (final status, EOM latency, modifications).
async fn one(o: &Opts, m: &Message, qid: &str) -> Result<(Status, Duration, Mods), String> {
    let mut c = open(o).await?;
    // a stage answered with anything but continue ends the transaction
    macro_rules! stage {
        ($e:expr) => {{
            let a = $e?;
            if !matches!(a, Answer::Continue | Answer::Skip) {
                c.push(b'Q', &[]);
                let _ = c.flush().await;
                return Ok((status_of(a), Duration::ZERO, Mods::default()));
            }
        }};
    }
    if c.proto & SMFIP_NOCONNECT == 0 {
        let mut d = cstr("client.pec.demo.test");
        d.push(b'4');
        d.extend_from_slice(&25u16.to_be_bytes());
        d.extend_from_slice(&cstr("127.0.0.1"));
        c.macros(
            b'C',
            &[("j", "mx.pec.demo.test"), ("{daemon_name}", "ORIGINATING")],
        );
        stage!(c.step(b'C', &d, SMFIP_NR_CONN).await);
    }
    if c.proto & SMFIP_NOHELO == 0 {
        stage!(
            c.step(b'H', &cstr("client.pec.demo.test"), SMFIP_NR_HELO)
                .await
        );
    }
    match &o.auth {
        Some(user) => c.macros(
            b'M',
            &[
                ("i", qid),
                ("{auth_type}", "PLAIN"),
                ("{auth_authen}", user),
            ],
        ),
        None => c.macros(b'M', &[("i", qid)]),
    }
    if c.proto & SMFIP_NOMAIL == 0 {
        stage!(
            c.step(b'M', &cstr(&format!("<{}>", o.from)), SMFIP_NR_MAIL)
                .await
        );
    }
    for r in &o.to {
        if c.proto & SMFIP_NORCPT == 0 {
            c.macros(b'R', &[("{rcpt_addr}", r)]);
            stage!(c.step(b'R', &cstr(&format!("<{r}>")), SMFIP_NR_RCPT).await);
        }
    }
    if c.proto & SMFIP_NODATA == 0 {
        stage!(c.step(b'T', &[], SMFIP_NR_DATA).await);
    }
    if c.proto & SMFIP_NOHDRS == 0 {
        let lead = c.proto & SMFIP_HDR_LEADSPC != 0;
        for (n, v) in &m.headers {
            let mut d = cstr(n);
            if lead {
                d.push(b' ');
            }
            d.extend_from_slice(&cstr(v));
            stage!(c.step(b'L', &d, SMFIP_NR_HDR).await);
        }
    }
    if c.proto & SMFIP_NOEOH == 0 {
        stage!(c.step(b'N', &[], SMFIP_NR_EOH).await);
    }
    if c.proto & SMFIP_NOBODY == 0 {
        for chunk in m.body.chunks(BODY_CHUNK) {
            stage!(c.step(b'B', chunk, SMFIP_NR_BODY).await);
        }
    }
    c.macros(b'E', &[("i", qid)]);
    c.push(b'E', &[]);
    let t = Instant::now();
    let mut mods = Mods::default();
    let a = c.answer(&mut mods).await?;
    let lat = t.elapsed();
    c.push(b'Q', &[]);
    let _ = c.flush().await;
    Ok((status_of(a), lat, mods))
}

/// `one`, again after a pause while the answer is 4xx or the connection
/// failed (an MTA's retry: the same message), up to `--retry-tempfail`
/// tries. Returns the last result and the number of tries.
async fn with_retries(
    o: &Opts,
    m: &Message,
    qid: &str,
) -> (Result<(Status, Duration, Mods), String>, usize) {
    let mut tries = 0;
    loop {
        tries += 1;
        let r = one(o, m, qid).await;
        let again = matches!(r, Err(_) | Ok((Status::Tempfail(_), _, _)));
        if !again || tries >= o.retry_tempfail {
            return (r, tries);
        }
        tokio::time::sleep(o.retry_pause).await;
    }
}

/// The Message-ID field of `m` (`-` when it has none).
fn msgid_of(m: &Message) -> String {
    m.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Message-ID"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "-".into())
}

fn main() {
    let o = Arc::new(parse_opts());
    // One client thread: the client should take as little of the machine as it can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(run(o));
    std::process::exit(code);
}

async fn run(o: Arc<Opts>) -> i32 {
    let files: Arc<Vec<Message>> = Arc::new(match &o.messages_dir {
        Some(dir) => {
            let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect(),
                Err(e) => {
                    eprintln!("milter_load: {}: {e}", dir.display());
                    return 2;
                }
            };
            names.sort();
            names
                .iter()
                .filter_map(|p| std::fs::read(p).ok())
                .map(|b| from_file(&b))
                .collect()
        }
        None => Vec::new(),
    });
    if o.messages_dir.is_some() && files.is_empty() {
        eprintln!("milter_load: no message files");
        return 2;
    }
    let run_id = format!(
        "{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut tasks = Vec::new();
    for _ in 0..o.concurrency.min(o.count.max(1)) {
        let (o, next, files, run_id) = (o.clone(), next.clone(), files.clone(), run_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= o.count || start.elapsed().as_secs_f64() > o.max_seconds {
                    break;
                }
                if o.rate > 0.0 {
                    let due = start + Duration::from_secs_f64(i as f64 / o.rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let generated_msg;
                let m = if files.is_empty() {
                    generated_msg = generated(&o, &run_id, i);
                    &generated_msg
                } else {
                    &files[i % files.len()]
                };
                let t0 = Instant::now();
                let (result, tries) = with_retries(&o, m, &format!("B{i:07}")).await;
                t.retried += tries - 1;
                let (status, body, env_id) = match &result {
                    Ok((st, _, mods)) => (
                        match st {
                            Status::Accept | Status::Continue => "accept",
                            Status::Tempfail(_) => "tempfail",
                            Status::Reject(_) => "reject",
                            Status::Discard => "discard",
                        },
                        mods.body,
                        mods.msgid.clone().unwrap_or_else(|| "-".into()),
                    ),
                    Err(_) => ("error", 0, "-".into()),
                };
                if o.record.is_some() {
                    t.records.push(format!(
                        "{i}\t{}\t{status}\t{tries}\t{body}\t{env_id}",
                        msgid_of(m)
                    ));
                }
                match result {
                    Ok((st, lat, _)) => {
                        t.tx.push(t0.elapsed());
                        match st {
                            Status::Accept | Status::Continue => {
                                t.accept += 1;
                                t.eom.push(lat);
                            }
                            Status::Tempfail(message) => {
                                t.tempfail += 1;
                                if !o.quiet_errors {
                                    eprintln!("milter_load: #{i} tempfail {message:?}");
                                }
                            }
                            Status::Reject(message) => {
                                t.reject += 1;
                                if !o.quiet_errors {
                                    eprintln!("milter_load: #{i} reject {message:?}");
                                }
                            }
                            Status::Discard => t.discard += 1,
                        }
                    }
                    Err(e) => {
                        t.errors += 1;
                        if !o.quiet_errors {
                            eprintln!("milter_load: #{i}: {e}");
                        }
                    }
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for h in tasks {
        if let Ok(t) = h.await {
            all.accept += t.accept;
            all.tempfail += t.tempfail;
            all.reject += t.reject;
            all.discard += t.discard;
            all.other += t.other;
            all.errors += t.errors;
            all.retried += t.retried;
            all.records.extend(t.records);
            all.eom.extend(t.eom);
            all.tx.extend(t.tx);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    if let Some(path) = &o.record {
        let mut text = all.records.join("\n");
        text.push('\n');
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("milter_load: {}: {e}", path.display());
            return 2;
        }
    }
    all.eom.sort();
    all.tx.sort();
    let sent = all.accept + all.tempfail + all.reject + all.discard + all.other + all.errors;
    println!(
        "sent={sent} accept={} tempfail={} reject={} discard={} other={} errors={} elapsed_s={elapsed:.3} \
         msgs_per_s={:.1} eom_p50_ms={:.2} eom_p90_ms={:.2} eom_p99_ms={:.2} eom_max_ms={:.2} \
         tx_p50_ms={:.2} tx_p99_ms={:.2} client_cpu_s={cpu:.2} retried={}",
        all.accept,
        all.tempfail,
        all.reject,
        all.discard,
        all.other,
        all.errors,
        all.accept as f64 / elapsed.max(1e-9),
        percentile(&all.eom, 50.0),
        percentile(&all.eom, 90.0),
        percentile(&all.eom, 99.0),
        percentile(&all.eom, 100.0),
        percentile(&all.tx, 50.0),
        percentile(&all.tx, 99.0),
        all.retried,
    );
    if all.accept == sent && sent > 0 { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mods_note_the_body_and_the_message_id_the_milter_sets() {
        let mut m = Mods::default();
        m.note(b'b', b"chunk one");
        m.note(b'b', b"chunk two");
        // SMFIR_INSHEADER: index, name, value
        let mut ins = 0u32.to_be_bytes().to_vec();
        ins.extend_from_slice(b"Message-ID\0 <opec.1@pec.demo.test>\0");
        m.note(b'i', &ins);
        // SMFIR_ADDHEADER of another field changes nothing
        m.note(b'h', b"X-Trasporto\0posta-certificata\0");
        assert_eq!(m.body, 2);
        assert_eq!(m.msgid.as_deref(), Some("<opec.1@pec.demo.test>"));
        let mut c = Mods::default();
        // SMFIR_CHGHEADER, lower-case name
        let mut chg = 1u32.to_be_bytes().to_vec();
        chg.extend_from_slice(b"message-id\0<x@y>\0");
        c.note(b'm', &chg);
        assert_eq!((c.body, c.msgid.as_deref()), (0, Some("<x@y>")));
    }

    #[test]
    fn msgid_of_reads_the_field_or_says_none() {
        let m = from_file(b"From: a@b\r\nMessage-ID:  <m.1@b>\r\n\r\nbody\r\n");
        assert_eq!(msgid_of(&m), "<m.1@b>");
        let n = from_file(b"From: a@b\n\nbody\n");
        assert_eq!(msgid_of(&n), "-");
    }
}
