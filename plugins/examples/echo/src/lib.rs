//! Returns its payload, byte for byte, as its output.

use handyman_guest::{export_handler, Failure, Handler, Outcome, Task};

struct Echo;

impl Handler for Echo {
    fn run(task: Task) -> Result<Outcome, Failure> {
        Ok(Outcome::Done(task.payload))
    }
}

export_handler!(Echo);
