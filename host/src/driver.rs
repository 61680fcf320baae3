//! The driver: one thread that owns the [`Core`] and the [`Storage`], fed by a channel of
//! commands, woken at the core's `next_wakeup()`.
//!
//! Each step gathers every command waiting in the channel (group commit), applies them to
//! the core with one `now`, hands out assignments while slots are free, and passes the
//! drained journal, task rows and checkpoints to the writer thread. The writer commits what
//! the steps gave it since its last commit in one transaction, and only then answers the
//! submitters, sends the new attempts to the workers and stops cancelled ones: nothing
//! leaves the host before it is durable, yet the driver goes on deciding while the disk
//! syncs. Scheduling rules live in the core only: the driver never decides which task runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use handyman_core::{
    AttemptOutcome, CancelOutcome, Core, CoreConfig, EventKind, GroupConfig, InterruptReason,
    Millis, Report, SubmitError, SubmitOutcome, TaskError, TaskId, TaskSpec, DEFAULT_POOL,
};
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::oneshot;

use crate::executor::{Executor, Job, JobResult, KindInfo, StopReason};
use crate::metrics::Metrics;
use crate::storage::{AttemptRow, Batch, Carry, Storage, StorageError, TaskRow};

/// Most commands applied in one step (one commit).
const MAX_BATCH: usize = 4096;
/// How long shutdown waits for running attempts to stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

/// Why a submit was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitRejection {
    #[error("{0}")]
    Invalid(#[from] SubmitError),
    #[error("field `kind`: no handler is loaded for kind {kind:?} (loaded kinds: {known})")]
    UnknownKind { kind: String, known: String },
    #[error("field `pool`: kind {kind:?} runs in pool {expected:?}, not {given:?}")]
    WrongPool {
        kind: String,
        expected: String,
        given: String,
    },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the server cannot reach its scheduler")]
    Unavailable,
}

/// What queries see: the core, the storage, the clock and the counters.
pub struct QueryCtx<'a> {
    pub core: &'a Core,
    pub storage: &'a mut dyn Storage,
    pub now: Millis,
    pub metrics: &'a Metrics,
    pub kinds: &'a [KindInfo],
}

type Query = Box<dyn FnOnce(&mut QueryCtx<'_>) + Send>;

/// An input of the driver.
pub enum Command {
    Submit {
        specs: Vec<TaskSpec>,
        reply: oneshot::Sender<Result<Vec<SubmitOutcome>, SubmitRejection>>,
    },
    Cancel {
        id: TaskId,
        reply: oneshot::Sender<Result<CancelOutcome, TaskError>>,
    },
    /// A worker's attempt ended.
    Finished { job: Box<Job>, result: JobResult },
    /// Read-only access to the state, after the step's commit.
    Query(Query),
    /// Stop assigning, stop running attempts as "continue later", flush, and end.
    Shutdown { reply: oneshot::Sender<()> },
}

/// The wall clock as the core sees it: milliseconds since the epoch stored at first start.
/// Never goes back below what the journal already saw.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Millis,
    start: Instant,
}

