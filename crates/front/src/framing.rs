//! A guard in front of multer that bounds what multer would otherwise keep in
//! memory: the bytes before the first boundary (the preamble) and each part's
//! headers. multer buffers both whole and rescans them on every read, so a
//! body that never sends a boundary (or a header block that never ends) grows
//! a front by its full size; here such a body fails after a few KiB.
//!
//! The guard follows the framing only as far as it needs to count: preamble,
//! part headers (up to the blank line), part body (up to `CRLF--boundary`),
//! and the epilogue after the closing delimiter. Everything it passes on is
//! the client's bytes unchanged; multer still does the parsing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use memchr::memmem;

/// Most bytes accepted before the first boundary. Clients send none (curl,
/// browsers, Postman); RFC 2046 allows a preamble, so a little is tolerated.
pub const MAX_PREAMBLE_BYTES: usize = 8 * 1024;

/// Most bytes of one part's header block (`Content-Disposition`,
/// `Content-Type`, …): a browser sends under 300.
pub const MAX_PART_HEADER_BYTES: usize = 8 * 1024;

/// The body broke a framing bound before multer could buffer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// No boundary within [`MAX_PREAMBLE_BYTES`].
    #[error("no multipart boundary within the first {0} bytes")]
    Preamble(usize),
    /// A part's headers did not end within [`MAX_PART_HEADER_BYTES`].
    #[error("a part's headers are longer than {0} bytes")]
    PartHeaders(usize),
}

/// Where in the framing the next byte is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Before the first `--boundary`.
    Preamble,
    /// After a delimiter, before the blank line that ends the part's headers.
    Headers,
    /// A part's content, up to the next `CRLF--boundary`.
    Content,
    /// After the closing `--boundary--`: ignored by multer, bounded by the
    /// whole-body limit.
    Epilogue,
}

/// Counts framing bytes across chunk edges; pure, so it is tested directly.
#[derive(Debug)]
pub struct FramingCounter {
    /// `--boundary`: the first delimiter may open the body without a CRLF.
    first: Vec<u8>,
    /// `CRLF--boundary`: every later delimiter.
    delimiter: Vec<u8>,
    section: Section,
    /// Bytes of the current preamble or header block so far.
    seen: usize,
    /// The first two bytes after a delimiter: `--` marks the closing one.
    after_delimiter: Vec<u8>,
    /// The tail of the bytes already scanned that may begin a match (shorter
    /// than the needle), so a needle split between two chunks is found.
    carry: Vec<u8>,
}

impl FramingCounter {
    /// A counter for a body whose boundary is `boundary`.
    pub fn new(boundary: &str) -> FramingCounter {
        let first = [b"--".as_slice(), boundary.as_bytes()].concat();
        let delimiter = [b"\r\n".as_slice(), &first].concat();
        FramingCounter {
            first,
            delimiter,
            section: Section::Preamble,
            seen: 0,
            after_delimiter: Vec::with_capacity(2),
            carry: Vec::new(),
        }
    }

    /// Accounts for the next chunk of the body.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), FramingError> {
        while !chunk.is_empty() {
            match self.section {
                Section::Preamble => {
                    match find(&mut self.carry, &self.first, chunk) {
                        Some(end) => {
                            // The preamble's bytes in this chunk (a match begun in
                            // the carried tail ends before needle.len()).
                            self.count_preamble(end.saturating_sub(self.first.len()))?;
                            self.enter(Section::Headers);
                            chunk = &chunk[end..];
                        }
                        None => {
                            self.count_preamble(chunk.len())?;
                            return Ok(());
                        }
                    }
                }
                Section::Headers => {
                    // `--` right after a delimiter closes the form.
                    while self.after_delimiter.len() < 2 && !chunk.is_empty() {
                        self.after_delimiter.push(chunk[0]);
                        chunk = &chunk[1..];
                        self.count_headers(1)?;
                    }
                    if self.after_delimiter == b"--" {
                        self.enter(Section::Epilogue);
                        continue;
                    }
                    if self.after_delimiter.len() < 2 {
                        return Ok(());
                    }
                    match find(&mut self.carry, b"\r\n\r\n", chunk) {
                        Some(end) => {
                            self.count_headers(end)?;
                            self.enter(Section::Content);
                            chunk = &chunk[end..];
                        }
                        None => {
                            self.count_headers(chunk.len())?;
                            return Ok(());
                        }
                    }
                }
                Section::Content => match find(&mut self.carry, &self.delimiter, chunk) {
                    Some(end) => {
                        self.enter(Section::Headers);
                        chunk = &chunk[end..];
                    }
                    None => return Ok(()),
                },
                Section::Epilogue => return Ok(()),
            }
        }
        Ok(())
    }

    fn enter(&mut self, section: Section) {
        self.section = section;
        self.seen = 0;
        self.carry.clear();
        self.after_delimiter.clear();
    }

    fn count_preamble(&mut self, n: usize) -> Result<(), FramingError> {
        self.seen = self.seen.saturating_add(n);
        // The carried tail may yet turn out to be the boundary itself.
        if self.seen.saturating_sub(self.carry.len()) > MAX_PREAMBLE_BYTES {
            return Err(FramingError::Preamble(MAX_PREAMBLE_BYTES));
        }
        Ok(())
    }

    fn count_headers(&mut self, n: usize) -> Result<(), FramingError> {
        self.seen = self.seen.saturating_add(n);
        if self.seen > MAX_PART_HEADER_BYTES {
            return Err(FramingError::PartHeaders(MAX_PART_HEADER_BYTES));
        }
        Ok(())
    }
}

