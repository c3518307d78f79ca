//! Jobs across machines on Redis Streams (feature `redis`): `rlm batch --queue` enqueues
//! and collects ([`Queue::collect`]), `rlm worker --queue` runs jobs ([`Queue::work`]).
//!
//! Keys, under `PREFIX:batch:NAME` (`--redis-prefix`, `--queue-name`):
//!
//! | key | what |
//! |---|---|
//! | `:jobs` | a stream, one entry per job (`id`, `job`: the job line), consumer group `workers` |
//! | `:results` | a hash, job id to its result line, written with `HSETNX`: a job is stored once |
//! | `:done` | a stream of ids whose result was stored, which the collector follows |
//! | `:epoch` | the collector's token: gone means Redis lost its data (restarted empty) |
//!
//! A worker reads with `XREADGROUP`, stores the result and acknowledges the entry in one
//! script (`HSETNX`, `XADD :done`, `XACK`), so an acknowledged job always has its result. A
//! worker that dies leaves its entries pending; after `claim_idle` another takes them with
//! `XAUTOCLAIM` (a live worker keeps its own entries fresh meanwhile, `XCLAIM ... JUSTID`).
//! An entry delivered more than `max_attempts` times is stored as a result with an error of
//! kind `attempts`.
//!
//! The collector holds the truth: the job file and the results file. It writes each result
//! once (it keeps the ids it wrote), and when Redis comes back empty it enqueues the jobs
//! that still have no line again, so a batch completes across a Redis restart. A job can
//! then run twice (its first run's result is kept), never be written twice.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rlm_core::CancellationToken;
use tokio::task::JoinSet;

use crate::HostError;
use crate::batch::{BatchReport, JobRunner};
use crate::jobs::{Job, JobLines};
use crate::results::{JobFailure, JobResult, Score};

/// The consumer group of the workers.
const GROUP: &str = "workers";
/// How long a blocking read waits for entries before the loop looks around.
const BLOCK: Duration = Duration::from_millis(500);
/// The longest a command may take (a blocking read's time besides).
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Jobs per pipelined enqueue.
const ENQUEUE_CHUNK: usize = 256;

/// Stores a result once, tells the collector, and acknowledges the entry: in one step.
const STORE: &str = r"
local stored = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])
if ARGV[4] ~= '' then redis.call('XACK', KEYS[3], ARGV[3], ARGV[4]) end
return stored
";

/// A job queue on a Redis server.
#[derive(Clone)]
pub struct Queue {
    client: redis::Client,
    /// Commands.
    conn: ConnectionManager,
    /// Blocking reads (which would hold the commands behind them).
    blocking: ConnectionManager,
    base: String,
    shown: String,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("url", &self.shown)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// What the collector needs besides the queue.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// The job file (read again, job by job, to enqueue).
    pub jobs: PathBuf,
    /// The longest job line.
    pub max_line_bytes: usize,
    /// Jobs in the file.
    pub expected: u64,
    /// How the workers score answers.
    pub score: Score,
}

/// How a worker takes jobs.
#[derive(Debug, Clone, Copy)]
pub struct WorkOptions {
    /// A job a worker holds this long without a sign of life is taken by another.
    pub claim_idle: Duration,
    /// Deliveries of a job before it is stored with an error.
    pub max_attempts: u32,
}

/// A Redis failure while the queue runs: logged once per outage, then retried.
struct Outage {
    since: Option<Instant>,
    delay: Duration,
    shown: String,
}

impl Outage {
    fn new(shown: &str) -> Self {
        Self {
            since: None,
            delay: Duration::from_millis(50),
            shown: shown.to_owned(),
        }
    }

    async fn failed(&mut self, error: &redis::RedisError) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(
                target: "rlm_host",
                "the queue's Redis at {} failed ({error}); retrying until it is back",
                self.shown
            );
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(2));
    }

    fn ok(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::warn!(
                target: "rlm_host",
                "the queue's Redis at {} is back after {} ms",
                self.shown,
                since.elapsed().as_millis()
            );
        }
        self.delay = Duration::from_millis(50);
    }
}

