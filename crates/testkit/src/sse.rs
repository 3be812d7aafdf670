//! A streamed `text/event-stream` response, read event by event.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::Value;

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }
}

/// A streamed `text/event-stream` response, parsed event by event.
#[derive(Debug)]
pub struct SseStream {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    ended: bool,
}

impl SseStream {
    /// Reads `resp` as an event stream.
    pub fn new(resp: hyper::Response<hyper::body::Incoming>) -> SseStream {
        let (parts, body) = resp.into_parts();
        SseStream {
            status: parts.status,
            headers: parts.headers,
            body,
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next event; `Ok(None)` when the server ended the stream; `Err` when
    /// nothing complete arrived within `timeout` (or the body failed).
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<SseEvent>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Normalise line ends, then take every complete block.
            if self.buf.contains(&b'\r') {
                let s = String::from_utf8_lossy(&self.buf)
                    .replace("\r\n", "\n")
                    .replace('\r', "\n");
                self.buf = s.into_bytes();
            }
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(ev) = parse_sse_block(&String::from_utf8_lossy(&block)) {
                    return Ok(Some(ev));
                }
            }
            if self.ended {
                return Ok(None);
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .map_err(|_| {
                    format!(
                        "no complete event within {timeout:?}; pending: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )
                })?;
            match frame {
                None => self.ended = true,
                Some(Err(e)) => return Err(format!("event stream failed: {e}")),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Every event until the server ends the stream (panics after `timeout`).
    pub async fn all(&mut self, timeout: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Ok(Some(ev)) => out.push(ev),
                Ok(None) => return out,
                Err(e) => panic!("{e}; events so far: {out:#?}"),
            }
        }
    }
}

fn parse_sse_block(block: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data, mut any) = (None, None, Vec::new(), false);
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        any = true;
        match field {
            "id" => {
                id = Some(
                    value
                        .parse::<u64>()
                        .unwrap_or_else(|_| panic!("event id {value:?} is not a number")),
                )
            }
            "event" => event = Some(value.to_string()),
            "data" => data.push(value.to_string()),
            _ => {}
        }
    }
    any.then(|| SseEvent {
        id,
        event: event.unwrap_or_else(|| "message".into()),
        data: data.join("\n"),
    })
}
