//! THE codec: `[u32 big-endian length][bincode 2 payload]`.
//!
//! The length is checked against [`MAX_FRAME_LEN`] before a byte of the payload
//! is read or allocated, and bincode itself runs with the same limit, so a
//! hostile or corrupt peer can cost at most one bounded buffer. Errors close
//! the connection; they never panic.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest payload accepted or sent. Messages carry ids and short names,
/// never pixels; 64 KiB is generous.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// The payload is not a valid message.
    #[error("malformed frame payload")]
    Malformed(#[source] bincode::error::DecodeError),
    /// The payload decoded but left bytes over.
    #[error("frame payload has {0} trailing bytes")]
    TrailingBytes(usize),
    /// A message could not be encoded (too large, or not representable).
    #[error("could not encode message")]
    Encode(#[source] bincode::error::EncodeError),
    /// The underlying stream failed.
    #[error("i/o error on the channel")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one whole frame, prefix included.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(msg, &mut out, config()).map_err(FrameError::Encode)?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge { len })?;
    out[..HEADER_LEN].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Validates a length prefix; the only gate before the payload buffer exists.
pub fn check_len(prefix: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// Decodes a payload (without its prefix), which must be consumed exactly.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, used) =
        bincode::serde::decode_from_slice(payload, config()).map_err(FrameError::Malformed)?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes(payload.len() - used));
    }
    Ok(msg)
}

/// Decodes the first frame of `buf`: `Ok(None)` when `buf` holds only part of
/// a frame (read more), `Ok(Some((msg, consumed)))` otherwise.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let prefix: [u8; HEADER_LEN] = prefix.try_into().expect("slice has HEADER_LEN bytes");
    let len = check_len(prefix)?;
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Hello, JobSpec, Role, ToWorker};
    use pixpool_model::JobId;

    fn submit() -> ToWorker {
        ToWorker::Submit {
            req: 7,
            job: JobSpec {
                id: JobId::generate(),
                presets: vec!["medium".into()],
            },
        }
    }

    #[test]
    fn round_trip() {
        for msg in [submit(), ToWorker::Hello(Hello::new(Role::Front, 3))] {
            let bytes = encode(&msg).expect("encode");
            let (back, used) = decode::<ToWorker>(&bytes).expect("decode").expect("whole");
            assert_eq!(back, msg);
            assert_eq!(used, bytes.len());
        }
    }

    #[test]
    fn worker_messages_round_trip_including_events() {
        use crate::message::{EventKind, JobEvent, ToFront};
        use pixpool_model::{JobState, OutputRecord};
        let id = JobId::generate();
        let output = OutputRecord {
            preset: "thumb".into(),
            width: 200,
            height: 200,
            bytes: 1234,
            content_type: "image/jpeg".into(),
            path: format!("processed/{id}-thumb.jpg"),
            url: format!("/images/{id}/thumb"),
            etag: "00ff".into(),
        };
        for kind in [
            EventKind::Processing { attempt: 1 },
            EventKind::Output {
                attempt: 1,
                index: 0,
                output,
            },
            EventKind::Finished {
                attempt: 2,
                state: JobState::Failed,
            },
        ] {
            let msg = ToFront::Event(JobEvent {
                id: id.clone(),
                kind,
            });
            let bytes = encode(&msg).expect("encode");
            let (back, _) = decode::<ToFront>(&bytes).expect("decode").expect("whole");
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_reading_the_payload() {
        // Only the 4-byte prefix is present: if the decoder tried to allocate or
        // wait for 4 GiB it would return Ok(None) instead of an error.
        let buf = u32::MAX.to_be_bytes();
        match decode::<ToWorker>(&buf) {
            Err(FrameError::TooLarge { len }) => assert_eq!(len, u32::MAX as usize),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let just_over = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(
            check_len(just_over),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            check_len((MAX_FRAME_LEN as u32).to_be_bytes()).expect("max is fine"),
            MAX_FRAME_LEN
        );
    }

    #[test]
    fn truncated_frames_ask_for_more_and_never_panic() {
        let bytes = encode(&submit()).expect("encode");
        for cut in 0..bytes.len() {
            assert!(
                decode::<ToWorker>(&bytes[..cut])
                    .expect("a prefix is not an error")
                    .is_none(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn garbage_payloads_are_errors_not_panics() {
        let bytes = encode(&submit()).expect("encode");
        // Flip every byte of the payload in turn; each result must be a clean
        // Ok or Err, and a string length claim must not allocate past the limit.
        for i in HEADER_LEN..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = decode::<ToWorker>(&b);
        }
        // A payload claiming a huge string inside a small frame.
        let mut evil = vec![0u8; HEADER_LEN];
        evil.extend_from_slice(&[1, 7, 253, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        let len = (evil.len() - HEADER_LEN) as u32;
        evil[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        assert!(decode::<ToWorker>(&evil).is_err());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&submit()).expect("encode");
        bytes.push(0);
        let len = (bytes.len() - HEADER_LEN) as u32;
        bytes[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            decode::<ToWorker>(&bytes),
            Err(FrameError::TrailingBytes(1))
        ));
    }
}
