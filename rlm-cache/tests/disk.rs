//! The disk tier: persistence across processes, bounds, expiry, sharing one directory between
//! processes, and a process killed mid-write.
#![cfg(feature = "disk")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rlm_cache::{CacheError, CachedBackend, DiskConfig, DiskStore, Store, StoreKey, StoredBackend};
use rlm_core::mock::MockBackend;
use rlm_core::{
    BatchExecutor, BatchObserver, BatchOptions, BatchResult, Completion, CompletionRequest,
    LlmBackend, LlmError,
};

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "rlm-cache-test-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &Path, config: DiskConfig) -> DiskStore {
    DiskStore::open(dir, config).expect("the disk cache opens")
}

fn entry(i: usize, size: usize) -> (StoreKey, Completion) {
    let request = CompletionRequest::prompt("sub", format!("prompt {i}"));
    let text = format!("answer {i} {}", "x".repeat(size));
    (StoreKey::of(&request), Completion::new("sub", text))
}

fn text(found: &Option<Completion>) -> Option<&str> {
    found.as_ref().map(|c| c.text.as_str())
}

#[tokio::test]
async fn entries_survive_reopening_and_a_reused_key_is_replaced() {
    let dir = TempDir::new("reopen");
    {
        let store = open(dir.path(), DiskConfig::default());
        store
            .put_many(&[entry(1, 10), entry(2, 10)])
            .await
            .expect("written");
        let (key, _) = entry(1, 0);
        store
            .put_many(&[(key, Completion::new("sub", "newer"))])
            .await
            .expect("written");
    }
    let store = open(dir.path(), DiskConfig::default());
    let keys = [entry(1, 0).0, entry(2, 0).0, entry(3, 0).0];
    let found = store.get_many(&keys).await.expect("read");
    assert_eq!(text(&found[0]), Some("newer"));
    assert_eq!(
        text(&found[1]),
        Some(&*format!("answer 2 {}", "x".repeat(10)))
    );
    assert_eq!(found[2], None);
    let (entries, _) = store.usage().await.expect("usage");
    assert_eq!(entries, 2);
    store.check().await.expect("a sound file");
}

#[tokio::test]
async fn the_byte_bound_removes_the_oldest_first() {
    let dir = TempDir::new("bound");
    // Each entry is 32 bytes of key plus about 1,060 bytes of JSON.
    let store = open(dir.path(), DiskConfig::default().with_max_bytes(5_000));
    for i in 0..10 {
        store.put_many(&[entry(i, 1_000)]).await.expect("written");
    }
    let (entries, bytes) = store.usage().await.expect("usage");
    assert!(bytes <= 5_000, "{bytes} bytes kept");
    assert_eq!(entries, 4, "{entries} entries kept");
    let keys: Vec<StoreKey> = (0..10).map(|i| entry(i, 0).0).collect();
    let found = store.get_many(&keys).await.expect("read");
    let kept: Vec<usize> = (0..10).filter(|&i| found[i].is_some()).collect();
    assert_eq!(kept, [6, 7, 8, 9]);

    // An entry larger than the whole bound is not kept, and evicts nothing.
    store.put_many(&[entry(99, 6_000)]).await.expect("written");
    let found = store
        .get_many(&[entry(99, 0).0, entry(9, 0).0])
        .await
        .expect("read");
    assert!(found[0].is_none() && found[1].is_some());

    // A bound of zero keeps nothing, and is not an error.
    let none = open(dir.path(), DiskConfig::default().with_max_bytes(0));
    none.put_many(&[entry(100, 1)]).await.expect("written");
    assert_eq!(none.usage().await.expect("usage").0, 0);
}

#[tokio::test]
async fn expired_entries_are_misses_for_the_reader_with_the_ttl_only() {
    let dir = TempDir::new("ttl");
    let store = open(
        dir.path(),
        DiskConfig::default().with_time_to_live(Duration::from_millis(300)),
    );
    store.put_many(&[entry(1, 10)]).await.expect("written");
    let key = entry(1, 0).0;
    assert!(store.get_many(&[key]).await.expect("read")[0].is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.get_many(&[key]).await.expect("read")[0].is_none());
    // Another process without a TTL still sees it, also after a write by the process with
    // the short TTL: a TTL applies when reading, it never purges other processes' entries.
    let forever = open(dir.path(), DiskConfig::default());
    assert!(forever.get_many(&[key]).await.expect("read")[0].is_some());
    store.put_many(&[entry(2, 10)]).await.expect("written");
    assert!(forever.get_many(&[key]).await.expect("read")[0].is_some());
    assert!(store.get_many(&[key]).await.expect("read")[0].is_none());
}