impl Clock {
    pub fn new(epoch_unix_ms: u64, at_least: Millis) -> Clock {
        let since_epoch = unix_ms().saturating_sub(epoch_unix_ms);
        Clock {
            base: since_epoch.max(at_least),
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> Millis {
        self.base + self.start.elapsed().as_millis() as Millis
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Settings of a driver.
#[derive(Clone, Debug, Default)]
pub struct DriverConfig {
    /// Used at the first start only; later starts use the stored one.
    pub core: Option<CoreConfig>,
    pub pools: BTreeMap<String, u32>,
    pub groups: BTreeMap<String, GroupConfig>,
    /// Slots of a kind's pool that `pools` does not name.
    pub default_slots: u32,
}

/// Why the driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored core config is unreadable: {0}")]
    StoredConfig(String),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// A handle on a running driver: send it commands.
#[derive(Clone)]
pub struct DriverHandle {
    tx: Sender<Command>,
    kinds: Arc<Vec<KindInfo>>,
}

/// What recovery found at start.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recovery {
    pub events: u64,
    pub tasks: u64,
    pub lost_attempts: usize,
    pub elapsed: Duration,
}

/// The running driver and its workers; [`Running::join`] waits for them after a shutdown.
pub struct Running {
    pub handle: DriverHandle,
    pub recovery: Recovery,
    driver: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn join(self) {
        let _ = self.driver.join();
        for w in self.workers {
            let _ = w.join();
        }
    }
}

impl DriverHandle {
    pub fn kinds(&self) -> &[KindInfo] {
        &self.kinds
    }

    pub async fn submit(
        &self,
        specs: Vec<TaskSpec>,
    ) -> Result<Vec<SubmitOutcome>, SubmitRejection> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Submit { specs, reply })
            .map_err(|_| SubmitRejection::Unavailable)?;
        rx.await.map_err(|_| SubmitRejection::Unavailable)?
    }

    pub async fn cancel(&self, id: TaskId) -> Option<Result<CancelOutcome, TaskError>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Cancel { id, reply }).ok()?;
        rx.await.ok()
    }

    /// Runs `f` on the driver thread after its next commit.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut QueryCtx<'_>) -> T + Send + 'static,
    ) -> Option<T> {
        self.send_query(f)?.await.ok()
    }

    /// Same as [`DriverHandle::query`], from a thread outside any async runtime.
    pub fn query_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut QueryCtx<'_>) -> T + Send + 'static,
    ) -> Option<T> {
        self.send_query(f)?.blocking_recv().ok()
    }

    /// Queues `f` for the driver thread; the receiver gets its answer.
    fn send_query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut QueryCtx<'_>) -> T + Send + 'static,
    ) -> Option<oneshot::Receiver<T>> {
        let (reply, rx) = oneshot::channel();
        let q: Query = Box::new(move |ctx| {
            let _ = reply.send(f(ctx));
        });
        self.tx.send(Command::Query(q)).ok()?;
        Some(rx)
    }

    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn shutdown_blocking(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).is_ok() {
            let _ = rx.blocking_recv();
        }
    }
}

/// A running attempt, as the driver tracks it.
struct RunningJob {
    attempt: u32,
}

struct Driver {
    core: Core,
    /// Shared with the writer, which holds it while it commits.
    storage: SharedStorage,
    writer: Writer,
    /// The writer fills it; the driver only marks it stopping at shutdown.
    job_queue: Arc<JobQueue>,
    executor: Arc<dyn Executor>,
    kinds: Arc<Vec<KindInfo>>,
    kind_pools: HashMap<String, String>,
    pools: Vec<String>,
    clock: Clock,
    rx: Receiver<Command>,
    /// Keyed by task id with a cheap hash (SipHash was ~8% of the driver bench's user-space
    /// instructions); never iterated.
    running: FxHashMap<TaskId, RunningJob>,
    /// Tasks with a stored checkpoint or context.
    carried: FxHashSet<TaskId>,
    metrics: Metrics,
    shutting_down: Option<(Instant, Vec<oneshot::Sender<()>>)>,
}

