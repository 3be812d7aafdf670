//! glibc malloc tuning for a worker, which allocates and frees tens of megabytes
//! per job.
//!
//! glibc gives every thread that touches the heap (the blocking pool, the JPEG
//! decoder's per-component threads) an arena that keeps the high-water mark of its
//! jobs; with one arena a worker's RSS stays at its largest single job, no slower.
//! Why not trim after each job or keep freed memory instead: `crates/bench/PERF.md`.

/// Applies the setting above; call once, before the first thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
