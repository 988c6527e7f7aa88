//! A throwaway `redis-server` for the tests that use the Redis state store
//! (tests/state.rs, tests/timers.rs): on 127.0.0.1, a free port, no
//! persistence, killed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pec_milter::state::redis::RedisStore;
use tempfile::TempDir;

use super::free_port;

/// A `redis-server` child process on 127.0.0.1, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// More arguments (after the port, dir and persistence ones).
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, Vec::new())
    }

    fn start_with(port: u16, extra: Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for redis-server");
        let mut server = Self {
            child: None,
            port,
            dir,
            extra,
        };
        server.spawn();
        server
    }

    /// A replica of the server on `primary_port` (syncing: see
    /// [`wait_in_sync`](Self::wait_in_sync)).
    pub fn replica_of(primary_port: u16) -> Self {
        Self::start_with(
            free_port(),
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary_port.to_string(),
                "--repl-diskless-sync".into(),
                "yes".into(),
                "--repl-diskless-sync-delay".into(),
                "0".into(),
            ],
        )
    }

    /// A sentinel (`redis-server --sentinel`) monitoring the primary on
    /// `primary_port` as `name`, quorum 1, down after 1 s.
    pub fn sentinel(primary_port: u16, name: &str) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir for the sentinel");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 10000\n"
            ),
        )
        .expect("sentinel.conf");
        let mut server = Self {
            child: None,
            port,
            dir,
            extra: vec!["--sentinel".into()],
        };
        server.spawn_with_conf(Some(conf));
        server
    }

    /// `ADDR:PORT` as a sentinel list names it.
    pub fn addr(&self) -> (String, u16) {
        ("127.0.0.1".into(), self.port)
    }

    /// Wait until this replica's link to its primary is up.
    pub async fn wait_in_sync(&self) {
        let mut raw = raw_connection(&self.url()).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let info: String = ::redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut raw)
                .await
                .expect("INFO");
            if info.contains("master_link_status:up") {
                return;
            }
            assert!(Instant::now() < deadline, "replica never in sync:\n{info}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        self.spawn_with_conf(None);
    }

    fn spawn_with_conf(&mut self, conf: Option<PathBuf>) {
        assert!(self.child.is_none(), "redis-server already running");
        let log = std::fs::File::create(self.log_path()).expect("redis log file");
        let log2 = log.try_clone().expect("redis log file");
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = conf {
            // a sentinel: its config file first (it rewrites it)
            cmd.arg(conf);
        } else {
            cmd.args(["--save", ""]).args(["--appendonly", "no"]);
        }
        let child = cmd
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server not found in PATH: install redis-server; CI's integration/deps.sh does"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        self.wait_ready();
    }

    /// Wait until the server answers PING.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                panic!("redis-server exited with {status}:\n{log}");
            }
            if ping(self.port) {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                panic!(
                    "redis-server on port {} never answered PING:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Our Redis state store on this server, its keys under `prefix` (what a
    /// node opens; several are several nodes).
    pub fn store(&self, prefix: &str) -> RedisStore {
        RedisStore::connect(&self.url(), prefix).expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// Kill the server (like a crash) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A raw connection to the server (the redis crate alone, none of our
/// code), to look at the keys the store wrote.
pub async fn raw_connection(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// `TTL key` over a raw connection: seconds left, -1 without expiry, -2
/// when absent.
pub async fn key_ttl(raw: &mut ::redis::aio::MultiplexedConnection, key: &str) -> i64 {
    ::redis::cmd("TTL")
        .arg(key)
        .query_async(raw)
        .await
        .expect("TTL")
}

/// A raw `PING` over TCP (no client library involved).
pub fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}
