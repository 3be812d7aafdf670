//! Decompression bombs are refused fast and without allocating in proportion to them:
//! those that declare their size in the header (`bad/` of the corpus), and those that
//! hide outside it (issue 10): an ICC profile that inflates to a gigabyte, a GIF whose
//! first frame dwarfs its logical screen.
//!
//! This binary counts every allocation through a global allocator; the tests take turns
//! (`SERIAL`) so that each peak is its own.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::process_reporting;
use pixpool_imaging::limits::MAX_ICC_PROFILE_BYTES;
use pixpool_imaging::{process, Format, ImagingError, Limits, Preset};

/// The system allocator, keeping track of live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the counters are plain atomics and never touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees on `layout` are passed on as they are.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measuring test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// What refusing one of these may cost: a few times the ICC cap, far below what any of
/// them would need decoded (the header bombs: 10 to 12.9 GB).
const MAX_EXTRA_BYTES: usize = 4 * MAX_ICC_PROFILE_BYTES;

#[test]
fn header_bombs_are_refused_from_the_header_without_allocating() {
    let corpus = corpus_or_skip!();
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for name in [
        "png-bomb-50000x50000-header.png",
        "png-bomb-50000x50000-full.png",
        "jpeg-65500x65500.jpg",
    ] {
        let bytes = std::fs::read(corpus.join("bad").join(name)).expect("read bomb");
        let (err, elapsed, extra) = refuse(name, &bytes);
        assert!(err.is_input_error(), "{name}: {err:?}");
        assert!(err.is_limit_exceeded(), "{name}: {err:?}");
        assert!(
            elapsed < Duration::from_millis(200),
            "{name}: took {elapsed:?}"
        );
        assert!(extra < MAX_EXTRA_BYTES, "{name}: allocated {extra} bytes");
    }
}

/// Runs `process` on `bytes` and returns its error, the time taken and the peak of
/// bytes allocated on top of what was live before.
fn refuse(name: &str, bytes: &[u8]) -> (ImagingError, Duration, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let (result, reported) = process_reporting(bytes, &[Preset::medium()], &Limits::default());
    let elapsed = started.elapsed();
    let extra = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let err = match result {
        Ok(done) => panic!("{name}: processed ({done:?}) after allocating {extra} bytes"),
        Err(err) => err,
    };
    eprintln!("{name}: {err} in {elapsed:?}, peak +{extra} bytes");
    assert!(reported.is_empty(), "{name}: outputs handed over");
    (err, elapsed, extra)
}

/// A zlib stream of `mib` MiB of zeros, made without compressing them all: a compressed
/// MiB that follows other zeros (back-references only, byte-aligned by a sync flush) is
/// repeated, then a final empty block and the Adler-32 are appended.
fn zlib_zeros(mib: usize) -> Vec<u8> {
    assert!(mib >= 2);
    let zeros = vec![0u8; 1 << 20];
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&zeros).expect("compress");
    enc.flush().expect("sync flush");
    let first = enc.get_ref().len();
    enc.write_all(&zeros).expect("compress");
    enc.flush().expect("sync flush");
    let mut out = enc.get_ref().clone();
    let unit = out[first..].to_vec();
    for _ in 2..mib {
        out.extend_from_slice(&unit);
    }
    // Final fixed-Huffman block holding only end-of-block.
    out.extend_from_slice(&[0x03, 0x00]);
    let n = (mib as u64) << 20;
    let adler = ((n % 65_521) << 16) | 1;
    out.extend_from_slice(&(adler as u32).to_be_bytes());
    out
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&u32::try_from(data.len()).expect("chunk").to_be_bytes());
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    png.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

