//! [`DiskStore`]: completions in an SQLite database (bundled SQLite, WAL mode) in a directory
//! that several processes may share.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rlm_core::Completion;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::store::{Decoded, Store, StoreKey, decode, encode};
use crate::{CacheError, DEFAULT_MAX_BYTES};

/// The database file inside the cache directory.
pub const DISK_CACHE_FILE: &str = "rlm-cache.sqlite3";

/// How long an operation waits for another process's write to finish before it gives up
/// (then the call goes on without the disk cache).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    value BLOB NOT NULL,
    bytes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_created ON entries (created_ms);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('bytes', 0);
CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries BEGIN
    UPDATE meta SET value = value + NEW.bytes WHERE name = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries BEGIN
    UPDATE meta SET value = value - OLD.bytes WHERE name = 'bytes';
END;
";

/// Settings of a [`DiskStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskConfig {
    /// The most bytes of keys and values kept (32 bytes of key plus the JSON of the
    /// completion, per entry); beyond it the oldest entries go first. `0` keeps nothing.
    pub max_bytes: u64,
    /// Entries older than this are misses for this store. They are not deleted (another
    /// process sharing the directory may keep entries longer): the size bound removes them,
    /// oldest first.
    pub time_to_live: Option<Duration>,
}

impl Default for DiskConfig {
    /// [`DEFAULT_MAX_BYTES`] (256 MiB), no expiry.
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            time_to_live: None,
        }
    }
}

impl DiskConfig {
    /// Bounds the store to `bytes` of keys and values.
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Expires entries `ttl` after they were written.
    pub fn with_time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }
}

/// A [`Store`] on disk: one SQLite database, `rlm-cache.sqlite3`, in a directory.
///
/// - **Shared.** Any number of processes (and stores in one process) may open the same
///   directory at once; SQLite's write-ahead log lets readers go on while one writer
///   commits, and a writer waits up to 10 s for another. The directory must be on a local
///   file system (WAL needs shared memory; not NFS).
/// - **Crash-safe.** Each write is one transaction: a process killed mid-write loses the
///   entries of that transaction and nothing else, and the file is never left corrupt.
///   (`synchronous=NORMAL`: a power loss may also lose the last commits, still without
///   corruption.)
/// - **Bounded.** After each write, the oldest entries (by when they were written) are
///   removed until the stored keys and values fit [`DiskConfig::max_bytes`]; an entry
///   larger than the whole bound is not stored.
/// - **Expiring.** With a time-to-live, older entries are misses for this store; they are
///   not purged, since other processes sharing the directory may use a longer one.
/// - **Checked.** Each value carries a SHA-256 checksum of its key and JSON: an entry that
///   does not match (a changed byte, a truncated write) is a miss and is removed, never an
///   answer.
///
/// SQLite calls block, so each store runs them on two threads of its own (never on tokio's
/// blocking pool, which waiting REPL evaluations may fill), one connection each for reads
/// and writes, so a read never waits behind a commit of this process.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), rlm_cache::CacheError> {
/// use rlm_cache::{DiskConfig, DiskStore, Store, StoreKey};
/// use rlm_core::{Completion, CompletionRequest};
///
/// let dir = std::env::temp_dir().join(format!("rlm-doc-{}", std::process::id()));
/// let store = DiskStore::open(&dir, DiskConfig::default())?;
/// let key = StoreKey::of(&CompletionRequest::prompt("m", "hello"));
/// store.put_many(&[(key, Completion::new("m", "hi"))]).await?;
///
/// let again = DiskStore::open(&dir, DiskConfig::default())?; // as another process would
/// let found = again.get_many(&[key]).await?;
/// assert_eq!(found[0].as_ref().map(|c| c.text.as_str()), Some("hi"));
/// # let _ = std::fs::remove_dir_all(&dir);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DiskStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    config: DiskConfig,
    reader: Worker,
    writer: Worker,
}