/// Starts the driver thread and one worker thread per slot.
pub fn start(
    mut storage: Box<dyn Storage>,
    executor: Arc<dyn Executor>,
    config: DriverConfig,
) -> Result<Running, StartError> {
    let started = Instant::now();
    let core_config = match storage.meta("core_config")? {
        Some(text) => serde_json::from_str::<CoreConfig>(&text)
            .map_err(|e| StartError::StoredConfig(e.to_string()))?,
        None => {
            let c = config.core.clone().unwrap_or_default();
            let text =
                serde_json::to_string(&c).map_err(|e| StartError::StoredConfig(e.to_string()))?;
            storage.set_meta("core_config", &text)?;
            c
        }
    };
    let epoch = match storage
        .meta("epoch_unix_ms")?
        .and_then(|t| t.parse::<u64>().ok())
    {
        Some(e) => e,
        None => {
            let e = unix_ms();
            storage.set_meta("epoch_unix_ms", &e.to_string())?;
            e
        }
    };
    let mut core = Core::new(core_config);
    let events =
        storage.load_journal(&mut |event| core.replay_event(&event).map_err(|e| e.to_string()))?;
    let clock = Clock::new(epoch, core.now());
    let now = clock.now();

    let kinds = Arc::new(executor.kinds());
    let kind_pools: HashMap<String, String> = kinds
        .iter()
        .map(|k| (k.name.clone(), k.pool.clone()))
        .collect();
    let mut pools: BTreeMap<String, u32> = config.pools.clone();
    for k in kinds.iter() {
        pools.entry(k.pool.clone()).or_insert(config.default_slots);
    }
    if pools.is_empty() {
        pools.insert(DEFAULT_POOL.to_string(), config.default_slots);
    }
    let current: HashMap<String, u32> = core
        .pools()
        .into_iter()
        .map(|p| (p.name, p.slots))
        .collect();
    for (pool, slots) in &pools {
        if current.get(pool) != Some(slots) {
            core.set_pool_slots(now, pool, *slots);
        }
    }
    let current: HashMap<String, GroupConfig> = core
        .groups(now)
        .into_iter()
        .map(|g| (g.name, g.config))
        .collect();
    for (group, gc) in &config.groups {
        let wanted = GroupConfig {
            weight: gc.weight.max(1),
            ..*gc
        };
        if current.get(group) != Some(&wanted) {
            core.configure_group(now, group, wanted);
        }
    }
    let lost = core.running_attempts();
    for (id, attempt) in &lost {
        let _ = core.report(
            now,
            *id,
            *attempt,
            Report::Lost {
                why: "the host stopped while it ran".to_string(),
            },
        );
    }
    let carried: FxHashSet<TaskId> = storage.carried_ids()?.into_iter().collect();
    let storage: SharedStorage = Arc::new(Mutex::new(storage));
    let (tx, rx) = crossbeam_channel::unbounded();
    let job_queue = Arc::new(JobQueue::default());
    let total_slots: u32 = pools.values().sum();
    let recovery = Recovery {
        events,
        tasks: core.task_count(),
        lost_attempts: lost.len(),
        elapsed: started.elapsed(),
    };
    let mut driver = Driver {
        core,
        storage: storage.clone(),
        writer: Writer::start(storage, JobSender(job_queue.clone()), executor.clone())?,
        job_queue: job_queue.clone(),
        executor: executor.clone(),
        kinds: kinds.clone(),
        kind_pools,
        pools: pools.keys().cloned().collect(),
        clock,
        rx,
        running: FxHashMap::default(),
        carried,
        metrics: Metrics::default(),
        shutting_down: None,
    };
    // Journal what recovery decided (lost attempts, pool sizes) before serving anything.
    driver.step(now, Vec::new());

    let mut workers = Vec::new();
    for i in 0..total_slots.max(1) {
        let jobs = job_queue.clone();
        let tx = tx.clone();
        let executor = executor.clone();
        let w = std::thread::Builder::new()
            .name(format!("handyman-worker-{i}"))
            .spawn(move || worker(jobs, tx, executor))
            .map_err(StartError::Thread)?;
        workers.push(w);
    }
    let handle = DriverHandle { tx, kinds };
    let driver = std::thread::Builder::new()
        .name("handyman-driver".to_string())
        .spawn(move || driver.run())
        .map_err(StartError::Thread)?;
    Ok(Running {
        handle,
        recovery,
        driver,
        workers,
    })
}

/// The attempts waiting for a worker.
///
/// A mutex and a condition variable rather than a channel: with one thread per slot, a
/// channel's receivers spin and yield before they sleep, and dozens of idle workers doing so
/// took more CPU than the driver itself.
///
/// Waking a sleeping thread costs a `futex` call on the waker's side and a sleep and a
/// context switch on the other (perf: with attempts that return at once, over a third of the
/// host's CPU went there when every worker that took a job while more waited woke the
/// next). So at most one wake is in flight at a time: whoever adds jobs or takes one while
/// more wait wakes a sleeping worker only when no worker was woken and has not come for a job
/// yet. That worker, once it has taken its job, wakes the next if jobs still wait: long
/// attempts still all start, one wake-up latency after the other, while short ones are run by
/// the workers already awake instead of waking every worker in turn.
#[derive(Default)]
struct JobQueue {
    state: Mutex<JobQueueState>,
    ready: Condvar,
    /// Set at shutdown: jobs not started yet are handed back as "continue later" unrun,
    /// as the running ones are stopped.
    stopping: AtomicBool,
}

