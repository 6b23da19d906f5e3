//! How every p2pfs process keeps the memory it frees: chunk-sized buffers
//! (1 MiB blocks, sealed chunks, frames) are allocated and freed thousands
//! of times a second on the data path, and glibc's default policy hands
//! each of them back to the kernel.
//!
//! glibc serves an allocation of 128 KiB or more with its own `mmap` (the
//! threshold rises with use, up to 32 MiB) and gives the top of a heap back
//! once 128 KiB of it is free. Every 1 MiB buffer then costs 256 page
//! faults and 1 MiB of page zeroing on first touch, and on a virtual
//! machine that reports freed pages to its host (virtio-balloon free page
//! reporting, as on the machines we measure on) a host fault per page as
//! well. `perf` of a peer storing a 1 GiB write showed `clear_page_erms`
//! at 19 % of its CPU time; with [`retain_freed_memory`] it disappears
//! and the peers' CPU time per GiB fell by about half (numbers in issue 10's
//! closing note and docs/PERFORMANCE.md).

/// Largest allocation still served from malloc's heaps rather than its
/// own `mmap` (32 MiB: glibc's upper bound for the threshold, more than
/// any chunk, frame or write buffer).
pub const MMAP_THRESHOLD_BYTES: usize = 32 << 20;

/// Free memory a malloc heap keeps at its top before giving it back to the
/// kernel (64 MiB per arena: a window of in-flight chunk buffers).
pub const TRIM_THRESHOLD_BYTES: usize = 64 << 20;

/// Makes malloc keep freed chunk-sized buffers for reuse instead of
/// returning them to the kernel: sets glibc's `M_MMAP_THRESHOLD` to
/// [`MMAP_THRESHOLD_BYTES`] and `M_TRIM_THRESHOLD` to
/// [`TRIM_THRESHOLD_BYTES`] (`mallopt(3)`). Call it first thing in `main`,
/// before threads start. Settings already given in the environment
/// (`GLIBC_TUNABLES`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`)
/// are overridden. A no-op on other C libraries.
///
/// Returns whether both settings were taken (glibc's `mallopt` returns 0
/// for a value out of range; the defaults then stay, which is only slower).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tuning parameters; it is
        // safe to call at any time, and both values are in glibc's range.
        unsafe {
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES as libc::c_int);
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES as libc::c_int);
            mmap == 1 && trim == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_both_settings() {
        assert!(retain_freed_memory(), "mallopt refused a threshold");
    }
}