/// Work for a connection's thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A thread of its own that owns one connection and runs the store's operations on it in
/// turn. SQLite calls block; on threads of their own they never take a thread of tokio's
/// blocking pool, so a process whose pool is full of waiting work (REPL evaluations waiting
/// for sub-calls this store would answer) cannot deadlock on the cache. The thread ends
/// when the last handle of the store is dropped.
struct Worker {
    /// `None` once the store is being dropped.
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Worker {
    /// Lets the thread finish what is queued and close its connection (which folds SQLite's
    /// log into the file), so a store dropped is a store closed.
    fn drop(&mut self) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Worker {
    fn spawn(name: &str, mut connection: Connection) -> std::io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for job in queue {
                    job(&mut connection);
                }
            })?;
        Ok(Self {
            jobs: Mutex::new(Some(jobs)),
            thread: Some(thread),
        })
    }

    /// Runs `work` on the connection's thread and waits for its result without blocking.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, CacheError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |connection| {
            // Nobody waits any more when the caller was dropped: nothing to report.
            let _ = sender.send(work(connection));
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|jobs| jobs.send(job));
        if !matches!(sent, Some(Ok(()))) {
            return Err(unavailable(
                "the disk cache's connection thread has stopped",
            ));
        }
        match receiver.await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(unavailable(
                "the disk cache's connection thread has stopped",
            )),
        }
    }
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("path", &self.inner.path)
            .field("config", &self.inner.config)
            .finish()
    }
}