/// A valid 2×2 grey PNG with an `iCCP` chunk holding `profile` (a zlib stream).
fn png_with_iccp(profile: &[u8]) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &[0, 0, 0, 2, 0, 0, 0, 2, 8, 0, 0, 0, 0]);
    let mut iccp = b"bomb\0\0".to_vec();
    iccp.extend_from_slice(profile);
    chunk(&mut png, b"iCCP", &iccp);
    let mut idat = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    idat.write_all(&[0, 10, 200, 0, 200, 10]).expect("pixels");
    chunk(&mut png, b"IDAT", &idat.finish().expect("zlib"));
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn the_zero_stream_inflates_to_what_it_says() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let stream = zlib_zeros(5);
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::ZlibDecoder::new(&stream[..]),
        &mut inflated,
    )
    .expect("a valid zlib stream (Adler-32 included)");
    assert_eq!(inflated.len(), 5 << 20);
    assert!(inflated.iter().all(|&b| b == 0));
}

#[test]
fn issue10_png_whose_icc_profile_inflates_to_a_gigabyte_is_refused_without_inflating_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Just under the 1 GiB allocation budget, so that only the ICC cap stops it.
    let png = png_with_iccp(&zlib_zeros(1023));
    assert!(
        png.len() < 2 << 20,
        "the bomb is small: {} bytes",
        png.len()
    );
    let (err, elapsed, extra) = refuse("iccp-bomb.png", &png);
    assert!(err.is_input_error(), "{err:?}");
    assert!(err.is_limit_exceeded(), "{err:?}");
    assert!(err.to_string().contains("ICC profile"), "{err}");
    assert!(extra < MAX_EXTRA_BYTES, "allocated {extra} bytes");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");

    // A profile just over the cap is refused as well, one under it is not (a zero
    // profile does not parse, so the pixels are taken as sRGB).
    let over = png_with_iccp(&zlib_zeros(MAX_ICC_PROFILE_BYTES / (1 << 20) + 1));
    let (err, _, _) = refuse("iccp-over.png", &over);
    assert!(err.is_limit_exceeded(), "{err:?}");
    process(
        &png_with_iccp(&zlib_zeros(2)),
        &[Preset::medium()],
        &Limits::default(),
    )
    .expect("a 2 MiB profile is within the cap");
}

/// A GIF87a with a 1×1 logical screen and one 16000×16000 frame whose pixel data is cut
/// short: the decoder would allocate the frame (1 GB) before finding that out.
fn gif_with_huge_frame() -> Vec<u8> {
    let mut g = b"GIF87a".to_vec();
    g.extend_from_slice(&[1, 0, 1, 0, 0x80, 0, 0]); // 1×1 screen, 2-colour table
    g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    g.push(0x2C);
    g.extend_from_slice(&[0, 0, 0, 0]); // left, top
    g.extend_from_slice(&16_000u16.to_le_bytes());
    g.extend_from_slice(&16_000u16.to_le_bytes());
    g.push(0); // no local table
    g.extend_from_slice(&[2, 2, 0x4C, 0x01, 0]); // LZW: a few codes, then the end
    g.push(0x3B);
    g
}

#[test]
fn issue10_gif_whose_first_frame_dwarfs_its_screen_is_refused_on_the_frame_size() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let gif = gif_with_huge_frame();
    // The header check at the door (the front's) sees the frame, not just the screen.
    let probed = pixpool_imaging::probe(&gif).expect("probe");
    assert_eq!(probed.format, Format::Gif);
    let err = Limits::default()
        .check_dimensions(probed.width, probed.height)
        .expect_err("the probe reports the frame's size");
    assert!(err.is_limit_exceeded(), "{err:?}");
    // So does the decode path (the worker's).
    let (err, elapsed, extra) = refuse("huge-frame.gif", &gif);
    assert!(err.is_input_error(), "{err:?}");
    assert!(err.is_limit_exceeded(), "{err:?}");
    assert!(err.to_string().contains("16000×16000"), "{err}");
    assert!(extra < MAX_EXTRA_BYTES, "allocated {extra} bytes");
    assert!(elapsed < Duration::from_millis(500), "took {elapsed:?}");
}
