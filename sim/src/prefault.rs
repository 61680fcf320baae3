//! A global allocator wrapper that has a second thread fault in the pages of large blocks.
//!
//! A run reserves its task tables up front (hundreds of MB for a day of work). The kernel
//! then faults each 4 KiB page in on first write, zeroing it, and in a VM every such fault
//! costs microseconds: for `hevo-day` that was 15% of the run, all on the simulating thread.
//! `MADV_POPULATE_WRITE` on another core does the same work in bulk, ahead of the writes, and
//! changes no byte the program can see, so it cannot race with the owner of the block.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// Blocks below this size are left to demand faulting: the handoff would cost more.
const MIN_BYTES: usize = 16 << 20;
/// Requests beyond this many waiting ones are dropped (they are only a speed-up).
const QUEUE_LEN: usize = 8;

struct Pending {
    ranges: [(usize, usize); QUEUE_LEN],
    len: usize,
}

// `Mutex` and `Condvar` are futex-based and allocation-free, so the allocator can use them.
static PENDING: Mutex<Pending> = Mutex::new(Pending {
    ranges: [(0, 0); QUEUE_LEN],
    len: 0,
});
static WAKE: Condvar = Condvar::new();
static STARTED: AtomicBool = AtomicBool::new(false);

/// Wraps an allocator; see the module documentation. Inert until [`start`] is called.
pub struct Prefaulting<A>(pub A);

unsafe impl<A: GlobalAlloc> GlobalAlloc for Prefaulting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let block = unsafe { self.0.alloc(layout) };
        if layout.size() >= MIN_BYTES && !block.is_null() {
            request(block as usize, layout.size());
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(block, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { self.0.realloc(block, layout, new_size) };
        // The old bytes were just copied (and so faulted in) by this thread: only the new
        // tail is left to fault.
        if new_size >= MIN_BYTES && new_size > layout.size() && !moved.is_null() {
            request(moved as usize + layout.size(), new_size - layout.size());
        }
        moved
    }
}

/// Starts the thread that serves the requests. Call once, before the big reservations.
pub fn start() {
    if !cfg!(target_os = "linux") || STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("prefault".into())
        .spawn(serve);
    if spawned.is_err() {
        STARTED.store(false, Ordering::Release);
    }
}

fn request(start: usize, len: usize) {
    if !STARTED.load(Ordering::Acquire) {
        return;
    }
    let Ok(mut pending) = PENDING.lock() else {
        return;
    };
    if pending.len < QUEUE_LEN {
        let slot = pending.len;
        pending.ranges[slot] = (start, len);
        pending.len += 1;
        WAKE.notify_one();
    }
}

fn serve() {
    loop {
        let (start, len) = {
            let Ok(mut pending) = PENDING.lock() else {
                return;
            };
            while pending.len == 0 {
                pending = match WAKE.wait(pending) {
                    Ok(guard) => guard,
                    Err(_) => return,
                };
            }
            pending.len -= 1;
            let slot = pending.len;
            pending.ranges[slot]
        };
        if !populate(start, len) {
            // An old kernel without MADV_POPULATE_WRITE: demand faulting it is.
            return;
        }
    }
}

#[cfg(target_os = "linux")]
fn populate(start: usize, len: usize) -> bool {
    const PAGE: usize = 4096;
    let first = start.next_multiple_of(PAGE);
    let end = (start + len) & !(PAGE - 1);
    // In slices, so that the writer, which starts at the front too, soon finds pages ready.
    const SLICE: usize = 2 << 20;
    let mut at = first;
    while at < end {
        let n = SLICE.min(end - at);
        // SAFETY: populating changes no contents; a range freed meanwhile only fails.
        let rc = unsafe { libc::madvise(at as *mut libc::c_void, n, libc::MADV_POPULATE_WRITE) };
        if rc != 0 {
            return std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL);
        }
        at += n;
    }
    true
}

#[cfg(not(target_os = "linux"))]
fn populate(_start: usize, _len: usize) -> bool {
    false
}