impl Queue {
    /// Connects to the Redis server at `url`; the queue's keys are under
    /// `PREFIX:batch:NAME`.
    ///
    /// # Errors
    /// [`HostError::Usage`] for a URL that is not a Redis URL or an empty name;
    /// [`HostError::Unavailable`] when the server does not answer.
    pub async fn connect(url: &str, prefix: &str, name: &str) -> Result<Self, HostError> {
        let shown = rlm_core::url::url_without_credentials(url)
            .unwrap_or_else(|| "(a Redis URL)".to_owned());
        if name.trim().is_empty() {
            return Err(HostError::Usage("--queue-name is empty".to_owned()));
        }
        let client = redis::Client::open(url).map_err(|e| {
            HostError::Usage(format!(
                "--queue {shown}: {}",
                e.detail().unwrap_or("not a Redis URL")
            ))
        })?;
        let config = |response: Duration| {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(OP_TIMEOUT))
                .set_response_timeout(Some(response))
                .set_number_of_retries(2)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1))
        };
        let unreachable = |e: String| {
            HostError::Unavailable(format!(
                "the queue's Redis at {shown} is unreachable: {e} (is redis-server running \
                 there? check --queue)"
            ))
        };
        let connect = async {
            let mut conn =
                ConnectionManager::new_with_config(client.clone(), config(OP_TIMEOUT)).await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            let blocking =
                ConnectionManager::new_with_config(client.clone(), config(OP_TIMEOUT + BLOCK))
                    .await?;
            Ok::<_, redis::RedisError>((conn, blocking))
        };
        let (conn, blocking) = tokio::time::timeout(OP_TIMEOUT * 2, connect)
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", OP_TIMEOUT.as_secs() * 2)))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self {
            client,
            conn,
            blocking,
            base: format!("{prefix}:batch:{}", name.trim()),
            shown,
        })
    }

    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.base)
    }

    /// Enqueues the jobs of `options.jobs` that have no line yet, then writes each result the
    /// workers store to `sink` (each id once) until every job has one or `cancel` is
    /// cancelled. Keeps going through Redis outages; when Redis comes back empty, enqueues
    /// again what is missing. Deletes the queue's keys when the batch is complete.
    ///
    /// # Errors
    /// [`HostError::Usage`]/[`HostError::Input`] for the job file, and the sink's errors.
    pub async fn collect<S>(
        &self,
        options: &CollectOptions,
        mut written: HashSet<String>,
        mut sink: S,
        cancel: &CancellationToken,
    ) -> Result<BatchReport, HostError>
    where
        S: FnMut(&JobResult) -> Result<(), HostError>,
    {
        let mut report = BatchReport::default();
        let mut conn = self.conn.clone();
        let mut blocking = self.blocking.clone();
        let mut outage = Outage::new(&self.shown);
        let all_ids = self.job_ids(options)?;
        // Lines of other jobs (an output shared with another batch) do not count.
        written.retain(|id| all_ids.contains(id));
        let mut epoch: Option<String> = None;
        let mut last = "0".to_owned();
        let mut write = |result: JobResult,
                         written: &mut HashSet<String>,
                         report: &mut BatchReport|
         -> Result<(), HostError> {
            if all_ids.contains(&result.id) && written.insert(result.id.clone()) {
                sink(&result)?;
                report.ran += 1;
            }
            Ok(())
        };
        while (written.len() as u64) < options.expected && !cancel.is_cancelled() {
            // (Re)start: the queue holds exactly the jobs without a line.
            if epoch.is_none() {
                match self.setup(options, &written, &mut conn).await {
                    Ok((token, harvested)) => {
                        for result in harvested {
                            write(result, &mut written, &mut report)?;
                        }
                        epoch = Some(token);
                        last = "0".to_owned();
                        outage.ok();
                    }
                    Err(SetupError::Redis(e)) => {
                        outage.failed(&e).await;
                        continue;
                    }
                    Err(SetupError::Host(e)) => return Err(e),
                }
                continue;
            }
            let mut command = redis::cmd("XREAD");
            command
                .arg("COUNT")
                .arg(512)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(self.key("done"))
                .arg(&last);
            let read = command.query_async::<Value>(&mut blocking);
            let entries = tokio::select! {
                read = read => read,
                () = cancel.cancelled() => break,
            };
            let entries = match entries {
                Ok(value) => stream_entries(&value),
                Err(e) => {
                    outage.failed(&e).await;
                    epoch = self.check_epoch(&mut conn, epoch).await;
                    continue;
                }
            };
            outage.ok();
            if entries.is_empty() {
                // Quiet: make sure Redis did not lose the queue meanwhile.
                epoch = self.check_epoch(&mut conn, epoch).await;
                continue;
            }
            for (entry, fields) in entries {
                last = entry;
                let Some(id) = field(&fields, "id") else {
                    continue;
                };
                if written.contains(&id) || !all_ids.contains(&id) {
                    continue;
                }
                let line: Option<String> = match redis::cmd("HGET")
                    .arg(self.key("results"))
                    .arg(&id)
                    .query_async(&mut conn)
                    .await
                {
                    Ok(line) => line,
                    Err(e) => {
                        outage.failed(&e).await;
                        break;
                    }
                };
                if let Some(result) = line.and_then(|l| serde_json::from_str::<JobResult>(&l).ok())
                {
                    write(result, &mut written, &mut report)?;
                }
            }
        }
        if cancel.is_cancelled() {
            report.interrupted = options.expected.saturating_sub(written.len() as u64);
        } else {
            // Complete: the queue's keys go (workers wait for the next batch).
            let _ = redis::cmd("DEL")
                .arg(self.key("jobs"))
                .arg(self.key("results"))
                .arg(self.key("done"))
                .arg(self.key("epoch"))
                .query_async::<()>(&mut conn)
                .await;
        }
        Ok(report)
    }

    /// The ids of the job file (checked before: only read here).
    fn job_ids(&self, options: &CollectOptions) -> Result<HashSet<String>, HostError> {
        let mut ids = HashSet::new();
        for job in JobLines::open(&options.jobs, options.max_line_bytes)? {
            ids.insert(job?.id);
        }
        Ok(ids)
    }

    /// The collector's token, or `None` when Redis lost it (restarted empty) or cannot say.
    async fn check_epoch(
        &self,
        conn: &mut ConnectionManager,
        epoch: Option<String>,
    ) -> Option<String> {
        let stored: Option<String> = redis::cmd("GET")
            .arg(self.key("epoch"))
            .query_async(conn)
            .await
            .ok()?;
        match (stored, epoch) {
            (Some(stored), Some(ours)) if stored == ours => Some(ours),
            (stored, _) => {
                tracing::warn!(
                    target: "rlm_host",
                    "the queue at {} {}: enqueuing the jobs without a result again",
                    self.shown,
                    if stored.is_some() {
                        "was set up by another collector"
                    } else {
                        "lost its jobs (Redis restarted empty?)"
                    }
                );
                None
            }
        }
    }

    /// Sets the queue up: results stored while no collector listened are harvested, the job
    /// stream is rebuilt with the jobs that have no line, and a new token marks it.
    async fn setup(
        &self,
        options: &CollectOptions,
        written: &HashSet<String>,
        conn: &mut ConnectionManager,
    ) -> Result<(String, Vec<JobResult>), SetupError> {
        redis::cmd("DEL")
            .arg(self.key("jobs"))
            .arg(self.key("done"))
            .query_async::<()>(conn)
            .await?;
        // Stored before this collector listened: take them now.
        let mut harvested = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, pairs): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(self.key("results"))
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(conn)
                .await?;
            for (id, line) in pairs {
                if written.contains(&id) {
                    continue;
                }
                if let Ok(result) = serde_json::from_str::<JobResult>(&line) {
                    harvested.push(result);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let stored: HashSet<&str> = harvested.iter().map(|r| r.id.as_str()).collect();
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.key("jobs"))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(conn)
            .await?;
        let mut lines = JobLines::open(&options.jobs, options.max_line_bytes)?;
        let mut pipe = redis::pipe();
        let mut queued = 0usize;
        while let Some((_, job)) = lines.next_job()? {
            if written.contains(&job.id) || stored.contains(job.id.as_str()) {
                continue;
            }
            pipe.cmd("XADD")
                .arg(self.key("jobs"))
                .arg("*")
                .arg("id")
                .arg(&job.id)
                .arg("job")
                .arg(job.to_value().to_string())
                .arg("score")
                .arg(options.score.as_str())
                .ignore();
            queued += 1;
            if queued % ENQUEUE_CHUNK == 0 {
                pipe.query_async::<()>(conn).await?;
                pipe = redis::pipe();
            }
        }
        if queued % ENQUEUE_CHUNK != 0 {
            pipe.query_async::<()>(conn).await?;
        }
        let token = format!("{}-{}", std::process::id(), unique());
        redis::cmd("SET")
            .arg(self.key("epoch"))
            .arg(&token)
            .query_async::<()>(conn)
            .await?;
        tracing::info!(target: "rlm_host", "enqueued {queued} jobs at {}", self.shown);
        Ok((token, harvested))
    }

    /// Takes jobs and runs them on `runner` (`max_runs` of its config at once) until
    /// `cancel` is cancelled; `done` hears of every result stored. Jobs in flight at the end
    /// are stopped and left to other workers. Returns how many results it stored.
    ///
    /// # Errors
    /// None in practice: Redis failures are waited out (logged once per outage).
    pub async fn work<F>(
        &self,
        runner: &Arc<JobRunner>,
        options: &WorkOptions,
        cancel: &CancellationToken,
        mut done: F,
    ) -> Result<u64, HostError>
    where
        F: FnMut(&JobResult),
    {
        let consumer = format!("worker-{}-{}", std::process::id(), unique());
        let mut conn = self.conn.clone();
        let mut blocking = self.blocking.clone();
        let mut outage = Outage::new(&self.shown);
        let max_runs = runner.max_runs();
        let mut running: JoinSet<Option<(String, JobResult)>> = JoinSet::new();
        let held: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
        let mut stored = 0u64;
        let mut cursor = "0-0".to_owned();
        let heartbeat = (options.claim_idle / 4).max(Duration::from_millis(50));
        let mut last_beat = Instant::now();
        let claim_ms = u64::try_from(options.claim_idle.as_millis()).unwrap_or(u64::MAX);
        while !cancel.is_cancelled() {
            while let Some(joined) = running.try_join_next() {
                if let Ok(Some((_, result))) = joined {
                    stored += 1;
                    done(&result);
                }
            }
            if last_beat.elapsed() >= heartbeat {
                last_beat = Instant::now();
                let ids: Vec<String> = lock(&held).iter().cloned().collect();
                if !ids.is_empty() {
                    let _ = redis::cmd("XCLAIM")
                        .arg(self.key("jobs"))
                        .arg(GROUP)
                        .arg(&consumer)
                        .arg(0)
                        .arg(&ids)
                        .arg("JUSTID")
                        .query_async::<Value>(&mut conn)
                        .await;
                }
            }
            let free = max_runs.saturating_sub(running.len());
            if free == 0 {
                tokio::select! {
                    joined = running.join_next() => {
                        if let Some(Ok(Some((_, result)))) = joined {
                            stored += 1;
                            done(&result);
                        }
                    }
                    () = tokio::time::sleep(heartbeat) => {}
                    () = cancel.cancelled() => break,
                }
                continue;
            }
            // Jobs a dead worker held, first.
            let claimed = redis::cmd("XAUTOCLAIM")
                .arg(self.key("jobs"))
                .arg(GROUP)
                .arg(&consumer)
                .arg(claim_ms)
                .arg(&cursor)
                .arg("COUNT")
                .arg(free)
                .query_async::<Value>(&mut conn)
                .await;
            let mut entries = match claimed {
                Ok(Value::Array(parts)) if parts.len() >= 2 => {
                    cursor = text(&parts[0]).unwrap_or_else(|| "0-0".to_owned());
                    entries_of(&parts[1])
                }
                Ok(_) => Vec::new(),
                Err(e) => {
                    if !is_no_group(&e) {
                        outage.failed(&e).await;
                    } else {
                        self.wait_for_batch(&mut blocking, cancel).await;
                    }
                    continue;
                }
            };
            let mut fresh = true;
            if !entries.is_empty() {
                fresh = false;
                // Its own jobs, gone idle while the loop waited: still running here.
                let own = lock(&held).clone();
                entries.retain(|(entry, _)| !own.contains(entry));
                entries = self
                    .over_attempts(
                        &mut conn,
                        entries,
                        options.max_attempts,
                        &mut done,
                        &mut stored,
                    )
                    .await;
            }
            if fresh {
                let mut command = redis::cmd("XREADGROUP");
                command
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(free)
                    .arg("BLOCK")
                    // Short enough that the heartbeat keeps this worker's jobs its own.
                    .arg(
                        u64::try_from(BLOCK.min(heartbeat).as_millis())
                            .unwrap_or(500)
                            .max(1),
                    )
                    .arg("STREAMS")
                    .arg(self.key("jobs"))
                    .arg(">");
                let read = command.query_async::<Value>(&mut blocking);
                let read = tokio::select! {
                    read = read => read,
                    () = cancel.cancelled() => break,
                };
                match read {
                    Ok(value) => entries = stream_entries(&value),
                    Err(e) => {
                        if is_no_group(&e) {
                            // No batch yet (or Redis restarted): wait for a collector.
                            outage.ok();
                            self.wait_for_batch(&mut blocking, cancel).await;
                        } else {
                            outage.failed(&e).await;
                        }
                        continue;
                    }
                }
            }
            outage.ok();
            for (entry, fields) in entries {
                let job = field(&fields, "job")
                    .ok_or_else(|| "the entry has no job".to_owned())
                    .and_then(|line| {
                        serde_json::from_str(&line).map_err(|e| format!("not JSON: {e}"))
                    })
                    .and_then(Job::from_value);
                let id = field(&fields, "id").unwrap_or_default();
                let score = field(&fields, "score")
                    .and_then(|name| Score::from_name(&name))
                    .unwrap_or_default();
                lock(&held).insert(entry.clone());
                let queue = self.clone();
                let runner = Arc::clone(runner);
                let cancel = cancel.clone();
                let held = Arc::clone(&held);
                running.spawn(async move {
                    let result = match job {
                        Ok(job) => runner.run_job_scored(job, score, &cancel).await,
                        Err(why) => Some(JobResult::failed(
                            &id,
                            JobFailure::new("input", format!("a queued job is not valid: {why}")),
                            0,
                        )),
                    };
                    let outcome = match result {
                        Some(result) => queue
                            .store(&result, Some(&entry), &cancel)
                            .await
                            .then_some((entry.clone(), result)),
                        None => None,
                    };
                    lock(&held).remove(&entry);
                    outcome
                });
            }
        }
        // Stopped: jobs in flight are cancelled and stay pending for other workers.
        while running.join_next().await.is_some() {}
        Ok(stored)
    }

    /// Stores entries delivered more than `max_attempts` times as failed results; returns
    /// the others.
    async fn over_attempts<F: FnMut(&JobResult)>(
        &self,
        conn: &mut ConnectionManager,
        entries: Vec<(String, Vec<(String, String)>)>,
        max_attempts: u32,
        done: &mut F,
        stored: &mut u64,
    ) -> Vec<(String, Vec<(String, String)>)> {
        let mut keep = Vec::new();
        for (entry, fields) in entries {
            let deliveries: u64 = match redis::cmd("XPENDING")
                .arg(self.key("jobs"))
                .arg(GROUP)
                .arg(&entry)
                .arg(&entry)
                .arg(1)
                .query_async::<Value>(conn)
                .await
            {
                Ok(Value::Array(rows)) => rows
                    .first()
                    .and_then(|row| match row {
                        Value::Array(cols) => cols.get(3).and_then(int),
                        _ => None,
                    })
                    .unwrap_or(1),
                _ => 1,
            };
            if deliveries <= u64::from(max_attempts) {
                keep.push((entry, fields));
                continue;
            }
            let id = field(&fields, "id").unwrap_or_default();
            let result = JobResult::failed(
                &id,
                JobFailure::new(
                    "attempts",
                    format!(
                        "the job was handed to workers {} times (--max-attempts {max_attempts}) \
                         and none finished it (they died or were killed while running it)",
                        deliveries - 1
                    ),
                ),
                0,
            );
            if self
                .store(&result, Some(&entry), &CancellationToken::new())
                .await
            {
                *stored += 1;
                done(&result);
            }
        }
        keep
    }

    /// Waits, at most [`BLOCK`], for a collector to enqueue jobs: `XREAD BLOCK` on the job
    /// stream waits for its next entry even while the stream does not exist, so a worker
    /// starts on a new batch as soon as its first jobs are added, not at its next look.
    async fn wait_for_batch(&self, blocking: &mut ConnectionManager, cancel: &CancellationToken) {
        let mut command = redis::cmd("XREAD");
        command
            .arg("BLOCK")
            .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(500))
            .arg("STREAMS")
            .arg(self.key("jobs"))
            .arg("$");
        let read = command.query_async::<Value>(blocking);
        let failed = tokio::select! {
            read = read => read.is_err(),
            () = cancel.cancelled() => return,
        };
        if failed {
            // Not a wait: no hot loop against a server that refuses the command.
            tokio::select! {
                () = tokio::time::sleep(BLOCK) => {}
                () = cancel.cancelled() => {}
            }
        }
    }

    /// Stores `result` (once per id), tells the collector and acknowledges `entry`; retried
    /// through outages until it is done or `cancel` is cancelled.
    async fn store(
        &self,
        result: &JobResult,
        entry: Option<&str>,
        cancel: &CancellationToken,
    ) -> bool {
        let script = redis::Script::new(STORE);
        let mut conn = self.conn.clone();
        let mut outage = Outage::new(&self.shown);
        let line = result.to_line();
        loop {
            let outcome = script
                .key(self.key("results"))
                .key(self.key("done"))
                .key(self.key("jobs"))
                .arg(&result.id)
                .arg(line.trim_end())
                .arg(GROUP)
                .arg(entry.unwrap_or(""))
                .invoke_async::<i64>(&mut conn)
                .await;
            match outcome {
                Ok(_) => {
                    outage.ok();
                    return true;
                }
                Err(e) => {
                    if cancel.is_cancelled() {
                        return false;
                    }
                    outage.failed(&e).await;
                }
            }
        }
    }

    /// The client (for callers that need their own commands).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }
}

