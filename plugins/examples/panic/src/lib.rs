//! Panics, to show that the SDK's panic hook reports the message through the `log` import
//! (level error) before the guest traps.
//!
//! Payload: `{"message": "..."}` panics with that message; any other payload (empty, not
//! JSON, no `message` field) panics with "panic handler: deliberate panic".

use handyman_guest::{export_handler, Failure, Handler, Outcome, Task};
use serde::Deserialize;

const DEFAULT_MESSAGE: &str = "panic handler: deliberate panic";

#[derive(Deserialize)]
struct Payload {
    message: String,
}

struct Panic;

impl Handler for Panic {
    fn run(task: Task) -> Result<Outcome, Failure> {
        // Decoding errors are ignored on purpose: this handler must panic whatever it is given.
        let message = task
            .payload_json::<Payload>()
            .map(|p| p.message)
            .unwrap_or_else(|_| DEFAULT_MESSAGE.to_owned());
        panic!("{message}");
    }
}

export_handler!(Panic);
