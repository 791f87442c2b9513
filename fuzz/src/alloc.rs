//! A counting global allocator: records the peak live heap, and stops the process with a message
//! naming the target and case before the heap passes [`LIMIT`] (an input that makes the code
//! allocate without bound is a finding, not something to let the machine's OOM killer decide).
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// The most live heap the whole process may hold.
pub const LIMIT: usize = 2 << 30;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// What is running now, for the message on the way out (set by the harness).
pub static TARGET: AtomicUsize = AtomicUsize::new(usize::MAX);
pub static CASE: AtomicU64 = AtomicU64::new(0);
pub static SEED: AtomicU64 = AtomicU64::new(0);
static DYING: AtomicBool = AtomicBool::new(false);

pub struct Counting;

impl Counting {
    fn grow(size: usize) {
        let live = LIVE.fetch_add(size, Relaxed) + size;
        PEAK.fetch_max(live, Relaxed);
        if live > LIMIT && !DYING.swap(true, Relaxed) {
            // Formatting integers into the unbuffered stderr allocates nothing.
            let t = crate::targets::NAMES.get(TARGET.load(Relaxed)).copied().unwrap_or("?");
            let _ = writeln!(
                std::io::stderr(),
                "adp-fuzz: allocating {size} bytes takes the live heap to {live}, above the bound of {LIMIT}: \
                 target {t}, case {} (reproduce: adp-fuzz --seed {} --target {t} --case {0})",
                CASE.load(Relaxed),
                SEED.load(Relaxed),
            );
            std::process::abort();
        }
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        Self::grow(l.size());
        System.alloc(l)
    }
    // Forwarded so that zeroed buffers stay lazily mapped, as with the system allocator.
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        Self::grow(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() {
            Self::grow(new - l.size());
        } else {
            LIVE.fetch_sub(l.size() - new, Relaxed);
        }
        System.realloc(p, l, new)
    }
}

/// Starts a new peak measurement from the heap live now.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

pub fn peak() -> usize {
    PEAK.load(Relaxed)
}