#[tokio::test]
async fn a_directory_that_cannot_hold_a_cache_is_a_clear_error() {
    let dir = TempDir::new("bad");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("a file");
    match DiskStore::open(&file, DiskConfig::default()) {
        Err(CacheError::Open { store, message }) => {
            assert_eq!(store, "disk");
            assert!(message.contains("a-file"), "{message}");
        }
        other => panic!("expected an open error, got {other:?}"),
    }
    // A file that is not a database.
    let not_db = TempDir::new("notdb");
    std::fs::write(
        not_db.path().join(rlm_cache::DISK_CACHE_FILE),
        vec![7u8; 4096],
    )
    .expect("a junk file");
    assert!(matches!(
        DiskStore::open(not_db.path(), DiskConfig::default()),
        Err(CacheError::Open { .. })
    ));
}

/// Records the observer's events.
#[derive(Default)]
struct Events(std::sync::Mutex<Vec<(usize, bool)>>);

impl BatchObserver for Events {
    fn started(&self, index: usize, _request: &CompletionRequest) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, false));
    }

    fn finished(&self, index: usize, _result: &BatchResult, _elapsed: Duration) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, true));
    }
}

#[tokio::test]
async fn behind_the_memory_cache_a_new_process_is_answered_from_disk() {
    let dir = TempDir::new("stack");
    let prompts: Vec<CompletionRequest> = ["a", "b", "a", "c"]
        .iter()
        .map(|p| CompletionRequest::prompt("sub", *p))
        .collect();
    let first = MockBackend::echo();
    {
        let disk = StoredBackend::new(first.clone(), open(dir.path(), DiskConfig::default()));
        let cache = CachedBackend::new(disk);
        let results = cache
            .complete_batch(prompts.clone(), &BatchOptions::new(4))
            .await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(first.calls(), 3);
        assert_eq!(cache.inner().hits(), 0);
    }
    // "A new process": a new memory cache over the same directory.
    let second = MockBackend::echo();
    let disk = StoredBackend::new(second.clone(), open(dir.path(), DiskConfig::default()));
    let cache = CachedBackend::new(disk);
    let events = Arc::new(Events::default());
    let options = BatchOptions::new(4).with_observer(events.clone());
    let mut more = prompts.clone();
    more.push(CompletionRequest::prompt("sub", "d"));
    let results = cache.complete_batch(more, &options).await;
    let texts: Vec<String> = results
        .into_iter()
        .map(|r| r.map(|c| c.text).unwrap_or_default())
        .collect();
    assert_eq!(
        texts,
        ["echo: a", "echo: b", "echo: a", "echo: c", "echo: d"]
    );
    assert_eq!(second.calls(), 1, "only the new prompt is sent");
    assert_eq!(
        cache.inner().hits(),
        3,
        "a, b and c from disk (the second a is shared)"
    );
    let events = events.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for i in 0..5 {
        assert_eq!(
            events.iter().filter(|e| **e == (i, false)).count(),
            1,
            "{events:?}"
        );
        assert_eq!(
            events.iter().filter(|e| **e == (i, true)).count(),
            1,
            "{events:?}"
        );
    }
    // One call: a hit on disk.
    let single = cache.complete(CompletionRequest::prompt("sub", "d")).await;
    assert_eq!(single.map(|c| c.text).ok().as_deref(), Some("echo: d"));
    assert_eq!(second.calls(), 1);
}

#[tokio::test]
async fn errors_are_never_stored() {
    let dir = TempDir::new("errors");
    let failing = MockBackend::from_fn(|request: &CompletionRequest| {
        match request.last_user_message().unwrap_or_default() {
            "bad" => Err(LlmError::other("boom")),
            prompt => Ok(format!("ok {prompt}")),
        }
    });
    let store = open(dir.path(), DiskConfig::default());
    let disk = StoredBackend::new(failing.clone(), store.clone());
    let results = disk
        .complete_batch(
            vec![
                CompletionRequest::prompt("sub", "good"),
                CompletionRequest::prompt("sub", "bad"),
            ],
            &BatchOptions::new(2),
        )
        .await;
    assert!(results[0].is_ok() && results[1].is_err());
    assert!(
        disk.complete(CompletionRequest::prompt("sub", "bad"))
            .await
            .is_err()
    );
    assert_eq!(store.usage().await.expect("usage").0, 1);
    let bad = StoreKey::of(&CompletionRequest::prompt("sub", "bad"));
    assert!(store.get_many(&[bad]).await.expect("read")[0].is_none());
}

