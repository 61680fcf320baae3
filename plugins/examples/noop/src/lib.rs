//! Returns `done` with an empty output at once. The benchmarks use it to measure the host's
//! per-attempt overhead, so it must do nothing else.

use handyman_guest::{export_handler, Failure, Handler, Outcome, Task};

struct Noop;

impl Handler for Noop {
    fn run(_task: Task) -> Result<Outcome, Failure> {
        Ok(Outcome::done_empty())
    }
}

export_handler!(Noop);
