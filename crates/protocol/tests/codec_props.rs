//! Property tests of THE codec: whatever bytes arrive, decoding returns a
//! value or an error — never a panic, never an allocation past the limit.

use pixpool_model::JobId;
use pixpool_protocol::frame::{self, FrameError, HEADER_LEN, MAX_FRAME_LEN};
use pixpool_protocol::{JobSpec, ToFront, ToWorker};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(b'a'..=b'z', 1..12).prop_map(|v| String::from_utf8(v).expect("ascii"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = frame::decode::<ToWorker>(&bytes);
        let _ = frame::decode::<ToFront>(&bytes);
    }

    #[test]
    fn every_length_prefix_is_checked_before_allocation(len in any::<u32>()) {
        let verdict = frame::check_len(len.to_be_bytes());
        prop_assert_eq!(verdict.is_ok(), (len as usize) <= MAX_FRAME_LEN);
        if let Err(e) = verdict {
            prop_assert!(matches!(e, FrameError::TooLarge { .. }), "wrong error kind");
        }
    }

    #[test]
    fn submits_round_trip_and_any_cut_is_incomplete(req in any::<u64>(), presets in prop::collection::vec(name(), 0..6)) {
        let msg = ToWorker::Submit { req, job: JobSpec { id: JobId::generate(), presets } };
        let bytes = frame::encode(&msg).expect("encode");
        let (back, used) = frame::decode::<ToWorker>(&bytes).expect("decode").expect("whole");
        prop_assert_eq!(back, msg);
        prop_assert_eq!(used, bytes.len());
        for cut in 0..bytes.len() {
            prop_assert!(frame::decode::<ToWorker>(&bytes[..cut]).expect("prefix").is_none());
        }
    }

    #[test]
    fn corrupted_payloads_are_errors_or_valid_messages(
        presets in prop::collection::vec(name(), 1..4),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let msg = ToWorker::Submit { req: 1, job: JobSpec { id: JobId::generate(), presets } };
        let mut bytes = frame::encode(&msg).expect("encode");
        let payload = bytes.len() - HEADER_LEN;
        for (at, x) in flips {
            bytes[HEADER_LEN + at % payload] ^= x | 1;
        }
        // Ok (a different but valid message) or Err: both fine, panics are not.
        let _ = frame::decode::<ToWorker>(&bytes);
    }
}
