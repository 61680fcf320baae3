//! Durable storage: the journal, the task table and the checkpoints.
//!
//! The driver writes everything one batch of commands produced in one [`Storage::commit`]:
//! the journal events the core drained, the rows of the tasks they touched, and the
//! checkpoints and contexts that finished attempts left. A submit is acknowledged only after
//! that commit returned. [`SqliteStorage`] is the embedded default; the trait is what a
//! PostgreSQL backend would implement.

use std::path::{Path, PathBuf};

use handyman_core::{Event, TaskId};
use rusqlite::{params, Connection, OptionalExtension};

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("journal batch starting at event {first_seq} cannot be decoded: {source}")]
    Decode {
        first_seq: u64,
        source: crate::journal_codec::DecodeError,
    },
    #[error("cannot encode journal events: {0}")]
    Encode(serde_json::Error),
    #[error("journal replay stopped: {0}")]
    Replay(String),
}

/// One task's row in the task table, as of a commit.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRow {
    pub id: TaskId,
    pub kind: String,
    pub group: String,
    pub state: String,
    pub attempt: u32,
    pub updated_at: u64,
    pub reason: Option<String>,
    /// Set when the task succeeded.
    pub output: Option<Vec<u8>>,
    /// The last progress its handler reported.
    pub progress: Option<f32>,
}

/// What a task carries from one attempt to the next.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Carry {
    pub checkpoint: Option<Vec<u8>>,
    /// The context key-values, as a JSON object.
    pub context: Option<String>,
}

/// How an attempt ended, as the host saw it (beyond what the core journals): the runtime's
/// own words, and what became of the cleanup it called.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRow {
    pub id: TaskId,
    pub attempt: u32,
    pub outcome: String,
    pub cleanup: Option<String>,
    pub elapsed_us: u64,
}

/// Everything one driver step writes, in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Event>,
    pub tasks: Vec<TaskRow>,
    pub carries: Vec<(TaskId, Carry)>,
    /// Carries of tasks that reached a terminal state: no attempt will need them.
    pub drop_carries: Vec<TaskId>,
    pub attempts: Vec<AttemptRow>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.tasks.is_empty()
            && self.carries.is_empty()
            && self.drop_carries.is_empty()
            && self.attempts.is_empty()
    }
}

/// Durable storage of one host.
pub trait Storage: Send {
    /// A setting stored at first start (the core config, the clock's epoch).
    fn meta(&mut self, key: &str) -> Result<Option<String>, StorageError>;
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StorageError>;
    /// Streams every journal event, in order, into `sink`.
    fn load_journal(
        &mut self,
        sink: &mut dyn FnMut(Event) -> Result<(), String>,
    ) -> Result<u64, StorageError>;
    /// Writes batches, in order, atomically and durably: one transaction for all of them.
    fn commit_all(&mut self, batches: &[Batch]) -> Result<(), StorageError>;
    /// Writes one batch atomically and durably.
    fn commit(&mut self, batch: &Batch) -> Result<(), StorageError> {
        self.commit_all(std::slice::from_ref(batch))
    }
    fn task_row(&mut self, id: TaskId) -> Result<Option<TaskRow>, StorageError>;
    fn carry(&mut self, id: TaskId) -> Result<Option<Carry>, StorageError>;
    /// Ids of the tasks that carry a checkpoint or context.
    fn carried_ids(&mut self) -> Result<Vec<TaskId>, StorageError>;
    fn attempts(&mut self, id: TaskId) -> Result<Vec<AttemptRow>, StorageError>;
}

