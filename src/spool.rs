//! Message bodies kept in memory while small and on disk once large, so
//! that a 100 MB message never sits in memory (let alone several copies of
//! it).
//!
//! - [`SpoolWriter`] takes the body as the MTA sends it, in chunks, makes
//!   every line end CRLF on the way (a bare CR or LF becomes CRLF, also
//!   across chunk borders), and keeps the bytes in memory up to its
//!   `memory_limit` (`[spool] memory_limit`, 1 MiB by default); past it
//!   everything moves to an unnamed file in the spool directory (created,
//!   then unlinked at once: nothing is left behind by a crash).
//! - [`Spooled`] is the finished body: cheap to clone (shared), read in
//!   chunks of [`CHUNK`] bytes from the start as often as needed, by
//!   several readers, synchronously ([`Spooled::for_each_chunk`]) or
//!   asynchronously ([`Spooled::async_reader`]).
//!
//! Builders that produce a large output (the busta di trasporto) write
//! into a `SpoolWriter` too, without the CRLF canonicalisation
//! ([`SpoolWriter::raw`]).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

mod trim;
pub use trim::Mapped;

/// The size of the pieces a spooled body is read in.
pub const CHUNK: usize = crate::pec::body::CHUNK;

/// Where spool files go and when a body moves there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    /// Bodies up to this many bytes stay in memory.
    pub memory_limit: u64,
}

impl SpoolOptions {
    /// Everything in memory (tests, command-line tools, small inputs).
    pub fn memory() -> Self {
        SpoolOptions {
            dir: std::env::temp_dir(),
            memory_limit: u64::MAX,
        }
    }
}

/// Writes a body; see the [module documentation](self).
pub struct SpoolWriter {
    opts: SpoolOptions,
    canonicalize: bool,
    /// The previous chunk ended with a CR whose LF may come next.
    pending_cr: bool,
    mem: Vec<u8>,
    file: Option<(File, io::BufWriter<File>)>,
    len: u64,
}

impl fmt::Debug for SpoolWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolWriter")
            .field("len", &self.len)
            .field("on_disk", &self.file.is_some())
            .finish_non_exhaustive()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// An unnamed read-write file in `dir`.
fn anonymous_file(dir: &Path) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let name = format!(
        ".spool-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    // 0600: no other user can open (let alone truncate) it in the moment
    // before the unlink; the map in `Spooled::view` relies on that.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

impl SpoolWriter {
    /// A writer that makes line ends CRLF (for what the MTA sends).
    pub fn new(opts: SpoolOptions) -> Self {
        SpoolWriter {
            opts,
            canonicalize: true,
            pending_cr: false,
            mem: Vec::new(),
            file: None,
            len: 0,
        }
    }

    /// A writer that keeps the bytes exactly as written (for built output).
    pub fn raw(opts: SpoolOptions) -> Self {
        SpoolWriter {
            canonicalize: false,
            ..SpoolWriter::new(opts)
        }
    }

    /// Bytes written so far (after canonicalisation).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.file.is_none() && self.len + data.len() as u64 > self.opts.memory_limit {
            let f = anonymous_file(&self.opts.dir)?;
            let mut w = io::BufWriter::with_capacity(CHUNK, f.try_clone()?);
            w.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some((f, w));
        }
        match &mut self.file {
            Some((_, w)) => w.write_all(data)?,
            None => self.mem.extend_from_slice(data),
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// Append bytes.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.canonicalize {
            return self.put(data);
        }
        if data.is_empty() {
            // A pending CR stays pending: its LF may be in the next chunk.
            return Ok(());
        }
        let mut start = 0;
        let mut i = 0;
        if self.pending_cr {
            self.pending_cr = false;
            self.put(b"\r\n")?;
            if data.first() == Some(&b'\n') {
                start = 1;
                i = 1;
            }
        }
        while i < data.len() {
            match data[i] {
                b'\r' if data.get(i + 1) == Some(&b'\n') => i += 2,
                b'\r' if i + 1 == data.len() => {
                    // Decided by the next chunk.
                    self.put(&data[start..i])?;
                    self.pending_cr = true;
                    return Ok(());
                }
                b'\r' | b'\n' => {
                    self.put(&data[start..i])?;
                    self.put(b"\r\n")?;
                    i += 1;
                    start = i;
                }
                _ => i += 1,
            }
        }
        self.put(&data[start..])
    }

    /// The finished body.
    pub fn finish(mut self) -> io::Result<Spooled> {
        if self.pending_cr {
            self.pending_cr = false;
            self.put(b"\r\n")?;
        }
        let len = self.len;
        Ok(match self.file {
            Some((f, mut w)) => {
                w.flush()?;
                drop(w);
                Spooled(Arc::new(Inner::File(f, len)))
            }
            None => Spooled(Arc::new(Inner::Memory(self.mem))),
        })
    }
}

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        SpoolWriter::write(self, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Inner {
    Memory(Vec<u8>),
    File(File, u64),
}

/// A finished body: see the [module documentation](self).
#[derive(Clone)]
pub struct Spooled(Arc<Inner>);

impl fmt::Debug for Spooled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spooled")
            .field("len", &self.len())
            .field("on_disk", &self.is_on_disk())
            .finish()
    }
}