/// Where in `chunk` the first match of `needle` (possibly begun in the
/// carried tail of earlier chunks) ends; otherwise keeps the new tail.
fn find(carry: &mut Vec<u8>, needle: &[u8], chunk: &[u8]) -> Option<usize> {
    if !carry.is_empty() {
        // A match that starts in the carry ends within needle.len() - 1 bytes.
        let take = chunk.len().min(needle.len() - 1);
        let mut joined = carry.clone();
        joined.extend_from_slice(&chunk[..take]);
        if let Some(at) = memmem::find(&joined, needle) {
            return Some(at + needle.len() - carry.len());
        }
    }
    if let Some(at) = memmem::find(chunk, needle) {
        return Some(at + needle.len());
    }
    // Keep what could still begin a match: the last needle.len() - 1 bytes.
    let keep = needle.len() - 1;
    if chunk.len() >= keep {
        carry.clear();
        carry.extend_from_slice(&chunk[chunk.len() - keep..]);
    } else {
        carry.extend_from_slice(chunk);
        let excess = carry.len().saturating_sub(keep);
        carry.drain(..excess);
    }
    None
}

/// The body stream, failing with [`FramingError`] as soon as a bound is broken.
pub struct Guarded<S> {
    inner: S,
    counter: FramingCounter,
    failed: bool,
}

impl<S> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl<S> Guarded<S> {
    /// Guards `inner`, a body whose multipart boundary is `boundary`.
    pub fn new(inner: S, boundary: &str) -> Guarded<S> {
        Guarded {
            inner,
            counter: FramingCounter::new(boundary),
            failed: false,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S> Stream for Guarded<S>
where
    S: Stream<Item = Result<Bytes, BoxError>> + Unpin,
{
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(Pin::new(&mut self.inner).poll_next(cx));
        Poll::Ready(match item {
            Some(Ok(chunk)) => match self.counter.feed(&chunk) {
                Ok(()) => Some(Ok(chunk)),
                Err(e) => {
                    self.failed = true;
                    Some(Err(Box::new(e)))
                }
            },
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed_in(counter: &mut FramingCounter, body: &[u8], size: usize) -> Result<(), FramingError> {
        body.chunks(size.max(1)).try_for_each(|c| counter.feed(c))
    }

    fn form(file: &[u8]) -> Vec<u8> {
        let mut b =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\n"
                .to_vec();
        b.extend_from_slice(file);
        b.extend_from_slice(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"presets\"\r\n\r\nthumb\r\n--XyZ--\r\n");
        b
    }

    #[test]
    fn a_form_passes_whatever_the_chunking() {
        let body = form(&vec![7u8; 100_000]);
        for size in [1, 2, 3, 5, 7, 64, 4096, body.len()] {
            let mut c = FramingCounter::new("XyZ");
            assert_eq!(feed_in(&mut c, &body, size), Ok(()), "chunks of {size}");
            assert_eq!(c.section, Section::Epilogue, "chunks of {size}");
        }
    }

    #[test]
    fn a_body_without_a_boundary_fails_just_past_the_bound() {
        let mut c = FramingCounter::new("XyZ");
        let junk = vec![b'a'; MAX_PREAMBLE_BYTES];
        assert_eq!(c.feed(&junk), Ok(()));
        assert_eq!(
            c.feed(b"aaaaaaaaaaaaaaaa"),
            Err(FramingError::Preamble(MAX_PREAMBLE_BYTES))
        );
    }

    #[test]
    fn endless_part_headers_fail() {
        let mut c = FramingCounter::new("XyZ");
        c.feed(b"--XyZ\r\nX-Long: ").expect("opening");
        let junk = vec![b'h'; MAX_PART_HEADER_BYTES];
        assert_eq!(
            c.feed(&junk),
            Err(FramingError::PartHeaders(MAX_PART_HEADER_BYTES))
        );
    }

    #[test]
    fn headers_of_a_later_part_are_bounded_too() {
        let mut c = FramingCounter::new("XyZ");
        let mut body = form(b"data");
        body.truncate(body.len() - b"--XyZ--\r\n".len());
        body.extend_from_slice(b"--XyZ\r\n");
        body.extend_from_slice(&vec![b'h'; MAX_PART_HEADER_BYTES + 10]);
        assert!(matches!(
            feed_in(&mut c, &body, 100),
            Err(FramingError::PartHeaders(_))
        ));
    }

    #[test]
    fn a_long_epilogue_is_left_to_the_body_limit() {
        let mut body = form(b"data");
        body.extend_from_slice(&vec![b'e'; 100_000]);
        let mut c = FramingCounter::new("XyZ");
        assert_eq!(feed_in(&mut c, &body, 333), Ok(()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Whatever the chunking, a preamble is accepted up to the bound and refused past it.
        #[test]
        fn preambles_are_bounded_at_any_chunking(
            len in 0usize..(2 * MAX_PREAMBLE_BYTES),
            size in 1usize..3000,
            byte in prop::sample::select(vec![b'-', b'\r', b'\n', b'X', b'a']),
        ) {
            let mut body = vec![byte; len];
            body.extend_from_slice(&form(b"file"));
            let mut c = FramingCounter::new("XyZ");
            let got = feed_in(&mut c, &body, size);
            // The boundary is found at the first "--XyZ", which may begin in the preamble's own dashes.
            let at = memmem::find(&body, b"--XyZ").expect("present");
            // Within a needle's length of the bound, either answer is right.
            if at <= MAX_PREAMBLE_BYTES {
                prop_assert_eq!(got, Ok(()));
            } else if at > MAX_PREAMBLE_BYTES + b"\r\n--XyZ".len() {
                prop_assert_eq!(got, Err(FramingError::Preamble(MAX_PREAMBLE_BYTES)));
            }
        }
    }
}
