//! The server's address and one keep-alive HTTP/1.1 connection to it.
//!
//! Each task of the pipeline owns one [`Connection`] and sends its requests
//! one after the other on it; a connection the server closed (idle timeout,
//! rolling restart) is replaced by a new one when the next request goes out.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{header, HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tracing::debug;

use crate::Token;

/// The body of every request: streamed from a file, or empty.
pub type RequestBody = BoxBody<Bytes, std::io::Error>;

/// Largest JSON answer read (a job record is a few KiB).
const MAX_JSON_BYTES: usize = 1024 * 1024;

/// How long connecting may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed exchange with the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TCP connection could not be opened.
    #[error("could not connect to {addr}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/1.1 handshake failed.
    #[error("HTTP handshake with {addr} failed")]
    Handshake {
        /// `host:port`.
        addr: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// Sending the request or reading the response head failed.
    #[error("request failed")]
    Send(#[source] hyper::Error),
    /// Reading the response body failed, or it was over 1 MiB.
    #[error("could not read the response body")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The response body is not the JSON expected.
    #[error("the response is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// The server answered with an unexpected status.
    #[error("unexpected answer {status}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The body, as JSON when it was JSON (problem+json), else `null`.
        body: Value,
    },
    /// The server did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A pixpool server's base URL: `http://host[:port][/prefix]`.
#[derive(Debug, Clone)]
pub struct ServerUrl {
    /// Host name or address, without the brackets of an IPv6 literal.
    host: String,
    /// Port (80 when the URL names none).
    port: u16,
    /// The `Host` header: the URL's authority.
    authority: String,
    /// Path prefix before `/upload` etc., without a trailing `/` (often empty).
    prefix: String,
}

/// Why a `--server` URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a URL at all.
    #[error("invalid server URL {url:?}")]
    Invalid {
        /// The URL given.
        url: String,
        /// Why.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// Not `http://` (TLS is left to a reverse proxy in front of pixpool).
    #[error("server URL {0:?} must start with http:// (https is not supported)")]
    Scheme(String),
    /// No host.
    #[error("server URL {0:?} has no host")]
    NoHost(String),
    /// A query string or fragment, which would be lost.
    #[error("server URL {0:?} must not have a query")]
    Query(String),
}

impl ServerUrl {
    /// Parses `http://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<ServerUrl, UrlError> {
        let uri: Uri = url.parse().map_err(|source| UrlError::Invalid {
            url: url.to_string(),
            source,
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(UrlError::Scheme(url.to_string()));
        }
        if uri.query().is_some() {
            return Err(UrlError::Query(url.to_string()));
        }
        let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
            return Err(UrlError::NoHost(url.to_string()));
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(url.to_string()));
        }
        Ok(ServerUrl {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: uri.port_u16().unwrap_or(80),
            authority: authority.to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// `host:port`, as connected to.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The request target for `path_and_query` (which starts with `/`).
    fn target(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.prefix)
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.prefix)
    }
}

/// One HTTP/1.1 connection, opened on first use and reopened when the server
/// has closed it.
#[derive(Debug)]
pub struct Connection {
    /// Where to connect.
    url: ServerUrl,
    /// The open connection, if any; requests go out on it one at a time.
    sender: Option<SendRequest<RequestBody>>,
}

impl Connection {
    /// A connection to `url`; nothing is opened yet.
    pub fn new(url: ServerUrl) -> Connection {
        Connection { url, sender: None }
    }

    /// The server this connection talks to.
    pub fn url(&self) -> &ServerUrl {
        &self.url
    }

    /// A request for `path_and_query` under the server's prefix, with `Host` set.
    pub fn request(&self, method: Method, path_and_query: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(self.url.target(path_and_query))
            .header(header::HOST, &self.url.authority)
    }

    /// Sends `req`, reusing the open connection when it is still usable and
    /// opening a new one otherwise.
    pub async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ServerError> {
        let reusable = match self.sender.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        let mut sender = match self.sender.take() {
            Some(sender) if reusable => sender,
            _ => self.connect().await?,
        };
        let resp = sender.send_request(req).await.map_err(ServerError::Send)?;
        self.sender = Some(sender);
        Ok(resp)
    }

    /// `GET path` (with the bearer token, if any) expecting 200 and JSON;
    /// any other status is [`ServerError::Status`].
    pub async fn get_json(
        &mut self,
        path_and_query: &str,
        token: Option<&Token>,
    ) -> Result<Value, ServerError> {
        let mut req = self
            .request(Method::GET, path_and_query)
            .header(header::ACCEPT, "application/json");
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, token.bearer());
        }
        let req = req.body(empty()).map_err(|e| ServerError::Body(e.into()))?;
        let resp = self.send(req).await?;
        let (status, _, body) = read_json(resp).await?;
        if status == StatusCode::OK {
            Ok(body)
        } else {
            Err(ServerError::Status { status, body })
        }
    }

    async fn connect(&mut self) -> Result<SendRequest<RequestBody>, ServerError> {
        let addr = self.url.addr();
        let connect = TcpStream::connect((self.url.host.as_str(), self.url.port));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ServerError::Connect { addr, source }),
            Err(_) => {
                return Err(ServerError::Connect {
                    addr,
                    source: std::io::ErrorKind::TimedOut.into(),
                })
            }
        };
        // Small requests (long-polls) should not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ServerError::Handshake {
                addr: addr.clone(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(cause = %e, "connection closed");
            }
        });
        debug!(addr, "connected");
        Ok(sender)
    }
}

/// An empty request body.
pub fn empty() -> RequestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Reads a response whole (at most 1 MiB) as JSON; a body that
/// is empty or not JSON reads as `null` unless the status is a success.
pub async fn read_json(
    resp: Response<Incoming>,
) -> Result<(StatusCode, HeaderMap, Value), ServerError> {
    let (parts, body) = resp.into_parts();
    let bytes = Limited::new(body, MAX_JSON_BYTES)
        .collect()
        .await
        .map_err(ServerError::Body)?
        .to_bytes();
    let value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(e) if parts.status.is_success() => return Err(ServerError::Json(e)),
        Err(_) if bytes.is_empty() => Value::Null,
        Err(_) => Value::String(String::from_utf8_lossy(&bytes).chars().take(300).collect()),
    };
    Ok((parts.status, parts.headers, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        let u = ServerUrl::parse("http://127.0.0.1:3000").expect("plain");
        assert_eq!(u.addr(), "127.0.0.1:3000");
        assert_eq!(u.target("/upload"), "/upload");
        assert_eq!(u.to_string(), "http://127.0.0.1:3000");

        let u = ServerUrl::parse("http://images.example/pixpool/").expect("prefix");
        assert_eq!(u.addr(), "images.example:80");
        assert_eq!(u.target("/upload"), "/pixpool/upload");

        let u = ServerUrl::parse("http://[::1]:8080").expect("ipv6");
        assert_eq!(u.addr(), "[::1]:8080");
        assert_eq!(u.authority, "[::1]:8080");
    }

    #[test]
    fn refuses_other_urls() {
        assert!(matches!(
            ServerUrl::parse("https://x"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            ServerUrl::parse("127.0.0.1:3000"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            ServerUrl::parse("http://x/?a=b"),
            Err(UrlError::Query(_))
        ));
        assert!(ServerUrl::parse("not a url").is_err());
    }
}
