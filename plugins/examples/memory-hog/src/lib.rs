//! Grows its linear memory without end, touching every page so that the memory is really
//! committed, until the host's memory limit stops it (an allocation failure aborts the guest,
//! which the host sees as a trap). The payload is ignored.

use handyman_guest::{export_handler, Failure, Handler, Outcome, Task};
use std::hint::black_box;

/// One WebAssembly page, the unit in which linear memory grows.
const CHUNK: usize = 64 * 1024;

struct MemoryHog;

impl Handler for MemoryHog {
    fn run(_task: Task) -> Result<Outcome, Failure> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(black_box(vec![0xA5; CHUNK]));
            black_box(&hoard);
        }
    }
}

export_handler!(MemoryHog);