/// A provider behind `endpoint` whose every answer names it.
#[derive(Clone)]
struct Server {
    endpoint: &'static str,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    fn new(endpoint: &'static str) -> Self {
        Self {
            endpoint,
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[rlm_core::async_trait]
impl LlmBackend for Server {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Completion::new(
            &request.model,
            format!("{}:7", self.endpoint),
        ))
    }

    fn endpoint(&self) -> Option<&str> {
        Some(self.endpoint)
    }
}

impl BatchExecutor for Server {}

#[tokio::test]
async fn two_servers_behind_one_directory_never_answer_for_each_other() {
    let dir = TempDir::new("endpoints");
    let request = || CompletionRequest::prompt("sub", "What is the number?");
    let a = Server::new("A");
    let b = Server::new("B");
    let from_a = CachedBackend::new(StoredBackend::new(
        a.clone(),
        open(dir.path(), DiskConfig::default()),
    ));
    assert_eq!(
        from_a.complete(request()).await.map(|c| c.text),
        Ok("A:7".to_owned())
    );
    // Server B's run, in a new process sharing the directory: asks B, not the disk.
    let from_b = CachedBackend::new(StoredBackend::new(
        b.clone(),
        open(dir.path(), DiskConfig::default()),
    ));
    assert_eq!(
        from_b.complete(request()).await.map(|c| c.text),
        Ok("B:7".to_owned())
    );
    let batch = from_b
        .complete_batch(vec![request(), request()], &BatchOptions::new(2))
        .await;
    assert!(
        batch
            .iter()
            .all(|r| r.as_ref().map(|c| c.text.as_str()) == Ok("B:7"))
    );
    assert_eq!(b.calls(), 1);
    // A's entry is still A's.
    let again_a = StoredBackend::new(a.clone(), open(dir.path(), DiskConfig::default()));
    assert_eq!(
        again_a.complete(request()).await.map(|c| c.text),
        Ok("A:7".to_owned())
    );
    assert_eq!((a.calls(), again_a.hits()), (1, 1));
}

/// Answers every prompt with a reply that failed in one way, until `fixed` is set.
fn failing_replies(fixed: Arc<std::sync::atomic::AtomicBool>) -> MockBackend {
    use rlm_core::FinishReason;
    let whole = Arc::clone(&fixed);
    MockBackend::from_fn(|request: &CompletionRequest| {
        Ok(format!(
            "whole answer to {}",
            request.last_user_message().unwrap_or_default()
        ))
    })
    .with_shape(move |request, completion| {
        if whole.load(std::sync::atomic::Ordering::SeqCst) {
            return completion;
        }
        match request.last_user_message().unwrap_or_default() {
            "cut" => {
                Completion::new("sub", "half an ans").with_finish_reason(Some(FinishReason::Length))
            }
            "empty" => Completion::new("sub", ""),
            "reasoning" => Completion::new("sub", "").with_reasoning("thinking..."),
            _ => Completion::new("sub", "").with_finish_reason(Some(FinishReason::ToolCalls)),
        }
    })
}

#[tokio::test]
async fn failed_replies_are_never_stored_and_asking_again_sends_again() {
    let dir = TempDir::new("failed");
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let provider = failing_replies(Arc::clone(&fixed));
    let store = open(dir.path(), DiskConfig::default());
    let cached = CachedBackend::new(StoredBackend::new(provider.clone(), store.clone()));
    let prompts = ["cut", "empty", "reasoning", "tools"];
    let requests = || {
        prompts
            .map(|p| CompletionRequest::prompt("sub", p))
            .to_vec()
    };
    let first = cached
        .complete_batch(requests(), &BatchOptions::new(4))
        .await;
    assert!(
        first
            .iter()
            .all(|r| r.as_ref().is_ok_and(|c| !c.is_complete()))
    );
    assert_eq!(
        cached
            .complete(CompletionRequest::prompt("sub", "cut"))
            .await
            .map(|c| c.is_cut()),
        Ok(true)
    );
    assert_eq!(
        store.usage().await.expect("usage").0,
        0,
        "nothing failed is on disk"
    );
    assert_eq!(provider.calls(), 5, "the single ask again was sent");
    // Asked again once the model answers whole: every prompt is sent again, in memory and
    // on disk, then kept.
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    let second = cached
        .complete_batch(requests(), &BatchOptions::new(4))
        .await;
    for (result, prompt) in second.iter().zip(prompts) {
        assert_eq!(
            result.as_ref().map(|c| c.text.clone()),
            Ok(format!("whole answer to {prompt}"))
        );
    }
    assert_eq!(provider.calls(), 9);
    assert_eq!(store.usage().await.expect("usage").0, 4);
}

