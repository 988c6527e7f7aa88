//! SMTP load client with SMTP AUTH (what Postfix's `smtp-source` cannot
//! do): C concurrent sessions, one message per connection (EHLO, AUTH
//! PLAIN, MAIL, RCPT..., DATA, QUIT), generated messages with a unique
//! Message-ID and Subject each. The benchmark harness
//! (`integration/bench/run.sh`) uses it for every compared setup, so that
//! Postfix alone, Postfix + OpenDKIM and Postfix + pec-milter see the same
//! client and the same SASL work.
//!
//! ```text
//! smtp_load --server 127.0.0.1:2600 --auth mario.rossi@pec.demo.test:mario-pw \
//!     --from mario.rossi@pec.demo.test --to anna.bianchi@pec.other.test \
//!     --count 2000 --concurrency 8 --size 10240
//! ```
//!
//! `--rate R` paces the starts (open loop); `--max-seconds S` stops starting
//! new sessions after S seconds. Output: one line of `key=value`: `sent`,
//! `ok` (250 after the data), `tempfail` (4xx anywhere), `permfail` (5xx),
//! `errors` (I/O), `elapsed_s`, `msgs_per_s` (ok / elapsed),
//! `eod_p50_ms`, `eod_p99_ms` (from the final dot to the reply: includes
//! the milters' end-of-message work), `tx_p50_ms`, `tx_p99_ms`,
//! `client_cpu_s`. Exit 1 unless every message got 250.

mod common;

use common::{cpu_seconds, percentile};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

#[derive(Clone, Debug)]
struct Opts {
    server: String,
    count: usize,
    concurrency: usize,
    size: usize,
    rate: f64,
    max_seconds: f64,
    auth: Option<(String, String)>,
    from: String,
    to: Vec<String>,
    helo: String,
    timeout: Duration,
    quiet_errors: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: smtp_load --server HOST:PORT [--count N] [--concurrency C] [--size BYTES] \
         [--rate R] [--max-seconds S] [--auth USER:PASS] [--from ADDR] [--to A1,A2..] \
         [--helo NAME] [--timeout SECS] [--quiet-errors]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        server: String::new(),
        count: 100,
        concurrency: 4,
        size: 10240,
        rate: 0.0,
        max_seconds: 300.0,
        auth: None,
        from: "mario.rossi@pec.demo.test".into(),
        to: vec!["anna.bianchi@pec.other.test".into()],
        helo: "client.pec.demo.test".into(),
        timeout: Duration::from_secs(120),
        quiet_errors: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--server" => o.server = val(),
            "--count" => o.count = val().parse().unwrap_or_else(|_| usage()),
            "--concurrency" => o.concurrency = val().parse().unwrap_or_else(|_| usage()),
            "--size" => o.size = val().parse().unwrap_or_else(|_| usage()),
            "--rate" => o.rate = val().parse().unwrap_or_else(|_| usage()),
            "--max-seconds" => o.max_seconds = val().parse().unwrap_or_else(|_| usage()),
            "--auth" => {
                let v = val();
                let (u, p) = v.split_once(':').unwrap_or_else(|| usage());
                o.auth = Some((u.to_string(), p.to_string()));
            }
            "--from" => o.from = val(),
            "--to" => o.to = val().split(',').map(str::to_string).collect(),
            "--helo" => o.helo = val(),
            "--timeout" => {
                o.timeout = Duration::from_secs(val().parse().unwrap_or_else(|_| usage()))
            }
            "--quiet-errors" => o.quiet_errors = true,
            _ => usage(),
        }
    }
    if o.server.is_empty() || o.concurrency == 0 {
        usage();
    }
    o
}

/// The message text, CRLF, dot-stuffed, with the final `.` line.
fn message(o: &Opts, run: &str, i: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(o.size + 1024);
    let to =
        o.to.iter()
            .map(|t| format!("<{t}>"))
            .collect::<Vec<_>>()
            .join(",\r\n\t");
    m.extend_from_slice(
        format!(
            "From: Mario Rossi <{}>\r\nTo: {to}\r\nSubject: bench {run} {i}\r\n\
             Message-ID: <bench.{run}.{i}@client.pec.demo.test>\r\n\
             Date: Mon, 01 Dec 2025 10:00:00 +0100\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\r\n",
            o.from
        )
        .as_bytes(),
    );
    let line =
        format!("{i:08} the quick brown fox jumps over the lazy dog 0123456789 abcdefghijklm\r\n");
    let start = m.len();
    while m.len() - start < o.size {
        m.extend_from_slice(line.as_bytes());
    }
    m.extend_from_slice(b".\r\n");
    m
}

enum Outcome {
    Ok(Duration),
    Temp(String),
    Perm(String),
}

struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    timeout: Duration,
}

