//! Loops forever without calling the host: only epoch interruption or fuel can stop it.
//! The payload is ignored.

use handyman_guest::{export_handler, Failure, Handler, Outcome, Task};
use std::hint::black_box;

struct Spin;

impl Handler for Spin {
    fn run(_task: Task) -> Result<Outcome, Failure> {
        let mut n: u64 = 0;
        loop {
            // black_box keeps the optimiser from proving the loop has no effect.
            n = black_box(n.wrapping_add(1));
        }
    }
}

export_handler!(Spin);
