//! glibc's allocator policy for the command line. By default glibc hands every block above its
//! (dynamic) mmap threshold to the kernel on free and trims the heap's top above 128 KiB, so the
//! next image's or layer's tensors of the same sizes come back as fresh pages the kernel must
//! fault in and zero: about a fifth of candle's `visual` time (clear_page, page faults, unmaps in
//! `perf`), and visible in libtorch's too. Keeping blocks up to 32 MiB (glibc's largest mmap
//! threshold) in the heap, and up to 256 MiB free at its top, lets them be reused (`adp bench
//! --rows visual`: candle 86–114 → 75–87 ms, tch 137 → 92 ms per photo on a loaded 2-core machine,
//! +20–50 MiB peak). The environment still decides where it sets `MALLOC_*_THRESHOLD_`.
const MMAP_THRESHOLD: i32 = 32 << 20;
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Applies the policy above; returns whether glibc took both settings (false elsewhere).
pub fn keep_freed_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut ok = true;
        for (var, param, value) in [
            ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ] {
            if std::env::var_os(var).is_none() {
                // SAFETY: mallopt only changes glibc's tunables; it is called at start-up.
                ok &= unsafe { libc::mallopt(param, value) } == 1;
            }
        }
        ok
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_thresholds() {
        assert!(super::keep_freed_blocks());
    }
}