/// SQLite in WAL mode with `synchronous = FULL`: a commit is on disk when it returns.
///
/// Schema:
/// - `meta(key TEXT PRIMARY KEY, value TEXT)`
/// - `journal(first_seq INTEGER PRIMARY KEY, last_seq INTEGER, events BLOB)`: one row per
///   commit (group commit writes one row, not one per event or per step), the events in the
///   compact binary format of [`crate::journal_codec`]; rows written as a JSON array by
///   earlier versions are still read.
/// - `tasks(id INTEGER PRIMARY KEY, kind, grp, state, attempt, updated_at, reason, output
///   BLOB, progress REAL)`: what the journal does not hold (outputs, the last progress), and
///   the outcome of each task that ended. The state of a waiting, queued or running task is
///   in the journal (and the core), not here.
/// - `carries(task_id INTEGER PRIMARY KEY, checkpoint BLOB, context TEXT)`: what an
///   unfinished task hands its next attempt.
/// - `attempts(task_id, attempt, outcome, cleanup, elapsed_us, PRIMARY KEY(task_id,
///   attempt))`: the host's record of each attempt's end and its cleanup.
pub struct SqliteStorage {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    events BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    grp TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    reason TEXT,
    output BLOB,
    progress REAL
);
CREATE TABLE IF NOT EXISTS carries (
    task_id INTEGER PRIMARY KEY,
    checkpoint BLOB,
    context TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    cleanup TEXT,
    elapsed_us INTEGER NOT NULL,
    PRIMARY KEY (task_id, attempt)
);
";

impl SqliteStorage {
    /// Opens (or creates) `DIR/handyman.db`.
    pub fn open(dir: &Path) -> Result<SqliteStorage, StorageError> {
        let path = dir.join("handyman.db");
        let open_err = |source| StorageError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "cache_size", -65536)
            .map_err(open_err)?;
        // Each checkpoint walks the whole page cache; checkpointing every 40 MB of WAL
        // rather than every 4 MB made it a tenth of the cost under load.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        // The multi-row INSERTs use a statement per chunk size: room for them and the rest.
        conn.set_prepared_statement_cache_capacity(64);
        Ok(SqliteStorage { conn })
    }
}

/// Encodes a batch of events as the journal stores them.
pub fn encode_events(events: &[Event]) -> Result<Vec<u8>, StorageError> {
    crate::journal_codec::encode(events).map_err(StorageError::Encode)
}

/// The events of all `batches`, in order, as one journal row.
fn write_journal(tx: &rusqlite::Transaction<'_>, batches: &[Batch]) -> Result<(), StorageError> {
    let mut events = batches.iter().flat_map(|b| b.events.iter());
    let Some(first) = events.next() else {
        return Ok(());
    };
    let last = events.next_back().unwrap_or(first);
    let mut blob =
        Vec::with_capacity(1 + 16 * batches.iter().map(|b| b.events.len()).sum::<usize>());
    blob.push(crate::journal_codec::FORMAT_1);
    let mut prev = (0, 0);
    for b in batches {
        crate::journal_codec::encode_into(&mut blob, &mut prev, &b.events)
            .map_err(StorageError::Encode)?;
    }
    tx.prepare_cached("INSERT INTO journal(first_seq, last_seq, events) VALUES (?1, ?2, ?3)")?
        .execute(params![first.seq as i64, last.seq as i64, blob])?;
    Ok(())
}

/// Most rows one INSERT statement writes: a statement per chunk of rows costs the writer
/// thread less than a statement per row.
const ROWS_PER_INSERT: usize = 32;

/// `HEAD VALUES (?1, …), (…) TAIL` for `rows` rows of `cols` columns.
fn values_sql(head: &str, cols: usize, rows: usize, tail: &str) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(head.len() + tail.len() + 8 + rows * (cols * 5 + 3));
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ",(" });
        for c in 0..cols {
            let _ = write!(
                sql,
                "{}?{}",
                if c == 0 { "" } else { "," },
                r * cols + c + 1
            );
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(tail);
    sql
}

/// A multi-row INSERT: its SQL for 1, 2, 4, … `ROWS_PER_INSERT` rows, written once.
struct MultiInsert {
    head: &'static str,
    cols: usize,
    tail: &'static str,
    sql: std::sync::OnceLock<Vec<String>>,
}

impl MultiInsert {
    const fn new(head: &'static str, cols: usize, tail: &'static str) -> MultiInsert {
        MultiInsert {
            head,
            cols,
            tail,
            sql: std::sync::OnceLock::new(),
        }
    }

