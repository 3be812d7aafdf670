//! Decompression bombs are refused from their headers: fast, and without allocating.
//!
//! This binary counts every allocation through a global allocator and holds a single
//! test, so that nothing else runs while the peak is measured.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::ScratchDir;
use pixpool_imaging::{process, Limits, Preset};

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

/// Far below what any of these images would need decoded (10 to 12.9 GB).
const MAX_EXTRA_BYTES: usize = 16 << 20;

#[test]
fn bombs_are_refused_from_the_header_without_allocating() {
    let corpus = corpus_or_skip!();
    let out = ScratchDir::new("bombs");
    for name in [
        "png-bomb-50000x50000-header.png",
        "png-bomb-50000x50000-full.png",
        "jpeg-65500x65500.jpg",
    ] {
        let input = corpus.join("bad").join(name);
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let started = Instant::now();
        let result = process(
            &input,
            &[Preset::medium()],
            out.path(),
            "job",
            &Limits::default(),
        );
        let elapsed = started.elapsed();
        let extra = PEAK.load(Ordering::Relaxed) - base;

        let err = result.expect_err(name);
        eprintln!("{name}: {err} in {elapsed:?}, peak +{extra} bytes");
        assert!(err.is_input_error(), "{name}: {err:?}");
        assert!(err.is_limit_exceeded(), "{name}: {err:?}");
        assert!(
            elapsed < Duration::from_millis(200),
            "{name}: took {elapsed:?}"
        );
        assert!(extra < MAX_EXTRA_BYTES, "{name}: allocated {extra} bytes");
        assert!(out.entries().is_empty());
    }
}