impl From<Vec<u8>> for Spooled {
    /// Bytes kept as they are (no canonicalisation), in memory.
    fn from(v: Vec<u8>) -> Self {
        Spooled(Arc::new(Inner::Memory(v)))
    }
}

impl Default for Spooled {
    fn default() -> Self {
        Spooled::from(Vec::new())
    }
}

impl Spooled {
    pub fn len(&self) -> u64 {
        match &*self.0 {
            Inner::Memory(v) => v.len() as u64,
            Inner::File(_, n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_on_disk(&self) -> bool {
        matches!(&*self.0, Inner::File(..))
    }

    /// The bytes, when they are in memory.
    pub fn as_slice(&self) -> Option<&[u8]> {
        match &*self.0 {
            Inner::Memory(v) => Some(v),
            Inner::File(..) => None,
        }
    }

    /// Call `f` on the bytes from `start` to `end` (clamped to the
    /// length), in order, in pieces of at most [`CHUNK`] bytes (one piece
    /// for a body in memory). Blocking file I/O: call it off the async
    /// workers for bodies on disk.
    pub fn for_range<E: From<io::Error>>(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let end = end.min(self.len());
        if start >= end {
            return Ok(());
        }
        match &*self.0 {
            Inner::Memory(v) => {
                // start < end <= v.len(), both fit usize
                let (s, e) = (start as usize, end as usize);
                f(&v[s..e])
            }
            Inner::File(file, _) => {
                let mut buf = vec![0u8; CHUNK];
                let mut pos = start;
                while pos < end {
                    let want = usize::try_from(end - pos).unwrap_or(CHUNK).min(CHUNK);
                    let n = file.read_at(&mut buf[..want], pos)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "spool file shorter than written",
                        )
                        .into());
                    }
                    f(&buf[..n])?;
                    pos += n as u64;
                }
                Ok(())
            }
        }
    }

    /// [`for_range`](Self::for_range) over the whole body.
    pub fn for_each_chunk<E: From<io::Error>>(
        &self,
        f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.for_range(0, u64::MAX, f)
    }

    /// The whole body in memory (copied when it is on disk): for small
    /// bodies and for the roles that still need one slice.
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        if let Inner::Memory(v) = &*self.0 {
            return Ok(v.clone());
        }
        let mut out = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        self.for_each_chunk::<io::Error>(|c| {
            out.extend_from_slice(c);
            Ok(())
        })?;
        Ok(out)
    }

    /// The whole body as one slice without copying it: the bytes in
    /// memory, or the spool file mapped read-only. The pages of a mapped
    /// file are the page cache's (the file has just been written); those a
    /// pass touches count in the process's RSS until the trimmer hands
    /// them back ([`Mapped`]): the roles that parse a message as a whole
    /// (the reception point) read a 100 MB body through this without
    /// holding a copy or its pages.
    pub fn view(&self) -> io::Result<SpooledView<'_>> {
        match &*self.0 {
            Inner::Memory(v) => Ok(SpooledView::Memory(v)),
            Inner::File(_, 0) => Ok(SpooledView::Memory(&[])),
            Inner::File(file, len) => {
                let len = usize::try_from(*len).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "spool file too large to map")
                })?;
                // SAFETY: the file is this process's own unnamed spool file
                // (created in the spool directory and unlinked at once, see
                // `anonymous_file`), finished and never written again: no
                // one can truncate or change it while the map lives, which
                // is what makes a file mapping sound to read as a slice.
                let map = unsafe { Mapped::new(file, len)? };
                Ok(SpooledView::Mapped(map))
            }
        }
    }

    /// Whether the body ends with `suffix`.
    pub fn ends_with(&self, suffix: &[u8]) -> io::Result<bool> {
        let n = suffix.len() as u64;
        if n > self.len() {
            return Ok(false);
        }
        let mut tail = Vec::with_capacity(suffix.len());
        self.for_range::<io::Error>(self.len() - n, self.len(), |c| {
            tail.extend_from_slice(c);
            Ok(())
        })?;
        Ok(tail == suffix)
    }

    /// An [`AsyncRead`] over the whole body, from the start. Each reader
    /// has its own position; reads of a body on disk are positional reads
    /// of at most [`CHUNK`] bytes (from the page cache as a rule: the body
    /// has just been written).
    pub fn async_reader(&self) -> SpooledReader {
        SpooledReader {
            body: self.clone(),
            pos: 0,
        }
    }
}

