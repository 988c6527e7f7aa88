//! What the builders read a carried message's body from: bytes in memory,
//! or anything else that can hand them out in pieces (the daemon's spool
//! files implement [`Body`] outside the wire format). The builders read a
//! body several times (transfer encoding, boundary search, hashing and
//! copying), so a body is read by range rather than streamed once.

use std::io;

/// The size of the pieces a body is read in.
pub const CHUNK: usize = 64 * 1024;

/// A message body read in pieces, from the start, as often as needed.
pub trait Body {
    /// Its length in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it ends with `suffix`.
    fn ends_with(&self, suffix: &[u8]) -> io::Result<bool>;

    /// Call `f` with `body[start..end]` (cut to the length) in pieces of
    /// at most [`CHUNK`] bytes, in order.
    fn for_range<E: From<io::Error>>(
        &self,
        start: u64,
        end: u64,
        f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E>;
}

impl Body for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn ends_with(&self, suffix: &[u8]) -> io::Result<bool> {
        Ok(<[u8]>::ends_with(self, suffix))
    }

    fn for_range<E: From<io::Error>>(
        &self,
        start: u64,
        end: u64,
        f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let end = usize::try_from(end)
            .unwrap_or(usize::MAX)
            .min(<[u8]>::len(self));
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        // in pieces, as from a spool file: callers keep a window per piece
        match self.get(start..end) {
            Some(range) => range.chunks(CHUNK).try_for_each(f),
            None => Ok(()),
        }
    }
}
