//! The one place atrium calls into the C library itself.
//!
//! Compiling a large configuration (10,000 routes) parses every document into trees that
//! are dropped once the route table is built. glibc keeps most of that freed memory in its
//! arenas, so the process would stay at the parse's peak (about 130 MB at 10,000 routes)
//! while the configuration itself holds a fifth of it. [`release_free_memory`] hands the
//! free pages back.

/// Gives the allocator's free memory back to the operating system (glibc's
/// `malloc_trim(0)`), so that the resident size after a large transient allocation is what
/// stays allocated. Takes a few milliseconds after a big compile; call it off the request
/// path. Does nothing with other C libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `malloc_trim` takes a padding size and returns a flag; it touches no memory of
    // the caller and takes each arena's lock while it trims, so it is safe to call from any
    // thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn freed_memory_can_be_released_at_any_time() {
        let big: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 4096]).collect();
        let sum: usize = big.iter().map(|v| usize::from(v[0])).sum();
        drop(big);
        super::release_free_memory();
        // Allocation still works afterwards, and what was kept is intact.
        let kept = vec![7u8; 1 << 20];
        super::release_free_memory();
        assert_eq!((kept.iter().map(|&b| usize::from(b)).sum::<usize>(), sum > 0), (7 << 20, true));
    }
}