/// The builders of the wire format read a spooled body in pieces.
impl crate::pec::body::Body for Spooled {
    fn len(&self) -> u64 {
        Spooled::len(self)
    }

    fn ends_with(&self, suffix: &[u8]) -> io::Result<bool> {
        Spooled::ends_with(self, suffix)
    }

    fn for_range<E: From<io::Error>>(
        &self,
        start: u64,
        end: u64,
        f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        Spooled::for_range(self, start, end, f)
    }
}

/// See [`Spooled::view`].
pub enum SpooledView<'a> {
    Memory(&'a [u8]),
    /// A file mapped read-only (a large one has its touched pages
    /// handed back as it is read: [`Mapped`]).
    Mapped(Mapped),
}

impl std::ops::Deref for SpooledView<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            SpooledView::Memory(b) => b,
            SpooledView::Mapped(m) => m,
        }
    }
}

impl fmt::Debug for SpooledView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpooledView")
            .field("len", &self.len())
            .field("mapped", &matches!(self, SpooledView::Mapped(_)))
            .finish()
    }
}

/// See [`Spooled::async_reader`].
#[derive(Debug)]
pub struct SpooledReader {
    body: Spooled,
    pos: u64,
}

impl AsyncRead for SpooledReader {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let left = this.body.len().saturating_sub(this.pos);
        if left == 0 || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let want = usize::try_from(left)
            .unwrap_or(CHUNK)
            .min(CHUNK)
            .min(buf.remaining());
        match &*this.body.0 {
            Inner::Memory(v) => {
                let s = usize::try_from(this.pos).unwrap_or(v.len()).min(v.len());
                let e = (s + want).min(v.len());
                buf.put_slice(&v[s..e]);
                this.pos += (e - s) as u64;
            }
            Inner::File(f, _) => {
                let dst = buf.initialize_unfilled_to(want);
                let n = f.read_at(dst, this.pos)?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "spool file shorter than written",
                    )));
                }
                buf.advance(n);
                this.pos += n as u64;
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect<B: crate::pec::body::Body + ?Sized>(b: &B, start: u64, end: u64) -> Vec<u8> {
        let mut v = Vec::new();
        b.for_range::<io::Error>(start, end, |c| {
            v.extend_from_slice(c);
            Ok(())
        })
        .expect("read");
        v
    }

    /// A spooled body read as the builders read it ([`pec::body::Body`]):
    /// the same bytes as the slice, over ranges that straddle the read
    /// pieces, on disk and in memory.
    #[test]
    fn a_spooled_body_reads_as_its_bytes() {
        use crate::pec::body::Body;
        let data: Vec<u8> = (0..3 * CHUNK + 123).map(|i| (i % 251) as u8).collect();
        for memory_limit in [0, u64::MAX] {
            let mut w = SpoolWriter::raw(SpoolOptions {
                dir: std::env::temp_dir(),
                memory_limit,
            });
            for piece in data.chunks(7) {
                w.write(piece).expect("write");
            }
            let spooled = w.finish().expect("finish");
            assert_eq!(spooled.is_on_disk(), memory_limit == 0);
            assert_eq!(Body::len(&spooled), Body::len(&data[..]));
            for (start, end) in [
                (0, u64::MAX),
                (CHUNK as u64 - 5, CHUNK as u64 + 5),
                (17, 2 * CHUNK as u64 + 1),
            ] {
                let (from_spool, from_slice) = (
                    collect(&spooled, start, end),
                    collect(&data[..], start, end),
                );
                assert_eq!(from_spool, from_slice, "{start}..{end}");
            }
            let tail = &data[data.len() - 9..];
            assert!(Body::ends_with(&spooled, tail).expect("tail"));
            assert!(!Body::ends_with(&spooled, b"nope").expect("tail"));
        }
    }

    #[test]
    fn a_view_is_the_body_in_memory_or_mapped() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut w = SpoolWriter::raw(SpoolOptions {
            dir: std::env::temp_dir(),
            memory_limit: 1000,
        });
        for piece in data.chunks(777) {
            w.write(piece).expect("write");
        }
        let on_disk = w.finish().expect("finish");
        assert!(on_disk.is_on_disk());
        let v = on_disk.view().expect("map");
        assert!(matches!(v, SpooledView::Mapped(_)));
        assert_eq!(&v[..], &data[..]);
        let mem = Spooled::from(data[..10].to_vec());
        assert!(matches!(mem.view().expect("view"), SpooledView::Memory(_)));
        assert_eq!(&mem.view().expect("view")[..], &data[..10]);
        let mut empty = SpoolWriter::raw(SpoolOptions {
            dir: std::env::temp_dir(),
            memory_limit: 0,
        });
        empty.write(b"").expect("write");
        assert!(
            empty
                .finish()
                .expect("finish")
                .view()
                .expect("view")
                .is_empty()
        );
    }

    fn opts(dir: &Path, limit: u64) -> SpoolOptions {
        SpoolOptions {
            dir: dir.to_path_buf(),
            memory_limit: limit,
        }
    }

    fn spool(chunks: &[&[u8]], limit: u64) -> Spooled {
        let dir = std::env::temp_dir().join("pec-milter-spool-unit");
        let mut w = SpoolWriter::new(opts(&dir, limit));
        for c in chunks {
            w.write(c).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn line_ends_become_crlf_across_chunks() {
        for limit in [u64::MAX, 0, 3] {
            let s = spool(&[b"a\r", b"\nb\r", b"c\n", b"\r", b"", b"\r\n\r"], limit);
            assert_eq!(s.to_vec().unwrap(), b"a\r\nb\r\nc\r\n\r\n\r\n\r\n");
            assert_eq!(s.is_on_disk(), limit != u64::MAX);
            assert!(s.ends_with(b"\r\n\r\n").unwrap());
            let s = spool(&[b"a\r", b"", b"\nb"], limit);
            assert_eq!(s.to_vec().unwrap(), b"a\r\nb");
        }
        let s = spool(&[b"x\n\n", b"y"], u64::MAX);
        assert_eq!(s.to_vec().unwrap(), b"x\r\n\r\ny");
        assert!(!s.ends_with(b"\r\n").unwrap());
    }

    #[test]
    fn ranges_and_chunks_on_disk() {
        let data: Vec<u8> = (0..(3 * CHUNK + 17))
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let s = spool(&[&data[..1000], &data[1000..]], 10);
        assert!(s.is_on_disk());
        assert_eq!(s.len(), data.len() as u64);
        let mut n = 0;
        let mut got = Vec::new();
        s.for_range::<io::Error>(5, s.len() - 5, |c| {
            assert!(c.len() <= CHUNK);
            n += 1;
            got.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, &data[5..data.len() - 5]);
        assert!(n >= 3);
    }

    #[tokio::test]
    async fn async_reader_reads_everything() {
        use tokio::io::AsyncReadExt;
        let data: Vec<u8> = (0..(2 * CHUNK + 3)).map(|i| (i % 251) as u8).collect();
        for limit in [u64::MAX, 1] {
            let mut w = SpoolWriter::raw(opts(&std::env::temp_dir(), limit));
            w.write(&data).unwrap();
            let s = w.finish().unwrap();
            let mut out = Vec::new();
            s.async_reader().read_to_end(&mut out).await.unwrap();
            assert_eq!(out, data);
        }
    }
}
