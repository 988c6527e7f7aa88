//! A CRL distribution point on loopback for the tests: a one-file
//! HTTP/1.0 server (std only) whose answer the test sets, and stops.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A one-file HTTP/1.0 server on loopback: every GET answers the body set
/// (404 when none), then closes. `stop` closes the listener.
pub struct CrlServer {
    port: u16,
    body: Arc<Mutex<Option<Vec<u8>>>>,
    hits: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CrlServer {
    pub fn start() -> CrlServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let body: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let (b, h, s) = (body.clone(), hits.clone(), stopping.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                // the request line and the header fields, up to the empty line
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                h.fetch_add(1, Ordering::SeqCst);
                let answer = b.lock().expect("body").clone();
                let _ = match answer {
                    Some(data) => stream
                        .write_all(
                            format!(
                                "HTTP/1.0 200 OK\r\nContent-Type: application/pkix-crl\r\nContent-Length: {}\r\n\r\n",
                                data.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|_| stream.write_all(&data)),
                    None => stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                };
            }
        });
        CrlServer {
            port,
            body,
            hits,
            stopping,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ca.crl", self.port)
    }

    pub fn serve(&self, crl: Vec<u8>) {
        *self.body.lock().expect("body") = Some(crl);
    }

    /// From now on every GET answers 404.
    pub fn serve_nothing(&self) {
        *self.body.lock().expect("body") = None;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Close the listener: from now on a download is refused.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for CrlServer {
    fn drop(&mut self) {
        self.stop();
    }
}
