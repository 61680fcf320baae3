//! Recurses without end, until the guest runs out of stack; the host sees a trap.
//!
//! A Rust guest has two stacks, and the payload picks which one overflows:
//! - default (any payload but the one below): frames hold only wasm locals, so wasmtime's own
//!   limit on the wasm call stack stops it (trap "call stack exhausted").
//! - `{"shadow": true}`: each frame keeps a buffer in linear memory, so the shadow stack
//!   (1 MiB, placed below the data) runs past address 0 first (trap "out of bounds memory
//!   access"), which is how most real Rust recursion bugs end.

use handyman_guest::{export_handler, Failure, Handler, Outcome, Task};
use serde::Deserialize;
use std::hint::black_box;

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    shadow: bool,
}

// The recursion has no base case on purpose. black_box on the result keeps LLVM from turning
// the recursion into a loop with an accumulator.
#[allow(unconditional_recursion)]
#[inline(never)]
fn descend_native(depth: u64) -> u64 {
    black_box(descend_native(black_box(depth + 1))) ^ depth
}

// Taking the buffer's address (black_box(&frame)) forces it into linear memory; at 4 KiB a
// frame the 1 MiB shadow stack is gone after ~256 calls, long before wasmtime's limit.
#[allow(unconditional_recursion)]
#[inline(never)]
fn descend_shadow(depth: u64) -> u64 {
    let frame = [depth; 512];
    black_box(&frame);
    black_box(descend_shadow(black_box(depth + 1))) ^ frame[(depth % 512) as usize]
}

struct StackOverflow;

impl Handler for StackOverflow {
    fn run(task: Task) -> Result<Outcome, Failure> {
        let shadow = task
            .payload_json::<Payload>()
            .map(|p| p.shadow)
            .unwrap_or(false);
        let depth = if shadow {
            descend_shadow(0)
        } else {
            descend_native(0)
        };
        // Unreachable in practice; returning keeps the function honest for the type checker.
        Ok(Outcome::done(depth.to_le_bytes().to_vec()))
    }
}

export_handler!(StackOverflow);
