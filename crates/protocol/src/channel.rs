//! Typed halves of a framed connection over any async byte stream.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::frame::{self, FrameError, HEADER_LEN};

/// Reads frames of type `T`.
#[derive(Debug)]
pub struct FrameReader<R, T> {
    /// Buffered so that a frame costs one syscall in the common case.
    inner: BufReader<R>,
    /// Reused payload buffer, never larger than [`frame::MAX_FRAME_LEN`].
    buf: Vec<u8>,
    _msg: PhantomData<fn() -> T>,
}

impl<R: AsyncRead + Unpin, T: DeserializeOwned> FrameReader<R, T> {
    /// Wraps a read half.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner: BufReader::new(inner),
            buf: Vec::new(),
            _msg: PhantomData,
        }
    }

    /// The next message; `Ok(None)` when the peer closed cleanly between frames.
    pub async fn read(&mut self) -> Result<Option<T>, FrameError> {
        let mut prefix = [0u8; HEADER_LEN];
        let first = self.inner.read(&mut prefix[..1]).await?;
        if first == 0 {
            return Ok(None);
        }
        read_exact(&mut self.inner, &mut prefix[1..]).await?;
        let len = frame::check_len(prefix)?;
        self.buf.resize(len, 0);
        read_exact(&mut self.inner, &mut self.buf).await?;
        frame::decode_payload(&self.buf).map(Some)
    }
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// Writes frames of type `T`.
#[derive(Debug)]
pub struct FrameWriter<W, T> {
    /// The write half; each frame is written whole and flushed.
    inner: W,
    _msg: PhantomData<fn(T)>,
}

impl<W: AsyncWrite + Unpin, T: Serialize> FrameWriter<W, T> {
    /// Wraps a write half.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            _msg: PhantomData,
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &T) -> Result<(), FrameError> {
        let bytes = frame::encode(msg)?;
        self.inner.write_all(&bytes).await?;
        self.inner.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Hello, Role, ToWorker};

    #[tokio::test]
    async fn reads_what_was_written_and_reports_truncation() {
        let (a, b) = tokio::io::duplex(1024);
        let mut w = FrameWriter::<_, ToWorker>::new(a);
        let mut r = FrameReader::<_, ToWorker>::new(b);
        let hello = ToWorker::Hello(Hello::new(Role::Front, 1));
        w.send(&hello).await.expect("send");
        assert_eq!(r.read().await.expect("read"), Some(hello));
        drop(w);
        assert_eq!(r.read().await.expect("clean eof"), None);

        let (mut a, b) = tokio::io::duplex(1024);
        let mut r = FrameReader::<_, ToWorker>::new(b);
        let bytes = frame::encode(&ToWorker::Hello(Hello::new(Role::Front, 1))).expect("enc");
        a.write_all(&bytes[..bytes.len() - 1]).await.expect("write");
        drop(a);
        assert!(matches!(r.read().await, Err(FrameError::Truncated)));
    }

    #[tokio::test]
    async fn oversized_prefix_on_the_wire_is_refused() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::<_, ToWorker>::new(b);
        a.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        assert!(matches!(r.read().await, Err(FrameError::TooLarge { .. })));
    }
}