#[derive(Default)]
struct JobQueueState {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Workers waiting on `ready`.
    sleeping: usize,
    /// Whether a worker was woken and has not looked at the queue yet.
    waking: bool,
}

impl JobQueueState {
    /// Whether the caller should wake a sleeping worker (and, if so, notes that it does).
    fn should_wake(&mut self) -> bool {
        if !self.jobs.is_empty() && self.sleeping > 0 && !self.waking {
            self.waking = true;
            true
        } else {
            false
        }
    }
}

impl JobQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, JobQueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_all(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut state = self.lock();
        state.jobs.extend(jobs);
        let wake = state.should_wake();
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }

    /// The next job; `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                let wake = state.should_wake();
                drop(state);
                if wake {
                    self.ready.notify_one();
                }
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state.sleeping += 1;
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            state.sleeping -= 1;
            // Woken (or spuriously awake): either way this worker now looks at the queue,
            // so another may be woken for the jobs it leaves.
            state.waking = false;
        }
    }
}

/// The driver's end of the job queue: dropping it lets the workers end.
struct JobSender(Arc<JobQueue>);

impl Drop for JobSender {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

type SharedStorage = Arc<Mutex<Box<dyn Storage>>>;

fn lock_storage(storage: &SharedStorage) -> std::sync::MutexGuard<'_, Box<dyn Storage>> {
    storage.lock().unwrap_or_else(|e| e.into_inner())
}

/// Most step batches the writer folds into one transaction.
const MAX_WRITES_PER_COMMIT: usize = 256;

/// One step's output: what to write, and what may happen once it is durable.
struct Write {
    batch: Batch,
    replies: Vec<Reply>,
    jobs: Vec<Job>,
    cancels: Vec<TaskId>,
}

enum WriterMsg {
    Write(Box<Write>),
    /// Answered once everything sent before it is durable.
    Flush(Sender<()>),
}

