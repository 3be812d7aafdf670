//! The table's memory: a file mapped shared by every process that opens it, laid out
//! as a header (magic, slot count) and then slots of two 64-bit words, read and
//! written only as atomics. The one place this crate uses `unsafe`.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use crate::TableError;

/// Identifies a table of this layout ("pxpl rl1").
const MAGIC: u64 = 0x7078_706c_2072_6c31;
/// Header words: the magic and the slot count.
const HEADER_WORDS: usize = 2;

/// A mapped table.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: *mut u8,
    len: usize,
    slots: usize,
}

// SAFETY: the mapping is only ever read and written through `AtomicU64`s (which
// processes and threads may share) and unmapped once, in `Drop`.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` gives out `&AtomicU64` only.
unsafe impl Sync for Mapping {}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TableError + '_ {
    move |source| TableError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn len_of(slots: usize) -> usize {
    (HEADER_WORDS + 2 * slots) * 8
}

impl Mapping {
    /// Writes an empty table of `slots` (a power of two) at `path`, replacing any.
    pub(crate) fn create(path: &Path, slots: usize) -> Result<(), TableError> {
        if !slots.is_power_of_two() {
            return Err(TableError::Layout(path.display().to_string()));
        }
        let mut bytes = vec![0u8; len_of(slots)];
        bytes[..8].copy_from_slice(&MAGIC.to_ne_bytes());
        bytes[8..16].copy_from_slice(&(slots as u64).to_ne_bytes());
        // A fresh file renamed into place: a front mapping the old one keeps it
        // until it restarts, and nobody sees a half-written one.
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, &bytes).map_err(io(path))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    /// Maps the table at `path`, checking its header and size.
    pub(crate) fn open(path: &Path) -> Result<Mapping, TableError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        let size = file.metadata().map_err(io(path))?.len();
        let layout = || TableError::Layout(path.display().to_string());
        let size = usize::try_from(size).map_err(|_| layout())?;
        if size < HEADER_WORDS * 8 {
            return Err(layout());
        }
        // SAFETY: a shared read-write mapping of an open file of `size` bytes; the
        // result is checked before use and the file may be closed afterwards.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io(path)(std::io::Error::last_os_error()));
        }
        let mut mapping = Mapping {
            base: base.cast(),
            len: size,
            slots: 0,
        };
        let magic = mapping.word(0).load(std::sync::atomic::Ordering::Acquire);
        let slots = mapping.word(1).load(std::sync::atomic::Ordering::Acquire);
        let slots = usize::try_from(slots).map_err(|_| layout())?;
        if magic != MAGIC || !slots.is_power_of_two() || len_of(slots) != size {
            return Err(layout());
        }
        mapping.slots = slots;
        Ok(mapping)
    }

    /// The number of slots.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// Slot `i`'s key and arrival-time words.
    pub(crate) fn slot(&self, i: usize) -> (&AtomicU64, &AtomicU64) {
        let first = HEADER_WORDS + 2 * (i % self.slots.max(1));
        (self.word(first), self.word(first + 1))
    }

    /// The `n`th 64-bit word of the mapping.
    fn word(&self, n: usize) -> &AtomicU64 {
        assert!((n + 1) * 8 <= self.len, "word {n} is outside the table");
        // SAFETY: in bounds (asserted); 8-aligned, since the mapping starts on a page
        // and every word is at a multiple of 8; only ever accessed atomically; the
        // mapping lives as long as `self`.
        unsafe { &*self.base.add(n * 8).cast::<AtomicU64>() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are those `mmap` returned; no reference into the
        // mapping outlives `self`.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes the timespec it is given; the clock exists on
    // every Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}
