//! A minimal HTTP/1.1 client over hyper: one keep-alive connection per [`Conn`], and
//! the `multipart/form-data` body of an upload.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

/// The multipart boundary of every upload. [`crate::corpus::Corpus::load`] checks
/// that no photo contains it.
pub const BOUNDARY: &str = "pixpool-bench-b0undary-5e81c2f7a9d4";

/// One keep-alive HTTP/1.1 connection; requests on it go one after another.
#[derive(Debug)]
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

/// A response with its body collected.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the body is not the expected JSON: {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    /// A header's value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The start of the body, for error messages.
    pub fn body_snippet(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned()
    }
}

impl Conn {
    /// Connects to `addr` (`TCP_NODELAY`: small requests must not wait for delayed ACKs).
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("could not connect to {addr}"))?;
        stream
            .set_nodelay(true)
            .context("could not set TCP_NODELAY")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {addr} failed"))?;
        // The connection's I/O runs on its own task until either side closes it.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, addr })
    }

    /// The server this connection talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `req` and collects the whole response.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<Resp> {
        self.sender
            .ready()
            .await
            .context("the connection was closed")?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .context("the request failed")?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .context("reading the response body failed")?
            .to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Resp> {
        let req = Request::get(path)
            .header(HOST, self.addr.to_string())
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("invalid request path {path:?}"))?;
        self.send(req).await
    }
}

/// Idle keep-alive connections to one server, shared by tasks that each need one for
/// a while (the long-polls): taken when needed, opened when none is idle, given back
/// when the request is done. It grows to the number of requests in flight at once.
#[derive(Debug, Clone)]
pub struct ConnPool {
    addr: SocketAddr,
    idle: Arc<Mutex<Vec<Conn>>>,
}

impl ConnPool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr) -> ConnPool {
        ConnPool {
            addr,
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// An idle connection, or a new one.
    pub async fn take(&self) -> anyhow::Result<Conn> {
        if let Some(conn) = self.idle.lock().await.pop() {
            return Ok(conn);
        }
        Conn::open(self.addr).await
    }

    /// Gives a connection whose last exchange completed back for reuse.
    pub async fn give_back(&self, conn: Conn) {
        self.idle.lock().await.push(conn);
    }
}

/// The file part of an upload.
#[derive(Debug, Clone, Copy)]
pub struct FilePart<'a> {
    /// Form field name (`image` for both servers).
    pub field: &'a str,
    /// `filename` parameter.
    pub file_name: &'a str,
    /// The part's declared `Content-Type`.
    pub content_type: &'a str,
    /// The file's bytes.
    pub data: &'a [u8],
    /// Appended right after `data`, inside the same part.
    pub trailer: &'a [u8],
}

/// A `multipart/form-data` body (RFC 7578) with one file part, delimited by `boundary`.
/// Quotes and line breaks in names are replaced so they cannot break the header.
pub fn multipart_body(boundary: &str, part: &FilePart<'_>) -> Vec<u8> {
    let clean = |s: &str| s.replace(['"', '\r', '\n', '\\'], "_");
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
        clean(part.field),
        clean(part.file_name),
        clean(part.content_type),
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let mut body =
        Vec::with_capacity(head.len() + part.data.len() + part.trailer.len() + tail.len());
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(part.data);
    body.extend_from_slice(part.trailer);
    body.extend_from_slice(tail.as_bytes());
    body
}

/// `POST path` with a multipart `body` built by [`multipart_body`] with [`BOUNDARY`].
pub fn upload_request(
    addr: SocketAddr,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    Request::post(path)
        .header(HOST, addr.to_string())
        .header(
            CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Full::new(body))
        .with_context(|| format!("invalid upload path {path:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_body_is_well_formed() {
        let part = FilePart {
            field: "image",
            file_name: "a\"b.jpg",
            content_type: "image/jpeg",
            data: b"\xff\xd8JPEG\xff\xd9",
            trailer: b"\nTAG\n",
        };
        let body = multipart_body("BND", &part);
        let expected: &[u8] = b"--BND\r\n\
Content-Disposition: form-data; name=\"image\"; filename=\"a_b.jpg\"\r\n\
Content-Type: image/jpeg\r\n\
\r\n\
\xff\xd8JPEG\xff\xd9\nTAG\n\r\n\
--BND--\r\n";
        assert_eq!(body, expected);
    }

    #[test]
    fn upload_request_declares_the_boundary() {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("address");
        let req = upload_request(addr, "/upload?presets=medium", Bytes::from_static(b"x"))
            .expect("request");
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(ct, format!("multipart/form-data; boundary={BOUNDARY}"));
        assert_eq!(req.uri().query(), Some("presets=medium"));
    }
}