/// The writer thread: commits step batches in order, then lets their effects out.
struct Writer {
    tx: Option<Sender<WriterMsg>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(
        storage: SharedStorage,
        jobs: JobSender,
        executor: Arc<dyn Executor>,
    ) -> Result<Writer, StartError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("handyman-writer".to_string())
            .spawn(move || write_loop(rx, storage, jobs, executor))
            .map_err(StartError::Thread)?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, write: Write) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(WriterMsg::Write(Box::new(write)));
        }
    }

    /// Waits until everything sent so far is durable.
    fn flush(&self) {
        let (done, wait) = crossbeam_channel::bounded(1);
        if let Some(tx) = &self.tx {
            if tx.send(WriterMsg::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }
}

impl Drop for Writer {
    /// Lets the writer commit what it still holds, and waits for it.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(
    rx: Receiver<WriterMsg>,
    storage: SharedStorage,
    jobs: JobSender,
    executor: Arc<dyn Executor>,
) {
    while let Ok(first) = rx.recv() {
        let mut writes = Vec::new();
        let mut flushed = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Write(w) => writes.push(*w),
                WriterMsg::Flush(done) => flushed.push(done),
            }
            if writes.len() < MAX_WRITES_PER_COMMIT {
                next = rx.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            let batches: Vec<Batch> = writes
                .iter_mut()
                .map(|w| std::mem::take(&mut w.batch))
                .collect();
            if let Err(e) = lock_storage(&storage).commit_all(&batches) {
                // The core has moved on without its journal being durable: only a restart,
                // which replays what was committed, brings the two back together.
                tracing::error!(error = %e, "commit failed; stopping so that a restart recovers");
                eprintln!("handyman: commit failed: {e}");
                std::process::exit(70);
            }
        }
        let mut new_jobs = Vec::new();
        let mut cancels = Vec::new();
        for w in writes {
            for reply in w.replies {
                match reply {
                    Reply::Submit(tx, r) => {
                        let _ = tx.send(r);
                    }
                    Reply::Cancel(tx, r) => {
                        let _ = tx.send(r);
                    }
                }
            }
            new_jobs.extend(w.jobs);
            cancels.extend(w.cancels);
        }
        jobs.0.push_all(new_jobs);
        for id in cancels {
            executor.stop(id, StopReason::Cancel);
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

fn worker(jobs: Arc<JobQueue>, tx: Sender<Command>, executor: Arc<dyn Executor>) {
    while let Some(job) = jobs.pop() {
        let result = if jobs.stopping.load(Ordering::Acquire) {
            // Unrun: it keeps the context it was given, and its checkpoint (`None` keeps it).
            let mut unrun = JobResult::of(AttemptOutcome::ContinueLater);
            unrun.context = job.context.clone();
            unrun
        } else {
            run_caught(executor.as_ref(), job.clone())
        };
        if tx
            .send(Command::Finished {
                job: Box::new(job),
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Runs a job; a panic in the executor loses the attempt instead of the worker.
fn run_caught(executor: &dyn Executor, job: Job) -> JobResult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| executor.run(job))).unwrap_or_else(
        |panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".to_string());
            JobResult::of(AttemptOutcome::Lost {
                why: format!("the host's worker panicked: {what}"),
            })
        },
    )
}

/// Replies that wait for the step's commit.
enum Reply {
    Submit(
        oneshot::Sender<Result<Vec<SubmitOutcome>, SubmitRejection>>,
        Result<Vec<SubmitOutcome>, SubmitRejection>,
    ),
    Cancel(
        oneshot::Sender<Result<CancelOutcome, TaskError>>,
        Result<CancelOutcome, TaskError>,
    ),
}

impl Driver {
    fn run(mut self) {
        loop {
            let now = self.clock.now();
            let timeout = match (&self.shutting_down, self.core.next_wakeup()) {
                (Some(_), _) => Duration::from_millis(20),
                (None, Some(at)) => Duration::from_millis(at.saturating_sub(now)),
                (None, None) => Duration::from_secs(3600),
            };
            let mut commands = Vec::new();
            match self.rx.recv_timeout(timeout) {
                Ok(c) => commands.push(c),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while commands.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(c) => commands.push(c),
                    Err(_) => break,
                }
            }
            let now = self.clock.now();
            self.step(now, commands);
            if let Some((since, _)) = &self.shutting_down {
                if self.running.is_empty() || since.elapsed() > SHUTDOWN_WAIT {
                    self.writer.flush();
                    if let Some((_, replies)) = self.shutting_down.take() {
                        for r in replies {
                            let _ = r.send(());
                        }
                    }
                    // Dropping the writer, and with it the job queue's sender, ends the workers.
                    return;
                }
            }
        }
    }

    fn step(&mut self, now: Millis, commands: Vec<Command>) {
        let mut batch = Batch::default();
        let mut replies = Vec::new();
        let mut queries = Vec::new();
        let mut outputs: FxHashMap<TaskId, Vec<u8>> = FxHashMap::default();
        let mut progress: FxHashMap<TaskId, f32> = FxHashMap::default();
        for command in commands {
            match command {
                Command::Submit { specs, reply } => {
                    let result = if self.shutting_down.is_some() {
                        Err(SubmitRejection::ShuttingDown)
                    } else {
                        self.prepare(specs).and_then(|specs| {
                            let n = specs.len() as u64;
                            let r = self.core.submit_batch(now, specs)?;
                            self.metrics.count_submitted(n);
                            Ok(r)
                        })
                    };
                    replies.push(Reply::Submit(reply, result));
                }
                Command::Cancel { id, reply } => {
                    let result = self.core.cancel(now, id, "cancelled by an operator");
                    replies.push(Reply::Cancel(reply, result));
                }
                Command::Finished { job, result } => {
                    self.finish(now, &job, result, &mut batch, &mut outputs, &mut progress)
                }
                Command::Query(q) => queries.push(q),
                Command::Shutdown { reply } => match &mut self.shutting_down {
                    Some((_, replies)) => replies.push(reply),
                    None => {
                        tracing::info!(
                            running = self.running.len(),
                            "shutting down: stopping running attempts"
                        );
                        self.job_queue.stopping.store(true, Ordering::Release);
                        self.executor.stop_all(StopReason::Shutdown);
                        self.shutting_down = Some((Instant::now(), vec![reply]));
                    }
                },
            }
        }
        self.core.tick(now);
        let jobs = if self.shutting_down.is_none() {
            self.dispatch(now, &batch)
        } else {
            Vec::new()
        };
        // The executor enforces the time limit it was given itself: only cancels need it.
        let cancels = self
            .core
            .drain_interrupts()
            .into_iter()
            .filter(|i| i.reason == InterruptReason::Cancel)
            .map(|i| i.id)
            .collect();
        batch.events = self.core.drain_journal();
        self.collect(now, &mut batch, outputs, progress);
        self.writer.send(Write {
            batch,
            replies,
            jobs,
            cancels,
        });
        if !queries.is_empty() {
            // Queries read what the commands before them wrote.
            self.writer.flush();
            let mut storage = lock_storage(&self.storage);
            let mut ctx = QueryCtx {
                core: &self.core,
                storage: storage.as_mut(),
                now,
                metrics: &self.metrics,
                kinds: &self.kinds,
            };
            for q in queries {
                q(&mut ctx);
            }
        }
    }

    /// Host-side checks of specs: a known kind, its pool.
    fn prepare(&self, mut specs: Vec<TaskSpec>) -> Result<Vec<TaskSpec>, SubmitRejection> {
        for spec in &mut specs {
            self.prepare_one(spec)?;
        }
        Ok(specs)
    }

    fn prepare_one(&self, spec: &mut TaskSpec) -> Result<(), SubmitRejection> {
        let Some(info) = self.kinds.iter().find(|k| k.name == spec.kind) else {
            let known: Vec<&str> = self.kinds.iter().map(|k| k.name.as_str()).collect();
            return Err(SubmitRejection::UnknownKind {
                kind: spec.kind.to_string(),
                known: known.join(", "),
            });
        };
        let pool = &self.kind_pools[&info.name];
        if spec.pool == DEFAULT_POOL {
            spec.pool = pool.as_str().into();
        } else if spec.pool != *pool {
            return Err(SubmitRejection::WrongPool {
                kind: spec.kind.to_string(),
                expected: pool.clone(),
                given: spec.pool.to_string(),
            });
        }
        // The kind's own limit bounds every attempt: the core's deadline must not be later.
        let kind_limit = info.max_runtime.as_millis() as Millis;
        if kind_limit > 0 && spec.max_runtime_ms > kind_limit {
            spec.max_runtime_ms = kind_limit;
        }
        for follow in spec.on_success.iter_mut().chain(spec.on_failure.iter_mut()) {
            self.prepare_one(follow)?;
        }
        Ok(())
    }

    /// Hands out assignments while slots are free.
    /// `pending` holds what this step will commit: a checkpoint saved by an attempt that
    /// ended in this step is there, not in storage yet.
    fn dispatch(&mut self, now: Millis, pending: &Batch) -> Vec<Job> {
        let mut jobs = Vec::new();
        for p in 0..self.pools.len() {
            while self.core.free_slots(&self.pools[p]) > 0 {
                let Some(a) = self.core.next_assignment(now, &self.pools[p]) else {
                    break;
                };
                let mut carry = Carry::default();
                if self.carried.contains(&a.id) {
                    // The carry may sit in a step the writer has not committed yet.
                    self.writer.flush();
                    match lock_storage(&self.storage).carry(a.id) {
                        Ok(Some(c)) => carry = c,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(task = a.id, error = %e, "cannot read checkpoint")
                        }
                    }
                    for (_, c) in pending.carries.iter().filter(|(id, _)| *id == a.id) {
                        if c.checkpoint.is_some() {
                            carry.checkpoint = c.checkpoint.clone();
                        }
                        carry.context = c.context.clone();
                    }
                }
                if a.attempt == 1 {
                    if let Some(ready) = self.core.ready_since(a.id) {
                        self.metrics.observe_wait(
                            &a.group,
                            &a.kind,
                            a.assigned_at.saturating_sub(ready),
                        );
                    }
                }
                let context: BTreeMap<String, String> = carry
                    .context
                    .as_deref()
                    .and_then(|c| serde_json::from_str(c).ok())
                    .unwrap_or_default();
                self.running.insert(a.id, RunningJob { attempt: a.attempt });
                jobs.push(Job {
                    id: a.id,
                    attempt: a.attempt,
                    kind: a.kind,
                    group: a.group,
                    payload: a.payload,
                    checkpoint: carry.checkpoint,
                    context,
                    time_limit: Duration::from_millis(a.deadline.saturating_sub(now)),
                    deadline: a.deadline,
                });
            }
        }
        jobs
    }

    /// Applies an attempt's end: its checkpoint and context, then the report.
    fn finish(
        &mut self,
        now: Millis,
        job: &Job,
        mut result: JobResult,
        batch: &mut Batch,
        outputs: &mut FxHashMap<TaskId, Vec<u8>>,
        progress: &mut FxHashMap<TaskId, f32>,
    ) {
        let id = job.id;
        tracing::debug!(task = id, attempt = job.attempt, kind = %job.kind, outcome = %result.summary, "attempt ended");
        if self
            .running
            .get(&id)
            .is_some_and(|r| r.attempt == job.attempt)
        {
            self.running.remove(&id);
        }
        self.metrics.count_attempt();
        if result.outcome.counts_as_failure()
            && !matches!(result.outcome, AttemptOutcome::Interrupted)
        {
            self.metrics.count_failure(&job.group, &job.kind);
        }
        if result.checkpoint.is_some() || !result.context.is_empty() || self.carried.contains(&id) {
            let context = serde_json::to_string(&result.context).ok();
            batch.carries.push((
                id,
                Carry {
                    checkpoint: result.checkpoint.take(),
                    context,
                },
            ));
            self.carried.insert(id);
        }
        if let Some(p) = result.progress {
            progress.insert(id, p);
        }
        if let AttemptOutcome::Success { output } = &result.outcome {
            outputs.insert(id, output.clone());
        }
        batch.attempts.push(AttemptRow {
            id,
            attempt: job.attempt,
            outcome: std::mem::take(&mut result.summary),
            cleanup: result.cleanup.take(),
            elapsed_us: result.elapsed.as_micros() as u64,
        });
        // A timeout is reported no earlier than the core's deadline, so that the core has
        // requested the interrupt the attempt answers.
        let at = if result.timed_out {
            now.max(job.deadline)
        } else {
            now
        };
        let _ = self
            .core
            .report(at, id, job.attempt, Report::Finished(result.outcome));
    }

    /// Task rows and counters from the step's events.
    fn collect(
        &mut self,
        now: Millis,
        batch: &mut Batch,
        mut outputs: FxHashMap<TaskId, Vec<u8>>,
        mut progress: FxHashMap<TaskId, f32>,
    ) {
        let mut touched: Vec<TaskId> = Vec::new();
        for e in &batch.events {
            match &e.kind {
                EventKind::InterruptRequested { reason, .. } => {
                    self.metrics.count_interrupt(match reason {
                        InterruptReason::Timeout => "timeout",
                        InterruptReason::Cancel => "cancel",
                    })
                }
                EventKind::RetryScheduled { .. } => self.metrics.count_retry(),
                EventKind::Succeeded { id }
                | EventKind::Failed { id, .. }
                | EventKind::Cancelled { id, .. } => {
                    if self.carried.remove(id) {
                        batch.drop_carries.push(*id);
                    }
                    self.running.remove(id);
                }
                _ => {}
            }
            if let Some(id) = e.kind.task() {
                if touched.last() != Some(&id) {
                    touched.push(id);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            let (output, progress) = (outputs.remove(&id), progress.remove(&id));
            // The journal already holds every transition; a row holds what the journal does
            // not (an output, the last progress) and a task's outcome once it ended. Writing
            // a row at each submit and start as well tripled the writes per task.
            if output.is_none()
                && progress.is_none()
                && !self.core.state_of(id).is_some_and(|s| s.is_terminal())
            {
                continue;
            }
            // A whole view (a few strings) only for the rows written.
            let Some(t) = self.core.task(id) else {
                continue;
            };
            batch.tasks.push(TaskRow {
                id,
                kind: t.kind,
                group: t.group,
                state: t.state.as_str().to_string(),
                attempt: t.attempt,
                updated_at: now,
                reason: t.reason,
                output,
                progress,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::fake::FakeExecutor;
    use crate::storage::SqliteStorage;
    use handyman_core::TaskState;

    fn config(slots: u32) -> DriverConfig {
        DriverConfig {
            default_slots: slots,
            ..DriverConfig::default()
        }
    }

    fn executor() -> Arc<dyn Executor> {
        Arc::new(
            FakeExecutor::new()
                .with("echo", "default", FakeExecutor::echo())
                .with("spin", "default", FakeExecutor::spin()),
        )
    }

    fn state(h: &DriverHandle, id: TaskId) -> Option<TaskState> {
        h.query_blocking(move |ctx| ctx.core.state_of(id)).flatten()
    }

    fn wait_for(h: &DriverHandle, id: TaskId, want: TaskState) {
        let start = Instant::now();
        while state(h, id) != Some(want) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "task {id} never became {want}: {:?}",
                state(h, id)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn submit(
        h: &DriverHandle,
        specs: Vec<TaskSpec>,
    ) -> Result<Vec<SubmitOutcome>, SubmitRejection> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(h.submit(specs))
    }

    #[test]
    fn submitted_tasks_run_and_their_output_is_stored() {
        let dir = tempfile::tempdir().expect("dir");
        let storage = Box::new(SqliteStorage::open(dir.path()).expect("open"));
        let running = start(storage, executor(), config(2)).expect("start");
        let h = running.handle.clone();
        let ids = submit(&h, vec![TaskSpec::new("echo").payload("hi"); 5]).expect("accepted");
        for o in &ids {
            wait_for(&h, o.id(), TaskState::Succeeded);
        }
        let row = h
            .query_blocking(move |ctx| ctx.storage.task_row(1))
            .expect("query")
            .expect("row")
            .expect("present");
        assert_eq!(row.output.as_deref(), Some(&b"hi"[..]));
        h.shutdown_blocking();
        running.join();
    }

    #[test]
    fn an_unknown_kind_is_refused_with_the_known_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let storage = Box::new(SqliteStorage::open(dir.path()).expect("open"));
        let running = start(storage, executor(), config(1)).expect("start");
        let err = submit(&running.handle, vec![TaskSpec::new("nope")]).expect_err("refused");
        assert!(err.to_string().contains("echo, spin"), "{err}");
        running.handle.shutdown_blocking();
        running.join();
    }

    #[test]
    fn cancel_stops_a_running_attempt_and_a_restart_recovers_everything() {
        let dir = tempfile::tempdir().expect("dir");
        let storage = Box::new(SqliteStorage::open(dir.path()).expect("open"));
        let running = start(storage, executor(), config(1)).expect("start");
        let h = running.handle.clone();
        let spin = submit(&h, vec![TaskSpec::new("spin")]).expect("ok")[0].id();
        let queued = submit(&h, vec![TaskSpec::new("echo")]).expect("ok")[0].id();
        wait_for(&h, spin, TaskState::Running);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let outcome = rt.block_on(h.cancel(spin)).expect("answer").expect("known");
        assert_eq!(outcome, CancelOutcome::Interrupting);
        wait_for(&h, spin, TaskState::Cancelled);
        wait_for(&h, queued, TaskState::Succeeded);
        // A spinning task at shutdown is stopped as "continue later" and runs again after.
        let again =
            submit(&h, vec![TaskSpec::new("spin").max_runtime_ms(300)]).expect("ok")[0].id();
        wait_for(&h, again, TaskState::Running);
        h.shutdown_blocking();
        running.join();

        let storage = Box::new(SqliteStorage::open(dir.path()).expect("reopen"));
        let running = start(storage, executor(), config(1)).expect("restart");
        let h = running.handle.clone();
        assert_eq!(state(&h, spin), Some(TaskState::Cancelled));
        assert_eq!(state(&h, queued), Some(TaskState::Succeeded));
        let view = h
            .query_blocking(move |ctx| ctx.core.task(again))
            .flatten()
            .expect("known");
        assert_eq!(view.failures, 0, "a shutdown is not a failure: {view:?}");
        h.shutdown_blocking();
        running.join();
    }
}