fn unavailable(error: impl std::fmt::Display) -> CacheError {
    CacheError::Unavailable {
        store: "disk",
        message: error.to_string(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(connection)
}

impl DiskStore {
    /// Opens (creating it and `dir` if needed) the cache in `dir`.
    ///
    /// # Errors
    ///
    /// [`CacheError::Open`] when the directory cannot be created, the file cannot be opened
    /// or is not an SQLite database, or its tables cannot be created.
    pub fn open(dir: &Path, config: DiskConfig) -> Result<Self, CacheError> {
        let fail = |message: String| CacheError::Open {
            store: "disk",
            message,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DISK_CACHE_FILE);
        let open = || -> rusqlite::Result<(Connection, Connection)> {
            let mut writer = connect(&path)?;
            let setup = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
            setup.execute_batch(SCHEMA)?;
            setup.commit()?;
            let reader = connect(&path)?;
            Ok((reader, writer))
        };
        // Several processes opening a fresh directory at once race to create the file, turn
        // on WAL and create the tables; SQLite answers some of those steps "busy" at once
        // instead of waiting, so the whole opening is tried again until `BUSY_TIMEOUT`.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let (reader, writer) = loop {
            match open() {
                Ok(connections) => break connections,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(fail(format!("{}: {e}", path.display()))),
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                config,
                reader: Worker::spawn("rlm-cache-read", reader).map_err(thread_error)?,
                writer: Worker::spawn("rlm-cache-write", writer).map_err(thread_error)?,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The settings it was opened with.
    pub fn config(&self) -> DiskConfig {
        self.inner.config
    }

    /// The number of entries and their bytes (keys and values) stored now, expired ones
    /// included until the next write removes them.
    ///
    /// # Errors
    ///
    /// [`CacheError::Unavailable`] when the database cannot be read.
    pub async fn usage(&self) -> Result<(u64, u64), CacheError> {
        self.inner
            .reader
            .run(|reader| {
                reader.query_row(
                    "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM entries",
                    [],
                    |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
                )
            })
            .await
            .map(|(n, b)| (n.max(0) as u64, b.max(0) as u64))
    }

    /// Checks the database file's integrity (SQLite's `integrity_check`): `Ok(())` when it
    /// is sound, else the problems SQLite found.
    ///
    /// # Errors
    ///
    /// [`CacheError::Unavailable`] with SQLite's report.
    pub async fn check(&self) -> Result<(), CacheError> {
        let report = self
            .inner
            .reader
            .run(|reader| {
                let mut statement = reader.prepare("PRAGMA integrity_check")?;
                let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
            })
            .await?;
        if report == ["ok"] {
            Ok(())
        } else {
            Err(unavailable(report.join("; ")))
        }
    }
}

/// Whether SQLite refused because another connection holds a lock (worth trying again).
fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn thread_error(error: std::io::Error) -> CacheError {
    CacheError::Open {
        store: "disk",
        message: format!("cannot start a thread for the disk cache: {error}"),
    }
}

/// Reads `keys`: what each holds (a miss when expired for `time_to_live` or unsound), and
/// the keys whose entries are unsound.
fn get_all(
    reader: &mut Connection,
    time_to_live: Option<Duration>,
    keys: &[StoreKey],
) -> rusqlite::Result<(Vec<Option<Completion>>, Vec<StoreKey>)> {
    let oldest = time_to_live
        .map(|ttl| now_ms().saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
    let mut found = Vec::with_capacity(keys.len());
    let mut bad = Vec::new();
    let mut statement =
        reader.prepare_cached("SELECT value, created_ms FROM entries WHERE key = ?1")?;
    for key in keys {
        let row = statement
            .query_row([key.as_bytes().as_slice()], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
            })
            .optional()?;
        found.push(match row {
            // Expired for this reader; another process with a longer time-to-live may
            // still use it, so it stays until the size bound removes it.
            Some((_, created)) if oldest.is_some_and(|oldest| created < oldest) => None,
            Some((value, _)) => match decode(key, &value) {
                Decoded::Answer(completion) => Some(completion),
                Decoded::Bad => {
                    bad.push(*key);
                    None
                }
            },
            None => None,
        });
    }
    Ok((found, bad))
}

/// Removes entries that did not read back as they were written (a checksum that does not
/// match, another format), so they are asked for again and stored anew.
fn remove_bad(writer: &mut Connection, keys: &[StoreKey]) -> rusqlite::Result<()> {
    let transaction = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut remove = transaction.prepare_cached("DELETE FROM entries WHERE key = ?1")?;
        for key in keys {
            remove.execute([key.as_bytes().as_slice()])?;
        }
    }
    transaction.commit()
}

fn put_all(
    writer: &mut Connection,
    max_bytes: u64,
    entries: &[(StoreKey, Vec<u8>)],
) -> rusqlite::Result<()> {
    let max = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    let now = now_ms();
    let transaction = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut remove = transaction.prepare_cached("DELETE FROM entries WHERE key = ?1")?;
        let mut insert = transaction.prepare_cached(
            "INSERT INTO entries (key, value, bytes, created_ms) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (key, value) in entries {
            let bytes = i64::try_from(key.as_bytes().len() + value.len()).unwrap_or(i64::MAX);
            remove.execute([key.as_bytes().as_slice()])?;
            if bytes <= max {
                insert.execute(params![key.as_bytes().as_slice(), value, bytes, now])?;
            }
        }
    }
    let total: i64 =
        transaction.query_row("SELECT value FROM meta WHERE name = 'bytes'", [], |row| {
            row.get(0)
        })?;
    if total > max {
        // Oldest first: find the newest entry that must go, then remove it and all before.
        let mut last = None;
        {
            let mut excess = total - max;
            let mut oldest = transaction.prepare("SELECT id, bytes FROM entries ORDER BY id")?;
            let mut rows = oldest.query([])?;
            while excess > 0 {
                let Some(row) = rows.next()? else { break };
                last = Some(row.get::<_, i64>(0)?);
                excess -= row.get::<_, i64>(1)?;
            }
        }
        if let Some(last) = last {
            transaction.execute("DELETE FROM entries WHERE id <= ?1", [last])?;
        }
    }
    transaction.commit()
}

#[async_trait]
impl Store for DiskStore {
    fn name(&self) -> &'static str {
        "disk"
    }

    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Completion>>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let time_to_live = self.inner.config.time_to_live;
        let keys = keys.to_vec();
        let (found, bad) = self
            .inner
            .reader
            .run(move |reader| get_all(reader, time_to_live, &keys))
            .await?;
        if !bad.is_empty() {
            tracing::warn!(
                target: "rlm_cache",
                "{} disk cache entr{} in {} did not match {} checksum: removed, asked again",
                bad.len(),
                if bad.len() == 1 { "y" } else { "ies" },
                self.inner.path.display(),
                if bad.len() == 1 { "its" } else { "their" },
            );
            // The answers found stand whether or not the removal works.
            let _ = self
                .inner
                .writer
                .run(move |writer| remove_bad(writer, &bad))
                .await;
        }
        Ok(found)
    }

    async fn put_many(&self, entries: &[(StoreKey, Completion)]) -> Result<(), CacheError> {
        if entries.is_empty() {
            return Ok(());
        }
        let max_bytes = self.inner.config.max_bytes;
        let encoded: Vec<(StoreKey, Vec<u8>)> = entries
            .iter()
            .map(|(key, completion)| (*key, encode(key, completion)))
            .collect();
        self.inner
            .writer
            .run(move |writer| put_all(writer, max_bytes, &encoded))
            .await
    }
}