#[tokio::test]
async fn a_changed_byte_in_the_file_is_a_miss_never_an_answer() {
    let dir = TempDir::new("checksum");
    let request = CompletionRequest::prompt("sub", "What is six times seven?");
    let key = StoreKey::of(&request);
    {
        let store = open(dir.path(), DiskConfig::default());
        store
            .put_many(&[(key, Completion::new("sub", "The answer is 42."))])
            .await
            .expect("written");
    } // closing the last connection checkpoints the log into the file
    let file = dir.path().join(rlm_cache::DISK_CACHE_FILE);
    let mut bytes = std::fs::read(&file).expect("the cache file");
    let at = bytes
        .windows(3)
        .position(|w| w == b"42.")
        .expect("the answer is in the file");
    bytes[at + 1] = b'3';
    std::fs::write(&file, &bytes).expect("changed");

    let store = open(dir.path(), DiskConfig::default());
    assert!(store.get_many(&[key]).await.expect("read")[0].is_none());
    assert_eq!(
        store.usage().await.expect("usage").0,
        0,
        "the bad entry is removed"
    );
    // The provider is asked again and its answer stored anew.
    let provider = MockBackend::from_fn(|_: &CompletionRequest| Ok("The answer is 42.".to_owned()));
    let backend = StoredBackend::new(provider.clone(), store.clone());
    assert_eq!(
        backend.complete(request.clone()).await.map(|c| c.text),
        Ok("The answer is 42.".to_owned())
    );
    assert_eq!(provider.calls(), 1);
    assert_eq!(
        text(&store.get_many(&[key]).await.expect("read")[0]),
        Some("The answer is 42.")
    );
}

