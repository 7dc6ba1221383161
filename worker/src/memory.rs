//! Giving freed heap back to the kernel after the worker's two bursts of
//! short-lived allocation: opening a graph (the whole commit log is read and
//! parsed, and Lance reads every log fragment's metadata) and a maintenance
//! run (compaction rewrites tables). glibc keeps freed pages in its arenas
//! and only trims the top of each heap by itself, so without this the
//! resident size of a worker stays at the high-water mark of its last open,
//! which grows with the graph's history: a worker on a 20,000-commit graph
//! sat at 118 MiB idle against 75 MiB on a 100-commit one
//! (docs/reliability.md, the soak's per-life peaks).

/// Returns the free pages of every malloc arena to the kernel (`malloc_trim`).
/// Cheap next to what precedes it (a few milliseconds), and a no-op where
/// the allocator is not glibc's.
pub fn return_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory the allocator owns.
    unsafe {
        libc::malloc_trim(0);
    }
}
