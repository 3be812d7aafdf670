//! Property tests of the header probe and the decoder: arbitrary and mutated
//! inputs give a result or a typed error — never a panic, never a huge
//! allocation (the limits hold whatever the header claims).

use std::path::PathBuf;

use pixpool_imaging::{probe, process, Format, Limits, Preset};
use proptest::prelude::*;

fn test_photo(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../test-data")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mutate(mut bytes: Vec<u8>, flips: &[(usize, u8)]) -> Vec<u8> {
    let n = bytes.len();
    for (at, x) in flips {
        bytes[at % n] ^= x | 1;
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn sniff_and_probe_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = Format::sniff(&bytes);
        let _ = probe(&bytes);
    }

    #[test]
    fn probe_survives_mutated_real_headers(
        which in 0usize..4,
        flips in prop::collection::vec((0usize..4096, any::<u8>()), 1..12),
    ) {
        let name = ["01-storm-orient6.jpg", "04-fallenleaf.jpg", "06-grey-grayscale.jpg", "19-aitzgorri.webp"][which];
        let head: Vec<u8> = test_photo(name).into_iter().take(64 * 1024).collect();
        let head = mutate(head, &flips);
        if let Ok(p) = probe(&head) {
            // Whatever a header claims, the limits decide before any decode.
            let _ = Limits::default().check_dimensions(p.width, p.height);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn decoding_mutated_files_fails_cleanly_or_succeeds(
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..16),
    ) {
        let bytes = mutate(test_photo("06-grey-grayscale.jpg"), &flips);
        let thumb: Preset = "thumb:200x200:cover".parse().expect("preset");
        let limits = Limits { max_alloc_bytes: 256 << 20, ..Limits::default() };
        match process(&bytes, &[thumb], &limits) {
            Ok(p) => prop_assert!(p.outputs[0].width <= 200 && p.outputs[0].height <= 200),
            Err(e) => prop_assert!(e.is_input_error(), "a corrupt input is the input's fault: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A damaged ICC profile (the P3 file's APP2 segment holds one in its first 700
    /// bytes) is ignored or applied, never a panic: the colour engine parses input.
    #[test]
    fn damaged_icc_profiles_never_panic(
        flips in prop::collection::vec((20usize..700, any::<u8>()), 1..8),
    ) {
        let bytes = mutate(test_photo("04-fallenleaf-p3.jpg"), &flips);
        match process(&bytes, &[Preset::medium()], &Limits::default()) {
            Ok(p) => prop_assert!(p.outputs[0].width <= 400),
            Err(e) => prop_assert!(e.is_input_error(), "a corrupt input is the input's fault: {e}"),
        }
    }
}
