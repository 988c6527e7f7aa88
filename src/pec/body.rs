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

/// RFC 5322 §2.1.1: a line of a message is at most this many characters,
/// without its CRLF. Postfix's SMTP client breaks longer lines on the way
/// out (`smtp_line_length_limit`, 998 by default, inserting CRLF and a
/// space): inside a signed busta di trasporto that breaks the signature
/// at the receiving provider.
pub const MAX_LINE: u64 = 998;

/// The longest line of a message read in pieces, in characters without
/// its line end (CRLF or a bare LF; a CR is counted where it is not
/// followed by LF). Feed the pieces in order, across any borders.
#[derive(Debug, Default, Clone, Copy)]
pub struct LongestLine {
    /// Characters of the current line so far, a trailing CR included.
    run: u64,
    /// Whether the last byte seen was a CR.
    cr: bool,
    longest: u64,
}

impl LongestLine {
    pub fn feed(&mut self, piece: &[u8]) {
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &piece[start..]) {
            let end = start + i;
            let run = self.run + (end - start) as u64;
            let cr = if end > start {
                piece[end - 1] == b'\r'
            } else {
                self.cr
            };
            self.longest = self.longest.max(run - u64::from(cr && run > 0));
            self.run = 0;
            self.cr = false;
            start = end + 1;
        }
        let rest = &piece[start..];
        if let Some(&last) = rest.last() {
            self.run += rest.len() as u64;
            self.cr = last == b'\r';
        }
    }

    /// The longest line seen (a last line without its end included).
    pub fn finish(&self) -> u64 {
        self.longest.max(self.run)
    }
}

#[cfg(test)]
mod longest_line_tests {
    use super::*;

    fn longest(pieces: &[&[u8]]) -> u64 {
        let mut l = LongestLine::default();
        for p in pieces {
            l.feed(p);
        }
        l.finish()
    }

    #[test]
    fn lines_are_counted_without_their_end() {
        assert_eq!(longest(&[b""]), 0);
        assert_eq!(longest(&[b"abc\r\nde\r\n"]), 3);
        assert_eq!(longest(&[b"abc\nabcdef\n"]), 6);
        assert_eq!(
            longest(&[b"ab\r\n\r\nabcd"]),
            4,
            "a last line without its end"
        );
        assert_eq!(longest(&[b"a\rb\r\n"]), 3, "a lone CR is a character");
    }

    #[test]
    fn pieces_split_anywhere_give_the_same_answer() {
        let mut msg = Vec::new();
        for n in [10usize, 998, 999, 0, 5000, 3] {
            msg.extend(std::iter::repeat_n(b'x', n));
            msg.extend_from_slice(b"\r\n");
        }
        let whole = longest(&[&msg]);
        assert_eq!(whole, 5000);
        for cut in 0..msg.len() {
            assert_eq!(longest(&[&msg[..cut], &msg[cut..]]), whole, "cut at {cut}");
        }
        // a CRLF split between pieces
        assert_eq!(longest(&[b"x".repeat(999).as_slice(), b"\r", b"\n"]), 999);
        assert_eq!(longest(&[b"x".repeat(998).as_slice(), b"\r", b"\nab"]), 998);
    }

    /// The definition, on the whole message at once: lines split at LF,
    /// one CR before each LF not counted.
    fn naive(msg: &[u8]) -> u64 {
        let mut lines: Vec<&[u8]> = msg.split(|&b| b == b'\n').collect();
        let last = lines.pop().unwrap_or_default();
        lines
            .iter()
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len() as u64)
            .chain(std::iter::once(last.len() as u64))
            .max()
            .unwrap_or(0)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256, failure_persistence: None, ..Default::default()
        })]
        /// Any bytes (CR, LF and a filler, so lines of every length and
        /// every CR/LF arrangement), cut into any pieces: the definition's
        /// answer.
        #[test]
        fn any_message_in_any_pieces(
            msg in proptest::collection::vec(
                proptest::prop_oneof![3 => proptest::prelude::Just(b'x'), 1 => proptest::prelude::Just(b'\r'), 1 => proptest::prelude::Just(b'\n')],
                0..3000,
            ),
            cuts in proptest::collection::vec(0usize..3000, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(msg.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&msg[at..c]);
                at = c;
            }
            pieces.push(&msg[at..]);
            proptest::prop_assert_eq!(longest(&pieces), naive(&msg));
        }
    }
}
