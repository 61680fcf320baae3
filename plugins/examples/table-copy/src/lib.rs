//! "Copies" a table in checkpointed batches: the example of a long task that survives being
//! interrupted, continues later where it stopped, and frees what it left behind on cleanup.
//!
//! Payload (JSON):
//! - `rows` (u64, required): rows to copy.
//! - `batch` (u64 >= 1, required): rows per batch; a checkpoint is saved after each batch.
//! - `batches_per_attempt` (u64 >= 1, optional): at most this many batches per attempt.
//! - `batch_cost_ms` (u64, optional): the assumed cost of one batch. A guest without WASI has
//!   no clock, so "near the deadline" is decided by budget: an attempt runs at most
//!   `(deadline_ms - deadline_ms / 5) / batch_cost_ms` batches, keeping a fifth of its time
//!   slice as a margin.
//! - `stall_attempts` (u32, optional, default 0): attempts numbered up to this one copy one
//!   batch and then hang forever (a stuck warehouse query), so that the host must interrupt
//!   them; used to test timeouts, cleanup and resumption from the checkpoint.
//!
//! Every attempt copies at least one batch, so a task always makes progress. When the budget
//! is used up before the last row it returns `continue-later`; after the last row it returns
//! `done({"rows_copied": rows, "checksum": "<16 hex digits>"})`. The checksum folds every row
//! in order, so the output is the same byte for byte whatever the batch size, the budget or
//! the number of interruptions.
//!
//! Checkpoint: `{"next_row": u64, "checksum": u64}`.
//! Context: `query-id` = `copy-<task id>-<attempt>` while an attempt runs; removed when the
//! attempt returns. `cleanup` logs (info) that it frees the query named there.

use handyman_guest::{
    checkpoint, context, export_handler, log, progress, CleanupReason, Failure, Handler, Outcome,
    Task,
};
use serde::{Deserialize, Serialize};

const QUERY_KEY: &str = "query-id";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    rows: u64,
    batch: u64,
    #[serde(default)]
    batches_per_attempt: Option<u64>,
    #[serde(default)]
    batch_cost_ms: Option<u64>,
    #[serde(default)]
    stall_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    next_row: u64,
    checksum: u64,
}