    /// The SQL for `rows` rows, a power of two up to `ROWS_PER_INSERT`.
    fn sql(&self, rows: usize) -> &str {
        let all = self.sql.get_or_init(|| {
            (0..=ROWS_PER_INSERT.ilog2())
                .map(|k| values_sql(self.head, self.cols, 1 << k, self.tail))
                .collect()
        });
        &all[rows.ilog2() as usize]
    }
}

/// Inserts `rows` in order, in statements of `ROWS_PER_INSERT` rows and then of halving
/// sizes (so that a handful of cached statements serve every count). `bind` binds one row's
/// `cols` values from the parameter index it is given.
fn insert_rows<'r, T: 'r>(
    tx: &rusqlite::Transaction<'_>,
    insert: &MultiInsert,
    rows: impl ExactSizeIterator<Item = &'r T>,
    bind: impl Fn(&mut rusqlite::Statement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> Result<(), StorageError> {
    let mut left = rows.len();
    let mut rows = rows;
    while left > 0 {
        let n = if left >= ROWS_PER_INSERT {
            ROWS_PER_INSERT
        } else {
            1 << left.ilog2()
        };
        let mut stmt = tx.prepare_cached(insert.sql(n))?;
        for (i, row) in rows.by_ref().take(n).enumerate() {
            bind(&mut stmt, i * insert.cols + 1, row)?;
        }
        stmt.raw_execute()?;
        left -= n;
    }
    Ok(())
}

static TASKS_INSERT: MultiInsert = MultiInsert::new(
    "INSERT INTO tasks(id, kind, grp, state, attempt, updated_at, reason, output, progress)",
    9,
    "ON CONFLICT(id) DO UPDATE SET state = excluded.state, attempt = excluded.attempt,
       updated_at = excluded.updated_at, reason = excluded.reason,
       output = COALESCE(excluded.output, tasks.output),
       progress = COALESCE(excluded.progress, tasks.progress)",
);

static ATTEMPTS_INSERT: MultiInsert = MultiInsert::new(
    "INSERT OR REPLACE INTO attempts(task_id, attempt, outcome, cleanup, elapsed_us)",
    5,
    "",
);

/// The rows of all `batches` but their events, in order, inside the caller's transaction.
fn write_rows(tx: &rusqlite::Transaction<'_>, batches: &[Batch]) -> Result<(), StorageError> {
    // A task's later row overwrites its earlier one, within a statement as across them.
    let tasks: Vec<&TaskRow> = batches.iter().flat_map(|b| b.tasks.iter()).collect();
    insert_rows(tx, &TASKS_INSERT, tasks.into_iter(), |stmt, i, t| {
        stmt.raw_bind_parameter(i, t.id as i64)?;
        stmt.raw_bind_parameter(i + 1, &t.kind)?;
        stmt.raw_bind_parameter(i + 2, &t.group)?;
        stmt.raw_bind_parameter(i + 3, &t.state)?;
        stmt.raw_bind_parameter(i + 4, t.attempt)?;
        stmt.raw_bind_parameter(i + 5, t.updated_at as i64)?;
        stmt.raw_bind_parameter(i + 6, &t.reason)?;
        stmt.raw_bind_parameter(i + 7, &t.output)?;
        stmt.raw_bind_parameter(i + 8, t.progress.map(f64::from))
    })?;
    // Rare (checkpoints and contexts): a statement per row, batch by batch.
    for batch in batches {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO carries(task_id, checkpoint, context) VALUES (?1, ?2, ?3)
             ON CONFLICT(task_id) DO UPDATE SET
               checkpoint = COALESCE(excluded.checkpoint, carries.checkpoint),
               context = excluded.context",
        )?;
        for (id, carry) in &batch.carries {
            stmt.execute(params![*id as i64, carry.checkpoint, carry.context])?;
        }
        let mut del = tx.prepare_cached("DELETE FROM carries WHERE task_id = ?1")?;
        for id in &batch.drop_carries {
            del.execute([*id as i64])?;
        }
    }
    let attempts: Vec<&AttemptRow> = batches.iter().flat_map(|b| b.attempts.iter()).collect();
    insert_rows(tx, &ATTEMPTS_INSERT, attempts.into_iter(), |stmt, i, a| {
        stmt.raw_bind_parameter(i, a.id as i64)?;
        stmt.raw_bind_parameter(i + 1, a.attempt)?;
        stmt.raw_bind_parameter(i + 2, &a.outcome)?;
        stmt.raw_bind_parameter(i + 3, &a.cleanup)?;
        stmt.raw_bind_parameter(i + 4, a.elapsed_us as i64)
    })?;
    Ok(())
}

impl Storage for SqliteStorage {
    fn meta(&mut self, key: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StorageError> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    fn load_journal(
        &mut self,
        sink: &mut dyn FnMut(Event) -> Result<(), String>,
    ) -> Result<u64, StorageError> {
        // Decoding runs on threads of their own, reading and replay on this one: on a restart
        // with a long journal decoding takes longer than replay. Row `i` goes to decoder
        // `i % DECODERS` and its events come back through that decoder's channel, so taking
        // the answers round robin keeps them in journal order.
        use crossbeam_channel::{Receiver, Sender, TrySendError};
        type Decoded = Result<Vec<Event>, StorageError>;
        const DECODERS: usize = 2;
        const QUEUE: usize = 16;
        let mut stmt = self
            .conn
            .prepare("SELECT first_seq, events FROM journal ORDER BY first_seq")?;
        let mut rows = stmt.query([])?;
        std::thread::scope(|scope| {
            // Created in here so that an early return drops them before the scope joins the
            // decoders: a decoder blocked on a full channel then wakes up and stops.
            let mut raw_txs: Vec<Sender<(i64, Vec<u8>)>> = Vec::with_capacity(DECODERS);
            let mut rxs: Vec<Receiver<Decoded>> = Vec::with_capacity(DECODERS);
            for _ in 0..DECODERS {
                let (raw_tx, raw_rx) = crossbeam_channel::bounded::<(i64, Vec<u8>)>(QUEUE);
                let (tx, rx) = crossbeam_channel::bounded::<Decoded>(QUEUE);
                raw_txs.push(raw_tx);
                rxs.push(rx);
                scope.spawn(move || {
                    for (first_seq, blob) in raw_rx {
                        let decoded = crate::journal_codec::decode(&blob).map_err(|source| {
                            StorageError::Decode {
                                first_seq: first_seq as u64,
                                source,
                            }
                        });
                        let failed = decoded.is_err();
                        if tx.send(decoded).is_err() || failed {
                            return;
                        }
                    }
                });
            }
            let mut count = 0u64;
            let mut apply = |decoded: Decoded| -> Result<(), StorageError> {
                for event in decoded? {
                    count += 1;
                    sink(event).map_err(StorageError::Replay)?;
                }
                Ok(())
            };
            let (mut sent, mut received) = (0usize, 0usize);
            'rows: while let Some(row) = rows.next()? {
                let first_seq: i64 = row.get(0)?;
                let blob = row
                    .get_ref(1)?
                    .as_blob()
                    .map_err(rusqlite::Error::from)?
                    .to_vec();
                let mut item = (first_seq, blob);
                loop {
                    match raw_txs[sent % DECODERS].try_send(item) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => {
                            item = back;
                            // The oldest row not yet applied is queued or being decoded,
                            // or its answer waits in its channel: it will come.
                            match rxs[received % DECODERS].recv() {
                                Ok(d) => {
                                    received += 1;
                                    apply(d)?;
                                }
                                Err(_) => break 'rows,
                            }
                        }
                        // That decoder stopped on an error: it is waiting in its channel.
                        Err(TrySendError::Disconnected(_)) => break 'rows,
                    }
                }
                sent += 1;
                while received < sent {
                    match rxs[received % DECODERS].try_recv() {
                        Ok(d) => {
                            received += 1;
                            apply(d)?;
                        }
                        Err(_) => break,
                    }
                }
            }
            raw_txs.clear();
            while received < sent {
                match rxs[received % DECODERS].recv() {
                    Ok(d) => {
                        received += 1;
                        apply(d)?;
                    }
                    Err(_) => break,
                }
            }
            Ok(count)
        })
    }

    fn commit_all(&mut self, batches: &[Batch]) -> Result<(), StorageError> {
        if batches.iter().all(Batch::is_empty) {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        write_journal(&tx, batches)?;
        write_rows(&tx, batches)?;
        tx.commit()?;
        Ok(())
    }

    fn task_row(&mut self, id: TaskId) -> Result<Option<TaskRow>, StorageError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, kind, grp, state, attempt, updated_at, reason, output, progress
                 FROM tasks WHERE id = ?1",
            )?
            .query_row([id as i64], |r| {
                Ok(TaskRow {
                    id: r.get::<_, i64>(0)? as u64,
                    kind: r.get(1)?,
                    group: r.get(2)?,
                    state: r.get(3)?,
                    attempt: r.get(4)?,
                    updated_at: r.get::<_, i64>(5)? as u64,
                    reason: r.get(6)?,
                    output: r.get(7)?,
                    progress: r.get::<_, Option<f64>>(8)?.map(|p| p as f32),
                })
            })
            .optional()?)
    }

    fn carry(&mut self, id: TaskId) -> Result<Option<Carry>, StorageError> {
        Ok(self
            .conn
            .prepare_cached("SELECT checkpoint, context FROM carries WHERE task_id = ?1")?
            .query_row([id as i64], |r| {
                Ok(Carry {
                    checkpoint: r.get(0)?,
                    context: r.get(1)?,
                })
            })
            .optional()?)
    }

    fn carried_ids(&mut self) -> Result<Vec<TaskId>, StorageError> {
        let mut stmt = self.conn.prepare("SELECT task_id FROM carries")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .map(|r| r.map(|id| id as u64))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ids)
    }

    fn attempts(&mut self, id: TaskId) -> Result<Vec<AttemptRow>, StorageError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT attempt, outcome, cleanup, elapsed_us FROM attempts
             WHERE task_id = ?1 ORDER BY attempt",
        )?;
        let rows = stmt
            .query_map([id as i64], |r| {
                Ok(AttemptRow {
                    id,
                    attempt: r.get(0)?,
                    outcome: r.get(1)?,
                    cleanup: r.get(2)?,
                    elapsed_us: r.get::<_, i64>(3)? as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handyman_core::{EventKind, TaskSpec};

    fn submitted(seq: u64, id: TaskId) -> Event {
        Event {
            seq,
            at: seq * 10,
            kind: EventKind::Submitted {
                id,
                spec: Box::new(TaskSpec::new("echo")),
                parent: None,
            },
        }
    }

    #[test]
    fn a_committed_batch_is_there_after_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let mut s = SqliteStorage::open(dir.path()).expect("open");
            s.set_meta("epoch", "42").expect("meta");
            let batch = Batch {
                events: vec![submitted(1, 1), submitted(2, 2)],
                tasks: vec![TaskRow {
                    id: 1,
                    kind: "echo".into(),
                    group: "default".into(),
                    state: "queued".into(),
                    attempt: 0,
                    updated_at: 10,
                    reason: None,
                    output: None,
                    progress: None,
                }],
                carries: vec![(
                    1,
                    Carry {
                        checkpoint: Some(b"cp".to_vec()),
                        context: Some("{}".into()),
                    },
                )],
                ..Batch::default()
            };
            s.commit(&batch).expect("commit");
            s.commit(&Batch {
                events: vec![submitted(3, 3)],
                ..Batch::default()
            })
            .expect("commit");
        }
        let mut s = SqliteStorage::open(dir.path()).expect("reopen");
        assert_eq!(s.meta("epoch").expect("meta").as_deref(), Some("42"));
        let mut seqs = Vec::new();
        let n = s
            .load_journal(&mut |e| {
                seqs.push(e.seq);
                Ok(())
            })
            .expect("load");
        assert_eq!(n, 3);
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(
            s.task_row(1).expect("row").map(|r| r.state),
            Some("queued".into())
        );
        assert_eq!(
            s.carry(1).expect("carry").and_then(|c| c.checkpoint),
            Some(b"cp".to_vec())
        );
        assert_eq!(s.carried_ids().expect("ids"), vec![1]);
    }

    #[test]
    fn a_journal_written_as_json_by_an_earlier_version_replays_before_the_new_rows() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let s = SqliteStorage::open(dir.path()).expect("open");
            let old = serde_json::to_vec(&vec![submitted(1, 1), submitted(2, 2)]).expect("json");
            s.conn
                .execute(
                    "INSERT INTO journal(first_seq, last_seq, events) VALUES (1, 2, ?1)",
                    [old],
                )
                .expect("old row");
        }
        let mut s = SqliteStorage::open(dir.path()).expect("reopen");
        // Two steps in one commit: one row.
        s.commit_all(&[
            Batch {
                events: vec![submitted(3, 3)],
                ..Batch::default()
            },
            Batch::default(),
            Batch {
                events: vec![submitted(4, 4), submitted(5, 5)],
                ..Batch::default()
            },
        ])
        .expect("commit");
        let rows: i64 = s
            .conn
            .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 2);
        let mut events = Vec::new();
        s.load_journal(&mut |e| {
            events.push(e);
            Ok(())
        })
        .expect("load");
        assert_eq!(events, (1..=5).map(|i| submitted(i, i)).collect::<Vec<_>>());
    }

    #[test]
    fn a_row_from_a_later_version_stops_the_load_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = SqliteStorage::open(dir.path()).expect("open");
        s.conn
            .execute(
                "INSERT INTO journal(first_seq, last_seq, events) VALUES (1, 1, ?1)",
                [vec![0x07u8, 1, 2]],
            )
            .expect("row");
        let err = s.load_journal(&mut |_| Ok(())).expect_err("refused");
        assert!(err.to_string().contains("later version"), "{err}");
    }

    #[test]
    fn rows_of_many_steps_are_written_in_chunks_and_the_last_row_of_a_task_wins() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = SqliteStorage::open(dir.path()).expect("open");
        let row = |id: TaskId, state: &str, output: Option<&[u8]>| TaskRow {
            id,
            kind: "echo".into(),
            group: format!("g{id}"),
            state: state.into(),
            attempt: 1,
            updated_at: id * 10,
            reason: None,
            output: output.map(<[u8]>::to_vec),
            progress: None,
        };
        let attempt = |id: TaskId| AttemptRow {
            id,
            attempt: 1,
            outcome: format!("done {id}"),
            cleanup: None,
            elapsed_us: id,
        };
        // 70 rows: chunks of 32, 32, 4 and 2; task 5 written twice, in two steps.
        let first = Batch {
            tasks: (1..=40)
                .map(|id| row(id, "running", Some(b"early")))
                .collect(),
            attempts: (1..=40).map(attempt).collect(),
            ..Batch::default()
        };
        let second = Batch {
            tasks: std::iter::once(row(5, "succeeded", None))
                .chain((41..=69).map(|id| row(id, "succeeded", Some(b"out"))))
                .collect(),
            attempts: (41..=70).map(attempt).collect(),
            ..Batch::default()
        };
        s.commit_all(&[first, second]).expect("commit");
        let five = s.task_row(5).expect("row").expect("present");
        assert_eq!(five.state, "succeeded");
        assert_eq!(
            five.output.as_deref(),
            Some(&b"early"[..]),
            "COALESCE keeps it"
        );
        let sixty_nine = s.task_row(69).expect("row").expect("present");
        assert_eq!(sixty_nine.group, "g69");
        assert_eq!(sixty_nine.output.as_deref(), Some(&b"out"[..]));
        for id in [1, 32, 33, 64, 65, 69, 70] {
            assert_eq!(
                s.attempts(id).expect("attempts"),
                vec![attempt(id)],
                "task {id}"
            );
        }
        let count: i64 = s
            .conn
            .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count, 69);
    }
}