#[test]
fn the_store_takes_no_thread_of_a_full_blocking_pool() {
    // A REPL evaluation runs on the blocking pool and waits there for its sub-calls, which
    // this store answers. With every pool thread so taken (here the only one), the store's
    // work must still run: before, it queued behind the waiting evaluation forever.
    let dir = TempDir::new("pool");
    let store = open(dir.path(), DiskConfig::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let found = runtime.block_on(async move {
        let handle = tokio::runtime::Handle::current();
        let evaluation = tokio::task::spawn_blocking(move || {
            handle.block_on(async {
                store.put_many(&[entry(1, 10)]).await.expect("written");
                store.get_many(&[entry(1, 0).0]).await.expect("read")
            })
        });
        // A safety bound, not a timing assertion: a deadlock never ends.
        tokio::time::timeout(Duration::from_secs(60), evaluation).await
    });
    let found = found.expect("no deadlock").expect("the evaluation ran");
    assert!(found[0].is_some());
}

// ---- several processes ----

/// Runs this test binary's `child` test in a new process with `env`.
fn spawn_child(env: &[(&str, String)]) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command.args([
        "child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// Not a test by itself: the body of the child processes of the tests below. Writes
/// `RLM_CHILD_COUNT` entries (in transactions of `RLM_CHILD_CHUNK`) under the id
/// `RLM_CHILD_ID` into `RLM_CHILD_DIR`, printing `committed N` after each transaction, and
/// reads back what it wrote.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by the multi-process tests"]
async fn child() {
    let (Ok(dir), Ok(id)) = (
        std::env::var("RLM_CHILD_DIR"),
        std::env::var("RLM_CHILD_ID"),
    ) else {
        return;
    };
    let count: usize = std::env::var("RLM_CHILD_COUNT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let chunk: usize = std::env::var("RLM_CHILD_CHUNK")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let store = open(Path::new(&dir), DiskConfig::default());
    let mut written = 0;
    while written < count {
        let entries: Vec<(StoreKey, Completion)> = (written..(written + chunk).min(count))
            .map(|i| {
                let request = CompletionRequest::prompt("sub", format!("{id}/{i}"));
                let text = format!("{id}/{i} {}", "y".repeat(2_000));
                (StoreKey::of(&request), Completion::new("sub", text))
            })
            .collect();
        store.put_many(&entries).await.expect("written");
        written += entries.len();
        println!("committed {written}");
    }
    let keys: Vec<StoreKey> = (0..count)
        .map(|i| StoreKey::of(&CompletionRequest::prompt("sub", format!("{id}/{i}"))))
        .collect();
    let found = store.get_many(&keys).await.expect("read");
    assert!(found.iter().all(Option::is_some));
}

async fn assert_all_present(store: &DiskStore, id: &str, count: usize) {
    let keys: Vec<StoreKey> = (0..count)
        .map(|i| StoreKey::of(&CompletionRequest::prompt("sub", format!("{id}/{i}"))))
        .collect();
    let found = store.get_many(&keys).await.expect("read");
    for (i, found) in found.iter().enumerate() {
        let expected = format!("{id}/{i} {}", "y".repeat(2_000));
        assert_eq!(text(found), Some(expected.as_str()), "{id}/{i}");
    }
}

#[tokio::test]
async fn several_processes_share_one_directory() {
    let dir = TempDir::new("shared");
    let path = dir.path().to_string_lossy().into_owned();
    let children: Vec<_> = (0..3)
        .map(|id| {
            spawn_child(&[
                ("RLM_CHILD_DIR", path.clone()),
                ("RLM_CHILD_ID", format!("p{id}")),
                ("RLM_CHILD_COUNT", "150".to_owned()),
                (
                    "RLM_CHILD_CHUNK",
                    if id == 0 { "1" } else { "10" }.to_owned(),
                ),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("a child process")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("the child ends").success());
    }
    let store = open(dir.path(), DiskConfig::default());
    store.check().await.expect("a sound file");
    for id in 0..3 {
        assert_all_present(&store, &format!("p{id}"), 150).await;
    }
    assert_eq!(store.usage().await.expect("usage").0, 450);
}

#[tokio::test]
async fn many_processes_opening_a_fresh_directory_at_once_all_succeed() {
    for round in 0..12 {
        let dir = TempDir::new(&format!("first-open-{round}"));
        // Not created yet: every process races to make the directory, the file and its tables.
        let path = dir.path().join("cache").to_string_lossy().into_owned();
        let children: Vec<_> = (0..8)
            .map(|id| {
                spawn_child(&[
                    ("RLM_CHILD_DIR", path.clone()),
                    ("RLM_CHILD_ID", format!("p{id}")),
                    ("RLM_CHILD_COUNT", "1".to_owned()),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("a child process")
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().expect("the child ends");
            assert!(
                output.status.success(),
                "round {round}: a first open failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[tokio::test]
async fn a_process_killed_mid_write_loses_at_most_its_last_write() {
    let dir = TempDir::new("kill");
    let path = dir.path().to_string_lossy().into_owned();
    for round in 0..3 {
        let id = format!("k{round}");
        let mut writer = spawn_child(&[
            ("RLM_CHILD_DIR", path.clone()),
            ("RLM_CHILD_ID", id.clone()),
            ("RLM_CHILD_COUNT", "1000000".to_owned()),
            ("RLM_CHILD_CHUNK", "25".to_owned()),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("a child process");
        let stdout = writer.stdout.take().expect("piped");
        let mut committed = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("a line");
            if let Some(n) = line.strip_prefix("committed ") {
                committed = n.parse().expect("a count");
                // Kill at a different moment each round, while it keeps writing.
                if committed >= 100 + 75 * round {
                    break;
                }
            }
        }
        writer.kill().expect("killed");
        let _ = writer.wait();
        let store = open(dir.path(), DiskConfig::default());
        store.check().await.expect("a sound file after the kill");
        assert_all_present(&store, &id, committed).await;
        // The other rounds' entries are intact too.
        for earlier in 0..round {
            let (entries, _) = store.usage().await.expect("usage");
            assert!(entries > 0, "round {earlier}");
        }
        // And the store still takes writes.
        store
            .put_many(&[entry(round, 10)])
            .await
            .expect("written after the kill");
    }
}