impl Checkpoint {
    /// FNV-1a's offset basis: any fixed non-zero start would do.
    const START: Checkpoint = Checkpoint {
        next_row: 0,
        checksum: 0xcbf2_9ce4_8422_2325,
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Output {
    rows_copied: u64,
    checksum: String,
}

#[derive(Debug, PartialEq, Eq)]
enum AttemptEnd {
    Done(Output),
    ContinueLater,
}

/// The content of row `row`: splitmix64, so rows differ and the checksum catches a skipped
/// or repeated row.
fn row_value(row: u64) -> u64 {
    let mut z = row.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Folds the rows in order (not a sum), so copying a row twice or out of order changes it.
fn fold(checksum: u64, row: u64) -> u64 {
    (checksum.rotate_left(5) ^ row_value(row)).wrapping_mul(0x0000_0100_0000_01b3)
}

impl Payload {
    fn validate(&self) -> Result<(), Failure> {
        if self.batch == 0 {
            return Err(Failure::fatal("table-copy: `batch` must be at least 1"));
        }
        if self.batches_per_attempt == Some(0) {
            return Err(Failure::fatal(
                "table-copy: `batches_per_attempt` must be at least 1",
            ));
        }
        Ok(())
    }

    /// How many batches this attempt may copy before it must hand back control.
    fn budget(&self, deadline_ms: u64) -> u64 {
        let mut budget = self.batches_per_attempt.unwrap_or(u64::MAX);
        if let Some(cost) = self.batch_cost_ms.filter(|&c| c > 0) {
            let usable = deadline_ms - deadline_ms / 5;
            budget = budget.min(usable / cost);
        }
        // Without at least one batch per attempt a short time slice would loop forever.
        budget.max(1)
    }
}

/// One attempt, free of host calls except through `save`, so tests can interrupt it anywhere.
fn run_attempt(
    payload: &Payload,
    resume: Option<Checkpoint>,
    deadline_ms: u64,
    mut save: impl FnMut(&Checkpoint) -> Result<(), Failure>,
) -> Result<AttemptEnd, Failure> {
    payload.validate()?;
    let mut state = resume.unwrap_or(Checkpoint::START);
    if state.next_row > payload.rows {
        return Err(Failure::fatal(format!(
            "table-copy: checkpoint is at row {} but the table has only {} rows",
            state.next_row, payload.rows
        )));
    }
    let budget = payload.budget(deadline_ms);
    let mut batches = 0;
    while state.next_row < payload.rows {
        if batches == budget {
            return Ok(AttemptEnd::ContinueLater);
        }
        let end = state
            .next_row
            .saturating_add(payload.batch)
            .min(payload.rows);
        for row in state.next_row..end {
            state.checksum = fold(state.checksum, row);
        }
        state.next_row = end;
        batches += 1;
        save(&state)?;
    }
    Ok(AttemptEnd::Done(Output {
        rows_copied: payload.rows,
        checksum: format!("{:016x}", state.checksum),
    }))
}

struct TableCopy;

impl Handler for TableCopy {
    fn run(task: Task) -> Result<Outcome, Failure> {
        let payload: Payload = task.payload_json()?;
        let resume: Option<Checkpoint> = task.checkpoint_json()?;
        let query_id = format!("copy-{}-{}", task.id, task.attempt);
        context::set(QUERY_KEY, &query_id);
        log::info(&format!(
            "table-copy: attempt {} opened query {query_id}, resuming at row {} of {}",
            task.attempt,
            resume.map_or(0, |c| c.next_row),
            payload.rows
        ));

        let stall = task.attempt <= payload.stall_attempts;
        let end = run_attempt(&payload, resume, task.deadline_ms, |state| {
            checkpoint::save_json(state)?;
            progress::report_units(state.next_row, payload.rows);
            if stall {
                log::warn(&format!(
                    "table-copy: query {query_id} hangs after row {} (stall_attempts)",
                    state.next_row
                ));
                stall_forever();
            }
            Ok(())
        })?;

        // The attempt ends by returning, so it closes its query itself and leaves nothing for
        // cleanup.
        context::remove(QUERY_KEY);
        match end {
            AttemptEnd::Done(output) => {
                log::info(&format!("table-copy: done, closed query {query_id}"));
                Outcome::done_json(&output)
            }
            AttemptEnd::ContinueLater => {
                log::info(&format!(
                    "table-copy: budget used up, closed query {query_id}, continuing later"
                ));
                Ok(Outcome::ContinueLater)
            }
        }
    }

    fn cleanup(ctx: Vec<(String, String)>, reason: CleanupReason) -> Result<(), String> {
        match ctx.iter().find(|(k, _)| k == QUERY_KEY) {
            Some((_, query_id)) => log::info(&format!(
                "table-copy cleanup after {reason}: freeing query {query_id}"
            )),
            None => log::info(&format!(
                "table-copy cleanup after {reason}: no open query, nothing to free"
            )),
        }
        Ok(())
    }
}

fn stall_forever() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

export_handler!(TableCopy);

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(rows: u64, batch: u64, per_attempt: Option<u64>) -> Payload {
        Payload {
            rows,
            batch,
            batches_per_attempt: per_attempt,
            batch_cost_ms: None,
            stall_attempts: 0,
        }
    }

    /// Runs attempts until done, interrupting after `kill_after_saves` saves in each attempt
    /// when given (as a host timeout would), and returns the output and the attempt count.
    fn drive(p: &Payload, kill_after_saves: Option<usize>) -> (Output, u32) {
        let mut stored: Option<Checkpoint> = None;
        for attempt in 1..10_000 {
            let mut saves = 0;
            let result = run_attempt(p, stored, 1000, |cp| {
                stored = Some(*cp);
                saves += 1;
                match kill_after_saves {
                    Some(k) if saves >= k => Err(Failure::transient("killed")),
                    _ => Ok(()),
                }
            });
            match result {
                Ok(AttemptEnd::Done(out)) => return (out, attempt),
                Ok(AttemptEnd::ContinueLater) | Err(Failure::Transient(_)) => {}
                Err(e) => panic!("unexpected failure {e}"),
            }
        }
        panic!("never finished");
    }

    #[test]
    fn output_is_the_same_whatever_the_interruptions() {
        let (reference, attempts) = drive(&payload(1000, 7, None), None);
        assert_eq!(attempts, 1);
        assert_eq!(reference.rows_copied, 1000);
        for per_attempt in [1, 2, 5, 143] {
            let (out, attempts) = drive(&payload(1000, 7, Some(per_attempt)), None);
            assert_eq!(out, reference);
            assert_eq!(u64::from(attempts), 143_u64.div_ceil(per_attempt));
        }
        for kill in [1, 3] {
            assert_eq!(drive(&payload(1000, 7, None), Some(kill)).0, reference);
        }
        // The batch size only changes where checkpoints fall, not the result.
        assert_eq!(drive(&payload(1000, 1000, None), None).0, reference);
        assert_eq!(drive(&payload(1000, 3, Some(4)), Some(2)).0, reference);
    }

    #[test]
    fn known_checksums() {
        assert_eq!(
            drive(&payload(0, 10, None), None).0.checksum,
            "cbf29ce484222325"
        );
        // Pinned, because the host's tests and the README quote these outputs.
        let out = drive(&payload(1000, 100, Some(3)), None).0;
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            r#"{"rows_copied":1000,"checksum":"4237a6fdcc1956bf"}"#
        );
        assert_eq!(
            drive(&payload(1_000_000, 1000, None), None).0.checksum,
            "297d7b2c65e0be06"
        );
    }

    #[test]
    fn budget_from_deadline() {
        let mut p = payload(100, 1, None);
        p.batch_cost_ms = Some(10);
        assert_eq!(p.budget(1000), 80);
        assert_eq!(p.budget(5), 1);
        p.batches_per_attempt = Some(3);
        assert_eq!(p.budget(1000), 3);
    }

    #[test]
    fn bad_inputs_are_fatal() {
        let err = |p: &Payload, cp| run_attempt(p, cp, 1000, |_| Ok(())).unwrap_err();
        assert!(matches!(
            err(&payload(10, 0, None), None),
            Failure::Fatal(_)
        ));
        assert!(matches!(
            err(&payload(10, 1, Some(0)), None),
            Failure::Fatal(_)
        ));
        let beyond = Checkpoint {
            next_row: 11,
            checksum: 0,
        };
        assert!(matches!(
            err(&payload(10, 1, None), Some(beyond)),
            Failure::Fatal(m) if m.contains("row 11")
        ));
    }
}
