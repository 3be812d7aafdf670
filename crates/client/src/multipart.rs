//! A `multipart/form-data` body with one file part, `image`, streamed from
//! disk chunk by chunk: a 2 GiB upload costs the client no more memory than a
//! small one.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::fs::File;
use tokio::io::{AsyncRead, ReadBuf};

use pixpool_model::Format;

/// Bytes read from the file per body frame.
const CHUNK: usize = 256 * 1024;

/// The streamed body: the part's head, the file's bytes, the closing boundary.
#[derive(Debug)]
pub struct FileBody {
    /// Boundary line and part headers; taken when sent.
    head: Option<Bytes>,
    /// The open file, until its last byte has been read.
    file: Option<File>,
    /// The buffer of a read in progress, kept across `Pending`.
    buf: Option<BytesMut>,
    /// File bytes still to send.
    remaining: u64,
    /// The closing boundary; taken when sent.
    tail: Option<Bytes>,
    /// Everything still to send, for the exact `Content-Length`.
    left: u64,
}

impl FileBody {
    /// Opens `path` and frames `len` bytes of it as the form field `image`.
    /// Returns the body and the request's `Content-Type`.
    pub async fn open(path: &Path, len: u64, format: Format) -> io::Result<(FileBody, String)> {
        let file = File::open(path).await?;
        let boundary = boundary();
        let name = path
            .file_name()
            .map(|n| part_file_name(&n.to_string_lossy()))
            .unwrap_or_else(|| "image".to_string());
        let head = Bytes::from(format!(
            "--{boundary}\r\n\
             Content-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n\
             Content-Type: {}\r\n\r\n",
            format.content_type()
        ));
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        let left = head.len() as u64 + len + tail.len() as u64;
        let body = FileBody {
            head: Some(head),
            file: Some(file),
            buf: None,
            remaining: len,
            tail: Some(tail),
            left,
        };
        Ok((body, format!("multipart/form-data; boundary={boundary}")))
    }

    /// The body's length in bytes (its `Content-Length`).
    pub fn len(&self) -> u64 {
        self.left
    }

    /// Whether nothing is left to send.
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    fn sent(&mut self, chunk: Bytes) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.left = self.left.saturating_sub(chunk.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        if let Some(head) = this.head.take() {
            return this.sent(head);
        }
        if let Some(file) = this.file.as_mut() {
            if this.remaining > 0 {
                let want = usize::try_from(this.remaining).map_or(CHUNK, |r| r.min(CHUNK));
                let mut buf = this.buf.take().unwrap_or_else(|| BytesMut::zeroed(want));
                let mut read = ReadBuf::new(&mut buf[..]);
                match Pin::new(file).poll_read(cx, &mut read) {
                    Poll::Pending => {
                        this.buf = Some(buf);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        if n == 0 {
                            return Poll::Ready(Some(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the file shrank while it was being uploaded",
                            ))));
                        }
                        buf.truncate(n);
                        this.remaining -= n as u64;
                        return this.sent(buf.freeze());
                    }
                }
            }
            this.file = None;
        }
        match this.tail.take() {
            Some(tail) => this.sent(tail),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A boundary that no file will contain by chance: 128 random bits, from the
/// standard library's per-process random hash keys (no RNG dependency).
fn boundary() -> String {
    let a = RandomState::new().hash_one(std::process::id());
    let b = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("pixpool-{a:016x}{b:016x}")
}

/// The file name as it may stand between quotes in `Content-Disposition`:
/// quotes, backslashes and control characters become `_` (the server only
/// logs the name anyway).
fn part_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn frames_the_file_exactly() {
        let dir = std::env::temp_dir().join(format!("pixpool-client-mp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("a\"b.jpg");
        // Longer than one chunk, so the body takes several frames.
        let content: Vec<u8> = (0..CHUNK * 2 + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write");

        let (body, content_type) = FileBody::open(&path, content.len() as u64, Format::Jpeg)
            .await
            .expect("open");
        let len = body.len();
        assert_eq!(body.size_hint().exact(), Some(len));
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .expect("boundary")
            .to_string();
        let bytes = body.collect().await.expect("read").to_bytes();
        std::fs::remove_dir_all(&dir).expect("cleanup");

        assert_eq!(bytes.len() as u64, len);
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; \
             filename=\"a_b.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        assert!(bytes.starts_with(head.as_bytes()));
        assert!(bytes.ends_with(tail.as_bytes()));
        assert_eq!(&bytes[head.len()..bytes.len() - tail.len()], &content[..]);
    }
}