impl Conn {
    /// Reads one (possibly multi-line) reply: (code, last line).
    async fn reply(&mut self) -> Result<(u16, String), String> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(self.timeout, self.r.read_line(&mut line))
                .await
                .map_err(|_| "timeout waiting for a reply".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            let b = line.as_bytes();
            if b.len() < 4 {
                return Err(format!("bad reply {line:?}"));
            }
            if b[3] == b'-' {
                continue;
            }
            let code: u16 = line[..3]
                .parse()
                .map_err(|_| format!("bad reply {line:?}"))?;
            return Ok((code, line.trim_end().to_string()));
        }
    }

    async fn cmd(&mut self, c: &str) -> Result<(u16, String), String> {
        self.w
            .write_all(format!("{c}\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        self.reply().await
    }
}

fn judge(step: &str, code: u16, text: String) -> Option<Outcome> {
    match code {
        200..=399 => None,
        400..=499 => Some(Outcome::Temp(format!("{step}: {text}"))),
        _ => Some(Outcome::Perm(format!("{step}: {text}"))),
    }
}

async fn one(o: &Opts, msg: &[u8]) -> Result<Outcome, String> {
    let s = tokio::time::timeout(o.timeout, TcpStream::connect(&o.server))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| format!("connect {}: {e}", o.server))?;
    let _ = s.set_nodelay(true);
    let (r, w) = s.into_split();
    let mut c = Conn {
        r: BufReader::new(r),
        w,
        timeout: o.timeout,
    };
    macro_rules! step {
        ($name:expr, $e:expr) => {{
            let (code, text) = $e?;
            if let Some(out) = judge($name, code, text) {
                let _ = c.cmd("QUIT").await;
                return Ok(out);
            }
        }};
    }
    step!("banner", c.reply().await);
    step!("EHLO", c.cmd(&format!("EHLO {}", o.helo)).await);
    if let Some((u, p)) = &o.auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"));
        step!("AUTH", c.cmd(&format!("AUTH PLAIN {token}")).await);
    }
    step!("MAIL", c.cmd(&format!("MAIL FROM:<{}>", o.from)).await);
    for t in &o.to {
        step!("RCPT", c.cmd(&format!("RCPT TO:<{t}>")).await);
    }
    step!("DATA", c.cmd("DATA").await);
    c.w.write_all(msg).await.map_err(|e| e.to_string())?;
    let t = Instant::now();
    let (code, text) = c.reply().await?;
    let lat = t.elapsed();
    let _ = c.cmd("QUIT").await;
    Ok(match judge("end of data", code, text) {
        None => Outcome::Ok(lat),
        Some(o) => o,
    })
}

fn main() {
    let o = Arc::new(parse_opts());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    std::process::exit(rt.block_on(run(o)));
}

#[derive(Default)]
struct Tally {
    ok: usize,
    temp: usize,
    perm: usize,
    errors: usize,
    eod: Vec<Duration>,
    tx: Vec<Duration>,
}

async fn run(o: Arc<Opts>) -> i32 {
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
        let (o, next, run_id) = (o.clone(), next.clone(), run_id.clone());
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
                let msg = message(&o, &run_id, i);
                let t0 = Instant::now();
                match one(&o, &msg).await {
                    Ok(Outcome::Ok(lat)) => {
                        t.ok += 1;
                        t.eod.push(lat);
                        t.tx.push(t0.elapsed());
                    }
                    Ok(Outcome::Temp(e)) => {
                        t.temp += 1;
                        if !o.quiet_errors {
                            eprintln!("smtp_load: #{i} {e}");
                        }
                    }
                    Ok(Outcome::Perm(e)) => {
                        t.perm += 1;
                        if !o.quiet_errors {
                            eprintln!("smtp_load: #{i} {e}");
                        }
                    }
                    Err(e) => {
                        t.errors += 1;
                        if !o.quiet_errors {
                            eprintln!("smtp_load: #{i} {e}");
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
            all.ok += t.ok;
            all.temp += t.temp;
            all.perm += t.perm;
            all.errors += t.errors;
            all.eod.extend(t.eod);
            all.tx.extend(t.tx);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    all.eod.sort();
    all.tx.sort();
    let sent = all.ok + all.temp + all.perm + all.errors;
    println!(
        "sent={sent} ok={} tempfail={} permfail={} errors={} elapsed_s={elapsed:.3} msgs_per_s={:.1} \
         eod_p50_ms={:.2} eod_p99_ms={:.2} tx_p50_ms={:.2} tx_p99_ms={:.2} client_cpu_s={cpu:.2}",
        all.ok,
        all.temp,
        all.perm,
        all.errors,
        all.ok as f64 / elapsed.max(1e-9),
        percentile(&all.eod, 50.0),
        percentile(&all.eod, 99.0),
        percentile(&all.tx, 50.0),
        percentile(&all.tx, 99.0),
    );
    if all.ok == sent && sent > 0 { 0 } else { 1 }
}
