//! Fails transiently while `attempt <= failures`, then succeeds: exercises retries, backoff
//! and the attempt counter.
//!
//! Payload: `{"failures": N, "retry_after_ms": M}`; N defaults to 1, M is optional.
//! Attempt k <= N: `transient("flaky: planned failure k of N")`, or, when M is given, the
//! outcome `retry-after(M)` (the handler's own choice of backoff).
//! Attempt k > N: `done({"succeeded_on_attempt": k, "planned_failures": N})`.

use handyman_guest::{export_handler, Failure, Handler, Outcome, Task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default = "one")]
    failures: u32,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

#[derive(Serialize)]
struct Output {
    succeeded_on_attempt: u32,
    planned_failures: u32,
}

struct Flaky;

impl Handler for Flaky {
    fn run(task: Task) -> Result<Outcome, Failure> {
        let p: Payload = task.payload_json()?;
        if task.attempt <= p.failures {
            if let Some(ms) = p.retry_after_ms {
                return Ok(Outcome::RetryAfter(ms));
            }
            return Err(Failure::transient(format!(
                "flaky: planned failure {} of {}",
                task.attempt, p.failures
            )));
        }
        Outcome::done_json(&Output {
            succeeded_on_attempt: task.attempt,
            planned_failures: p.failures,
        })
    }
}

export_handler!(Flaky);
