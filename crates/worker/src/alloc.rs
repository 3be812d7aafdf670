//! glibc malloc tuning for a process that allocates and frees tens of megabytes
//! per job.
//!
//! Left alone, glibc gives every thread that touches the heap an arena of its
//! own, up to eight per core: here the blocking-pool thread and the JPEG
//! decoder's short-lived per-component threads. Free memory inside an arena goes
//! back to the kernel only from its top, so each arena keeps the high-water mark
//! of the jobs that ran on it, and a worker's resident set grows towards the sum
//! of them (260 to 390 MiB after 100 corpus photos on two cores).
//!
//! One arena keeps it at the largest single job (75 to 90 MiB), and measured no
//! slower: the decoder threads allocate a few large planes, not in hot loops.
//! Measured alternatives (`pixpool-bench --no-peer`, alternated, medians of 3 to
//! 4 runs, two workers):
//!
//! | setting | images/s | worker RSS |
//! | --- | ---: | ---: |
//! | glibc defaults | 27.5 | 260–390 MiB |
//! | **one arena** | **28.5** | **75–90 MiB** |
//! | two arenas | 28.8 | 131–138 MiB |
//! | one arena + `malloc_trim` after each job | 23.6 | 72–75 MiB |
//! | two arenas + fixed 1 MiB mmap threshold + trim | 26.2 | 67–77 MiB |
//!
//! Returning memory after every job (trim, or mapping every large buffer) costs
//! 8 to 18 % of the throughput in page faults, for 10 MiB less. The opposite,
//! keeping freed memory (64 MiB mmap and 256 MiB trim thresholds), measured no
//! faster than one arena alone (native-codecs build, 200 uploads, 3 alternated
//! runs each: 48.8 / 44.6 / 41.1 against 48.0 / 45.2 / 41.6 images/s). Measured
//! again later (256 MiB mmap and 512 MiB trim thresholds, 64 MiB top pad): page
//! faults over a 100-photo run fall from 180 k to 62 k, the zeroing moves from the
//! kernel to calloc, and the throughput stays within the machine's noise (+1.6 %,
//! means of 5 alternated runs of 200 uploads); an idle worker would then keep its
//! high-water mark for good, so it is still not done. glibc caps the mmap threshold
//! at 32 MiB, so the progressive decoder's larger coefficient buffers were still
//! mapped afresh each job; with mmap off altogether (`glibc.malloc.mmap_max=0`,
//! 512 MiB trim threshold, 16 MiB top pad) the workers' CPU per image fell by 1 to
//! 3 ms (4 of 4 alternated runs of 200 uploads, native-codecs build) but images/s
//! stayed within the noise (0.97 to 1.10×): the memory is zeroed by calloc instead
//! of by the kernel, and the fronts' share is unchanged.

/// Applies the setting above; call once, before the first thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
