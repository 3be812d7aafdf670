//! A minimal HTTP/1.1 client over hyper: one keep-alive connection per [`Conn`], and
//! the `multipart/form-data` body of an upload. The tests and the bench both use it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::Mutex;

/// The multipart boundary of every upload made here (the bench checks that no
/// photo of its corpus contains it).
pub const BOUNDARY: &str = "pixpool-test-boundary-7d3f9a";

/// Why an exchange failed, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The TCP connection could not be made.
    #[error("could not connect to {addr}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP handshake, the request or reading the response failed.
    #[error("HTTP exchange failed")]
    Http(#[from] hyper::Error),
    /// The request could not be built (an invalid path or header).
    #[error("invalid request")]
    Request(#[from] hyper::http::Error),
}

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
    /// The body as a JSON value; panics (with the body) when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body_snippet()))
    }

    /// The body as `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
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
    pub async fn open(addr: SocketAddr) -> Result<Conn, HttpError> {
        let connect = |source| HttpError::Connect { addr, source };
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(connect)?;
        stream.set_nodelay(true).map_err(connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
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
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Resp, HttpError> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Resp, HttpError> {
        let req = Request::get(path)
            .header(HOST, self.addr.to_string())
            .body(Full::new(Bytes::new()))?;
        self.send(req).await
    }

    /// Any method, with extra headers; body collected.
    pub async fn request(
        &mut self,
        method: hyper::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, HttpError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::new(Bytes::new()))?).await
    }

    /// POSTs `bytes` as the `image` file of a multipart form to `/upload`.
    pub async fn upload(&mut self, file_name: &str, bytes: &[u8]) -> Result<Resp, HttpError> {
        self.upload_to("/upload", &[("image", Some(file_name), bytes)])
            .await
    }

    /// A multipart POST to `path` (e.g. `/upload?presets=thumb`).
    pub async fn upload_to(
        &mut self,
        path: &str,
        parts: &[(&str, Option<&str>, &[u8])],
    ) -> Result<Resp, HttpError> {
        let req = multipart_request(self.addr, path, parts);
        self.send(req).await
    }

    /// Which front this connection landed on (`/health` → `slot`).
    pub async fn front_slot(&mut self) -> u64 {
        let health = self.get("/health").await.expect("health");
        assert_eq!(health.status, StatusCode::OK);
        health.json()["slot"]
            .as_u64()
            .expect("health names the front slot")
    }

    /// Opens `GET path` as an event stream (optionally with `Last-Event-ID`).
    pub async fn events(
        &mut self,
        path: &str,
        last_event_id: Option<u64>,
    ) -> Result<crate::sse::SseStream, HttpError> {
        let mut req = Request::get(path)
            .header(HOST, self.addr.to_string())
            .header("accept", "text/event-stream");
        if let Some(n) = last_event_id {
            req = req.header("last-event-id", n.to_string());
        }
        self.sender.ready().await?;
        let resp = self
            .sender
            .send_request(req.body(Full::new(Bytes::new()))?)
            .await?;
        Ok(crate::sse::SseStream::new(resp))
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
    pub async fn take(&self) -> Result<Conn, HttpError> {
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
) -> Result<Request<Full<Bytes>>, HttpError> {
    Ok(Request::post(path)
        .header(HOST, addr.to_string())
        .header(
            CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Full::new(body))?)
}

/// A multipart/form-data POST; each part is (field, file name, content). A part
/// with a file name is sent as `application/octet-stream`.
pub fn multipart_request(
    addr: SocketAddr,
    path: &str,
    parts: &[(&str, Option<&str>, &[u8])],
) -> Request<Full<Bytes>> {
    let mut body = Vec::new();
    for (field, file_name, content) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file_name {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{field}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    upload_request(addr, path, Bytes::from(body)).expect("a valid upload request")
}

/// One upload on a fresh connection.
pub async fn upload(addr: SocketAddr, file_name: &str, bytes: &[u8]) -> Resp {
    Conn::open(addr)
        .await
        .expect("connect")
        .upload(file_name, bytes)
        .await
        .expect("upload request")
}

/// Opens keep-alive connections until one lands on each of `fronts` fronts
/// (the kernel spreads connections over the SO_REUSEPORT sockets); returns
/// them indexed by front slot.
pub async fn conn_per_front(addr: SocketAddr, fronts: u32) -> Vec<Conn> {
    let mut by_slot: Vec<Option<Conn>> = (0..fronts).map(|_| None).collect();
    for _ in 0..200 {
        let mut conn = Conn::open(addr).await.expect("connect");
        let slot = conn.front_slot().await as usize;
        if by_slot[slot].is_none() {
            by_slot[slot] = Some(conn);
        }
        if by_slot.iter().all(Option::is_some) {
            return by_slot.into_iter().flatten().collect();
        }
    }
    panic!("200 connections did not reach every one of {fronts} fronts");
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