enum SetupError {
    Redis(redis::RedisError),
    Host(HostError),
}

impl From<redis::RedisError> for SetupError {
    fn from(e: redis::RedisError) -> Self {
        SetupError::Redis(e)
    }
}

impl From<HostError> for SetupError {
    fn from(e: HostError) -> Self {
        SetupError::Host(e)
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_no_group(error: &redis::RedisError) -> bool {
    // NOGROUP: no batch yet, or Redis restarted; UNBLOCKED: the collector removed a
    // finished batch while the read waited.
    matches!(error.code(), Some("NOGROUP" | "UNBLOCKED"))
        || ["NOGROUP", "UNBLOCKED"]
            .iter()
            .any(|code| error.to_string().contains(code))
}

/// A number unique enough for names (time and a counter).
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

/// `[[id, [field, value, ...]], ...]`; entries deleted meanwhile (nil fields) are skipped.
fn entries_of(value: &Value) -> Vec<(String, Vec<(String, String)>)> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = text(pair.first()?)?;
            let Value::Array(flat) = pair.get(1)? else {
                return None;
            };
            let fields = flat
                .chunks(2)
                .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
                .collect();
            Some((id, fields))
        })
        .collect()
}

/// The entries of the one stream an `XREAD`/`XREADGROUP` reply holds (nil: none).
fn stream_entries(value: &Value) -> Vec<(String, Vec<(String, String)>)> {
    match value {
        Value::Array(streams) => streams
            .iter()
            .flat_map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => entries_of(&pair[1]),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, v)| entries_of(v)).collect(),
        _ => Vec::new(),
    }
}

fn field(fields: &[(String, String)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}
